//! The disk tier's tasks (`--cache-dir`): verified pieces written behind the memory store, and
//! pieces loaded back (and checked again) for reads and uploads that miss memory. Which pieces
//! the disk holds is [`Residency`](super::residency)'s to know; this file does the I/O.
//!
//! - Writes: [`Disk::save`] queues a verified piece; one writer task puts them, one at a time,
//!   on the blocking pool. Past [`MAX_QUEUED`] bytes a piece is not written (the disk is slower
//!   than the swarm). Errors are logged and the mount goes on from memory.
//! - Loads: the file is read on the blocking pool and its SHA1 checked on EVERY load (the disk
//!   is not trusted: another process or a fault may have changed it), then it goes into memory.
//!   A piece that fails is deleted and no longer held, so peers are asked for it; its bytes are
//!   never served.
//! - Shutdown: the writer stops taking new pieces, writes what was queued and says it is done;
//!   [`Disk::drain`] waits for that, bounded.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use sha1::{Digest, Sha1};
use tokio::sync::{mpsc, oneshot, watch};

use super::Shared;
use crate::piece::{Geometry, PieceIndex};
use crate::store::{DiskStore, DiskStoreError};
use crate::sync::lock;

/// Verified pieces waiting to be written, in bytes; more are dropped (not cached) meanwhile.
const MAX_QUEUED: u64 = 64 * 1024 * 1024;
/// How long shutdown waits for queued writes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how much: `--cache-dir` and `--disk-cache-size`.
#[derive(Clone, Debug)]
pub struct DiskCacheConfig {
    pub dir: PathBuf,
    pub budget: u64,
}

/// Disk-store numbers for `Stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskStats {
    pub used: u64,
    pub budget: u64,
    pub errors: u64,
    /// Pieces found corrupt on disk (discarded and fetched again).
    pub bad_pieces: u64,
}

/// A disk cache just opened: the store and the pieces it holds that fit this torrent.
pub(crate) struct Opened {
    store: DiskStore,
    pub(crate) pieces: Vec<PieceIndex>,
}

/// The disk side of a session, owned by `Shared`.
pub(crate) struct Disk {
    /// Locked only on the blocking pool (its methods do file I/O), never under the state lock.
    store: Arc<Mutex<DiskStore>>,
    queue: mpsc::UnboundedSender<(PieceIndex, Bytes)>,
    queued: AtomicU64,
    used: AtomicU64,
    budget: u64,
    /// Failed writes or reads, and pieces that failed their check on load.
    errors: AtomicU64,
    bad_pieces: AtomicU64,
    /// The last write's error, until a write succeeds again: what the user is told, once
    /// (`alerts`), while the disk is full or unwritable.
    failing: watch::Sender<Option<String>>,
    /// Flips to true when the writer has written what was queued at shutdown.
    written: watch::Receiver<bool>,
}

/// Loads in flight, with who waits for each (uploads; reads wait on `verified` instead).
/// Part of the session state.
#[derive(Default)]
pub(crate) struct Loads {
    running: HashMap<PieceIndex, Vec<oneshot::Sender<Option<Bytes>>>>,
}

impl Loads {
    /// Marks `p` as loading; true if a load must be started for it.
    fn begin(&mut self, p: PieceIndex, waiter: Option<oneshot::Sender<Option<Bytes>>>) -> bool {
        match self.running.entry(p) {
            Entry::Occupied(mut e) => {
                e.get_mut().extend(waiter);
                false
            }
            Entry::Vacant(e) => {
                e.insert(waiter.into_iter().collect());
                true
            }
        }
    }

    fn finish(&mut self, p: PieceIndex) -> Vec<oneshot::Sender<Option<Bytes>>> {
        self.running.remove(&p).unwrap_or_default()
    }
}

/// Opens the torrent's cache directory (on the blocking pool) and finds the pieces it holds
/// that fit this torrent; `None` (with a warning) when the budget holds no piece.
pub(crate) async fn open(
    config: &DiskCacheConfig,
    info_hash: [u8; 20],
    geometry: &Geometry,
) -> Result<Option<Opened>, DiskStoreError> {
    let piece_length = geometry.piece_length();
    if config.budget < u64::from(piece_length) {
        tracing::warn!(
            budget = config.budget,
            piece_length,
            "the disk cache is smaller than one piece; not using it"
        );
        return Ok(None);
    }
    let (dir, budget) = (config.dir.clone(), config.budget);
    let mut store =
        tokio::task::spawn_blocking(move || DiskStore::open(&dir, info_hash, piece_length, budget))
            .await
            .expect("disk cache open panicked")?;
    let mut pieces = Vec::new();
    for i in store.pieces() {
        match geometry.piece(i) {
            Some(p) => pieces.push(p),
            // Not this torrent's piece (its name says so): never a real hit.
            None => {
                let _ = store.remove(i);
            }
        }
    }
    tracing::info!(
        dir = %store.dir().display(),
        pieces = pieces.len(),
        used = store.used_bytes(),
        budget,
        "disk cache opened"
    );
    Ok(Some(Opened { store, pieces }))
}

impl Disk {
    /// Starts the writer task for an opened cache. `shared` is the session being built: the
    /// writer reaches it only after a write, by then it exists.
    pub(crate) fn start(
        opened: Opened,
        shared: Weak<Shared>,
        shutdown: watch::Receiver<bool>,
    ) -> Disk {
        let budget = opened.store.budget();
        let used = opened.store.used_bytes();
        let store = Arc::new(Mutex::new(opened.store));
        let (queue, rx) = mpsc::unbounded_channel();
        let (written_tx, written) = watch::channel(false);
        tokio::spawn(write_loop(shared, store.clone(), rx, shutdown, written_tx));
        Disk {
            store,
            queue,
            queued: AtomicU64::new(0),
            used: AtomicU64::new(used),
            budget,
            errors: AtomicU64::new(0),
            bad_pieces: AtomicU64::new(0),
            failing: watch::channel(None).0,
            written,
        }
    }

    pub(crate) fn stats(&self) -> DiskStats {
        DiskStats {
            used: self.used.load(Ordering::Relaxed),
            budget: self.budget,
            errors: self.errors.load(Ordering::Relaxed),
            bad_pieces: self.bad_pieces.load(Ordering::Relaxed),
        }
    }

    /// Why writes fail now, if they do (`None` once one succeeds again).
    pub(crate) fn failing(&self) -> Option<String> {
        self.failing.borrow().clone()
    }

    /// Queues a just-verified piece the disk does not hold yet.
    pub(crate) fn save(&self, p: PieceIndex, data: Bytes) {
        let len = data.len() as u64;
        if self.queued.load(Ordering::Relaxed) + len > MAX_QUEUED {
            tracing::debug!(piece = %p, "disk cache writes behind; piece not cached");
            return;
        }
        if self.queue.send((p, data)).is_ok() {
            self.queued.fetch_add(len, Ordering::Relaxed);
        }
    }

    /// Waits (bounded) until what was queued before shutdown is on disk.
    pub(crate) async fn drain(&self) {
        let mut written = self.written.clone();
        let done = written.wait_for(|&w| w);
        if tokio::time::timeout(DRAIN_TIMEOUT, done).await.is_err() {
            tracing::warn!("disk cache: writes still pending at exit were dropped");
        }
    }

    /// Counted and logged at debug level; a failing write is said to the user once, by the
    /// mount's alerts, from [`Disk::failing`] (a full disk fails every write).
    fn error(&self, what: &str, e: &DiskStoreError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("disk cache: {what} failed: {e}");
    }
}

/// Writes queued pieces one at a time. At shutdown it takes no new pieces, writes those
/// already queued, and says so on `written`.
async fn write_loop(
    shared: Weak<Shared>,
    store: Arc<Mutex<DiskStore>>,
    mut rx: mpsc::UnboundedReceiver<(PieceIndex, Bytes)>,
    mut shutdown: watch::Receiver<bool>,
    written: watch::Sender<bool>,
) {
    let mut closing = false;
    loop {
        if !closing && *shutdown.borrow_and_update() {
            closing = true;
        }
        let next = if closing {
            rx.close();
            rx.recv().await
        } else {
            tokio::select! {
                next = rx.recv() => next,
                changed = shutdown.changed() => {
                    // The session is gone without a shutdown: write what is queued all the same.
                    closing |= changed.is_err();
                    continue;
                }
            }
        };
        let Some((p, data)) = next else { break };
        if !write_one(&shared, &store, p, data).await {
            break;
        }
    }
    written.send_replace(true);
}

/// Writes one piece and applies the outcome; false once the session is gone.
async fn write_one(
    shared: &Weak<Shared>,
    store: &Arc<Mutex<DiskStore>>,
    p: PieceIndex,
    data: Bytes,
) -> bool {
    let len = data.len() as u64;
    let store = store.clone();
    let put = tokio::task::spawn_blocking(move || {
        let mut ds = lock(&store);
        let r = ds.put(p.get(), &data);
        (r, ds.used_bytes())
    })
    .await;
    let Some(shared) = shared.upgrade() else {
        return false;
    };
    let Some(disk) = &shared.disk else {
        return false;
    };
    disk.queued.fetch_sub(len, Ordering::Relaxed);
    let Ok((result, used)) = put else {
        return false;
    };
    disk.used.store(used, Ordering::Relaxed);
    disk.failing
        .send_replace(result.as_ref().err().map(|e| e.to_string()));
    match result {
        Ok(evicted) => {
            let evicted: Vec<PieceIndex> = (evicted.into_iter())
                .filter_map(|i| shared.geometry.piece(i))
                .collect();
            shared.lock().disk_written(p, &evicted);
        }
        Err(e) => disk.error(&format!("writing piece {p}"), &e),
    }
    true
}

/// For a read: starts loading each of `pieces` that memory lacks and the disk holds. Returns
/// whether every piece memory lacks is on disk (so the swarm is not needed for this read).
pub(crate) fn start_loads(
    shared: &Arc<Shared>,
    st: &mut super::State,
    pieces: impl Iterator<Item = PieceIndex>,
) -> bool {
    let mut all = true;
    for p in pieces {
        if st.residency.in_memory(p) {
            continue;
        }
        if !st.residency.on_disk(p) {
            all = false;
            continue;
        }
        if st.loads.begin(p, None) {
            tokio::spawn(run_load(shared.clone(), p));
        }
    }
    all
}

/// The piece from memory, else from disk (verified, and kept in memory if it fits); `None` if
/// neither holds it (or the disk copy was bad).
pub(crate) async fn load(shared: &Arc<Shared>, p: PieceIndex) -> Option<Bytes> {
    let rx = {
        let mut st = shared.lock();
        if let Some(data) = st.residency.peek(p) {
            return Some(data);
        }
        if !st.residency.on_disk(p) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        if st.loads.begin(p, Some(tx)) {
            tokio::spawn(run_load(shared.clone(), p));
        }
        rx
    };
    rx.await.ok().flatten()
}

enum Loaded {
    Good(Vec<u8>),
    Bad,
    Gone,
    Failed(DiskStoreError),
}

/// Reads and checks one piece, then applies the outcome and wakes whoever waits.
async fn run_load(shared: Arc<Shared>, p: PieceIndex) {
    let Some(disk) = &shared.disk else { return };
    let store = disk.store.clone();
    let expected = shared.torrent.info.piece_hashes[p.as_usize()];
    let len = shared.geometry.piece_len(p) as usize;
    let loaded = tokio::task::spawn_blocking(move || {
        let got = lock(&store).get(p.get());
        let outcome = match got {
            Ok(Some(data)) => {
                // Hashed outside the lock so writes go on meanwhile.
                let ok = data.len() == len && <[u8; 20]>::from(Sha1::digest(&data)) == expected;
                if ok {
                    Loaded::Good(data)
                } else {
                    let _ = lock(&store).remove(p.get());
                    Loaded::Bad
                }
            }
            Ok(None) => Loaded::Gone,
            Err(e) => Loaded::Failed(e),
        };
        let used = lock(&store).used_bytes();
        (outcome, used)
    })
    .await;
    let (outcome, used) = match loaded {
        Ok(r) => r,
        Err(_) => (Loaded::Gone, disk.used.load(Ordering::Relaxed)),
    };
    disk.used.store(used, Ordering::Relaxed);
    let data = match outcome {
        Loaded::Good(data) => Some(Bytes::from(data)),
        Loaded::Bad => {
            disk.bad_pieces.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(piece = %p, "piece in the disk cache failed its SHA1 check; deleted, fetching it from peers");
            None
        }
        Loaded::Gone => None,
        Loaded::Failed(e) => {
            disk.error(&format!("reading piece {p}"), &e);
            None
        }
    };
    let mut st = shared.lock();
    let waiters = st.loads.finish(p);
    match &data {
        Some(data) => st.loaded_from_disk(p, data.clone()),
        None => {
            st.disk_lost(p);
            st.peers.refill_all();
            if st.peers.is_empty() {
                shared.redial.notify_one();
            }
        }
    }
    drop(st);
    for w in waiters {
        let _ = w.send(data.clone());
    }
    shared.verified.send_modify(|g| *g += 1);
}
