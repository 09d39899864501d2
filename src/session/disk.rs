//! The disk cache of a session (`--cache-dir`) as `Shared` holds it: the store, the queue of
//! pieces to write, and its numbers. Which pieces the disk holds is `residency`'s to know; the
//! tasks that write and load are `disk_io`.
//!
//! - [`Disk::save`] queues a verified piece; past [`MAX_QUEUED`] bytes a piece is not written
//!   (the disk is slower than the swarm). Errors are counted and the mount goes on from memory.
//! - Shutdown: the writer stops taking new pieces, writes what was queued and says it is done;
//!   [`Disk::drain`] waits for that, bounded.
//! - The budget is the process's, one [`DiskPool`] for every session of a library: another
//!   torrent's write may evict our pieces from disk (taken as memory's are, `memory.rs`), and
//!   what our readers want is our floor there too (`Residency::protect`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, OnceCell, Semaphore, SemaphorePermit, mpsc, watch};

use crate::piece::{Geometry, PieceIndex};
use crate::store::{DiskFloor, DiskPool, DiskStore, DiskStoreError};

/// Verified pieces waiting to be written, in bytes; more are dropped (not cached) meanwhile.
const MAX_QUEUED: u64 = 64 * 1024 * 1024;
/// Disk-cache files read at once.
const MAX_LOADS: usize = 8;
/// How long shutdown waits for queued writes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how much: `--cache-dir` and `--disk-cache-size`, a total for the directory.
/// Every session started from clones of one config shares one [`DiskPool`], opened by the
/// first to start.
#[derive(Clone, Debug)]
pub struct DiskCacheConfig {
    pub dir: PathBuf,
    pub budget: u64,
    pool: Arc<OnceCell<DiskPool>>,
}

impl DiskCacheConfig {
    pub fn new(dir: PathBuf, budget: u64) -> Self {
        Self {
            dir,
            budget,
            pool: Arc::default(),
        }
    }
}

/// Disk-store numbers for `Stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskStats {
    /// This torrent's pieces (a library's report: every torrent's).
    pub used: u64,
    /// For the whole directory, shared by every torrent of the process.
    pub budget: u64,
    /// Every piece the budget counts: the process's torrents' and those of torrents not
    /// mounted now.
    #[serde(default)]
    pub dir_used: u64,
    pub errors: u64,
    /// Pieces found corrupt on disk (discarded and fetched again).
    pub bad_pieces: u64,
    /// Verified pieces not written for want of room: the budget was full of pieces that may
    /// not go (being read, or in some torrent's readers' windows). Kept in memory only.
    #[serde(default)]
    pub refused: u64,
}

/// A disk cache just opened: the store and the pieces it holds that fit this torrent.
pub(crate) struct Opened {
    store: DiskStore,
    pub(crate) pieces: Vec<PieceIndex>,
}

impl Opened {
    /// What tells the pool our readers' wants (`Residency::protect`).
    pub(crate) fn floor(&self) -> DiskFloor {
        self.store.floor()
    }
}

/// The writer task's end of the queue (see `disk_io`).
pub(crate) struct WriterEnd {
    pub(crate) store: Arc<DiskStore>,
    pub(crate) queue: mpsc::UnboundedReceiver<(PieceIndex, Bytes)>,
    pub(crate) written: watch::Sender<bool>,
}

/// The disk side of a session, owned by `Shared`.
pub(crate) struct Disk {
    /// Its methods do file I/O, on the blocking pool only, but for `take_evicted`.
    store: Arc<DiskStore>,
    queue: mpsc::UnboundedSender<(PieceIndex, Bytes)>,
    queued: AtomicU64,
    /// The store's bytes in use, and the whole pool's, as they publish them.
    used: Arc<AtomicU64>,
    dir_used: Arc<AtomicU64>,
    budget: u64,
    /// Failed writes or reads, and pieces that failed their check on load.
    errors: AtomicU64,
    bad_pieces: AtomicU64,
    refused: AtomicU64,
    /// The last write's error, until a write succeeds again: what the user is told, once
    /// (`alerts`), while the disk is full or unwritable.
    failing: watch::Sender<Option<String>>,
    /// Flips to true when the writer has written what was queued at shutdown.
    written: watch::Receiver<bool>,
    /// Loads reading at once: each holds a file open, and readahead can ask for hundreds.
    loads: Semaphore,
}

/// Opens the torrent's cache directory in the process's pool (both on the blocking pool; the
/// pool first if this is its first torrent) and finds the pieces it holds that fit this
/// torrent; `None` (with a warning) when the budget holds no piece. `wake` is notified when
/// another torrent's write evicts our pieces.
pub(crate) async fn open(
    config: &DiskCacheConfig,
    info_hash: [u8; 20],
    geometry: &Geometry,
    wake: Arc<Notify>,
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
    let pool = (config.pool)
        .get_or_try_init(|| async move {
            tokio::task::spawn_blocking(move || DiskPool::open(&dir, budget))
                .await
                .expect("disk cache open panicked")
        })
        .await?
        .clone();
    let pieces_of = geometry.clone();
    let (store, pieces) = tokio::task::spawn_blocking(move || {
        let store = pool.join(info_hash, piece_length, wake)?;
        let mut pieces = Vec::new();
        for i in store.pieces() {
            match pieces_of.piece(i) {
                Some(p) => pieces.push(p),
                // Not this torrent's piece (its name says so): never a real hit.
                None => {
                    let _ = store.remove(i);
                }
            }
        }
        Ok::<_, DiskStoreError>((store, pieces))
    })
    .await
    .expect("disk cache open panicked")?;
    tracing::info!(
        dir = %store.dir().display(),
        pieces = pieces.len(),
        used = store.used_bytes(),
        dir_used = store.pool().used(),
        budget,
        "disk cache opened"
    );
    Ok(Some(Opened { store, pieces }))
}

impl Disk {
    /// The handle for an opened cache, and the queue the writer task (`disk_io`) takes the
    /// pieces to write from, and says on `written` that it is done with.
    pub(crate) fn new(opened: Opened) -> (Disk, WriterEnd) {
        let budget = opened.store.budget();
        let used = opened.store.used_gauge();
        let dir_used = opened.store.pool().used_gauge();
        let store = Arc::new(opened.store);
        let (queue, rx) = mpsc::unbounded_channel();
        let (written_tx, written) = watch::channel(false);
        let disk = Disk {
            store: store.clone(),
            queue,
            queued: AtomicU64::new(0),
            used,
            dir_used,
            budget,
            errors: AtomicU64::new(0),
            bad_pieces: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failing: watch::channel(None).0,
            written,
            loads: Semaphore::new(MAX_LOADS),
        };
        let end = WriterEnd {
            store,
            queue: rx,
            written: written_tx,
        };
        (disk, end)
    }

    /// The store, to use on the blocking pool only.
    pub(crate) fn store(&self) -> Arc<DiskStore> {
        self.store.clone()
    }

    /// Our pieces other torrents' writes evicted since the last call (no I/O): take them
    /// under the state lock, so a piece written again meanwhile is never lost.
    pub(crate) fn take_evicted(&self, geometry: &Geometry) -> Vec<PieceIndex> {
        let gone = self.store.take_evicted();
        gone.into_iter().filter_map(|i| geometry.piece(i)).collect()
    }

    /// A write of `len` queued bytes finished.
    pub(crate) fn wrote(&self, len: u64, result: Option<&DiskStoreError>) {
        self.queued.fetch_sub(len, Ordering::Relaxed);
        self.failing.send_replace(result.map(|e| e.to_string()));
        if let Some(e) = result {
            self.error("writing a piece", e);
        }
    }

    /// Bytes queued for the writer and not written yet.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// A write was refused for want of room (see [`DiskStats::refused`]).
    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A load finished (a bad piece was deleted).
    pub(crate) fn loaded(&self, bad: bool) {
        if bad {
            self.bad_pieces.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits for a turn to read a file (see `loads`).
    pub(crate) async fn load_turn(&self) -> Option<SemaphorePermit<'_>> {
        self.loads.acquire().await.ok()
    }

    pub(crate) fn stats(&self) -> DiskStats {
        DiskStats {
            used: self.used.load(Ordering::Relaxed),
            budget: self.budget,
            dir_used: self.dir_used.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            bad_pieces: self.bad_pieces.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
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
    pub(crate) fn error(&self, what: &str, e: &DiskStoreError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("disk cache: {what} failed: {e}");
    }
}
