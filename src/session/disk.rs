//! The optional disk cache (`--cache-dir`): verified pieces written behind the memory store, so
//! a remount or a second viewing reads them from disk instead of the swarm.
//!
//! How it fits the rest of the session:
//! - A piece on disk counts as Have in the picker (never fetched, in our bitfield and `have`s)
//!   even when the memory store no longer holds it; it goes back to Missing only once it is in
//!   neither. `State::disk` mirrors which pieces the disk holds, so async code never touches
//!   the [`DiskStore`] itself.
//! - Writes: `save` queues a verified piece; one writer task puts them, one at a time, on the
//!   blocking pool. Past [`MAX_QUEUED`] bytes a piece is not written (the disk is slower than
//!   the swarm). Errors are logged and the mount goes on from memory.
//! - Reads and uploads that miss memory call `start_loads`/`load`: the file is read on the
//!   blocking pool and its SHA1 checked on EVERY load (the disk is not trusted: another
//!   process or a fault may have changed it), then it goes into the memory store. A piece that
//!   fails is deleted and becomes Missing, so peers are asked for it; its bytes are never served.
//! - Shutdown closes the queue and waits (bounded) for the writer to drain it.

use std::collections::HashSet;
use std::collections::hash_map::Entry;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use sha1::{Digest, Sha1};
use tokio::sync::{mpsc, oneshot};

use super::{PeerCmd, Shared, State};
use crate::piece::{Geometry, PieceIndex};
use crate::store::disk::{DiskStore, DiskStoreError};

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

/// The disk side, owned by `Shared`.
pub(crate) struct Disk {
    /// Locked only on the blocking pool (its methods do file I/O).
    store: Arc<Mutex<DiskStore>>,
    /// Taken (closed) at shutdown.
    queue: Mutex<Option<mpsc::UnboundedSender<(PieceIndex, Bytes)>>>,
    queued: AtomicU64,
    used: AtomicU64,
    budget: u64,
    /// Failed writes or reads, and pieces that failed their check on load.
    errors: AtomicU64,
    bad_pieces: AtomicU64,
    /// The last write's error, until a write succeeds again: what the user is told, once
    /// (`alerts`), while the disk is full or unwritable.
    failing: Mutex<Option<String>>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<(PieceIndex, Bytes)>>>,
}

/// What the session state knows of the disk: which pieces it holds, which are being loaded.
#[derive(Default)]
pub(crate) struct Index {
    held: HashSet<u32>,
    /// Loads running, with who waits for each (uploads); reads wait on `verified` instead.
    loading: std::collections::HashMap<u32, Vec<oneshot::Sender<Option<Bytes>>>>,
}

impl Index {
    pub(crate) fn holds(&self, p: PieceIndex) -> bool {
        self.held.contains(&p.get())
    }

    pub(crate) fn insert(&mut self, p: PieceIndex) {
        self.held.insert(p.get());
    }
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

impl Disk {
    /// Opens the torrent's cache directory (on the blocking pool) and returns the pieces it
    /// holds that fit this torrent; `None` (with a warning) when the budget holds no piece.
    pub(crate) async fn open(
        config: &DiskCacheConfig,
        info_hash: [u8; 20],
        geometry: &Geometry,
    ) -> Result<Option<(Disk, Vec<PieceIndex>)>, DiskStoreError> {
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
        let mut store = tokio::task::spawn_blocking(move || {
            DiskStore::open(&dir, info_hash, piece_length, budget)
        })
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
        let (tx, rx) = mpsc::unbounded_channel();
        let disk = Disk {
            used: AtomicU64::new(store.used_bytes()),
            store: Arc::new(Mutex::new(store)),
            queue: Mutex::new(Some(tx)),
            queued: AtomicU64::new(0),
            budget,
            errors: AtomicU64::new(0),
            bad_pieces: AtomicU64::new(0),
            failing: Mutex::new(None),
            writer: Mutex::new(None),
            rx: Mutex::new(Some(rx)),
        };
        Ok(Some((disk, pieces)))
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
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Counted and logged at debug level; a failing write is said to the user once, by the
    /// mount's alerts, from [`Disk::failing`] (a full disk fails every write).
    fn error(&self, what: &str, e: &DiskStoreError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("disk cache: {what} failed: {e}");
    }

    fn write_done(&self, result: Option<&DiskStoreError>) {
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = result.map(|e| e.to_string());
    }
}

/// Starts the writer task; called once, after `Shared` exists.
pub(crate) fn spawn_writer(shared: &Arc<Shared>) {
    let Some(disk) = &shared.disk else { return };
    let Some(rx) = disk.rx.lock().expect("disk rx lock").take() else {
        return;
    };
    let handle = tokio::spawn(write_loop(Arc::downgrade(shared), disk.store.clone(), rx));
    *disk.writer.lock().expect("disk writer lock") = Some(handle);
}

/// Closes the write queue and waits (bounded) until what was queued is on disk.
pub(crate) async fn drain(shared: &Shared) {
    let Some(disk) = &shared.disk else { return };
    disk.queue.lock().expect("disk queue lock").take();
    let handle = disk.writer.lock().expect("disk writer lock").take();
    if let Some(h) = handle
        && tokio::time::timeout(DRAIN_TIMEOUT, h).await.is_err()
    {
        tracing::warn!("disk cache: writes still pending at exit were dropped");
    }
}

/// Queues a just-verified piece for the disk (no-op without a disk cache, or if it is there).
pub(crate) fn save(shared: &Shared, st: &State, p: PieceIndex, data: &Bytes) {
    let Some(disk) = &shared.disk else { return };
    if st.disk.holds(p) {
        return;
    }
    let len = data.len() as u64;
    if disk.queued.load(Ordering::Relaxed) + len > MAX_QUEUED {
        tracing::debug!(piece = %p, "disk cache writes behind; piece not cached");
        return;
    }
    let queue = disk.queue.lock().expect("disk queue lock");
    if let Some(tx) = queue.as_ref()
        && tx.send((p, data.clone())).is_ok()
    {
        disk.queued.fetch_add(len, Ordering::Relaxed);
    }
}

async fn write_loop(
    shared: Weak<Shared>,
    store: Arc<Mutex<DiskStore>>,
    mut rx: mpsc::UnboundedReceiver<(PieceIndex, Bytes)>,
) {
    while let Some((p, data)) = rx.recv().await {
        let len = data.len() as u64;
        let store = store.clone();
        let put = tokio::task::spawn_blocking(move || {
            let mut ds = store.lock().unwrap_or_else(|e| e.into_inner());
            let r = ds.put(p.get(), &data);
            (r, ds.used_bytes())
        })
        .await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Some(disk) = &shared.disk else { return };
        disk.queued.fetch_sub(len, Ordering::Relaxed);
        let Ok((result, used)) = put else { return };
        disk.used.store(used, Ordering::Relaxed);
        disk.write_done(result.as_ref().err());
        match result {
            Ok(evicted) => {
                let mut st = shared.lock();
                st.disk.held.insert(p.get());
                for gone in evicted {
                    st.disk.held.remove(&gone);
                    if let Some(q) = shared.geometry.piece(gone) {
                        gone_from_disk(&mut st, q);
                    }
                }
                // Dropped from memory while it waited here: it is held again.
                if !st.picker.have(p)
                    && st.picker.piece_state(p) == crate::picker::PieceState::Missing
                {
                    st.picker.piece_verified(p);
                    for peer in st.peers.values() {
                        let _ = peer.cmd.send(PeerCmd::Have(p.get()));
                    }
                }
            }
            Err(e) => disk.error(&format!("writing piece {p}"), &e),
        }
    }
}

/// The disk no longer holds `p`: Missing unless memory still does.
fn gone_from_disk(st: &mut State, p: PieceIndex) {
    st.disk.held.remove(&p.get());
    if !st.store.contains(p) {
        st.picker.piece_evicted(p);
    }
}

/// The memory store dropped `p` (evicted or refused): Missing unless the disk holds it.
pub(crate) fn gone_from_memory(st: &mut State, p: PieceIndex) {
    if !st.disk.holds(p) {
        st.picker.piece_evicted(p);
    }
}

/// For a read: starts loading each of `pieces` that memory lacks and the disk holds. Returns
/// whether every piece memory lacks is on disk (so the swarm is not needed for this read).
pub(crate) fn start_loads(
    shared: &Arc<Shared>,
    st: &mut State,
    pieces: impl Iterator<Item = PieceIndex>,
) -> bool {
    let mut all = true;
    for p in pieces {
        if st.store.contains(p) {
            continue;
        }
        if !st.disk.holds(p) {
            all = false;
            continue;
        }
        if let Entry::Vacant(e) = st.disk.loading.entry(p.get()) {
            e.insert(Vec::new());
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
        if let Some(data) = st.store.peek(p) {
            return Some(data);
        }
        if !st.disk.holds(p) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        match st.disk.loading.entry(p.get()) {
            Entry::Occupied(mut e) => e.get_mut().push(tx),
            Entry::Vacant(e) => {
                e.insert(vec![tx]);
                tokio::spawn(run_load(shared.clone(), p));
            }
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
        let got = store.lock().unwrap_or_else(|e| e.into_inner()).get(p.get());
        let outcome = match got {
            Ok(Some(data)) => {
                // Hashed outside the lock so writes go on meanwhile.
                let ok = data.len() == len && <[u8; 20]>::from(Sha1::digest(&data)) == expected;
                if ok {
                    Loaded::Good(data)
                } else {
                    let mut ds = store.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = ds.remove(p.get());
                    Loaded::Bad
                }
            }
            Ok(None) => Loaded::Gone,
            Err(e) => Loaded::Failed(e),
        };
        let used = store.lock().unwrap_or_else(|e| e.into_inner()).used_bytes();
        (outcome, used)
    })
    .await;
    let (outcome, used) = match loaded {
        Ok(r) => r,
        Err(_) => (Loaded::Gone, disk.used.load(Ordering::Relaxed)),
    };
    disk.used.store(used, Ordering::Relaxed);
    let mut st = shared.lock();
    let waiters = st.disk.loading.remove(&p.get()).unwrap_or_default();
    let data = match outcome {
        Loaded::Good(data) => {
            let data = Bytes::from(data);
            let must_keep = st.picker.is_urgent(p);
            super::verify::keep_in_memory(&mut st, p, data.clone(), must_keep);
            Some(data)
        }
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
    if data.is_none() {
        gone_from_disk(&mut st, p);
        Shared::refill_all(&st);
        if st.peers.is_empty() {
            shared.redial.notify_one();
        }
    }
    drop(st);
    for w in waiters {
        let _ = w.send(data.clone());
    }
    shared.verified.send_modify(|g| *g += 1);
}
