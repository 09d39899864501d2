//! The long-lived announce task of one torrent.
//!
//! Every tier runs concurrently (like libtorrent's `announce_to_all_tiers`): more trackers
//! answering means more peers sooner, which is what a streaming client needs. Inside a tier,
//! BEP 12: the URLs are shuffled once, tried in order until one answers, and the one that
//! answered moves to the front. Each tracker gets `started` the first time it is told about
//! us, `completed` once when nothing is left (checked at re-announce time), and `stopped` at
//! shutdown if it accepted `started`. Shutdown never waits more than [`STOP_TIMEOUT`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::seq::SliceRandom;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep_until, timeout_at};
use tracing::{debug, info, warn};

use super::announce;
use super::clients::Clients;
use super::types::{AnnounceRequest, AnnounceResponse, Event, TrackerError};

/// What stays the same across all announces of a torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceParams {
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
    /// The port we accept peer connections on.
    pub port: u16,
    pub key: u32,
    pub num_want: u32,
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

/// Budget for telling trackers `stopped` at shutdown, all of them together.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Retry delay after a tier's first failed round; it doubles with each further failure.
pub const RETRY_FIRST: Duration = Duration::from_secs(10);
pub const RETRY_MAX: Duration = Duration::from_secs(30 * 60);

/// Starts announcing. `progress` is called at each announce (keep it cheap and
/// non-blocking). `status` is replaced with one entry per distinct URL before this
/// returns, in announce-list order. The task ends when `shutdown` becomes true (or its sender is
/// dropped), after telling the trackers `stopped`.
pub fn spawn(
    tiers: Vec<Vec<String>>,
    params: AnnounceParams,
    progress: Arc<dyn Fn() -> Progress + Send + Sync>,
    peers_tx: mpsc::Sender<Vec<std::net::SocketAddr>>,
    shutdown: watch::Receiver<bool>,
    status: Arc<Mutex<Vec<TrackerStatus>>>,
) -> JoinHandle<()> {
    spawn_inner(tiers, params, progress, peers_tx, shutdown, status, true)
}

/// `shuffle: false` keeps the given order, for tests.
fn spawn_inner(
    tiers: Vec<Vec<String>>,
    params: AnnounceParams,
    progress: Arc<dyn Fn() -> Progress + Send + Sync>,
    peers_tx: mpsc::Sender<Vec<std::net::SocketAddr>>,
    shutdown: watch::Receiver<bool>,
    status: Arc<Mutex<Vec<TrackerStatus>>>,
    shuffle: bool,
) -> JoinHandle<()> {
    let mut by_tier = Vec::new();
    {
        let mut st = lock(&status);
        st.clear();
        for (tier_no, urls) in tiers.into_iter().enumerate() {
            let mut tier = Vec::new();
            for url in urls {
                if st.iter().any(|s| s.url == url) {
                    continue;
                }
                tier.push(Tracker::new(url.clone(), st.len()));
                st.push(TrackerStatus {
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
    }
    let clients = match Clients::new() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot announce to trackers");
            for s in lock(&status).iter_mut() {
                s.last = Some(Err(e.to_string()));
            }
            return tokio::spawn(async {});
        }
    };
    let ctx = Arc::new(Ctx {
        params,
        progress,
        peers_tx,
        status,
        clients,
    });
    tokio::spawn(run(ctx, by_tier, shutdown))
}

struct Ctx {
    params: AnnounceParams,
    progress: Arc<dyn Fn() -> Progress + Send + Sync>,
    peers_tx: mpsc::Sender<Vec<std::net::SocketAddr>>,
    /// Std mutex: locked only to copy values in or out, never across an `.await`.
    status: Arc<Mutex<Vec<TrackerStatus>>>,
    clients: Clients,
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
        }
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut TrackerStatus)) {
        if let Some(s) = lock(&self.status).get_mut(index) {
            f(s);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Per-tracker state kept by its tier's task.
struct Tracker {
    url: String,
    /// Its entry in the status vector.
    index: usize,
    /// It accepted `started`, so it is owed `stopped`.
    started: bool,
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
        set.spawn(run_tier(ctx.clone(), tier, shutdown.clone()));
    }
    // Tier tasks end only at shutdown, each returning the trackers owed `stopped`.
    let mut owed = Vec::new();
    while let Some(done) = set.join_next().await {
        if let Ok(trackers) = done {
            owed.extend(trackers);
        }
    }
    send_stopped(&ctx, owed).await;
    for s in lock(&ctx.status).iter_mut() {
        s.next_announce = None;
    }
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
        let next = match answer {
            Some(resp) => {
                failures = 0;
                told_complete |= progress.left == 0;
                let next = now + resp.interval.max(resp.min_interval.unwrap_or_default());
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
        tokio::select! {
            biased;
            () = stopping(&mut shutdown) => break,
            () = sleep_until(next) => {}
        }
    }
    trackers.retain(|t| t.started);
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
        match announce(&t.url, &ctx.request(progress, event), &ctx.clients).await {
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
fn retry_delay(failures: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1 << failures.min(16))
        .min(RETRY_MAX)
}

/// Tells every tracker that accepted `started` that we leave, concurrently, giving up on
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
        set.spawn(async move {
            if let Err(e) = announce(&t.url, &req, &ctx.clients).await {
                debug!(tracker = %t.url, error = %e, "stopped announce failed");
            }
        });
    }
    let all = async { while set.join_next().await.is_some() {} };
    if timeout_at(deadline, all).await.is_err() {
        debug!("some trackers did not answer the stopped announce in time");
    }
    // Dropping the set aborts the announces still running.
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::tests::{Freeze, within};
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A scripted HTTP tracker: the test reads each request and decides the answer.
    struct FakeHttp {
        listener: TcpListener,
        url: String,
    }

    impl FakeHttp {
        async fn new() -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/announce", listener.local_addr().unwrap());
            Self { listener, url }
        }

        /// The next request's query parameters (still percent-encoded), and the stream to
        /// answer on.
        async fn next(&self) -> (HashMap<String, String>, TcpStream) {
            within(async {
                let (mut s, _) = self.listener.accept().await.unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0, "client closed before sending a request");
                    head.extend_from_slice(&buf[..n]);
                }
                let head = String::from_utf8(head).unwrap();
                let target = head.split(' ').nth(1).unwrap();
                let query = target.split_once('?').unwrap().1;
                let params = query
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                (params, s)
            })
            .await
        }
    }

    async fn reply(mut s: TcpStream, body: &[u8]) {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
    }

    fn ok_body(interval: u32, min_interval: Option<u32>, peers: &[u8]) -> Vec<u8> {
        let mut e = crate::bencode::Encoder::new();
        e.begin_dict().str("interval").int(interval.into());
        if let Some(m) = min_interval {
            e.str("min interval").int(m.into());
        }
        e.str("peers").bytes(peers).end().finish()
    }

    fn params() -> AnnounceParams {
        AnnounceParams {
            info_hash: *b"info-hash-info-hash!",
            peer_id: *b"-BF0001-peeridpeerid",
            port: 6881,
            key: 0x1234_5678,
            num_want: 50,
        }
    }

    struct Harness {
        progress: Arc<Mutex<Progress>>,
        peers_rx: mpsc::Receiver<Vec<SocketAddr>>,
        stop: watch::Sender<bool>,
        status: Arc<Mutex<Vec<TrackerStatus>>>,
        handle: JoinHandle<()>,
    }

    fn start(tiers: Vec<Vec<String>>, left: u64) -> Harness {
        let progress = Arc::new(Mutex::new(Progress {
            left,
            ..Progress::default()
        }));
        let (peers_tx, peers_rx) = mpsc::channel(4);
        let (stop, stop_rx) = watch::channel(false);
        let status = Arc::new(Mutex::new(Vec::new()));
        let p = progress.clone();
        let handle = spawn_inner(
            tiers,
            params(),
            Arc::new(move || *lock(&p)),
            peers_tx,
            stop_rx,
            status.clone(),
            false,
        );
        Harness {
            progress,
            peers_rx,
            stop,
            status,
            handle,
        }
    }

    impl Harness {
        fn status(&self) -> Vec<TrackerStatus> {
            lock(&self.status).clone()
        }

        async fn peers(&mut self) -> Vec<SocketAddr> {
            within(self.peers_rx.recv()).await.unwrap()
        }

        /// Yields until the status satisfies `f` (the announcer runs on this thread).
        async fn wait_status(&self, f: impl Fn(&[TrackerStatus]) -> bool) {
            within(async {
                while !f(&self.status()) {
                    tokio::task::yield_now().await;
                }
            })
            .await
        }
    }

    fn at(t: Instant, secs: u64) -> Option<std::time::Instant> {
        Some((t + Duration::from_secs(secs)).into_std())
    }

    const PEER_A: &[u8] = b"\x01\x02\x03\x04\x1a\xe1";
    const PEER_B: &[u8] = b"\x05\x06\x07\x08\x1a\xe2";

    #[tokio::test(start_paused = true)]
    async fn started_reannounce_completed_and_stopped() {
        let _freeze = Freeze::new().await;
        let tracker = FakeHttp::new().await;
        let mut h = start(vec![vec![tracker.url.clone()]], 1000);
        assert_eq!(
            h.status(),
            vec![TrackerStatus {
                url: tracker.url.clone(),
                tier: 0,
                last: None,
                next_announce: None
            }]
        );

        let (q, s) = tracker.next().await;
        assert_eq!(q["event"], "started");
        assert_eq!(q["info_hash"], "info-hash-info-hash%21");
        assert_eq!(q["peer_id"], "-BF0001-peeridpeerid");
        assert_eq!((q["port"].as_str(), q["left"].as_str()), ("6881", "1000"));
        assert_eq!(
            (q["numwant"].as_str(), q["key"].as_str()),
            ("50", "12345678")
        );
        let t0 = Instant::now();
        reply(s, &ok_body(1800, Some(900), PEER_A)).await;
        assert_eq!(h.peers().await, vec!["1.2.3.4:6881".parse().unwrap()]);
        let st = h.status();
        assert_eq!(st[0].last, Some(Ok(1)));
        assert_eq!(st[0].next_announce, at(t0, 1800));

        // Finished meanwhile: the re-announce after the interval says so, once.
        *lock(&h.progress) = Progress {
            uploaded: 7,
            downloaded: 1000,
            left: 0,
        };
        tokio::time::advance(Duration::from_secs(1800)).await;
        let (q, s) = tracker.next().await;
        assert_eq!(q["event"], "completed");
        let sent = (&q["uploaded"][..], &q["downloaded"][..], &q["left"][..]);
        assert_eq!(sent, ("7", "1000", "0"));
        // min interval above interval is honoured.
        let t1 = Instant::now();
        reply(s, &ok_body(60, Some(120), PEER_B)).await;
        assert_eq!(h.peers().await, vec!["5.6.7.8:6882".parse().unwrap()]);
        assert_eq!(h.status()[0].next_announce, at(t1, 120));

        tokio::time::advance(Duration::from_secs(120)).await;
        let (q, s) = tracker.next().await;
        assert!(!q.contains_key("event"), "{q:?}");
        reply(s, &ok_body(60, None, PEER_B)).await;
        h.peers().await;

        h.stop.send(true).unwrap();
        let (q, s) = tracker.next().await;
        assert_eq!(
            (q["event"].as_str(), q["numwant"].as_str()),
            ("stopped", "0")
        );
        reply(s, &ok_body(60, None, b"")).await;
        within(h.handle).await.unwrap();
        assert_eq!(lock(&h.status)[0].next_announce, None);
    }

    #[tokio::test(start_paused = true)]
    async fn tier_falls_back_and_promotes_the_tracker_that_answered() {
        let _freeze = Freeze::new().await;
        let refused = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            format!("http://{}/announce", l.local_addr().unwrap())
        };
        let dropper = FakeHttp::new().await;
        let good = FakeHttp::new().await;
        let tier = vec![refused.clone(), dropper.url.clone(), good.url.clone()];
        let mut h = start(vec![tier], 5);

        // The refused one fails at once; this one closes without answering.
        drop(dropper.next().await);
        let (q, s) = good.next().await;
        assert_eq!(q["event"], "started");
        let t0 = Instant::now();
        reply(s, &ok_body(1800, None, PEER_A)).await;
        h.peers().await;
        let st = h.status();
        assert!(
            matches!(&st[0].last, Some(Err(e)) if e.contains("request failed")),
            "{st:?}"
        );
        assert!(matches!(&st[1].last, Some(Err(_))), "{st:?}");
        assert_eq!(st[2].last, Some(Ok(1)));
        let next: Vec<_> = st.iter().map(|s| s.next_announce).collect();
        assert_eq!(next, vec![None, None, at(t0, 1800)]);

        // The good one is now first: had `dropper` been asked first, the announcer would
        // still be waiting for its answer and `good` would see nothing.
        tokio::time::advance(Duration::from_secs(1800)).await;
        let (q, s) = good.next().await;
        assert!(!q.contains_key("event"), "{q:?}");
        reply(s, &ok_body(1800, None, PEER_A)).await;
        h.peers().await;

        h.stop.send(true).unwrap();
        let (q, s) = good.next().await;
        assert_eq!(q["event"], "stopped");
        reply(s, &ok_body(1800, None, b"")).await;
        within(h.handle).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_and_status_shows_the_reason() {
        let _freeze = Freeze::new().await;
        let tracker = FakeHttp::new().await;
        let h = start(vec![vec![tracker.url.clone()]], 5);
        let failure = b"d14:failure reason14:not registerede";

        let mut t = Instant::now();
        for delay in [10, 20, 40] {
            let (q, s) = tracker.next().await;
            // Nobody accepted `started` yet, so it is repeated.
            assert_eq!(q["event"], "started");
            reply(s, failure).await;
            h.wait_status(|st| st[0].next_announce.is_some()).await;
            let st = h.status();
            let want = "tracker refused the announce: not registered".to_string();
            assert_eq!(st[0].last, Some(Err(want)));
            assert_eq!(st[0].next_announce, at(t, delay));
            // Cleared so the next wait_status sees the announcer's next update.
            lock(&h.status)[0].next_announce = None;
            tokio::time::advance(Duration::from_secs(delay)).await;
            t = Instant::now();
        }
        // Success resets the backoff and the regular interval applies.
        let (_, s) = tracker.next().await;
        reply(s, &ok_body(300, None, b"")).await;
        h.wait_status(|st| st[0].next_announce.is_some()).await;
        assert_eq!(h.status()[0].last, Some(Ok(0)));
        assert_eq!(h.status()[0].next_announce, at(t, 300));
        drop(h.stop);
        let (q, s) = tracker.next().await;
        assert_eq!(q["event"], "stopped");
        reply(s, b"").await;
        within(h.handle).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn tiers_run_concurrently_and_shutdown_never_hangs() {
        let _freeze = Freeze::new().await;
        let answers = FakeHttp::new().await;
        let silent = FakeHttp::new().await;
        let mut h = start(vec![vec![silent.url.clone()], vec![answers.url.clone()]], 5);
        let st = h.status();
        assert_eq!((st[0].tier, st[1].tier), (0, 1));

        // The silent tracker never answers `started`; the other tier is not held up.
        let (_, _silent_stream) = silent.next().await;
        // Nobody listens for peers any more: the announcer must not care.
        h.peers_rx.close();
        let (_, s) = answers.next().await;
        reply(s, &ok_body(1800, None, PEER_A)).await;
        h.wait_status(|st| st[1].last.is_some()).await;

        h.stop.send(true).unwrap();
        // Only the tracker that accepted `started` hears `stopped`; it does not answer
        // either, and the announcer gives up after the stop budget.
        let (q, _answers_stream) = answers.next().await;
        assert_eq!(q["event"], "stopped");
        tokio::time::advance(STOP_TIMEOUT).await;
        within(h.handle).await.unwrap();
    }

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let secs: Vec<u64> = (0..10).map(|f| retry_delay(f).as_secs()).collect();
        assert_eq!(secs, [10, 20, 40, 80, 160, 320, 640, 1280, 1800, 1800]);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }
}
