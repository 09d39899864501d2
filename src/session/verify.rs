//! Completed pieces: assembly from blocks, SHA1 on the blocking pool, and what follows a
//! verdict (store, `have` to peers, readers woken; or re-fetch and distrust of the senders).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use sha1::{Digest, Sha1};

use super::{PeerCmd, Shared, State};
use crate::piece::{BLOCK_SIZE, PieceIndex};

/// A piece being put together from blocks; who sent each block is kept for the verdict.
pub(crate) struct Assembly {
    data: Vec<u8>,
    senders: Vec<Option<IpAddr>>,
}

impl Assembly {
    pub(crate) fn new(len: u32, blocks: u32) -> Self {
        Self {
            data: vec![0; len as usize],
            senders: vec![None; blocks as usize],
        }
    }

    /// Copies a block in; the caller has checked `begin`/`len` against the geometry.
    pub(crate) fn put(&mut self, block: u32, begin: u32, bytes: &[u8], from: IpAddr) {
        let start = begin as usize;
        self.data[start..start + bytes.len()].copy_from_slice(bytes);
        self.senders[block as usize] = Some(from);
    }
}

/// Block hashes sent by peers for pieces that failed their check. When the piece later
/// verifies with data from elsewhere, any peer whose block differs from the good data lied.
#[derive(Default)]
pub(crate) struct Suspects {
    by_piece: HashMap<u32, Vec<(u32, IpAddr, [u8; 20])>>,
}

impl Suspects {
    fn record(&mut self, piece: PieceIndex, asm: &Assembly) {
        let entry = self.by_piece.entry(piece.get()).or_default();
        for (i, from) in asm.senders.iter().enumerate() {
            if let Some(ip) = from {
                let start = i * BLOCK_SIZE as usize;
                let end = (start + BLOCK_SIZE as usize).min(asm.data.len());
                entry.push((i as u32, *ip, sha1(&asm.data[start..end])));
            }
        }
    }

    /// Peers whose recorded blocks for `piece` differ from the verified `data`.
    fn liars(&mut self, piece: PieceIndex, data: &[u8]) -> Vec<IpAddr> {
        let Some(records) = self.by_piece.remove(&piece.get()) else {
            return Vec::new();
        };
        let mut liars: Vec<IpAddr> = records
            .into_iter()
            .filter(|(block, _, hash)| {
                let start = *block as usize * BLOCK_SIZE as usize;
                let end = (start + BLOCK_SIZE as usize).min(data.len());
                start < end && sha1(&data[start..end]) != *hash
            })
            .map(|(_, ip, _)| ip)
            .collect();
        liars.sort();
        liars.dedup();
        liars
    }
}

fn sha1(data: &[u8]) -> [u8; 20] {
    Sha1::digest(data).into()
}

/// Hashes a completed piece off the async workers and applies the verdict.
pub(crate) fn verify(shared: Arc<Shared>, piece: PieceIndex, asm: Assembly) {
    tokio::spawn(async move {
        let expected = shared.torrent.info.piece_hashes[piece.as_usize()];
        let hashed = tokio::task::spawn_blocking(move || {
            let ok = sha1(&asm.data) == expected;
            (ok, asm)
        })
        .await;
        let Ok((ok, asm)) = hashed else {
            return; // the runtime is shutting down
        };
        let mut st = shared.lock();
        if ok {
            accept(&shared, &mut st, piece, asm.data);
        } else {
            reject(&shared, &mut st, piece, asm);
        }
        Shared::refill_all(&st);
        drop(st);
        shared.verified.send_modify(|g| *g += 1);
    });
}

fn accept(shared: &Shared, st: &mut State, piece: PieceIndex, data: Vec<u8>) {
    let liars = st.suspects.liars(piece, &data);
    let data = bytes::Bytes::from(data);
    let must_keep = st.picker.is_urgent(piece);
    st.picker.piece_verified(piece);
    let stored = keep_in_memory(st, piece, data.clone(), must_keep);
    if stored {
        for p in st.peers.values() {
            let _ = p.cmd.send(PeerCmd::Have(piece.get()));
        }
    } else {
        // Background data with no room left: dropping it is cheaper than evicting a reader's
        // window; the picker may fetch it again when someone reads it (or the disk has it).
        super::disk::gone_from_memory(st, piece);
    }
    super::disk::save(shared, st, piece, &data);
    update_background(shared, st);
    for ip in liars {
        tracing::warn!(%ip, %piece, "peer sent a corrupt block (found after the piece verified); banning it");
        ban(st, ip);
    }
}

/// Puts a verified piece in the memory store (see `Store::insert` for `must_keep`); what that
/// evicts goes back to Missing unless the disk holds it. Returns whether it was stored.
pub(crate) fn keep_in_memory(
    st: &mut State,
    piece: PieceIndex,
    data: bytes::Bytes,
    must_keep: bool,
) -> bool {
    let State { picker, store, .. } = st;
    let inserted = store.insert(piece, data, must_keep, |q| picker.is_wanted_by_reader(q));
    for gone in inserted.evicted {
        super::disk::gone_from_memory(st, gone);
    }
    inserted.stored
}

fn reject(shared: &Shared, st: &mut State, piece: PieceIndex, asm: Assembly) {
    shared.hash_failures.fetch_add(1, Ordering::Relaxed);
    st.picker.piece_failed(piece);
    let mut senders: Vec<IpAddr> = asm.senders.iter().flatten().copied().collect();
    senders.sort();
    senders.dedup();
    match senders.as_slice() {
        [one] => {
            tracing::warn!(ip = %one, %piece, "piece failed its SHA1 check; its only sender is banned");
            ban(st, *one);
        }
        _ => {
            tracing::warn!(%piece, senders = senders.len(), "piece failed its SHA1 check; fetching it from one peer");
            st.suspects.record(piece, &asm);
            st.picker.set_exclusive(piece);
        }
    }
}

/// Background (rarest-first) fetching starts with the first read (browsing the tree downloads
/// nothing) and runs only while the store has room, so it never churns the cache or evicts what
/// readers will want.
pub(crate) fn update_background(shared: &Shared, st: &mut State) {
    let room = u64::from(shared.geometry.piece_length()) * (st.assembly.len() as u64 + 2);
    let enabled = st.reading_started && st.store.has_room_for(room);
    st.picker.set_background(enabled);
}

/// Never trusts this address again and closes its connections.
pub(crate) fn ban(st: &mut State, ip: IpAddr) {
    st.banned.insert(ip);
    for p in st.peers.values().filter(|p| p.addr.ip() == ip) {
        let _ = p.cmd.send(PeerCmd::Disconnect);
    }
}
