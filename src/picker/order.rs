//! The pick order: reader deadlines, then background rarest-first, and `pick` itself.

use std::ops::Range;

use rustc_hash::FxHashMap;

use super::{
    Block, MAX_REQUESTERS, NEAR, Partial, PeerId, Picker, PieceState, ReaderId, SPREAD_MARGIN,
    SPREAD_MIN_GAIN_SECS, Slot,
};
use crate::bitfield::Bitfield;
use crate::piece::{BLOCK_SIZE, PieceIndex};

/// What one open-file reader needs, as piece index ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReaderWant {
    /// Pieces a blocked read waits on now.
    pub urgent: Range<u32>,
    /// The window after the read position, nearest first.
    pub readahead: Range<u32>,
    /// How fast the reader consumes, bytes/s; 0 when unknown (taken as [`UNKNOWN_RATE`]).
    pub rate: u64,
    /// How much later than the start of the reader's need this want begins: its urgent ranks
    /// count from `lead`, its readahead deadlines from `lead` ms. 0 for what a reader needs
    /// first; more for what it will need after something else (a read the kernel sent ahead
    /// of the one the reader waits on, wanted by its distance from it).
    pub lead: u32,
}

/// The rate a reader is assumed to read at before it has a measured one: a few seconds of
/// readahead ahead of a fresh reader are wanted about as soon as a 1 MB/s video would want them.
pub const UNKNOWN_RATE: u64 = 1_000_000;

/// How soon a reader needs a piece; smaller is sooner, and every urgent piece is sooner than
/// any readahead piece. An urgent piece's value is its rank in the blocked read; a readahead
/// piece's is the time, in milliseconds, until its reader reaches it at the reader's rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Deadline {
    Urgent(u32),
    Readahead(u32),
}

impl Deadline {
    fn is_urgent(self) -> bool {
        matches!(self, Deadline::Urgent(_))
    }
}

/// Why a piece is fetched; variants in order of precedence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Priority {
    Reader(Deadline),
    /// `fresh` is false for a started (Partial) piece, so started pieces sort first.
    Background {
        fresh: bool,
        availability: u32,
    },
}

/// THE pick order: pieces are fetched in ascending `OrderKey`.
///
/// 1. Urgent pieces (a read is blocked on them), by distance from their reader's position, over
///    all readers at once.
/// 2. Readahead pieces by deadline: the time until their reader reaches them at the rate it
///    consumes (its window's distance over its rate), so several readers share by when each
///    needs its data, not by who asked first; equal deadlines by index. A reader's deadline is
///    the only thing that counts here: a started piece gets no head start over a nearer one.
/// 3. Background pieces, only while background fetching is on: started pieces first (finish what
///    was begun, so partial data becomes a verified piece instead of spreading thin), then the
///    rarest in the swarm (fetch what could vanish when its few holders leave), then the lowest
///    index.
///
/// Within a piece the lowest unrequested block goes first, and one peer's blocks come from one
/// piece while it has free ones. Endgame: once every urgent piece a peer has is fully requested,
/// blocks that another peer is late with (`mark_late`) are asked of this peer too (one more peer
/// per mark, at most [`MAX_REQUESTERS`] per block, never twice of one peer), and so are
/// urgent blocks queued deep at another peer when this one would deliver them sooner
/// (`take_spread`), before any readahead. Other pieces never get duplicates: only a blocked
/// read is worth the risk of wasted bandwidth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct OrderKey {
    pub(super) priority: Priority,
    pub(super) piece: PieceIndex,
}

impl Picker {
    /// The key of a piece in the current state. Meaningless for Have/Verifying pieces.
    pub(super) fn order_key(&self, p: PieceIndex) -> OrderKey {
        let priority = match self.deadlines.get(&p) {
            Some(&d) => Priority::Reader(d),
            None => Priority::Background {
                fresh: self.state[p.as_usize()] == PieceState::Missing,
                // In a scope the rest of a file comes in order, not rarest first.
                availability: if self.scope.is_some() {
                    0
                } else {
                    self.availability(p)
                },
            },
        };
        OrderKey { priority, piece: p }
    }

    // ---- readers ------------------------------------------------------------------------------

    /// Replaces what `reader` wants. Its old window stops counting at once; pieces of it already
    /// started are kept and finished as background work, never thrown away.
    pub fn set_reader(&mut self, reader: ReaderId, want: ReaderWant) {
        self.readers.insert(reader, want);
        self.rebuild_deadlines();
    }

    /// `set_reader` for several at once, the order rebuilt once.
    pub fn set_readers(&mut self, wants: impl IntoIterator<Item = (ReaderId, ReaderWant)>) {
        self.readers.extend(wants);
        self.rebuild_deadlines();
    }

    pub fn remove_reader(&mut self, reader: ReaderId) {
        if self.readers.remove(&reader).is_some() {
            self.rebuild_deadlines();
        }
    }

    /// Off: only reader-wanted pieces are picked (the session turns it off when the store is full,
    /// so background fetching never evicts what a reader will want).
    pub fn set_background(&mut self, enabled: bool) {
        self.background = enabled;
    }

    /// Whether background fetching is on (tests).
    #[cfg(test)]
    pub fn background_enabled(&self) -> bool {
        self.background
    }

    /// Where background fetching may start pieces (see the field); ranges are sorted and
    /// merged here.
    pub fn set_background_scope(&mut self, scope: Option<Vec<Range<u32>>>) {
        self.scope = scope.map(crate::piece::merge_ranges);
    }

    /// Whether background fetching may start `p`.
    #[cfg(test)]
    pub(super) fn in_scope(&self, p: PieceIndex) -> bool {
        self.scope
            .as_ref()
            .is_none_or(|ranges| ranges.iter().any(|r| r.contains(&p.get())))
    }

    /// Whether any reader states a want (an open file's window, a blocked read): then a
    /// reader may need the link at any moment.
    pub fn has_readers(&self) -> bool {
        !self.readers.is_empty()
    }

    /// In some reader's urgent or readahead range: the store protects these from eviction.
    pub fn is_wanted_by_reader(&self, p: PieceIndex) -> bool {
        self.deadlines.contains_key(&p)
    }

    /// The pieces readers want (urgent and readahead ranges, unmerged): exactly those
    /// `is_wanted_by_reader` says yes to, for stores that cannot ask.
    pub fn reader_ranges(&self) -> Vec<Range<u32>> {
        let n = self.geometry.piece_count();
        (self.readers.values())
            .flat_map(|w| [w.urgent.clone(), w.readahead.clone()])
            .map(|r| r.start..r.end.min(n))
            .filter(|r| !r.is_empty())
            .collect()
    }

    /// A blocked read waits on this piece (the store may go over budget to keep it).
    pub fn is_urgent(&self, p: PieceIndex) -> bool {
        self.deadlines.get(&p).is_some_and(|d| d.is_urgent())
    }

    /// Some reader's urgent piece is not Have yet (missing, in flight or verifying).
    pub fn urgent_pending(&self) -> bool {
        self.deadline_order
            .iter()
            .take_while(|(d, _)| d.is_urgent())
            .any(|&(_, p)| self.state[p.as_usize()] != PieceState::Have)
    }

    /// Whether a peer with `peer_has` holds a piece some blocked read waits on that we still
    /// have to fetch (the choker unchokes such a peer so it keeps serving us).
    pub fn has_urgent(&self, peer_has: &Bitfield) -> bool {
        self.deadline_order
            .iter()
            .take_while(|(d, _)| d.is_urgent())
            .any(|&(_, p)| {
                matches!(
                    self.state[p.as_usize()],
                    PieceState::Missing | PieceState::Partial
                ) && peer_has.get(p.get())
            })
    }

    /// Whether `peer` (with `peer_has`, what it may be asked for) could take blocks of a piece
    /// some reader wants (urgent or readahead, not deferred) that nobody has been asked for yet:
    /// exactly what `pick` would give it first.
    pub fn has_reader_work(&self, peer: PeerId, peer_has: &Bitfield) -> bool {
        self.has_free_blocks(&self.deadline_order, peer, peer_has)
    }

    fn has_free_blocks(
        &self,
        pieces: &[(Deadline, PieceIndex)],
        peer: PeerId,
        peer_has: &Bitfield,
    ) -> bool {
        pieces.iter().any(|&(_, p)| {
            peer_has.get(p.get())
                && !self.deferred.contains(&p)
                && self.may_claim(p, peer)
                && match self.state[p.as_usize()] {
                    PieceState::Missing => true,
                    PieceState::Partial => self.partial.get(&p).is_some_and(|part| part.free > 0),
                    _ => false,
                }
        })
    }

    /// O(total window length); runs only when a reader's want changes.
    fn rebuild_deadlines(&mut self) {
        self.deadlines.clear();
        let n = self.geometry.piece_count();
        let clip = |r: &Range<u32>| r.start..r.end.min(n);
        let piece = u64::from(self.geometry.piece_length());
        for want in self.readers.values() {
            let rate = if want.rate == 0 {
                UNKNOWN_RATE
            } else {
                want.rate
            };
            // Milliseconds until the reader reaches the start of the piece `rank` pieces in.
            let until = |rank: u32| {
                let ms = u64::from(rank) * piece * 1000 / rate + u64::from(want.lead);
                Deadline::Readahead(u32::try_from(ms).unwrap_or(u32::MAX))
            };
            let rank = |i: u32| want.lead.saturating_add(i - want.urgent.start);
            let urgent = clip(&want.urgent).map(|i| (i, Deadline::Urgent(rank(i))));
            let ahead = clip(&want.readahead).map(|i| (i, until(i - want.readahead.start)));
            for (i, d) in urgent.chain(ahead) {
                let Some(p) = self.geometry.piece(i) else {
                    continue;
                };
                self.deadlines
                    .entry(p)
                    .and_modify(|old| *old = (*old).min(d))
                    .or_insert(d);
            }
        }
        self.deadline_order = self.deadlines.iter().map(|(&p, &d)| (d, p)).collect();
        self.deadline_order.sort_unstable();
        // A deferred piece whose reader came near (or that no reader wants) is fair game again.
        let deadlines = &self.deadlines;
        self.deferred
            .retain(|p| matches!(deadlines.get(p), Some(Deadline::Readahead(r)) if *r >= NEAR));
    }

    // ---- picking ------------------------------------------------------------------------------

    /// Up to `max_blocks` blocks to request from `peer` now; they count as requested from `peer`
    /// until received, failed, choked or gone. Order: urgent reader pieces (then endgame
    /// duplicates of their blocks), readahead by rank, then (if enabled) background: started
    /// pieces, rarest, lowest index. The full rule is at `OrderKey`.
    ///
    /// Cost: the reader windows, the started pieces, and one O(pieces / 64 + candidates) scan of
    /// the missing pieces the peer has, only when new pieces must be started.
    pub fn pick(&mut self, peer: PeerId, peer_has: &Bitfield, max_blocks: usize) -> Vec<Block> {
        let mut out = Vec::new();
        if max_blocks == 0 {
            return out;
        }
        // Taken out while `take_*` mutate self; always put back below.
        let order = std::mem::take(&mut self.deadline_order);
        let urgent = order.partition_point(|(d, _)| d.is_urgent());
        let has = |p: PieceIndex| peer_has.get(p.get());
        // Each walk ends once the peer's room is filled: a sequential reader's window is long,
        // and a pick runs for every block a peer delivers.
        let full = |out: &Vec<Block>| out.len() >= max_blocks;
        for &(_, p) in order[..urgent].iter().filter(|(_, p)| has(*p)) {
            if full(&out) {
                break;
            }
            self.take_free(p, peer, &mut out, max_blocks);
        }
        for &(_, p) in order[..urgent].iter().filter(|(_, p)| has(*p)) {
            if full(&out) || self.late.is_empty() {
                break;
            }
            self.take_duplicates(p, peer, &mut out, max_blocks);
        }
        self.take_spread(&order[..urgent], peer, peer_has, &mut out, max_blocks);
        for &(_, p) in order[urgent..].iter().filter(|(_, p)| has(*p)) {
            if full(&out) {
                break;
            }
            if !self.deferred.contains(&p) {
                self.take_free(p, peer, &mut out, max_blocks);
            }
        }
        self.deadline_order = order;
        if !self.background || out.len() >= max_blocks {
            return out;
        }

        // Any reader piece this peer has is fully requested by now, so what remains is background.
        let mut started: Vec<OrderKey> = self
            .partial
            .iter()
            .filter(|(p, part)| part.free > 0 && has(**p))
            .map(|(&p, _)| self.order_key(p))
            .collect();
        started.sort_unstable();
        for key in started {
            self.take_free(key.piece, peer, &mut out, max_blocks);
        }
        if out.len() < max_blocks {
            for key in self.best_missing(peer_has, max_blocks - out.len()) {
                self.take_free(key.piece, peer, &mut out, max_blocks);
            }
        }
        out
    }

    /// `pick` without background pieces: for a peer whose background requests were just given
    /// back to make room for readers, so the same blocks are not asked again at once.
    pub fn pick_for_readers(
        &mut self,
        peer: PeerId,
        peer_has: &Bitfield,
        max_blocks: usize,
    ) -> Vec<Block> {
        let background = std::mem::replace(&mut self.background, false);
        let out = self.pick(peer, peer_has, max_blocks);
        self.background = background;
        out
    }

    /// The Missing pieces `peer_has` holds, enough of them (best first) to fill `blocks` blocks:
    /// the first of `rarity` (rarest, then lowest index) the peer has. For a seed that is the
    /// first few entries; a peer with few pieces may need a longer walk.
    fn best_missing(&self, peer_has: &Bitfield, blocks: usize) -> Vec<OrderKey> {
        let full_piece = self.geometry.piece_length().div_ceil(BLOCK_SIZE) as usize;
        // Every piece but the last is full, so this many pieces always cover `blocks`.
        let k = blocks.min(blocks.div_ceil(full_piece) + 1);
        let wanted = |p: &PieceIndex| peer_has.get(p.get()) && !self.deferred.contains(p);
        let mut best: Vec<OrderKey> = match &self.scope {
            None => (self.rarity.iter())
                .filter(|(_, p)| wanted(p))
                .take(k)
                .map(|&(_, p)| self.order_key(p))
                .collect(),
            // Scopes are a few files: walking them costs what they hold at most.
            Some(ranges) => (ranges.iter().flat_map(|r| r.clone()))
                .filter_map(|i| self.geometry.piece(i))
                .filter(|&p| self.state[p.as_usize()] == PieceState::Missing && wanted(&p))
                .take(k)
                .map(|p| self.order_key(p))
                .collect(),
        };
        // A reader's piece sorts first whatever its rarity (it can be Missing here only when
        // another peer holds it on parole, and then this peer takes no block of it anyway).
        best.sort_unstable();
        best
    }

    /// Requests the free blocks of `p`, lowest first, from `peer`; starts `p` if Missing.
    fn take_free(&mut self, p: PieceIndex, peer: PeerId, out: &mut Vec<Block>, max: usize) {
        if out.len() >= max {
            return;
        }
        // Most pieces a pick walks past have nothing free: say so before any map is touched.
        match self.state[p.as_usize()] {
            PieceState::Have | PieceState::Verifying => return,
            PieceState::Partial if self.partial.get(&p).is_none_or(|part| part.free == 0) => {
                return;
            }
            _ => {}
        }
        if !self.claim(p, peer) {
            return;
        }
        match self.state[p.as_usize()] {
            PieceState::Have | PieceState::Verifying => return,
            PieceState::Missing => {
                let count = self.geometry.block_count(p);
                self.partial.insert(p, Partial::new(count));
                self.set_state(p, PieceState::Partial);
            }
            PieceState::Partial => {}
        }
        let Some(part) = self.partial.get_mut(&p) else {
            return;
        };
        let in_flight = self.in_flight.entry(peer).or_default();
        for (i, slot) in part.blocks.iter_mut().enumerate() {
            if part.free == 0 || out.len() >= max {
                break;
            }
            if let Slot::Free = slot {
                *slot = Slot::Requested(vec![peer]);
                part.free -= 1;
                let b = Block {
                    piece: p,
                    block: i as u32,
                };
                in_flight.insert(b);
                out.push(b);
            }
        }
    }

    /// Endgame by queue depth on the urgent pieces (`urgent`, in deadline order): once every
    /// urgent block `peer` could take is requested, it also takes those queued deepest at the
    /// peers they were asked of, when it would deliver them sooner: fewer blocks in flight
    /// here than ahead of them there, by [`SPREAD_MARGIN`], and at the two peers' rates by
    /// [`SPREAD_MIN_GAIN_SECS`] (`spread_pays`). A peer serves its requests in
    /// order, so without this the peer with the longest queue holds a read's last block while
    /// the others idle; the first copy to arrive wins and the other is cancelled, usually
    /// before it was sent. Depth counts only urgent blocks (requested in this order), so it
    /// errs towards asking less.
    fn take_spread(
        &mut self,
        urgent: &[(Deadline, PieceIndex)],
        peer: PeerId,
        peer_has: &Bitfield,
        out: &mut Vec<Block>,
        max: usize,
    ) {
        if out.len() >= max || urgent.is_empty() {
            return;
        }
        let mut mine = self.in_flight(peer);
        // No block is deeper at its peer than that peer's whole queue, and the deeper a block
        // the more a copy gains: when no other queue, taken whole, is long enough or slow
        // enough to pay (a steady stream, fast peers), no block in it will, and the walk
        // below (which a pick runs for every block a peer delivers) is spared.
        let worth_a_look = (self.in_flight.iter()).any(|(&q, set)| {
            q != peer
                && mine + SPREAD_MARGIN <= set.len()
                && self.spread_pays(peer, mine, q, set.len())
        });
        if !worth_a_look {
            return;
        }
        // Each requested urgent block with the fewest blocks ahead of it at any of its peers.
        let mut seen: FxHashMap<PeerId, usize> = FxHashMap::default();
        let mut candidates: Vec<(usize, PeerId, Block)> = Vec::new();
        for &(_, p) in urgent {
            let Some(part) = self.partial.get(&p) else {
                continue;
            };
            let spreadable = peer_has.get(p.get()) && !self.exclusive.contains_key(&p);
            for (i, slot) in part.blocks.iter().enumerate() {
                let Slot::Requested(peers) = slot else {
                    continue;
                };
                let (mut depth, mut at) = (usize::MAX, peer);
                for q in peers {
                    let ahead = seen.entry(*q).or_default();
                    if *ahead < depth {
                        (depth, at) = (*ahead, *q);
                    }
                    *ahead += 1;
                }
                if spreadable && peers.len() < MAX_REQUESTERS && !peers.contains(&peer) {
                    let b = Block {
                        piece: p,
                        block: i as u32,
                    };
                    candidates.push((depth, at, b));
                }
            }
        }
        // Deepest first: those would arrive last.
        candidates.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.2.cmp(&b.2)));
        for (depth, at, b) in candidates {
            if out.len() >= max || mine + SPREAD_MARGIN > depth {
                break;
            }
            if !self.spread_pays(peer, mine, at, depth) {
                continue;
            }
            let Some(Slot::Requested(peers)) = self
                .partial
                .get_mut(&b.piece)
                .and_then(|part| part.blocks.get_mut(b.block as usize))
            else {
                continue;
            };
            peers.push(peer);
            self.rerequests += 1;
            self.in_flight.entry(peer).or_default().insert(b);
            out.push(b);
            mine += 1;
        }
    }

    /// Whether a block `depth` blocks deep at `at` would arrive [`SPREAD_MIN_GAIN_SECS`]
    /// sooner from `peer`, which has `mine` in flight, at the rates they deliver at. With
    /// `peer`'s rate not known yet (a new peer), as if it were instant: no copy is made of a
    /// block due from `at` sooner than the gain. With `at`'s not known, the depth rule alone.
    fn spread_pays(&self, peer: PeerId, mine: usize, at: PeerId, depth: usize) -> bool {
        let rate = |q: &PeerId| self.rates.get(q).copied().filter(|&r| r > 0.0);
        let Some(there) = rate(&at) else {
            return true;
        };
        let block = f64::from(BLOCK_SIZE);
        let wait_there = depth as f64 * block / there;
        let wait_here =
            rate(&peer).map_or(0.0, |here| (mine + SPREAD_MARGIN) as f64 * block / here);
        wait_there - wait_here >= SPREAD_MIN_GAIN_SECS
    }

    /// Endgame on an urgent piece: asks `peer` too for blocks in flight from other peers that
    /// are late with them (`mark_late`); one more peer per lateness mark.
    fn take_duplicates(&mut self, p: PieceIndex, peer: PeerId, out: &mut Vec<Block>, max: usize) {
        if self.late.is_empty() || out.len() >= max || self.exclusive.contains_key(&p) {
            return;
        }
        let Some(part) = self.partial.get_mut(&p) else {
            return;
        };
        let in_flight = self.in_flight.entry(peer).or_default();
        for (i, slot) in part.blocks.iter_mut().enumerate() {
            if out.len() >= max {
                break;
            }
            let b = Block {
                piece: p,
                block: i as u32,
            };
            if let Slot::Requested(peers) = slot
                && peers.len() < MAX_REQUESTERS
                && !peers.contains(&peer)
                && self.late.remove(&b)
            {
                peers.push(peer);
                self.rerequests += 1;
                in_flight.insert(b);
                out.push(b);
            }
        }
    }
}
