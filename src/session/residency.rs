//! Where each verified piece lives: in memory, in the disk cache (`--cache-dir`), both, or
//! nowhere. This type is the one owner of that question; the picker's Have state, our
//! `bitfield`/`have` messages and what we serve to peers all follow from it.
//!
//! # The invariant
//! - A piece is **held** while memory or the disk cache holds it, and **durable** while the
//!   disk holds it. Every change of that is returned as a [`Change`], and the session applies
//!   each in one place (`State::apply`): `Held` makes the piece Have in the picker and announces
//!   it; `Gone` makes it Missing again. So the picker's Have pieces are exactly the held pieces.
//! - A `have` is a promise, and BitTorrent cannot take one back. What memory holds may be
//!   evicted, so it is announced only to peers that speak Fast (BEP 6), whose requests for a
//!   piece we no longer hold get a `reject_request`. A peer without Fast could only be left
//!   unanswered: it is told only of durable pieces (their `have` goes out when the piece
//!   reaches the disk: `Durable`). Without a disk cache, such a peer is told of nothing.
//! - When memory drops a piece the disk does not hold, it is no longer held (fetched again when
//!   a reader wants it); Fast peers told of it get rejects, and it is announced again when it
//!   comes back. A durable piece the disk later evicts is the one promise we may break to a
//!   peer without Fast (its request then goes unanswered until the piece comes back).
//! - Only verified bytes get here: memory takes a piece after its SHA1 check (data from peers, or
//!   a disk load re-checked on the way), and the disk is written only from verified pieces.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::piece::PieceIndex;
use crate::store::{DiskFloor, Store};

/// A change of what we hold, to apply to the picker and the peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Newly held: Have in the picker, `have` to Fast peers, and to the others if `durable`.
    Held { piece: PieceIndex, durable: bool },
    /// Held already, now on disk too: `have` to peers without Fast.
    Durable(PieceIndex),
    /// No longer held: Missing in the picker, fetched again when wanted.
    Gone(PieceIndex),
    /// Just verified but kept nowhere (no room in memory for data no reader waits on, and not
    /// on disk): never held, never announced; Missing in the picker.
    NotKept(PieceIndex),
}

/// Memory and disk holdings of one torrent's verified pieces.
pub(crate) struct Residency {
    memory: Store,
    /// Pieces the disk cache holds (its files), mirrored here so that nothing under the state
    /// lock touches the disk.
    disk: HashSet<PieceIndex>,
    /// Tells the disk pool what our readers want (no I/O); `None` without a disk cache.
    disk_floor: Option<DiskFloor>,
}

impl Residency {
    /// Nothing held; `memory`, this torrent's store (its budget maybe shared with others).
    pub(crate) fn new(memory: Store) -> Self {
        Self {
            memory,
            disk: HashSet::new(),
            disk_floor: None,
        }
    }

    /// The disk cache is open: our readers' wants are its floor too.
    pub(crate) fn set_disk_floor(&mut self, floor: DiskFloor) {
        self.disk_floor = Some(floor);
    }

    /// Pieces other torrents' inserts evicted from memory since the last call: gone unless the
    /// disk holds them.
    pub(crate) fn taken_by_others(&mut self) -> Vec<Change> {
        let taken = self.memory.take_evicted();
        (taken.into_iter())
            .filter(|q| !self.disk.contains(q))
            .map(Change::Gone)
            .collect()
    }

    /// The session stopped: memory holds nothing of it any more, nor will (disk stays).
    pub(crate) fn release_memory(&mut self) {
        self.memory.release();
    }

    /// What this torrent's readers want (piece ranges), kept from other torrents' evictions,
    /// in memory and on disk.
    pub(crate) fn protect(&mut self, ranges: Vec<std::ops::Range<u32>>) {
        if let Some(floor) = &self.disk_floor {
            floor.protect(ranges.clone());
        }
        self.memory.protect(ranges);
    }

    /// This torrent's open readers, counted with every torrent's sharing the memory.
    pub(crate) fn set_readers(&mut self, n: usize) {
        self.memory.set_readers(n);
    }

    /// Open readers of every torrent sharing the memory budget.
    pub(crate) fn readers_sharing_memory(&self) -> usize {
        self.memory.readers_in_pool()
    }

    /// Memory or disk holds `p`: we can serve it.
    pub(crate) fn holds(&self, p: PieceIndex) -> bool {
        self.memory.contains(p) || self.disk.contains(&p)
    }

    pub(crate) fn in_memory(&self, p: PieceIndex) -> bool {
        self.memory.contains(p)
    }

    pub(crate) fn on_disk(&self, p: PieceIndex) -> bool {
        self.disk.contains(&p)
    }

    /// The pieces the disk holds, as a bitfield of `n` pieces: what a peer without Fast is
    /// told we have.
    pub(crate) fn durable_bitfield(&self, n: u32) -> crate::bitfield::Bitfield {
        let mut bf = crate::bitfield::Bitfield::new(n);
        for p in &self.disk {
            bf.set(p.get());
        }
        bf
    }

    /// The piece from memory for a read, marked as just used.
    pub(crate) fn get(&mut self, p: PieceIndex) -> Option<Bytes> {
        self.memory.get(p)
    }

    /// The piece from memory without touching its recency: uploads do not keep pieces alive.
    pub(crate) fn peek(&self, p: PieceIndex) -> Option<Bytes> {
        self.memory.peek(p)
    }

    pub(crate) fn memory_used(&self) -> u64 {
        self.memory.used_bytes()
    }

    pub(crate) fn memory_budget(&self) -> u64 {
        self.memory.budget()
    }

    /// Memory held by pieces being put together, which the budget must cover too.
    pub(crate) fn reserve(&mut self, bytes: u64) {
        self.memory.set_reserved(bytes);
    }

    /// Whether `bytes` more fit in memory without evicting anything.
    pub(crate) fn memory_has_room_for(&self, bytes: u64) -> bool {
        self.memory.has_room_for(bytes)
    }

    /// Pieces the disk cache already held when it was opened.
    pub(crate) fn found_on_disk(
        &mut self,
        pieces: impl IntoIterator<Item = PieceIndex>,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        for p in pieces {
            let was = self.holds(p);
            self.disk.insert(p);
            if !was {
                changes.push(Change::Held {
                    piece: p,
                    durable: true,
                });
            }
        }
        changes
    }

    /// A piece that just passed its SHA1 check, from peers. Kept in memory if it fits (see
    /// [`Store::insert`] for `must_keep` and `protected`); what that evicts from memory is gone
    /// unless the disk holds it.
    pub(crate) fn verified(
        &mut self,
        p: PieceIndex,
        data: Bytes,
        must_keep: bool,
        protected: impl Fn(PieceIndex) -> bool,
    ) -> Vec<Change> {
        let was = self.holds(p);
        let mut changes = self.insert(p, data, must_keep, protected);
        match (was, self.holds(p)) {
            (false, true) => changes.push(Change::Held {
                piece: p,
                durable: self.on_disk(p),
            }),
            (false, false) => changes.push(Change::NotKept(p)),
            _ => {}
        }
        changes
    }

    /// A piece loaded from disk and checked again: into memory if it fits. It was held already.
    pub(crate) fn loaded(
        &mut self,
        p: PieceIndex,
        data: Bytes,
        must_keep: bool,
        protected: impl Fn(PieceIndex) -> bool,
    ) -> Vec<Change> {
        self.insert(p, data, must_keep, protected)
    }

    /// The disk cache wrote `p`, and evicted `evicted` to make room for it.
    pub(crate) fn written(&mut self, p: PieceIndex, evicted: &[PieceIndex]) -> Vec<Change> {
        let mut changes = Vec::new();
        for &q in evicted.iter().filter(|&&q| q != p) {
            changes.extend(self.disk_lost(q));
        }
        let (was, durable) = (self.holds(p), self.on_disk(p));
        self.disk.insert(p);
        if !was {
            // Memory dropped it while it waited to be written: held again.
            changes.push(Change::Held {
                piece: p,
                durable: true,
            });
        } else if !durable {
            changes.push(Change::Durable(p));
        }
        changes
    }

    /// The disk no longer holds `p` (evicted, by our write or another torrent's, failed its
    /// check on load, or unreadable).
    pub(crate) fn disk_lost(&mut self, p: PieceIndex) -> Vec<Change> {
        let was = self.holds(p);
        self.disk.remove(&p);
        if was && !self.holds(p) {
            vec![Change::Gone(p)]
        } else {
            Vec::new()
        }
    }

    /// Memory forgets every piece at once, as under pressure (tests).
    #[cfg(test)]
    pub(crate) fn drop_memory(&mut self) -> Vec<Change> {
        let held: Vec<PieceIndex> = self.memory.pieces().collect();
        self.memory = Store::join(&self.memory.pool().clone());
        held.into_iter()
            .filter(|p| !self.disk.contains(p))
            .map(Change::Gone)
            .collect()
    }

    fn insert(
        &mut self,
        p: PieceIndex,
        data: Bytes,
        must_keep: bool,
        protected: impl Fn(PieceIndex) -> bool,
    ) -> Vec<Change> {
        let inserted = self.memory.insert(p, data, must_keep, protected);
        inserted
            .evicted
            .into_iter()
            .filter(|q| !self.disk.contains(q))
            .map(Change::Gone)
            .collect()
    }
}

/// Disk loads in flight, with who waits for each (uploads; reads wait on `verified` instead).
#[derive(Default)]
pub(crate) struct Loads {
    running: HashMap<PieceIndex, Vec<oneshot::Sender<Option<Bytes>>>>,
}

impl Loads {
    /// Marks `p` as loading; true if a load must be started for it.
    pub(crate) fn begin(
        &mut self,
        p: PieceIndex,
        waiter: Option<oneshot::Sender<Option<Bytes>>>,
    ) -> bool {
        match self.running.entry(p) {
            Entry::Occupied(mut e) => {
                e.get_mut().extend(waiter);
                false
            }
            Entry::Vacant(e) => {
                e.insert(waiter.into_iter().collect());
                true
            }
        }
    }

    pub(crate) fn finish(&mut self, p: PieceIndex) -> Vec<oneshot::Sender<Option<Bytes>>> {
        self.running.remove(&p).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::piece::Geometry;

    const PIECE: u32 = 16 * 1024;

    fn piece(i: u32) -> PieceIndex {
        Geometry::new(PIECE, u64::from(PIECE) * 64)
            .unwrap()
            .piece(i)
            .unwrap()
    }

    fn data() -> Bytes {
        Bytes::from(vec![7u8; PIECE as usize])
    }

    /// A piece newly held from memory only, and one held from disk.
    fn held(i: u32) -> Change {
        Change::Held {
            piece: piece(i),
            durable: false,
        }
    }

    fn held_durable(i: u32) -> Change {
        Change::Held {
            piece: piece(i),
            durable: true,
        }
    }

    /// What two peers were told since they connected: one speaks Fast (told of every piece
    /// held), one does not (told only of durable ones).
    #[derive(Default)]
    struct Announced {
        fast: BTreeSet<u32>,
        plain: BTreeSet<u32>,
    }

    impl Announced {
        fn apply(&mut self, r: &Residency, held: &mut BTreeSet<u32>, changes: &[Change]) {
            for c in changes {
                match *c {
                    Change::Held { piece: p, durable } => {
                        assert!(held.insert(p.get()), "{p} announced twice in a row");
                        assert_eq!(durable, r.on_disk(p), "{p}");
                        self.fast.insert(p.get());
                        if durable {
                            self.plain.insert(p.get());
                        }
                    }
                    Change::Durable(p) => {
                        assert!(held.contains(&p.get()) && r.on_disk(p), "{p}");
                        self.plain.insert(p.get());
                    }
                    Change::Gone(p) => assert!(held.remove(&p.get()), "{p} gone, never held"),
                    Change::NotKept(p) => {
                        assert!(!held.contains(&p.get()), "{p} not kept, yet held")
                    }
                }
            }
        }
    }

    #[test]
    fn a_verified_piece_is_held_once_and_announced() {
        let mut r = Residency::new(Store::new(u64::from(PIECE) * 2));
        assert_eq!(r.verified(piece(0), data(), false, |_| false), [held(0)]);
        assert!(r.holds(piece(0)) && r.in_memory(piece(0)));
        assert_eq!(r.verified(piece(0), data(), false, |_| false), []);
    }

    #[test]
    fn memory_eviction_is_gone_unless_on_disk() {
        let mut r = Residency::new(Store::new(u64::from(PIECE)));
        r.verified(piece(0), data(), false, |_| false);
        r.written(piece(0), &[]);
        r.verified(piece(1), data(), false, |_| false);
        // 0 left memory for 1 but the disk has it: still held, nothing to tell anyone.
        assert!(r.holds(piece(0)) && !r.in_memory(piece(0)));
        // 1 leaves memory for 2 and is on no disk: gone.
        assert_eq!(
            r.verified(piece(2), data(), false, |_| false),
            [Change::Gone(piece(1)), held(2)]
        );
    }

    #[test]
    fn a_piece_no_reader_wants_is_not_kept_when_memory_is_protected() {
        let mut r = Residency::new(Store::new(u64::from(PIECE)));
        r.verified(piece(0), data(), false, |_| false);
        assert_eq!(
            r.verified(piece(1), data(), false, |q| q == piece(0)),
            [Change::NotKept(piece(1))]
        );
        // Unless a read waits on it.
        assert_eq!(
            r.verified(piece(1), data(), true, |q| q == piece(0)),
            [held(1)]
        );
    }

    #[test]
    fn written_after_memory_dropped_it_is_held_again() {
        let mut r = Residency::new(Store::new(u64::from(PIECE)));
        r.verified(piece(0), data(), false, |_| false);
        assert_eq!(
            r.verified(piece(1), data(), false, |_| false)[0],
            Change::Gone(piece(0))
        );
        assert_eq!(r.written(piece(0), &[]), [held_durable(0)]);
        // The disk evicting it for 1, which memory has: 0 is gone, 1 is now durable too.
        assert_eq!(
            r.written(piece(1), &[piece(0)]),
            [Change::Gone(piece(0)), Change::Durable(piece(1))]
        );
        assert_eq!(r.disk_lost(piece(1)), [], "memory still holds 1");
    }

    /// A random walk of every operation: the set of held pieces, as rebuilt from the changes
    /// alone, always equals `holds`; every piece held is announced to Fast peers, and every
    /// piece on disk (and only such) to peers without Fast.
    #[test]
    fn changes_track_holdings_exactly() {
        for seed in 0..50 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut r = Residency::new(Store::new(u64::from(PIECE) * 3));
            let mut held = BTreeSet::new();
            let mut told = Announced::default();
            let first = r.found_on_disk([piece(5), piece(6)]);
            told.apply(&r, &mut held, &first);
            for _ in 0..400 {
                let p = piece(rng.random_range(0..10));
                let changes = match rng.random_range(0..5) {
                    0 | 1 => {
                        let must_keep = rng.random_bool(0.3);
                        let protect = rng.random_range(0..10);
                        r.verified(p, data(), must_keep, |q| q.get() == protect)
                    }
                    2 if r.on_disk(p) => r.loaded(p, data(), false, |_| false),
                    3 => {
                        let evicted: Vec<_> = (0..rng.random_range(0..3))
                            .map(|_| piece(rng.random_range(0..10)))
                            .filter(|&q| r.on_disk(q))
                            .collect();
                        r.written(p, &evicted)
                    }
                    4 => r.disk_lost(p),
                    _ => Vec::new(),
                };
                told.apply(&r, &mut held, &changes);
                let actual: BTreeSet<u32> = (0..10).filter(|&i| r.holds(piece(i))).collect();
                assert_eq!(held, actual, "seed {seed}");
                assert!(
                    held.is_subset(&told.fast),
                    "a held piece was never announced"
                );
                let durable: BTreeSet<u32> = (0..10).filter(|&i| r.on_disk(piece(i))).collect();
                assert!(
                    durable.is_subset(&told.plain),
                    "a piece on disk was never announced to peers without Fast"
                );
            }
        }
    }
}
