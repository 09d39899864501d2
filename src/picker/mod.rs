//! The piece picker: which block to ask which peer for next. A synchronous state machine with no
//! I/O and no clock; the session feeds it peer events and asks it what to request.
//!
//! # Piece states
//! Every piece is in exactly one [`PieceState`] at a time; the states never overlap:
//! - **Have**: verified and held in the store. Never picked. Leaves only by `piece_evicted`
//!   (to Missing).
//! - **Verifying**: every block received, the hash is running. Never picked; leaves by
//!   `piece_verified` (to Have) or `piece_failed` (to Missing, every block to fetch again).
//! - **Partial** (in flight): at least one block requested or received, not all received. Each
//!   block is free, requested (by 1 to 3 peers) or received. The last block arriving makes it
//!   Verifying; its requests all released with nothing received make it Missing again, so Partial
//!   always means progress.
//! - **Missing**: nothing requested, nothing received. The first block picked or received makes
//!   it Partial. Whether it is wanted is not a state: reader windows and background fetching
//!   decide that at pick time.
//!
//! Alongside: every requested block is in the in-flight set of each peer it was asked of, and
//! nowhere else; the `have`/`needed` bitsets and the `rarity` index mirror the states (kept in
//! `set_state`, the only place a state changes). `model_tests` checks it all along random walks.
//!
//! # Order
//! One comparator, `OrderKey` in `order.rs` (the prose is beside it): pieces a reader waits on
//! first, then readahead pieces by distance into their reader's window, then background pieces:
//! started before fresh, rarest first, lowest index last. Endgame duplicates only urgent blocks:
//! those their peer is late with (`mark_late`) and those queued deep at a busier peer.

mod interest;
mod order;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::{FxHashMap, FxHashSet};

use crate::bitfield::Bitfield;
use crate::piece::{Geometry, PieceIndex};

pub use interest::Interest;
use order::Deadline;
pub use order::{ReaderWant, UNKNOWN_RATE};

/// A connected peer, numbered by the session; opaque here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

/// An open file reader, numbered by the session; opaque here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReaderId(pub u64);

/// A block of a piece by number; `Geometry::block` gives its `(begin, len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Block {
    pub piece: PieceIndex,
    pub block: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceState {
    Missing,
    Partial,
    Verifying,
    Have,
}

/// What `block_received` decided about an arriving block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// False: a duplicate or a block we cannot use; drop the data.
    pub new: bool,
    /// All blocks are in: hash the piece, then call `piece_verified` or `piece_failed`.
    pub piece_complete: bool,
    /// Other peers that had this block requested too (endgame): send them `cancel`.
    pub cancel: Vec<(PeerId, Block)>,
}

/// A block is spread to a peer only if, at the two peers' download rates (`set_rate`; when
/// the deep peer's is known), it would arrive at least this much sooner there: on fast links
/// a copy saves a millisecond or two and is often already on its way when the cancel reaches
/// the first peer (a duplicate received for nothing); on slow ones a block is tens of ms.
const SPREAD_MIN_GAIN_SECS: f64 = 0.03;
/// At most this many peers are asked for one block at once (endgame on urgent pieces).
const MAX_REQUESTERS: usize = 3;
/// An urgent block queued at a peer is asked of an idler peer too when that peer has at least
/// this many fewer blocks in flight than are ahead of the block where it is queued: a margin
/// so that peers of equal speed do not trade blocks back and forth.
const SPREAD_MARGIN: usize = 2;

#[derive(Debug)]
enum Slot {
    Free,
    /// Never empty: the last requester leaving makes the slot `Free`.
    Requested(Vec<PeerId>),
    Received,
}

/// Block progress of a Partial piece.
#[derive(Debug)]
struct Partial {
    blocks: Vec<Slot>,
    free: u32,
    received: u32,
}

impl Partial {
    fn new(blocks: u32) -> Self {
        Self {
            blocks: (0..blocks).map(|_| Slot::Free).collect(),
            free: blocks,
            received: 0,
        }
    }

    /// Nothing requested, nothing received: the piece is really Missing.
    fn untouched(&self) -> bool {
        self.received == 0 && self.free as usize == self.blocks.len()
    }
}

pub struct Picker {
    geometry: Geometry,
    state: Vec<PieceState>,
    /// Block progress of exactly the Partial pieces; ordered so ties resolve by index.
    partial: BTreeMap<PieceIndex, Partial>,
    have: Bitfield,
    /// Missing or Partial: what a peer can still give us (`is_interesting`).
    needed: Words,
    /// How many connected peers that are not `seeds` have each piece: a seed's bitfield
    /// changes no count (it counts in `seeds`), so a seed connecting costs O(1), not O(pieces).
    availability: Vec<u32>,
    /// Peers counted as seeds (they had every piece when they said what they have).
    seeds: FxHashSet<PeerId>,
    /// The Missing pieces by (availability, index): the background order, rarest first, kept
    /// as availability changes so that starting a piece never scans the whole torrent.
    rarity: BTreeSet<(u32, PieceIndex)>,
    /// Pieces Missing or Partial: a seed is interesting while this is not zero.
    needed_count: u32,
    /// How many times a piece became needed again (we had it or were verifying it): a peer
    /// found to have nothing we need stays so while this is unchanged (`interest`).
    regained: u64,
    /// Blocks each peer has been asked for and not yet delivered.
    in_flight: FxHashMap<PeerId, BTreeSet<Block>>,
    readers: FxHashMap<ReaderId, ReaderWant>,
    /// The soonest deadline of each reader-wanted piece, over all readers.
    deadlines: FxHashMap<PieceIndex, Deadline>,
    /// `deadlines` sorted by (deadline, index): the reader part of the pick order.
    deadline_order: Vec<(Deadline, PieceIndex)>,
    background: bool,
    /// Where background fetching may start new pieces: `None`, anywhere (rarest first);
    /// `Some(ranges)`, only in these piece ranges, sorted and disjoint, lowest index first (the
    /// rest of what is being watched). Started pieces are finished wherever they are.
    scope: Option<Vec<std::ops::Range<u32>>>,
    /// Pieces that failed their check, fetched again from one peer only ("parole"), so the
    /// next verdict names a single sender; the peer is set by the first pick.
    exclusive: FxHashMap<PieceIndex, Option<PeerId>>,
    /// Requested blocks of urgent pieces that their peer is late with (`mark_late`): only
    /// these are asked of a second peer (endgame).
    late: FxHashSet<Block>,
    /// Blocks asked of another peer too: the first was late, or had them queued deep.
    rerequests: u64,
    /// Each peer's download rate in bytes/s, as its session last said (`set_rate`).
    rates: FxHashMap<PeerId, f64>,
    /// Readahead pieces memory could not keep (`piece_not_kept`): not asked for again until
    /// their reader is within [`NEAR`] of them, so a full cache does not fetch the same piece
    /// over and over. Always Missing, always in a readahead window with a deadline of `NEAR` or
    /// more.
    deferred: FxHashSet<PieceIndex>,
}

/// How close (milliseconds at its rate) a reader must be to a deferred piece to fetch it again.
pub(crate) const NEAR: u32 = 2000;

impl Picker {
    /// Every piece starts Missing; background fetching starts enabled.
    pub fn new(geometry: Geometry) -> Self {
        let n = geometry.piece_count();
        Self {
            state: vec![PieceState::Missing; n as usize],
            partial: BTreeMap::new(),
            have: Bitfield::new(n),
            needed: Words::full(n),
            availability: vec![0; n as usize],
            seeds: FxHashSet::default(),
            rarity: geometry.pieces().map(|p| (0, p)).collect(),
            needed_count: n,
            regained: 0,
            in_flight: FxHashMap::default(),
            readers: FxHashMap::default(),
            deadlines: FxHashMap::default(),
            deadline_order: Vec::new(),
            background: true,
            scope: None,
            exclusive: FxHashMap::default(),
            late: FxHashSet::default(),
            rerequests: 0,
            rates: FxHashMap::default(),
            deferred: FxHashSet::default(),
            geometry,
        }
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    // ---- availability -------------------------------------------------------------------------

    /// A peer's `bitfield` message; call once per peer, before any of its `have`s.
    pub fn peer_bitfield(&mut self, peer: PeerId, has: &Bitfield) {
        self.in_flight.entry(peer).or_default();
        if has.is_full() {
            self.seeds.insert(peer);
            return;
        }
        for i in has.iter_ones() {
            if let Some(p) = self.geometry.piece(i) {
                self.add_availability(p, 1);
            }
        }
    }

    /// A peer's `have`; call only when the bit is newly set in that peer's bitfield.
    pub fn peer_have(&mut self, peer: PeerId, p: PieceIndex) {
        self.in_flight.entry(peer).or_default();
        self.add_availability(p, 1);
    }

    /// How fast `peer` delivers now (bytes/s; 0 for not yet known): endgame weighs a copy
    /// by it (`SPREAD_MIN_GAIN_SECS`).
    pub fn set_rate(&mut self, peer: PeerId, bytes_per_sec: f64) {
        self.rates.insert(peer, bytes_per_sec);
    }

    /// The peer disconnected: `has` is its last bitfield. Its requests are released for others.
    pub fn peer_gone(&mut self, peer: PeerId, has: &Bitfield) {
        self.peer_choked(peer);
        self.in_flight.remove(&peer);
        self.rates.remove(&peer);
        if self.seeds.remove(&peer) {
            return;
        }
        for i in has.iter_ones() {
            if let Some(p) = self.geometry.piece(i) {
                self.add_availability(p, -1);
            }
        }
    }

    /// Counts one more (or one less) non-seed peer having `p`, keeping `rarity` in order.
    fn add_availability(&mut self, p: PieceIndex, delta: i32) {
        let a = &mut self.availability[p.as_usize()];
        let old = *a;
        *a = a.saturating_add_signed(delta);
        if self.state[p.as_usize()] == PieceState::Missing && *a != old {
            self.rarity.remove(&(old, p));
            self.rarity.insert((*a, p));
        }
    }

    /// The peer choked us: BEP 3 voids its pending requests, so others may take them.
    pub fn peer_choked(&mut self, peer: PeerId) {
        let Some(set) = self.in_flight.get_mut(&peer) else {
            return;
        };
        for b in std::mem::take(set) {
            self.release_slot(peer, b);
        }
    }

    /// A request timed out or was rejected: the block may be requested again, from anyone.
    pub fn request_failed(&mut self, peer: PeerId, b: Block) {
        if self.in_flight.get_mut(&peer).is_some_and(|s| s.remove(&b)) {
            self.release_slot(peer, b);
        }
    }

    // ---- blocks and pieces --------------------------------------------------------------------

    /// A block arrived from `peer`. A block we still lack is accepted even if `peer` was not
    /// asked (a late answer to a timed-out request is still data).
    pub fn block_received(&mut self, peer: PeerId, b: Block) -> Received {
        if let Some(set) = self.in_flight.get_mut(&peer) {
            set.remove(&b);
        }
        self.late.remove(&b);
        let count = self.geometry.block_count(b.piece);
        if b.block >= count {
            return Received::default();
        }
        match self.state[b.piece.as_usize()] {
            PieceState::Have | PieceState::Verifying => return Received::default(),
            PieceState::Missing => {
                self.partial.insert(b.piece, Partial::new(count));
                self.set_state(b.piece, PieceState::Partial);
            }
            PieceState::Partial => {}
        }
        let Some(part) = self.partial.get_mut(&b.piece) else {
            return Received::default();
        };
        let slot = &mut part.blocks[b.block as usize];
        let mut cancel = Vec::new();
        match std::mem::replace(slot, Slot::Received) {
            Slot::Received => return Received::default(),
            Slot::Free => part.free -= 1,
            Slot::Requested(peers) => {
                for other in peers.into_iter().filter(|&q| q != peer) {
                    if let Some(set) = self.in_flight.get_mut(&other) {
                        set.remove(&b);
                    }
                    cancel.push((other, b));
                }
            }
        }
        part.received += 1;
        let piece_complete = part.received == count;
        if piece_complete {
            self.partial.remove(&b.piece);
            self.set_state(b.piece, PieceState::Verifying);
        }
        Received {
            new: true,
            piece_complete,
            cancel,
        }
    }

    /// The piece hashed correctly and is in the store. Normally from Verifying; from Missing or
    /// Partial (data obtained another way) any requests for it are dropped.
    pub fn piece_verified(&mut self, p: PieceIndex) {
        self.exclusive.remove(&p);
        if self.state[p.as_usize()] == PieceState::Partial {
            self.drop_partial(p);
        }
        self.set_state(p, PieceState::Have);
    }

    /// The hash did not match: every block is fetched again.
    pub fn piece_failed(&mut self, p: PieceIndex) {
        match self.state[p.as_usize()] {
            PieceState::Verifying => {}
            PieceState::Partial => self.drop_partial(p),
            PieceState::Have | PieceState::Missing => {
                tracing::debug!(piece = %p, "piece_failed for a piece not being verified");
                return;
            }
        }
        tracing::debug!(piece = %p, "piece failed its hash, fetching again");
        self.exclusive.remove(&p);
        self.set_state(p, PieceState::Missing);
    }

    /// Fetches `p` (after a failed check) from a single peer until its next verdict, so that a
    /// second failure has one sender to blame. No endgame duplicates for it meanwhile.
    pub fn set_exclusive(&mut self, p: PieceIndex) {
        self.exclusive.insert(p, None);
    }

    /// Whether `peer` may take blocks of `p`; claims an unowned (or abandoned) exclusive piece.
    fn claim(&mut self, p: PieceIndex, peer: PeerId) -> bool {
        let ok = self.may_claim(p, peer);
        if ok && self.exclusive.contains_key(&p) {
            self.exclusive.insert(p, Some(peer));
        }
        ok
    }

    /// Whether `claim` would let `peer` take blocks of `p`, without claiming it.
    fn may_claim(&self, p: PieceIndex, peer: PeerId) -> bool {
        let Some(owner) = self.exclusive.get(&p).copied() else {
            return true;
        };
        let abandoned = |o: PeerId| {
            let range = Block { piece: p, block: 0 }..=Block {
                piece: p,
                block: u32::MAX,
            };
            self.in_flight
                .get(&o)
                .is_none_or(|s| s.range(range).next().is_none())
        };
        match owner {
            Some(o) if o == peer => true,
            Some(o) => abandoned(o),
            None => true,
        }
    }

    /// The piece verified but could not be kept anywhere (no room for data no reader waits
    /// on): Missing again, fetched when wanted. Its data was good, so a parole ends.
    pub fn piece_not_kept(&mut self, p: PieceIndex) {
        self.exclusive.remove(&p);
        if self.state[p.as_usize()] == PieceState::Partial {
            self.drop_partial(p);
        }
        self.set_state(p, PieceState::Missing);
        if matches!(self.deadlines.get(&p), Some(order::Deadline::Readahead(r)) if *r >= NEAR) {
            self.deferred.insert(p);
        }
    }

    /// The store dropped the piece: it is Missing again, fetched when wanted.
    pub fn piece_evicted(&mut self, p: PieceIndex) {
        if self.state[p.as_usize()] == PieceState::Have {
            self.set_state(p, PieceState::Missing);
        }
    }

    /// The peer asked for `b` is late with it (much later than its own average): if a read
    /// waits on the piece, `pick` asks one more peer for it; the first copy to arrive wins and
    /// the other requests are cancelled (`Received::cancel`). Returns whether it was newly
    /// marked (false for a block not requested or not urgent).
    pub fn mark_late(&mut self, b: Block) -> bool {
        let requested = self
            .partial
            .get(&b.piece)
            .and_then(|part| part.blocks.get(b.block as usize))
            .is_some_and(|slot| matches!(slot, Slot::Requested(_)));
        requested && self.is_urgent(b.piece) && self.late.insert(b)
    }

    /// Blocks asked of a second peer (late, or queued deep at the first), since the start.
    pub fn rerequests(&self) -> u64 {
        self.rerequests
    }

    // ---- queries ------------------------------------------------------------------------------

    pub fn piece_state(&self, p: PieceIndex) -> PieceState {
        self.state[p.as_usize()]
    }

    pub fn have(&self, p: PieceIndex) -> bool {
        self.have.get(p.get())
    }

    pub fn have_bitfield(&self) -> &Bitfield {
        &self.have
    }

    /// Pieces not Have (Verifying ones included): zero when the whole torrent is held.
    pub fn missing_count(&self) -> u32 {
        self.geometry.piece_count() - self.have.count_ones()
    }

    /// Connected peers that have `p` (seeds included).
    pub fn availability(&self, p: PieceIndex) -> u32 {
        self.availability[p.as_usize()] + self.seeds.len() as u32
    }

    pub fn in_flight(&self, peer: PeerId) -> usize {
        self.in_flight.get(&peer).map_or(0, BTreeSet::len)
    }

    /// The blocks requested from `peer` and not yet delivered, in (piece, block) order.
    pub fn blocks_requested(&self, peer: PeerId) -> impl Iterator<Item = Block> + '_ {
        self.in_flight.get(&peer).into_iter().flatten().copied()
    }

    /// The scan `interest` saves: the tests' reference.
    #[cfg(test)]
    pub fn is_interesting(&self, peer_has: &Bitfield) -> bool {
        if peer_has.is_full() {
            return self.needed_count > 0;
        }
        (0..self.needed.0.len()).any(|w| bitfield_word(peer_has, w) & self.needed.0[w] != 0)
    }

    // ---- internals ----------------------------------------------------------------------------

    /// The one place a piece changes state; keeps the mirror bitsets exact.
    fn set_state(&mut self, p: PieceIndex, s: PieceState) {
        let old = std::mem::replace(&mut self.state[p.as_usize()], s);
        if s != PieceState::Missing {
            self.deferred.remove(&p);
        }
        let is_needed = |s| matches!(s, PieceState::Missing | PieceState::Partial);
        match (is_needed(old), is_needed(s)) {
            (true, false) => self.needed_count -= 1,
            (false, true) => {
                self.needed_count += 1;
                self.regained += 1;
            }
            _ => {}
        }
        let key = (self.availability[p.as_usize()], p);
        match (old == PieceState::Missing, s == PieceState::Missing) {
            (true, false) => {
                self.rarity.remove(&key);
            }
            (false, true) => {
                self.rarity.insert(key);
            }
            _ => {}
        }
        let i = p.get();
        self.needed
            .put(i, matches!(s, PieceState::Missing | PieceState::Partial));
        if s == PieceState::Have {
            self.have.set(i);
        } else {
            self.have.clear(i);
        }
    }

    /// Removes `peer` from the requesters of `b` (its in-flight entry is already gone); a piece
    /// left with nothing requested or received goes back to Missing.
    fn release_slot(&mut self, peer: PeerId, b: Block) {
        // A parole owner that fails to deliver (timeout, choke, gone) loses the piece's parole:
        // otherwise a staller could re-claim it forever and nobody else could fetch it. The
        // smart-ban records still name a liar once the piece verifies.
        if self.exclusive.get(&b.piece) == Some(&Some(peer)) {
            self.exclusive.remove(&b.piece);
        }
        let Some(part) = self.partial.get_mut(&b.piece) else {
            return;
        };
        let Some(slot) = part.blocks.get_mut(b.block as usize) else {
            return;
        };
        if let Slot::Requested(peers) = slot {
            peers.retain(|&q| q != peer);
            if peers.is_empty() {
                *slot = Slot::Free;
                part.free += 1;
                self.late.remove(&b);
            }
        }
        if part.untouched() {
            self.partial.remove(&b.piece);
            self.set_state(b.piece, PieceState::Missing);
        }
    }

    /// Forgets a Partial piece's progress and its requests (the caller sets the new state).
    fn drop_partial(&mut self, p: PieceIndex) {
        let Some(part) = self.partial.remove(&p) else {
            return;
        };
        for (i, slot) in part.blocks.into_iter().enumerate() {
            if let Slot::Requested(peers) = slot {
                let b = Block {
                    piece: p,
                    block: i as u32,
                };
                self.late.remove(&b);
                for q in peers {
                    if let Some(set) = self.in_flight.get_mut(&q) {
                        set.remove(&b);
                    }
                }
            }
        }
    }
}

/// A piece set as big-endian `u64` words: the same bit order as a wire [`Bitfield`]'s bytes, so
/// it combines with a peer's bitfield 64 pieces at a time.
#[derive(Debug)]
struct Words(Vec<u64>);

impl Words {
    fn full(len: u32) -> Self {
        let mut w = vec![u64::MAX; (len as usize).div_ceil(64)];
        let spare = w.len() * 64 - len as usize;
        if let Some(last) = w.last_mut()
            && spare > 0
        {
            *last &= !((1u64 << spare) - 1);
        }
        Self(w)
    }

    fn get(&self, i: u32) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1u64 << (63 - i % 64)) != 0)
    }

    fn put(&mut self, i: u32, on: bool) {
        let mask = 1u64 << (63 - i % 64);
        let w = &mut self.0[(i / 64) as usize];
        if on {
            *w |= mask;
        } else {
            *w &= !mask;
        }
    }
}

/// Word `w` of a bitfield in [`Words`] layout; bytes past its end read as zero.
fn bitfield_word(bf: &Bitfield, w: usize) -> u64 {
    let bytes = bf.as_bytes();
    let start = (w * 8).min(bytes.len());
    let end = (start + 8).min(bytes.len());
    let mut buf = [0u8; 8];
    buf[..end - start].copy_from_slice(&bytes[start..end]);
    u64::from_be_bytes(buf)
}
