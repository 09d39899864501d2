//! The info dictionary of a magnet link, fetched from peers (BEP 9); and the other direction,
//! cutting our own info dictionary into pieces for peers that ask.
//!
//! [`MetadataFetch`] is a synchronous state machine with no I/O and no clock, like the picker:
//! the session tells it what peers announced and sent, and asks it which piece to request next.
//! Timeouts are the session's: it calls [`MetadataFetch::request_failed`] when one fires.
//!
//! # Invariants
//! - The size in use is the first plausible `metadata_size` announced by a peer still known.
//!   Only peers that announced that size are asked, and only their pieces are taken. If every
//!   peer announcing it goes away, or the assembled bytes miss the info-hash, all pieces are
//!   dropped and the size of the earliest remaining announcement is used instead.
//! - With a size in use there is one slot per piece, each missing, requested from exactly one
//!   peer, or held with the peer that sent it; without one there are no slots.
//! - A peer is never asked again for a piece it failed (rejected or timed out) until the fetch
//!   starts over; more than [`MAX_REQUESTS_PER_PEER`] requests at once are never asked of it.
//! - Once the info dictionary is returned (or the matching bytes fail to parse), the fetch is
//!   over and ignores everything.

use std::collections::HashSet;
use std::hash::Hash;

use thiserror::Error;

use crate::metainfo::{Info, InfoHash, MetainfoError};
pub use crate::wire::extension::{
    MAX_METADATA_SIZE, METADATA_PIECE_LEN, metadata_piece_count, metadata_piece_len,
};

/// Requests in flight per peer: enough to keep one queued behind the one being answered, few
/// enough that the pieces spread over the peers that have them.
pub const MAX_REQUESTS_PER_PEER: usize = 2;

/// Piece `piece` of our info dictionary, to answer a `ut_metadata` request; `None` (send a
/// reject) past the end. Advertise `metadata_size` only when the info fits
/// [`MAX_METADATA_SIZE`]: peers refuse larger metadata.
pub fn metadata_piece(info_raw: &[u8], piece: u32) -> Option<&[u8]> {
    let start = usize::try_from(piece)
        .ok()?
        .checked_mul(METADATA_PIECE_LEN as usize)?;
    let end = start
        .saturating_add(METADATA_PIECE_LEN as usize)
        .min(info_raw.len());
    info_raw.get(start..end).filter(|p| !p.is_empty())
}

#[derive(Debug, Error)]
pub enum MetadataError {
    #[error("metadata size {0} is out of range (1 byte to {MAX_METADATA_SIZE} bytes)")]
    Size(u32),
    /// The peer is remembered, and asked if the size in use is dropped.
    #[error("peer announced metadata size {announced}, but {in_use} is in use")]
    SizeDisagrees { announced: u32, in_use: u32 },
    #[error("metadata piece from a peer that did not announce the metadata size in use")]
    UnknownSize,
    #[error("metadata piece {piece} is out of range ({count} pieces)")]
    PieceOutOfRange { piece: u32, count: u32 },
    #[error("metadata piece {piece} has {len} bytes, expected {expected}")]
    DataLength {
        piece: u32,
        len: usize,
        expected: u32,
    },
    /// The bytes are the info dictionary of this info-hash, and it is unusable: final.
    #[error("metadata matches the info-hash but is not a usable info dictionary: {0}")]
    Info(#[source] MetainfoError),
}

/// What one piece of data did.
#[derive(Debug)]
pub enum Progress<P> {
    /// Kept; more pieces are missing.
    Stored,
    /// Already held (e.g. asked again after a timeout), or the fetch is over: nothing changed.
    Ignored,
    /// Every piece is in and the SHA1 matches: the fetch is over.
    Complete(Box<Info>),
    /// Every piece was in but the SHA1 did not match: all pieces were dropped and the fetch
    /// starts over without these peers, which sent at least one of them. Some of them may be
    /// honest; the session decides what to do with them.
    HashMismatch { blamed: Vec<P> },
}

#[derive(Debug)]
enum Slot<P> {
    Missing,
    Requested(P),
    Have { from: P, data: Vec<u8> },
}

/// Assembles an info dictionary from `ut_metadata` pieces sent by several peers. `P` is the
/// session's peer handle.
#[derive(Debug)]
pub struct MetadataFetch<P> {
    info_hash: InfoHash,
    /// Every plausible size announced, with its peer, in announcement order.
    announced: Vec<(P, u32)>,
    size: Option<u32>,
    slots: Vec<Slot<P>>,
    have: u32,
    /// `(peer, piece)` requests that were rejected or timed out since the last start.
    failed: HashSet<(P, u32)>,
    done: bool,
}

impl<P: Copy + Eq + Hash> MetadataFetch<P> {
    pub fn new(info_hash: InfoHash) -> Self {
        MetadataFetch {
            info_hash,
            announced: Vec::new(),
            size: None,
            slots: Vec::new(),
            have: 0,
            failed: HashSet::new(),
            done: false,
        }
    }

    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }

    /// The metadata size in use, once a peer announced a plausible one.
    pub fn size(&self) -> Option<u32> {
        self.size
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// `(pieces held, pieces in all)`; `(0, 0)` until a size is known.
    pub fn progress(&self) -> (u32, u32) {
        (self.have, self.slots.len() as u32)
    }

    /// Records the `metadata_size` from a peer's extended handshake. A peer announcing again
    /// replaces its earlier size. `Ok` means the peer will be asked for pieces.
    pub fn set_size(&mut self, peer: P, metadata_size: u32) -> Result<(), MetadataError> {
        if metadata_size == 0 || metadata_size > MAX_METADATA_SIZE {
            return Err(MetadataError::Size(metadata_size));
        }
        if self.done {
            return Ok(());
        }
        self.forget(peer);
        self.announced.push((peer, metadata_size));
        self.ensure_size_backed();
        match self.size {
            Some(in_use) if in_use != metadata_size => Err(MetadataError::SizeDisagrees {
                announced: metadata_size,
                in_use,
            }),
            _ => Ok(()),
        }
    }

    /// The next piece to request from `peer`, marked as requested from it; `None` when it has
    /// nothing to do. Call again for idle peers after any event that frees a piece.
    pub fn next_request(&mut self, peer: P) -> Option<u32> {
        if self.done || !self.agrees(peer) {
            return None;
        }
        let in_flight = self
            .slots
            .iter()
            .filter(|s| matches!(s, Slot::Requested(p) if *p == peer))
            .count();
        if in_flight >= MAX_REQUESTS_PER_PEER {
            return None;
        }
        let piece = (0..self.slots.len() as u32).find(|&i| {
            matches!(self.slots[i as usize], Slot::Missing) && !self.failed.contains(&(peer, i))
        })?;
        self.slots[piece as usize] = Slot::Requested(peer);
        Some(piece)
    }

    /// A request was rejected or timed out: the piece goes to another peer, never this one again.
    pub fn request_failed(&mut self, peer: P, piece: u32) {
        if let Some(slot) = self.slots.get_mut(piece as usize)
            && matches!(slot, Slot::Requested(p) if *p == peer)
        {
            *slot = Slot::Missing;
            self.failed.insert((peer, piece));
        }
    }

    /// The peer disconnected: its requests go to others, its announcement is forgotten. Pieces it
    /// sent are kept (and blamed on it if the hash fails).
    pub fn peer_gone(&mut self, peer: P) {
        if self.done {
            return;
        }
        self.forget(peer);
        self.ensure_size_backed();
    }

    /// A piece arrived from `peer`. It is taken whether or not it was asked of this peer (a late
    /// answer after a timeout is as good as any), as long as the peer announced the size in use.
    pub fn on_data(
        &mut self,
        peer: P,
        piece: u32,
        data: &[u8],
    ) -> Result<Progress<P>, MetadataError> {
        if self.done {
            return Ok(Progress::Ignored);
        }
        let size = match self.size {
            Some(size) if self.agrees(peer) => size,
            _ => return Err(MetadataError::UnknownSize),
        };
        let count = self.slots.len() as u32;
        let expected = metadata_piece_len(size, piece)
            .ok_or(MetadataError::PieceOutOfRange { piece, count })?;
        if data.len() != expected as usize {
            return Err(MetadataError::DataLength {
                piece,
                len: data.len(),
                expected,
            });
        }
        let slot = &mut self.slots[piece as usize];
        if matches!(slot, Slot::Have { .. }) {
            return Ok(Progress::Ignored);
        }
        *slot = Slot::Have {
            from: peer,
            data: data.to_vec(),
        };
        self.have += 1;
        if self.have < count {
            return Ok(Progress::Stored);
        }
        self.assemble()
    }

    /// All pieces are in: check the hash, then parse or start over.
    fn assemble(&mut self) -> Result<Progress<P>, MetadataError> {
        let mut raw = Vec::with_capacity(self.size.unwrap_or(0) as usize);
        let mut blamed = Vec::new();
        // Moving the bytes out (not copying) keeps one copy of the metadata in memory.
        for slot in &mut self.slots {
            if let Slot::Have { from, data } = slot {
                raw.append(data);
                if !blamed.contains(from) {
                    blamed.push(*from);
                }
            }
        }
        if InfoHash::of(&raw) == self.info_hash {
            self.done = true;
            return match Info::from_bytes(&raw) {
                Ok(info) => Ok(Progress::Complete(Box::new(info))),
                Err(e) => Err(MetadataError::Info(e)),
            };
        }
        tracing::debug!(info_hash = %self.info_hash, peers = blamed.len(), "metadata hash mismatch");
        for &peer in &blamed {
            self.forget(peer);
        }
        self.restart(self.announced.first().map(|&(_, size)| size));
        Ok(Progress::HashMismatch { blamed })
    }

    fn agrees(&self, peer: P) -> bool {
        self.size.is_some()
            && self
                .announced
                .iter()
                .any(|&(p, s)| p == peer && Some(s) == self.size)
    }

    /// Drops the peer's announcement, requests and failures (its held pieces stay).
    fn forget(&mut self, peer: P) {
        self.announced.retain(|&(p, _)| p != peer);
        for slot in &mut self.slots {
            if matches!(slot, Slot::Requested(p) if *p == peer) {
                *slot = Slot::Missing;
            }
        }
        self.failed.retain(|&(p, _)| p != peer);
    }

    /// Keeps the size in use announced by some known peer, else switches to the earliest one.
    fn ensure_size_backed(&mut self) {
        let backed = self
            .size
            .is_some_and(|size| self.announced.iter().any(|&(_, s)| s == size));
        if !backed {
            let first = self.announced.first().map(|&(_, size)| size);
            self.restart(first);
        }
    }

    /// Drops every piece and failure and uses `size` from now on.
    fn restart(&mut self, size: Option<u32>) {
        self.size = size;
        self.slots.clear();
        self.slots
            .resize_with(size.map_or(0, metadata_piece_count) as usize, || {
                Slot::Missing
            });
        self.have = 0;
        self.failed.clear();
    }
}
