//! Web seeds (BEP 19): plain HTTP servers holding the torrent's files (its `url-list`), asked
//! for byte ranges.
//!
//! To the picker a web seed is a peer that has every piece: it gets a [`PeerId`], counts in
//! availability, and takes blocks from `Picker::pick` as a peer task does, urgent ones first.
//! Its task turns each pick into ranges of adjacent blocks (`blocks`), each range into one
//! request per file it spans (`layout`), and sends up to `max_requests` of them at once over
//! one pooled keep-alive client (`http`). Blocks go through `State::block_arrived` like a
//! peer's, so every piece is SHA1-checked before anyone reads it; a web seed whose data fails
//! the check is dropped (`State::distrust`) and the piece is fetched elsewhere. Errors back it
//! off or drop it (`health`); what `btfs status` shows lives in `registry`.
//!
//! Per request, memory is one partial block plus what the socket hands over at once.

mod blocks;
mod health;
mod http;
mod layout;
pub(crate) mod registry;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;
use tracing::Instrument;
use url::Url;

use super::assembly::Sender;
use super::peers::PeerCmd;
use super::{Shared, verify};
use crate::bitfield::Bitfield;
use crate::picker::{Block, PeerId};
use crate::piece::BLOCK_SIZE;
use blocks::{Cutter, Run, coalesce};
use health::{Failure, Health, classify};
use http::FetchError;
use layout::Segment;

pub use registry::{WebSeedState, WebSeedStatus};

/// How web seeds are used; the session's `Config` carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebSeedConfig {
    /// Ask the torrent's web seeds at all (`--no-web-seeds`: false).
    pub enabled: bool,
    pub connect_timeout: Duration,
    /// A request that gets no byte for this long has stalled.
    pub read_timeout: Duration,
    /// The first wait after an error; it doubles with each error in a row, up to the cap.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Requests in flight to one web seed at once.
    pub max_requests: usize,
}

impl Default for WebSeedConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(20),
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_requests: 4,
        }
    }
}

/// A request's size in blocks follows the web seed's rate: about half a second of it, within
/// these bounds (256 KiB to 4 MiB), so one request never holds blocks a read needs for long.
const MIN_REQUEST_BLOCKS: usize = 16;
const MAX_REQUEST_BLOCKS: usize = 256;
const REQUEST_SECS: f64 = 0.5;
/// A request is late once it is this many times older than its length at the seed's rate, and
/// at least `LATE_MIN` old: the blocks of it a read waits on are then asked of a peer too.
const LATE_FACTOR: f64 = 4.0;
const LATE_MIN: Duration = Duration::from_secs(2);

/// Web seeds used at most: a torrent naming thousands would otherwise cost a task and a
/// connection pool each.
const MAX_WEB_SEEDS: usize = 16;

/// Starts a task for each of the torrent's web seeds (none with `--no-web-seeds`).
pub(crate) fn spawn_all(shared: &Arc<Shared>) {
    let cfg = &shared.config.web_seeds;
    let urls = &shared.torrent.url_list;
    if urls.is_empty() {
        return;
    }
    if !cfg.enabled {
        tracing::info!(count = urls.len(), "web seeds not used (--no-web-seeds)");
        return;
    }
    let client = Arc::new(http::Client::new(cfg.connect_timeout, cfg.read_timeout));
    if urls.len() > MAX_WEB_SEEDS {
        tracing::info!(
            count = urls.len(),
            "the torrent names more web seeds than we use; using the first {MAX_WEB_SEEDS}"
        );
    }
    for url in urls.iter().take(MAX_WEB_SEEDS) {
        spawn_one(shared, &client, url);
    }
}

fn spawn_one(shared: &Arc<Shared>, client: &Arc<http::Client>, url: &str) {
    let cfg = &shared.config.web_seeds;
    let mut health = Health::new(cfg.first_backoff, cfg.max_backoff);
    let base = Url::parse(url)
        .map_err(|e| e.to_string())
        .and_then(|u| match u.scheme() {
            "http" | "https" if !u.cannot_be_a_base() => Ok(u),
            _ => Err("not an http(s) URL".to_string()),
        });
    let (tx, rx) = mpsc::unbounded_channel();
    let all = Bitfield::full(shared.geometry.piece_count());
    let mut st = shared.lock();
    let id = st.peers.add_source(tx);
    let base = match base {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(url, "web seed not used: {e}");
            health.drop(format!("not a usable URL: {e}"));
            st.web_seeds.add(id, url.to_string(), health);
            st.peers.remove_source(id);
            return;
        }
    };
    st.web_seeds.add(id, url.to_string(), health);
    st.picker.peer_bitfield(id, &all);
    drop(st);
    tracing::debug!(url, "web seed added");
    let ctx = Arc::new(Ctx {
        shared: shared.clone(),
        id,
        base,
        client: client.clone(),
    });
    let seed = WebSeed {
        pickable: all.clone(),
        all,
        missing: Default::default(),
        jobs: JoinSet::new(),
        in_flight: HashMap::new(),
        rate: 0.0,
        last_downloaded: 0,
        ctx,
    };
    tokio::spawn(seed.run(rx).in_current_span());
}

/// What a web seed's requests share.
struct Ctx {
    shared: Arc<Shared>,
    id: PeerId,
    base: Url,
    client: Arc<http::Client>,
}

/// One web seed's task state.
struct WebSeed {
    ctx: Arc<Ctx>,
    /// Every piece: what it counts for in the picker's availability.
    all: Bitfield,
    /// The pieces it is asked for: all but those of files it does not have.
    pickable: Bitfield,
    /// Files it answered it does not have.
    missing: HashSet<usize>,
    /// Requests in flight, each one run of blocks.
    jobs: JoinSet<Outcome>,
    in_flight: HashMap<Id, InFlight>,
    /// Bytes/s it delivered lately, smoothed; sizes the requests.
    rate: f64,
    last_downloaded: u64,
}

/// A request in flight: its blocks, its length, since when, and which blocks were reported
/// late.
struct InFlight {
    blocks: Vec<Block>,
    bytes: u64,
    since: Instant,
    reported: HashSet<Block>,
}

/// How one run of blocks went.
struct Outcome {
    /// Blocks not delivered, for the picker to give to others.
    undelivered: Vec<Block>,
    /// The file whose request failed, and why.
    error: Option<(usize, FetchError)>,
}

impl WebSeed {
    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<PeerCmd>) {
        let shared = self.ctx.shared.clone();
        let mut shutdown = shared.shutdown.subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // Ends when its entry is gone (never: the session owns it), it is dropped, or the
        // session ends.
        while let Some((active, retry_at)) = self.health(|h| (h.is_active(), h.retry_at())) {
            if shared.is_shutting_down() || retry_at.is_none() && !active {
                break; // dropped, or the session ends
            }
            if active {
                self.fill();
            }
            let backoff = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(done) = self.jobs.join_next_with_id(), if !self.jobs.is_empty() => {
                    if !self.finished(done) {
                        self.stop_requests().await;
                    }
                }
                cmd = cmds.recv() => {
                    // Refill, have, cancel: all mean "look again"; one look serves them all.
                    let mut stop = matches!(cmd, None | Some(PeerCmd::Disconnect));
                    while !stop && let Ok(cmd) = cmds.try_recv() {
                        stop = matches!(cmd, PeerCmd::Disconnect);
                    }
                    if stop {
                        break;
                    }
                }
                _ = backoff => {
                    self.health(|h| h.wake(Instant::now()));
                }
                _ = tick.tick() => {
                    self.measure_rate();
                    self.report_late();
                }
                _ = shutdown.changed() => break,
            }
        }
        self.leave().await;
    }

    /// Reads (or changes) its health in the registry; `None` if it is not there.
    fn health<T>(&self, f: impl FnOnce(&mut Health) -> T) -> Option<T> {
        let mut st = self.ctx.shared.lock();
        st.web_seeds.get_mut(self.ctx.id).map(|e| f(&mut e.health))
    }

    /// Asks the picker for blocks until `max_requests` are in flight or nothing is wanted.
    fn fill(&mut self) {
        let max = self.ctx.shared.config.web_seeds.max_requests.max(1);
        let want = ((self.rate * REQUEST_SECS / f64::from(BLOCK_SIZE)) as usize)
            .clamp(MIN_REQUEST_BLOCKS, MAX_REQUEST_BLOCKS);
        while self.jobs.len() < max {
            let picked = {
                let mut st = self.ctx.shared.lock();
                st.picker.pick(self.ctx.id, &self.pickable, want)
            };
            if picked.is_empty() {
                return;
            }
            let now = Instant::now();
            for run in coalesce(&self.ctx.shared.geometry, &picked) {
                let job = InFlight {
                    blocks: run.blocks.clone(),
                    bytes: run.range.end - run.range.start,
                    since: now,
                    reported: HashSet::new(),
                };
                let handle = self
                    .jobs
                    .spawn(fetch_run(self.ctx.clone(), run).in_current_span());
                self.in_flight.insert(handle.id(), job);
            }
        }
    }

    /// A request ended: frees what it did not deliver and judges the seed. False when the
    /// seed is no longer active (the other requests are to stop).
    fn finished(&mut self, done: Result<(Id, Outcome), JoinError>) -> bool {
        let id = self.ctx.id;
        let shared = &self.ctx.shared;
        let (job, out) = match done {
            Ok((job, out)) => (job, Some(out)),
            Err(e) => (e.id(), None),
        };
        let job = self.in_flight.remove(&job);
        let mut st = shared.lock();
        let Some(out) = out else {
            // It panicked: whatever it did not deliver goes to others.
            for b in job.iter().flat_map(|j| &j.blocks) {
                st.picker.request_failed(id, *b);
            }
            st.peers.refill_all();
            return true;
        };
        for b in &out.undelivered {
            st.picker.request_failed(id, *b);
        }
        if !out.undelivered.is_empty() {
            st.peers.refill_all();
        }
        let Some(entry) = st.web_seeds.get_mut(id) else {
            return false;
        };
        let Some((file, e)) = out.error else {
            entry.health.succeeded();
            return entry.health.is_active();
        };
        let failure = classify(&e);
        let url = entry.url.clone();
        if failure == Failure::FileMissing {
            if self.missing.insert(file) {
                entry.missing_files += 1;
                let name = shared.torrent.info.files[file].path.join("/");
                tracing::info!(%url, file = %name, "web seed does not have a file ({e}); its pieces come from elsewhere");
                let f = &shared.torrent.info.files[file];
                for i in shared.geometry.pieces_in(f.offset, f.length) {
                    self.pickable.clear(i);
                }
                if self.pickable.count_ones() == 0 {
                    entry
                        .health
                        .drop(format!("none of the torrent's files is there ({e})"));
                }
            }
        } else {
            entry.health.failed(Instant::now(), failure, e.to_string());
        }
        match entry.health.state() {
            health::SeedState::Active => true,
            health::SeedState::BackingOff { until, .. } => {
                let secs = until
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64();
                tracing::info!(%url, "web seed failed ({e}); asking it again in {secs:.0} s");
                false
            }
            health::SeedState::Dropped { reason } => {
                tracing::warn!(%url, "web seed dropped: {reason}");
                false
            }
        }
    }

    /// Ends every request in flight and gives their blocks back to the picker.
    async fn stop_requests(&mut self) {
        self.jobs.shutdown().await;
        self.in_flight.clear();
        let mut st = self.ctx.shared.lock();
        st.picker.peer_choked(self.ctx.id);
        st.peers.refill_all();
    }

    /// Once a second: the rate over the last second, smoothed.
    fn measure_rate(&mut self) {
        let st = self.ctx.shared.lock();
        let Some(e) = st.web_seeds.get(self.ctx.id) else {
            return;
        };
        let delta = e.downloaded.saturating_sub(self.last_downloaded);
        self.last_downloaded = e.downloaded;
        self.rate = 0.5 * self.rate + 0.5 * delta as f64;
    }

    /// Tells the picker of blocks a read waits on in requests that are late, so a peer is
    /// asked for them too (the first copy wins).
    fn report_late(&mut self) {
        let now = Instant::now();
        let rate = self.rate;
        let late = |j: &InFlight| {
            // Before its first bytes the seed's rate is unknown: late after `LATE_MIN`.
            let expected = if rate >= 1.0 {
                Duration::from_secs_f64(j.bytes as f64 / rate * LATE_FACTOR)
            } else {
                Duration::ZERO
            };
            now.saturating_duration_since(j.since) >= expected.max(LATE_MIN)
        };
        let mut st = None;
        let mut marked = 0;
        for job in self.in_flight.values_mut().filter(|j| late(j)) {
            let st = st.get_or_insert_with(|| self.ctx.shared.lock());
            for b in &job.blocks {
                // A block no read waits on yet is looked at again next time.
                if !job.reported.contains(b) && st.picker.mark_late(*b) {
                    job.reported.insert(*b);
                    marked += 1;
                }
            }
        }
        if let Some(st) = st
            && marked > 0
        {
            tracing::debug!(url = %self.ctx.base, marked, "web seed late with blocks a read waits on; asking peers too");
            st.peers.refill_all();
        }
    }

    async fn leave(&mut self) {
        self.jobs.shutdown().await;
        let mut st = self.ctx.shared.lock();
        st.picker.peer_gone(self.ctx.id, &self.all);
        st.peers.remove_source(self.ctx.id);
        st.peers.refill_all();
    }
}

/// Fetches one run of blocks, one request per file it spans, handing on each block as it
/// completes.
async fn fetch_run(ctx: Arc<Ctx>, run: Run) -> Outcome {
    let info = &ctx.shared.torrent.info;
    let mut cut = Cutter::new(&ctx.shared.geometry, &run);
    for seg in layout::segments(&info.files, run.range.clone()) {
        if let Err(e) = fetch_segment(&ctx, &seg, &mut cut).await {
            return Outcome {
                undelivered: cut.undelivered().collect(),
                error: Some((seg.file, e)),
            };
        }
    }
    Outcome {
        undelivered: cut.undelivered().collect(),
        error: None,
    }
}

async fn fetch_segment(ctx: &Ctx, seg: &Segment, cut: &mut Cutter) -> Result<(), FetchError> {
    let info = &ctx.shared.torrent.info;
    let file = &info.files[seg.file];
    if file.padding {
        // BEP 47 padding is zeros by definition, and no server has it.
        let zeros = vec![0u8; BLOCK_SIZE as usize];
        let mut left = seg.len;
        while left > 0 {
            let n = left.min(u64::from(BLOCK_SIZE));
            deliver(ctx, cut, &zeros[..n as usize], false);
            left -= n;
        }
        return Ok(());
    }
    let url = layout::file_url(&ctx.base, &info.files, info.is_multi_file(), seg.file)
        .ok_or_else(|| FetchError::Request("no URL for the file".to_string()))?;
    let mut body = http::get(&ctx.client, url, seg, file.length).await?;
    while let Some(chunk) = body.chunk().await? {
        ctx.shared.down_limit.acquire(chunk.len()).await;
        deliver(ctx, cut, &chunk, true);
    }
    Ok(())
}

/// Cuts bytes into blocks and hands them to the state as this web seed's; completed pieces go
/// to the SHA1 check. `downloaded`: the bytes came over the network (padding did not).
fn deliver(ctx: &Ctx, cut: &mut Cutter, bytes: &[u8], downloaded: bool) {
    let shared = &ctx.shared;
    let g = &shared.geometry;
    let mut complete = Vec::new();
    let mut wasted = 0;
    {
        let mut st = shared.lock();
        cut.feed(bytes, |b, data| {
            let (begin, _) = g.block(b.piece, b.block);
            let from = Sender::WebSeed(ctx.id);
            let arrived = st.block_arrived(ctx.id, b, begin, data, from);
            if !arrived.new {
                wasted += data.len() as u64;
            }
            if let Some(asm) = arrived.complete {
                complete.push((b.piece, asm));
            }
        });
        if downloaded && let Some(e) = st.web_seeds.get_mut(ctx.id) {
            e.downloaded += bytes.len() as u64;
        }
    }
    if downloaded {
        (shared.downloaded).fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        (shared.wasted).fetch_add(wasted, std::sync::atomic::Ordering::Relaxed);
    }
    for (p, asm) in complete {
        verify::check(shared.clone(), p, asm);
    }
}
