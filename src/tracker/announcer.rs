//! The long-lived announce task of one torrent.
//!
//! Every tier runs concurrently (like libtorrent's `announce_to_all_tiers`): more trackers
//! answering means more peers sooner, which is what a streaming client needs. Inside a tier,
//! BEP 12: the URLs are shuffled once, tried in order until one answers, and the one that
//! answered moves to the front. Each tracker gets `started` the first time it is told about
//! us, `completed` once when nothing is left (checked at re-announce time), and `stopped` at
//! shutdown if it accepted `started`, or if shutdown cut a `started` short (the tracker may
//! have counted us before its answer was lost; a `stopped` it did not need is harmless).
//! Shutdown never waits more than [`STOP_TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep_until, timeout_at};
use tracing::{Instrument, debug, info, warn};

use super::announce;
use super::clients::Clients;
use super::types::{AnnounceRequest, AnnounceResponse, Event, Families, TrackerError};

/// What stays the same across all announces of a torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceParams {
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
    /// The port we accept peer connections on.
    pub port: u16,
    /// Ours alone, so a tracker can still tell us apart if our IP address changes.
    pub key: u32,
    /// Peers wanted per announce; `u32::MAX` leaves it to the tracker.
    pub num_want: u32,
    /// The address families we listen on (both, unless told otherwise).
    pub families: Families,
}

impl AnnounceParams {
    /// A random `key` and [`NUM_WANT`] peers wanted.
    pub fn new(info_hash: [u8; 20], peer_id: [u8; 20], port: u16) -> Self {
        Self {
            info_hash,
            peer_id,
            port,
            key: rand::random(),
            num_want: NUM_WANT,
            families: Families::BOTH,
        }
    }

    /// Announced as listening on the families of `addrs` only.
    pub fn listening_on(self, addrs: &[std::net::SocketAddr]) -> Self {
        Self {
            families: Families::of(addrs),
            ..self
        }
    }
}

/// Transfer totals reported to trackers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
}

/// One tracker as `btfs status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerStatus {
    pub url: String,
    /// Index of the tier in the torrent's announce list.
    pub tier: usize,
    /// Number of peers of the last answer, or why the last announce failed.
    pub last: Option<Result<usize, String>>,
    /// When this tracker will next be announced to; `None` while it is only a fallback
    /// of its tier, or after shutdown.
    pub next_announce: Option<std::time::Instant>,
}

/// Peers asked of a tracker per announce by [`AnnounceParams::new`].
pub const NUM_WANT: u32 = 80;
/// Budget for telling trackers `stopped` at shutdown, all of them together.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Retry delay after a tier's first failed round; it doubles with each further failure.
pub const RETRY_FIRST: Duration = Duration::from_secs(10);
pub const RETRY_MAX: Duration = Duration::from_secs(30 * 60);
/// While the session wants peers it cannot find (a read starves and every known address was
/// tried), a tier announces again once its tracker's `min interval` has passed, but never
/// sooner than this after its last answer.
pub const EARLY_FLOOR: Duration = Duration::from_secs(60);

/// The trackers' status as the announcer publishes it: one entry per distinct URL, in
/// announce-list order. Readers `borrow()` a snapshot; the last one stays after the task ends.
pub type StatusReceiver = watch::Receiver<Vec<TrackerStatus>>;

/// Starts announcing. `progress` is called at each announce (keep it cheap and
/// non-blocking). Returns the task and its [`StatusReceiver`]. The task ends when `shutdown`
/// becomes true (or its sender is dropped), after telling the trackers `stopped`.
/// `more` wakes the announcer when the session needs peers it cannot find: each tier then
/// asks again as soon as its tracker allows (see [`EARLY_FLOOR`]).
pub fn spawn(
    tiers: Vec<Vec<String>>,
    params: AnnounceParams,
    progress: Arc<dyn Fn() -> Progress + Send + Sync>,
    peers_tx: mpsc::Sender<Vec<std::net::SocketAddr>>,
    more: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
) -> (JoinHandle<()>, StatusReceiver) {
    spawn_inner(tiers, params, progress, peers_tx, more, shutdown, true)
}

/// `shuffle: false` keeps the given order, for tests.
pub(super) fn spawn_inner(
    tiers: Vec<Vec<String>>,
    params: AnnounceParams,
    progress: Arc<dyn Fn() -> Progress + Send + Sync>,
    peers_tx: mpsc::Sender<Vec<std::net::SocketAddr>>,
    more: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
    shuffle: bool,
) -> (JoinHandle<()>, StatusReceiver) {
    let mut by_tier = Vec::new();
    let mut status: Vec<TrackerStatus> = Vec::new();
    for (tier_no, urls) in tiers.into_iter().enumerate() {
        let mut tier = Vec::new();
        for url in urls {
            if status.iter().any(|s| s.url == url) {
                continue;
            }
            tier.push(Tracker::new(url.clone(), status.len()));
            status.push(TrackerStatus {
                url,
                tier: tier_no,
                last: None,
                next_announce: None,
            });
        }
        if shuffle {
            tier.shuffle(&mut rand::rng());
        }
        if !tier.is_empty() {
            by_tier.push(tier);
        }
    }
    let clients = Clients::shared();
    let (status, status_rx) = watch::channel(status);
    let ctx = Arc::new(Ctx {
        params,
        progress,
        peers_tx,
        more,
        status,
        clients,
    });
    (
        tokio::spawn(run(ctx, by_tier, shutdown).in_current_span()),
        status_rx,
    )
}

struct Ctx {
    params: AnnounceParams,
    progress: Arc<dyn Fn() -> Progress + Send + Sync>,
    peers_tx: mpsc::Sender<Vec<std::net::SocketAddr>>,
    /// The session wants more peers now.
    more: Arc<Notify>,
    /// Written only here, by the tier tasks; the session reads it through its receiver.
    status: watch::Sender<Vec<TrackerStatus>>,
    clients: Arc<Clients>,
}

impl Ctx {
    fn request(&self, p: Progress, event: Event) -> AnnounceRequest {
        AnnounceRequest {
            info_hash: self.params.info_hash,
            peer_id: self.params.peer_id,
            port: self.params.port,
            uploaded: p.uploaded,
            downloaded: p.downloaded,
            left: p.left,
            event,
            // Leaving, we need no peers.
            num_want: if event == Event::Stopped {
                0
            } else {
                self.params.num_want
            },
            key: self.params.key,
            families: self.params.families,
        }
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut TrackerStatus)) {
        // Notifies readers even when nobody holds a receiver (`send` would fail then).
        self.status.send_modify(|st| {
            if let Some(s) = st.get_mut(index) {
                f(s);
            }
        });
    }
}

/// Per-tracker state kept by its tier's task.
struct Tracker {
    url: String,
    /// Its entry in the status vector.
    index: usize,
    /// It accepted `started`, so it is owed `stopped`.
    started: bool,
    /// A `started` to it is in flight: if shutdown drops it, the tracker is owed `stopped`.
    starting: bool,
    /// The last announce failed (failures are logged on the change only).
    failing: bool,
    warning: Option<String>,
}

impl Tracker {
    fn new(url: String, index: usize) -> Self {
        Self {
            url,
            index,
            started: false,
            starting: false,
            failing: false,
            warning: None,
        }
    }

    fn note_success(&mut self, ctx: &Ctx, resp: &AnnounceResponse) {
        ctx.update(self.index, |s| s.last = Some(Ok(resp.peers.len())));
        if self.failing {
            info!(tracker = %self.url, "tracker answers again");
        } else {
            debug!(tracker = %self.url, peers = resp.peers.len(), "tracker answered");
        }
        self.failing = false;
        if resp.warning != self.warning {
            if let Some(w) = &resp.warning {
                warn!(tracker = %self.url, warning = %w, "tracker warning");
            }
            self.warning.clone_from(&resp.warning);
        }
    }

    fn note_failure(&mut self, ctx: &Ctx, e: &TrackerError) {
        ctx.update(self.index, |s| s.last = Some(Err(e.to_string())));
        if self.failing {
            debug!(tracker = %self.url, error = %e, "tracker still failing");
        } else {
            warn!(tracker = %self.url, error = %e, "tracker announce failed; retrying with backoff");
        }
        self.failing = true;
    }
}

async fn run(ctx: Arc<Ctx>, tiers: Vec<Vec<Tracker>>, shutdown: watch::Receiver<bool>) {
    let mut set = JoinSet::new();
    for tier in tiers {
        set.spawn(run_tier(ctx.clone(), tier, shutdown.clone()).in_current_span());
    }
    // Tier tasks end only at shutdown, each returning the trackers owed `stopped`.
    let mut owed = Vec::new();
    while let Some(done) = set.join_next().await {
        if let Ok(trackers) = done {
            owed.extend(trackers);
        }
    }
    send_stopped(&ctx, owed).await;
    ctx.status.send_modify(|st| {
        for s in st.iter_mut() {
            s.next_announce = None;
        }
    });
}

/// Resolves when shutdown is requested or its sender is gone.
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&stop| stop).await;
}

async fn run_tier(
    ctx: Arc<Ctx>,
    mut trackers: Vec<Tracker>,
    mut shutdown: watch::Receiver<bool>,
) -> Vec<Tracker> {
    let mut failures: u32 = 0;
    // A tracker that heard `left = 0` needs no `completed`.
    let mut told_complete = false;
    loop {
        let progress = (ctx.progress)();
        let answer = tokio::select! {
            biased;
            () = stopping(&mut shutdown) => break,
            a = announce_tier(&ctx, &mut trackers, progress, told_complete) => a,
        };
        let now = Instant::now();
        // The soonest a wish for more peers may bring the next announce forward to.
        let mut earliest = None;
        let mut next = match answer {
            Some(resp) => {
                failures = 0;
                told_complete |= progress.left == 0;
                let min = resp.min_interval.unwrap_or_default();
                earliest = Some(now + min.max(EARLY_FLOOR));
                let next = now + resp.interval.max(min);
                // Only the front tracker is announced to next; the rest are fallbacks.
                for (i, t) in trackers.iter().enumerate() {
                    ctx.update(t.index, |s| {
                        s.next_announce = (i == 0).then(|| next.into_std());
                    });
                }
                if !resp.peers.is_empty() {
                    tokio::select! {
                        biased;
                        () = stopping(&mut shutdown) => break,
                        // An error means the session is gone; shutdown will follow.
                        _ = ctx.peers_tx.send(resp.peers) => {}
                    }
                }
                next
            }
            None => {
                let next = now + retry_delay(failures);
                failures = failures.saturating_add(1);
                for t in &trackers {
                    ctx.update(t.index, |s| s.next_announce = Some(next.into_std()));
                }
                next
            }
        };
        loop {
            tokio::select! {
                biased;
                () = stopping(&mut shutdown) => return owed(trackers),
                () = sleep_until(next) => break,
                () = ctx.more.notified() => {
                    if let Some(soon) = earliest.filter(|&e| e < next) {
                        next = soon.max(Instant::now());
                        if let Some(t) = trackers.first() {
                            ctx.update(t.index, |s| s.next_announce = Some(next.into_std()));
                        }
                    }
                }
            }
        }
    }
    owed(trackers)
}

/// The trackers that heard `started`, or may have, and so are owed `stopped`.
fn owed(mut trackers: Vec<Tracker>) -> Vec<Tracker> {
    trackers.retain(|t| t.started || t.starting);
    trackers
}

/// One round over a tier (BEP 12): the first tracker that answers wins and moves to the
/// front. `None` when every tracker failed.
async fn announce_tier(
    ctx: &Ctx,
    trackers: &mut [Tracker],
    progress: Progress,
    told_complete: bool,
) -> Option<AnnounceResponse> {
    for i in 0..trackers.len() {
        let t = &mut trackers[i];
        let event = if !t.started {
            Event::Started
        } else if progress.left == 0 && !told_complete {
            Event::Completed
        } else {
            Event::None
        };
        t.starting = event == Event::Started;
        let answer = announce(&t.url, &ctx.request(progress, event), &ctx.clients).await;
        t.starting = false;
        match answer {
            Ok(resp) => {
                t.started = true;
                t.note_success(ctx, &resp);
                trackers[..=i].rotate_right(1);
                return Some(resp);
            }
            Err(e) => t.note_failure(ctx, &e),
        }
    }
    None
}

/// 10 s after the first failed round, doubling up to 30 min.
pub(super) fn retry_delay(failures: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1 << failures.min(16))
        .min(RETRY_MAX)
}

/// Tells every tracker that accepted `started` (or may have) that we leave, concurrently,
/// giving up on
/// whatever has not answered after [`STOP_TIMEOUT`].
async fn send_stopped(ctx: &Arc<Ctx>, trackers: Vec<Tracker>) {
    if trackers.is_empty() {
        return;
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    let req = ctx.request((ctx.progress)(), Event::Stopped);
    let mut set = JoinSet::new();
    for t in trackers {
        let (ctx, req) = (ctx.clone(), req.clone());
        let stopped = async move {
            if let Err(e) = announce(&t.url, &req, &ctx.clients).await {
                debug!(tracker = %t.url, error = %e, "stopped announce failed");
            }
        };
        set.spawn(stopped.in_current_span());
    }
    let all = async { while set.join_next().await.is_some() {} };
    if timeout_at(deadline, all).await.is_err() {
        debug!("some trackers did not answer the stopped announce in time");
    }
    // Dropping the set aborts the announces still running.
}
