//! Picked blocks as HTTP ranges, and an HTTP body cut back into blocks; pure, no I/O.
//!
//! The picker hands out 16 KiB blocks; a web seed is asked for byte ranges. Blocks that
//! follow each other in the torrent become one range ([`coalesce`]), and the bytes of that
//! range, however the body arrives in chunks, come out as whole blocks ([`Cutter`]) holding at
//! most one partial block: a request's memory stays bounded whatever its length.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;

use crate::picker::Block;
use crate::piece::Geometry;

/// A torrent range made of whole blocks, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) blocks: Vec<Block>,
    pub(crate) range: Range<u64>,
}

/// The torrent range of a block.
pub(crate) fn block_range(g: &Geometry, b: Block) -> Range<u64> {
    let (begin, len) = g.block(b.piece, b.block);
    let start = g.piece_offset(b.piece) + u64::from(begin);
    start..start + u64::from(len)
}

/// Groups blocks into runs of adjacent ones (in torrent order), keeping the order in which the
/// picker ranked the runs' first blocks: what a read waits on is asked first.
pub(crate) fn coalesce(g: &Geometry, picked: &[Block]) -> Vec<Run> {
    let mut sorted = picked.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<Run> = Vec::new();
    for b in sorted {
        let r = block_range(g, b);
        match runs.last_mut() {
            Some(run) if run.range.end == r.start => {
                run.range.end = r.end;
                run.blocks.push(b);
            }
            _ => runs.push(Run {
                blocks: vec![b],
                range: r,
            }),
        }
    }
    let rank: HashMap<Block, usize> = (picked.iter().enumerate())
        .rev()
        .map(|(i, b)| (*b, i))
        .collect();
    runs.sort_by_cached_key(|run| run.blocks.iter().map(|b| rank[b]).min());
    runs
}

/// Cuts the bytes of a [`Run`], fed in any chunks, into its blocks.
pub(crate) struct Cutter {
    /// Blocks not yet complete, the first one being filled.
    pending: VecDeque<(Block, usize)>,
    /// The part of the first pending block that arrived split across chunks.
    partial: Vec<u8>,
}

impl Cutter {
    pub(crate) fn new(g: &Geometry, run: &Run) -> Self {
        let pending = (run.blocks.iter())
            .map(|&b| (b, g.block(b.piece, b.block).1 as usize))
            .collect();
        Self {
            pending,
            partial: Vec::new(),
        }
    }

    /// Feeds the next bytes of the run; `done(block, bytes)` is called for each block they
    /// complete, in order, with the block's whole data. Bytes past the run's end are the
    /// caller's to refuse (the HTTP layer never hands out more than asked).
    pub(crate) fn feed(&mut self, mut data: &[u8], mut done: impl FnMut(Block, &[u8])) {
        while !data.is_empty() {
            let Some(&(block, len)) = self.pending.front() else {
                return;
            };
            if self.partial.is_empty() && data.len() >= len {
                // The common case: a whole block inside this chunk, handed on without a copy.
                done(block, &data[..len]);
                data = &data[len..];
                self.pending.pop_front();
                continue;
            }
            let take = (len - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() == len {
                done(block, &self.partial);
                self.partial.clear();
                self.pending.pop_front();
            }
        }
    }

    /// The blocks not delivered (a request that failed midway): the picker frees them.
    pub(crate) fn undelivered(&self) -> impl Iterator<Item = Block> + '_ {
        self.pending.iter().map(|(b, _)| *b)
    }

    #[cfg(test)]
    pub(crate) fn is_done(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::piece::BLOCK_SIZE;

    /// 32 KiB pieces of two blocks; the torrent ends 1000 bytes into piece 3.
    fn geometry() -> Geometry {
        Geometry::new(2 * BLOCK_SIZE, 3 * 2 * u64::from(BLOCK_SIZE) + 1000).unwrap()
    }

    fn b(g: &Geometry, piece: u32, block: u32) -> Block {
        Block {
            piece: g.piece(piece).unwrap(),
            block,
        }
    }

    #[test]
    fn adjacent_blocks_across_pieces_make_one_run_in_pick_order() {
        let g = geometry();
        let picked = [
            b(&g, 2, 0),
            b(&g, 0, 1),
            b(&g, 1, 0),
            b(&g, 3, 0),
            b(&g, 2, 1),
        ];
        let runs = coalesce(&g, &picked);
        let bs = u64::from(BLOCK_SIZE);
        assert_eq!(runs.len(), 2);
        // Piece 2 was ranked first: its run (2.0, 2.1, 3.0) goes first.
        assert_eq!(runs[0].blocks, [b(&g, 2, 0), b(&g, 2, 1), b(&g, 3, 0)]);
        assert_eq!(runs[0].range, 4 * bs..6 * bs + 1000);
        assert_eq!(runs[1].blocks, [b(&g, 0, 1), b(&g, 1, 0)]);
        assert_eq!(runs[1].range, bs..3 * bs);
    }

    #[test]
    fn any_chunking_yields_the_same_blocks() {
        let g = geometry();
        let run = coalesce(&g, &[b(&g, 1, 1), b(&g, 2, 0), b(&g, 2, 1), b(&g, 3, 0)])
            .pop()
            .unwrap();
        let len = (run.range.end - run.range.start) as usize;
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        for chunk in [1, 1000, 16383, 16384, 16385, 50_000, len] {
            let mut cut = Cutter::new(&g, &run);
            let mut got = Vec::new();
            for c in data.chunks(chunk) {
                cut.feed(c, |blk, bytes| got.push((blk, bytes.to_vec())));
                assert!(
                    cut.partial.len() < BLOCK_SIZE as usize,
                    "at most a partial block held"
                );
            }
            assert!(cut.is_done());
            let blocks: Vec<Block> = got.iter().map(|(blk, _)| *blk).collect();
            assert_eq!(blocks, run.blocks, "chunks of {chunk}");
            let joined: Vec<u8> = got.into_iter().flat_map(|(_, d)| d).collect();
            assert_eq!(joined, data, "chunks of {chunk}");
        }
    }

    #[test]
    fn a_body_cut_short_leaves_the_rest_undelivered() {
        let g = geometry();
        let run = coalesce(&g, &[b(&g, 0, 0), b(&g, 0, 1), b(&g, 1, 0)])
            .pop()
            .unwrap();
        let mut cut = Cutter::new(&g, &run);
        let mut n = 0;
        cut.feed(&vec![0; BLOCK_SIZE as usize + 10], |_, _| n += 1);
        assert_eq!(n, 1);
        assert_eq!(
            cut.undelivered().collect::<Vec<_>>(),
            [b(&g, 0, 1), b(&g, 1, 0)],
            "the partly received block counts as undelivered"
        );
    }
}
