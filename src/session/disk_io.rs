//! The disk cache's tasks (`--cache-dir`): verified pieces written behind memory, and pieces
//! loaded back for reads and uploads that miss memory.
//!
//! - Writes: one writer task takes the queued pieces (`Disk::save`) and puts them, one at a
//!   time, on the blocking pool; what the disk evicts for them is no longer held. When it
//!   ends (at shutdown, after the queue), the store leaves the process's disk pool. A piece
//!   refused for want of room (the budget full of pieces being read) is counted, and said
//!   once per pool when refusals start, not per piece (`store::disk::refusals`).
//! - Loads: the file is read on the blocking pool and its SHA1 checked on EVERY load (the disk
//!   is not trusted: another process or a fault may have changed it), then it goes into memory.
//!   A piece that fails is deleted and no longer held, so peers are asked for it; its bytes are
//!   never served.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use sha1::{Digest, Sha1};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::disk::WriterEnd;
use super::{Shared, State};
use crate::piece::PieceIndex;
use crate::store::disk::Say;
use crate::store::{DiskStore, DiskStoreError};

/// Writes queued pieces one at a time. At shutdown it takes no new pieces, writes those
/// already queued, and says so on `written`.
pub(crate) async fn write_loop(shared: Weak<Shared>, end: WriterEnd) {
    let WriterEnd {
        store,
        queue: mut rx,
        written,
    } = end;
    let Some(mut shutdown) = shared.upgrade().map(|s| s.shutdown.subscribe()) else {
        return;
    };
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
    // Its pieces stay on disk for the next mount, the first to go for the other torrents.
    let leaving = store.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || leaving.leave()).await {
        tracing::debug!("disk cache: leaving the pool: {e}");
    }
    written.send_replace(true);
}

/// Writes one piece and applies the outcome; false once the session is gone.
async fn write_one(
    shared: &Weak<Shared>,
    store: &Arc<DiskStore>,
    p: PieceIndex,
    data: Bytes,
) -> bool {
    let len = data.len() as u64;
    let writer = store.clone();
    let put = tokio::task::spawn_blocking(move || writer.put(p.get(), &data)).await;
    let Some(shared) = shared.upgrade() else {
        return false;
    };
    let Some(disk) = &shared.disk else {
        return false;
    };
    let Ok(result) = put else {
        disk.wrote(len, None);
        return false;
    };
    disk.wrote(len, result.as_ref().err());
    if let Ok(put) = &result {
        if put.refused {
            disk.refused();
        }
        match store.note_refusal(put.refused) {
            Some(Say::Refusing) => tracing::warn!(
                budget = disk.stats().budget,
                "disk cache full of pieces being read: new pieces are kept in memory only \
                 (a larger --disk-cache-size would hold them)"
            ),
            Some(Say::StoringAgain) => tracing::info!("the disk cache stores pieces again"),
            None => {}
        }
    }
    // Not stored (the disk is full of what may not go): it stays in memory only.
    if let Ok(put) = result
        && put.stored
    {
        let evicted: Vec<PieceIndex> = (put.evicted.into_iter())
            .filter_map(|i| shared.geometry.piece(i))
            .collect();
        shared.lock().disk_written(p, &evicted);
    }
    true
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
        if st.residency.in_memory(p) {
            continue;
        }
        if !st.residency.on_disk(p) {
            all = false;
            continue;
        }
        if st.loads.begin(p, None) {
            tokio::spawn(run_load(shared.clone(), p).in_current_span());
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
            tokio::spawn(run_load(shared.clone(), p).in_current_span());
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
    let store = disk.store();
    let expected = shared.torrent.info.piece_hashes[p.as_usize()];
    let len = shared.geometry.piece_len(p) as usize;
    let turn = disk.load_turn().await;
    let loaded = tokio::task::spawn_blocking(move || {
        let got = store.get(p.get());
        match got {
            Ok(Some(data)) => {
                // Hashed outside the lock so writes go on meanwhile.
                let ok = data.len() == len && <[u8; 20]>::from(Sha1::digest(&data)) == expected;
                if ok {
                    Loaded::Good(data)
                } else {
                    let _ = store.remove(p.get());
                    Loaded::Bad
                }
            }
            Ok(None) => Loaded::Gone,
            Err(e) => Loaded::Failed(e),
        }
    })
    .await;
    drop(turn);
    let outcome = loaded.unwrap_or(Loaded::Gone);
    disk.loaded(matches!(outcome, Loaded::Bad));
    let data = match outcome {
        Loaded::Good(data) => Some(Bytes::from(data)),
        Loaded::Bad => {
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
