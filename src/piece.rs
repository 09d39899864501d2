//! Torrent geometry: pieces, blocks, and the one map between torrent offsets and pieces.
//!
//! Every piece index that came from outside (a peer, a reader offset) is checked here once and
//! carried as a [`PieceIndex`] after; code below the session never re-validates.

use std::ops::Range;

/// The block size every client uses for requests (BEP 3 recommends 2^14).
pub const BLOCK_SIZE: u32 = 16 * 1024;

/// A piece index known to be inside its torrent. Only [`Geometry`] makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PieceIndex(u32);

impl PieceIndex {
    pub fn get(self) -> u32 {
        self.0
    }

    pub fn as_usize(self) -> usize {
        self.0 as usize
    }
}

impl std::fmt::Display for PieceIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Sizes of a torrent's pieces and blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    piece_length: u32,
    total_length: u64,
    piece_count: u32,
}

impl Geometry {
    /// `None` when the sizes cannot describe a torrent (zero piece length, empty torrent, or more
    /// pieces than fit a `u32`).
    pub fn new(piece_length: u32, total_length: u64) -> Option<Self> {
        if piece_length == 0 || total_length == 0 {
            return None;
        }
        let count = total_length.div_ceil(u64::from(piece_length));
        let piece_count = u32::try_from(count).ok()?;
        Some(Self {
            piece_length,
            total_length,
            piece_count,
        })
    }

    pub fn piece_length(&self) -> u32 {
        self.piece_length
    }

    pub fn total_length(&self) -> u64 {
        self.total_length
    }

    pub fn piece_count(&self) -> u32 {
        self.piece_count
    }

    /// Checks an index from outside.
    pub fn piece(&self, raw: u32) -> Option<PieceIndex> {
        (raw < self.piece_count).then_some(PieceIndex(raw))
    }

    pub fn pieces(&self) -> impl Iterator<Item = PieceIndex> + use<> {
        (0..self.piece_count).map(PieceIndex)
    }

    pub fn last_piece(&self) -> PieceIndex {
        PieceIndex(self.piece_count - 1)
    }

    /// Length of a piece; only the last one may be short.
    pub fn piece_len(&self, p: PieceIndex) -> u32 {
        let start = self.piece_offset(p);
        (self.total_length - start).min(u64::from(self.piece_length)) as u32
    }

    /// Offset of a piece's first byte in the torrent's concatenated data.
    pub fn piece_offset(&self, p: PieceIndex) -> u64 {
        u64::from(p.0) * u64::from(self.piece_length)
    }

    pub fn block_count(&self, p: PieceIndex) -> u32 {
        self.piece_len(p).div_ceil(BLOCK_SIZE)
    }

    /// `(begin, length)` of block `block` of piece `p`; `block` must be below `block_count(p)`.
    pub fn block(&self, p: PieceIndex, block: u32) -> (u32, u32) {
        let begin = block * BLOCK_SIZE;
        debug_assert!(begin < self.piece_len(p), "block {block} outside piece {p}");
        (begin, (self.piece_len(p) - begin).min(BLOCK_SIZE))
    }

    /// Checks a block a peer named (`request`, `piece`, `cancel`): it must be one of ours exactly.
    pub fn block_index(&self, p: PieceIndex, begin: u32, length: u32) -> Option<u32> {
        if !begin.is_multiple_of(BLOCK_SIZE) || begin >= self.piece_len(p) {
            return None;
        }
        let block = begin / BLOCK_SIZE;
        (self.block(p, block).1 == length).then_some(block)
    }

    /// The piece holding torrent offset `offset`, `None` past the end.
    pub fn piece_at(&self, offset: u64) -> Option<PieceIndex> {
        (offset < self.total_length)
            .then(|| PieceIndex((offset / u64::from(self.piece_length)) as u32))
    }

    /// Indices of the pieces overlapping `[offset, offset + len)`, clipped to the torrent.
    pub fn pieces_in(&self, offset: u64, len: u64) -> Range<u32> {
        let end = offset.saturating_add(len).min(self.total_length);
        if len == 0 || offset >= end {
            return 0..0;
        }
        let pl = u64::from(self.piece_length);
        (offset / pl) as u32..end.div_ceil(pl) as u32
    }
}

/// `ranges` sorted by start, empty ones dropped, overlapping and touching ones joined.
pub fn merge_ranges(mut ranges: Vec<Range<u32>>) -> Vec<Range<u32>> {
    ranges.retain(|r| !r.is_empty());
    ranges.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<Range<u32>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_piece_is_short() {
        let g = Geometry::new(32768, 100_000).unwrap();
        assert_eq!(g.piece_count(), 4);
        let last = g.last_piece();
        assert_eq!(g.piece_len(last), 100_000 - 3 * 32768);
        assert_eq!(g.block_count(last), 1);
        assert_eq!(g.block(last, 0), (0, 100_000 - 3 * 32768));
        assert_eq!(g.piece(4), None);
    }

    #[test]
    fn block_index_accepts_only_exact_blocks() {
        let g = Geometry::new(40_000, 100_000).unwrap();
        let p = g.piece(0).unwrap();
        assert_eq!(g.block_count(p), 3);
        assert_eq!(g.block_index(p, 0, BLOCK_SIZE), Some(0));
        assert_eq!(
            g.block_index(p, 2 * BLOCK_SIZE, 40_000 - 2 * BLOCK_SIZE),
            Some(2)
        );
        assert_eq!(g.block_index(p, 2 * BLOCK_SIZE, BLOCK_SIZE), None);
        assert_eq!(g.block_index(p, 1, BLOCK_SIZE), None);
        assert_eq!(g.block_index(p, 3 * BLOCK_SIZE, 1), None);
    }

    #[test]
    fn pieces_in_clips_to_torrent() {
        let g = Geometry::new(100, 1000).unwrap();
        assert_eq!(g.pieces_in(0, 1), 0..1);
        assert_eq!(g.pieces_in(99, 2), 0..2);
        assert_eq!(g.pieces_in(100, 100), 1..2);
        assert_eq!(g.pieces_in(950, 500), 9..10);
        assert_eq!(g.pieces_in(1000, 5), 0..0);
        assert_eq!(g.pieces_in(5, 0), 0..0);
        assert_eq!(g.piece_at(999).map(PieceIndex::get), Some(9));
        assert_eq!(g.piece_at(1000), None);
    }

    #[test]
    fn refuses_impossible_sizes() {
        assert!(Geometry::new(0, 10).is_none());
        assert!(Geometry::new(10, 0).is_none());
        assert!(Geometry::new(1, u64::MAX).is_none());
    }

    #[test]
    fn ranges_are_sorted_and_joined_where_they_meet() {
        assert_eq!(
            merge_ranges(vec![8..9, 3..3, 0..2, 2..4, 5..7, 6..8]),
            [0..4, 5..9]
        );
        assert_eq!(merge_ranges(vec![]), [] as [Range<u32>; 0]);
    }
}
