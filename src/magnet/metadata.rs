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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bencode::{self, Encoder};
    use crate::wire::extension::MetadataMsg;

    /// The raw info dictionary of a libtorrent-made torrent (one metadata piece).
    fn fixture_info() -> Vec<u8> {
        let torrent = include_bytes!("../../tests/fixtures/lt_multi_v1.torrent");
        let root = bencode::decode(torrent).unwrap();
        root.get("info").unwrap().as_dict().unwrap().raw.to_vec()
    }

    /// A valid single-file info dictionary of 2000 pieces: 40,072 bytes, so three metadata
    /// pieces, the last 7,304 bytes long.
    fn big_info() -> Vec<u8> {
        let hashes: Vec<u8> = (0..2000 * 20).map(|i| (i * 7 % 251) as u8).collect();
        let raw = Encoder::new()
            .begin_dict()
            .str("length")
            .int(2000 * 16384 - 5)
            .str("name")
            .str("big.file")
            .str("piece length")
            .int(16384)
            .str("pieces")
            .bytes(&hashes)
            .end()
            .finish();
        assert!(Info::from_bytes(&raw).is_ok());
        raw
    }

    fn piece(raw: &[u8], i: u32) -> &[u8] {
        metadata_piece(raw, i).unwrap()
    }

    fn complete<P: std::fmt::Debug>(p: Result<Progress<P>, MetadataError>) -> Box<Info> {
        match p {
            Ok(Progress::Complete(info)) => info,
            other => panic!("not complete: {other:?}"),
        }
    }

    #[test]
    fn one_peer_fetches_a_real_info_dictionary() {
        let raw = fixture_info();
        let mut f = MetadataFetch::new(InfoHash::of(&raw));
        assert_eq!(
            f.next_request(1),
            None,
            "nothing to ask before a size is known"
        );
        f.set_size(1, raw.len() as u32).unwrap();
        assert_eq!(f.progress(), (0, 1));
        assert_eq!(f.next_request(1), Some(0));
        assert_eq!(f.next_request(1), None);
        let info = complete(f.on_data(1, 0, &raw));
        assert_eq!(info.raw, raw);
        assert_eq!(info.name, Info::from_bytes(&raw).unwrap().name);
        assert!(f.is_done());
        assert_eq!(f.progress(), (1, 1));
        assert_eq!(f.next_request(1), None);
        assert!(matches!(f.on_data(1, 0, &raw), Ok(Progress::Ignored)));
    }

    #[test]
    fn pieces_spread_over_peers_and_arrive_in_any_order() {
        let raw = big_info();
        assert_eq!(raw.len(), 40_072);
        let mut f = MetadataFetch::new(InfoHash::of(&raw));
        for peer in ['a', 'b', 'c'] {
            f.set_size(peer, raw.len() as u32).unwrap();
        }
        assert_eq!(f.next_request('a'), Some(0));
        assert_eq!(f.next_request('b'), Some(1));
        assert_eq!(f.next_request('c'), Some(2));
        assert_eq!(f.next_request('a'), None);
        assert_eq!(piece(&raw, 2).len(), 7_304);
        assert!(matches!(
            f.on_data('c', 2, piece(&raw, 2)),
            Ok(Progress::Stored)
        ));
        assert!(matches!(
            f.on_data('a', 0, piece(&raw, 0)),
            Ok(Progress::Stored)
        ));
        assert_eq!(f.progress(), (2, 3));
        let info = complete(f.on_data('b', 1, piece(&raw, 1)));
        assert_eq!((info.raw.len(), info.piece_hashes.len()), (raw.len(), 2000));
    }

    #[test]
    fn one_peer_gets_at_most_two_requests_at_once() {
        let raw = big_info();
        let mut f = MetadataFetch::new(InfoHash::of(&raw));
        f.set_size(7u64, raw.len() as u32).unwrap();
        assert_eq!(f.next_request(7), Some(0));
        assert_eq!(f.next_request(7), Some(1));
        assert_eq!(f.next_request(7), None);
        f.on_data(7, 0, piece(&raw, 0)).unwrap();
        assert_eq!(f.next_request(7), Some(2));
    }

    #[test]
    fn rejected_timed_out_and_orphaned_pieces_go_to_other_peers() {
        let raw = fixture_info();
        let mut f = MetadataFetch::new(InfoHash::of(&raw));
        for peer in 1..=4 {
            f.set_size(peer, raw.len() as u32).unwrap();
        }
        assert_eq!(f.next_request(1), Some(0));
        assert_eq!(f.next_request(2), None, "piece 0 is in flight");
        f.request_failed(1, 0); // a reject
        assert_eq!(
            f.next_request(1),
            None,
            "never asked again of the peer that rejected it"
        );
        assert_eq!(f.next_request(2), Some(0));
        f.request_failed(3, 0); // not asked of 3: no effect
        assert_eq!(f.next_request(3), None);
        f.request_failed(2, 0); // a timeout
        assert_eq!(f.next_request(3), Some(0));
        f.peer_gone(3);
        assert_eq!(f.next_request(3), None, "a gone peer is not asked");
        assert_eq!(f.next_request(4), Some(0));
        complete(f.on_data(4, 0, &raw));
    }

    #[test]
    fn a_late_answer_counts_and_the_duplicate_is_ignored() {
        let raw = big_info();
        let mut f = MetadataFetch::new(InfoHash::of(&raw));
        f.set_size(1, raw.len() as u32).unwrap();
        f.set_size(2, raw.len() as u32).unwrap();
        assert_eq!(f.next_request(1), Some(0));
        f.request_failed(1, 0);
        assert_eq!(f.next_request(2), Some(0));
        assert!(matches!(
            f.on_data(1, 0, piece(&raw, 0)),
            Ok(Progress::Stored)
        ));
        assert!(matches!(
            f.on_data(2, 0, piece(&raw, 0)),
            Ok(Progress::Ignored)
        ));
        assert_eq!(f.progress(), (1, 3));
    }

    #[test]
    fn bad_data_blames_its_senders_and_the_fetch_starts_over() {
        let raw = big_info();
        let size = raw.len() as u32;
        let mut f = MetadataFetch::new(InfoHash::of(&raw));
        for peer in ['a', 'b', 'c'] {
            f.set_size(peer, size).unwrap();
        }
        let mut bad = piece(&raw, 1).to_vec();
        bad[100] ^= 1;
        f.on_data('a', 0, piece(&raw, 0)).unwrap();
        f.on_data('b', 1, &bad).unwrap();
        match f.on_data('a', 2, piece(&raw, 2)) {
            Ok(Progress::HashMismatch { blamed }) => assert_eq!(blamed, ['a', 'b']),
            other => panic!("expected a mismatch: {other:?}"),
        }
        assert!(!f.is_done());
        assert_eq!(f.progress(), (0, 3));
        assert_eq!(f.next_request('a'), None, "blamed peers are dropped");
        assert!(matches!(
            f.on_data('b', 0, piece(&raw, 0)),
            Err(MetadataError::UnknownSize)
        ));
        for i in 0..3 {
            assert_eq!(f.next_request('c'), Some(i));
            f.on_data('c', i, piece(&raw, i)).map(|_| ()).unwrap();
        }
        assert!(f.is_done());
    }

    #[test]
    fn a_liars_size_wins_first_and_then_gives_way() {
        let raw = fixture_info();
        let size = raw.len() as u32;
        let mut f = MetadataFetch::new(InfoHash::of(&raw));
        f.set_size("liar", 100).unwrap();
        assert!(matches!(
            f.set_size("honest", size),
            Err(MetadataError::SizeDisagrees { announced, in_use: 100 }) if announced == size
        ));
        assert_eq!(f.next_request("honest"), None);
        assert!(matches!(
            f.on_data("honest", 0, &raw),
            Err(MetadataError::UnknownSize)
        ));
        assert_eq!(f.next_request("liar"), Some(0));
        match f.on_data("liar", 0, &[0; 100]) {
            Ok(Progress::HashMismatch { blamed }) => assert_eq!(blamed, ["liar"]),
            other => panic!("expected a mismatch: {other:?}"),
        }
        assert_eq!(f.size(), Some(size));
        assert_eq!(f.next_request("honest"), Some(0));
        complete(f.on_data("honest", 0, &raw));

        // The liar leaving before sending anything also hands the fetch to the next size.
        let mut f = MetadataFetch::new(InfoHash::of(&raw));
        f.set_size("liar", 100).unwrap();
        assert!(f.set_size("honest", size).is_err());
        assert_eq!(f.next_request("liar"), Some(0));
        f.peer_gone("liar");
        assert_eq!(f.size(), Some(size));
        assert_eq!(f.next_request("honest"), Some(0));
    }

    #[test]
    fn wrong_sizes_and_lengths_are_refused() {
        let raw = big_info();
        let size = raw.len() as u32;
        let mut f = MetadataFetch::new(InfoHash::of(&raw));
        assert!(matches!(
            f.on_data(1, 0, piece(&raw, 0)),
            Err(MetadataError::UnknownSize)
        ));
        assert!(matches!(f.set_size(1, 0), Err(MetadataError::Size(0))));
        assert!(matches!(
            f.set_size(1, MAX_METADATA_SIZE + 1),
            Err(MetadataError::Size(_))
        ));
        assert_eq!(f.size(), None);
        f.set_size(1, size).unwrap();
        let full = vec![0; METADATA_PIECE_LEN as usize];
        let cases = [
            (0, &full[..100], 16384),
            (2, &full[..], 7304),
            (2, &full[..7303], 7304),
        ];
        for (i, data, expected) in cases {
            let err = f.on_data(1, i, data).unwrap_err();
            assert!(
                matches!(err, MetadataError::DataLength { piece, expected: e, .. }
                    if piece == i && e == expected),
                "{err}"
            );
        }
        assert!(matches!(
            f.on_data(1, 3, &full),
            Err(MetadataError::PieceOutOfRange { piece: 3, count: 3 })
        ));
        assert_eq!(f.progress(), (0, 3));
    }

    #[test]
    fn matching_bytes_that_are_no_info_dictionary_end_the_fetch() {
        let raw = b"d4:name1:xe";
        let mut f = MetadataFetch::new(InfoHash::of(raw));
        f.set_size(1, raw.len() as u32).unwrap();
        let err = f.on_data(1, 0, raw).unwrap_err();
        assert!(matches!(
            err,
            MetadataError::Info(MetainfoError::MissingKey { key: "pieces", .. })
        ));
        assert!(f.is_done());
        assert_eq!(f.next_request(1), None);
    }

    #[test]
    fn serving_cuts_16_kib_pieces_and_the_last_short() {
        let raw = big_info();
        assert_eq!(metadata_piece_count(raw.len() as u32), 3);
        let pieces: Vec<&[u8]> = (0..3).map(|i| piece(&raw, i)).collect();
        assert_eq!(
            pieces.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [16384, 16384, 7304]
        );
        assert_eq!(pieces.concat(), raw);
        assert_eq!(metadata_piece(&raw, 3), None);
        assert_eq!(metadata_piece(&raw, u32::MAX), None);
        assert_eq!(metadata_piece(&[], 0), None);
        let small = fixture_info();
        assert_eq!(metadata_piece(&small, 0), Some(&small[..]));
    }

    /// What one side serves, encoded and decoded as on the wire, the other side assembles.
    #[test]
    fn served_pieces_assemble_through_the_wire_encoding() {
        let raw = big_info();
        let total_size = raw.len() as u32;
        let mut f = MetadataFetch::new(InfoHash::of(&raw));
        f.set_size(0, total_size).unwrap();
        let mut result = None;
        while let Some(i) = f.next_request(0) {
            let wire = MetadataMsg::Data {
                piece: i,
                total_size,
                data: piece(&raw, i),
            }
            .encode();
            let MetadataMsg::Data { piece, data, .. } = MetadataMsg::decode(&wire).unwrap() else {
                panic!("not data");
            };
            result = Some(f.on_data(0, piece, data));
        }
        assert_eq!(complete(result.unwrap()).raw, raw);
    }
}
