//! One memory budget for a process's verified pieces, whatever torrent they belong to: one
//! least-recently-used order across all torrents, so a busy torrent takes memory from idle
//! ones and never from what another torrent's readers protect.
//!
//! The pool holds the pieces' bytes and all the accounting; a [`Store`](super::Store) is one
//! torrent's view of it (its member). Eviction is decided here and takes effect here at once:
//! a piece of another torrent that goes leaves memory immediately, and its torrent is told
//! afterwards (its member's `evicted` queue, and a wake-up), so that torrent's session updates
//! what it announces under its own lock, later. No session ever locks another's state.
//!
//! # The invariant
//! - `used` is the sum of the bytes of the pieces held, and `reserved` the sum of the members'
//!   reservations (pieces being put together); both are counted here only.
//! - `used + reserved <= budget` after every insert, except for a piece a read waits on
//!   (`must_keep`) that cannot fit without evicting protected pieces: then it is stored over
//!   budget, by at most what readers protect, and later inserts evict back under it.
//! - A piece is protected while a reader of its own torrent wants it: the inserting torrent
//!   asks its picker (`protected`), the others' wants are what they last published
//!   (`Books::protect`). Those windows are each torrent's floor: no other torrent's insert
//!   evicts them.
//!
//! # Locks
//! The pool's mutex is a leaf taken under a session's state lock (every operation of a
//! member runs under its session's lock); nothing is locked while it is held.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use lru::LruCache;
use tokio::sync::Notify;

use crate::piece::PieceIndex;

/// A member of the pool: one torrent's store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemberId(u64);

/// The process's memory budget, shared by the stores of every session; cheap to clone.
#[derive(Clone)]
pub struct MemoryPool {
    books: Arc<Mutex<Books>>,
}

impl std::fmt::Debug for MemoryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.lock();
        f.debug_struct("MemoryPool")
            .field("budget", &b.budget)
            .field("used", &b.used)
            .field("members", &b.members.len())
            .finish()
    }
}

impl MemoryPool {
    pub fn new(budget_bytes: u64) -> Self {
        Self {
            books: Arc::new(Mutex::new(Books::new(budget_bytes))),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Books> {
        crate::sync::lock(&self.books)
    }

    pub fn budget(&self) -> u64 {
        self.lock().budget
    }

    /// Bytes of every member's pieces (reservations not included).
    pub fn used(&self) -> u64 {
        self.lock().used
    }
}

/// What an insert did to the pool.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Placed {
    pub(super) stored: bool,
    /// The inserting member's own pieces evicted, least recently used first.
    pub(super) own: Vec<PieceIndex>,
}

/// One member's part of the accounting.
struct Book {
    used: u64,
    reserved: u64,
    /// What its readers want, sorted and merged: never evicted for another member.
    protected: Vec<Range<u32>>,
    /// Its open readers (the readers' windows together stay within half the budget).
    readers: usize,
    /// Its pieces another member's insert evicted, not yet taken by it.
    evicted: Vec<PieceIndex>,
    /// Woken when `evicted` gets a piece.
    wake: Arc<Notify>,
}

impl Book {
    fn protects(&self, p: PieceIndex) -> bool {
        let i = p.get();
        let at = self.protected.partition_point(|r| r.end <= i);
        self.protected.get(at).is_some_and(|r| r.contains(&i))
    }
}

/// The pool's state: the pieces in one recency order, and each member's book.
pub(super) struct Books {
    budget: u64,
    /// Unbounded by count; the byte budget is enforced in `insert`.
    pieces: LruCache<(MemberId, PieceIndex), Bytes>,
    used: u64,
    reserved: u64,
    /// Open readers of every member.
    readers: usize,
    members: HashMap<MemberId, Book>,
    next: u64,
}

impl Books {
    fn new(budget: u64) -> Self {
        Self {
            budget,
            pieces: LruCache::unbounded(),
            used: 0,
            reserved: 0,
            readers: 0,
            members: HashMap::new(),
            next: 0,
        }
    }

    pub(super) fn budget(&self) -> u64 {
        self.budget
    }

    /// A new member, woken through `wake` when another evicts its pieces.
    pub(super) fn join(&mut self, wake: Arc<Notify>) -> MemberId {
        let id = MemberId(self.next);
        self.next += 1;
        let book = Book {
            used: 0,
            reserved: 0,
            protected: Vec::new(),
            readers: 0,
            evicted: Vec::new(),
            wake,
        };
        self.members.insert(id, book);
        id
    }

    /// The member and all its pieces go (its `pieces`: what it holds).
    pub(super) fn leave(&mut self, m: MemberId, pieces: impl IntoIterator<Item = PieceIndex>) {
        for p in pieces {
            if let Some(b) = self.pieces.pop(&(m, p)) {
                self.used -= b.len() as u64;
            }
        }
        if let Some(book) = self.members.remove(&m) {
            self.reserved -= book.reserved;
            self.readers -= book.readers;
        }
    }

    pub(super) fn get(&mut self, m: MemberId, p: PieceIndex) -> Option<Bytes> {
        self.pieces.get(&(m, p)).cloned()
    }

    pub(super) fn peek(&self, m: MemberId, p: PieceIndex) -> Option<Bytes> {
        self.pieces.peek(&(m, p)).cloned()
    }

    pub(super) fn member_used(&self, m: MemberId) -> u64 {
        self.members.get(&m).map_or(0, |b| b.used)
    }

    pub(super) fn set_reserved(&mut self, m: MemberId, bytes: u64) {
        if let Some(book) = self.members.get_mut(&m) {
            self.reserved = self.reserved - book.reserved + bytes;
            book.reserved = bytes;
        }
    }

    pub(super) fn protect(&mut self, m: MemberId, ranges: Vec<Range<u32>>) {
        if let Some(book) = self.members.get_mut(&m) {
            book.protected = ranges;
        }
    }

    pub(super) fn set_readers(&mut self, m: MemberId, n: usize) {
        if let Some(book) = self.members.get_mut(&m) {
            self.readers = self.readers - book.readers + n;
            book.readers = n;
        }
    }

    /// Open readers of every member.
    pub(super) fn readers(&self) -> usize {
        self.readers
    }

    /// Whether `bytes` more fit without evicting anything.
    pub(super) fn has_room_for(&self, bytes: u64) -> bool {
        (self.used + self.reserved).saturating_add(bytes) <= self.budget
    }

    /// Pieces of `m` other members evicted since it last asked.
    pub(super) fn take_evicted(&mut self, m: MemberId) -> Vec<PieceIndex> {
        (self.members.get_mut(&m)).map_or_else(Vec::new, |b| std::mem::take(&mut b.evicted))
    }

    /// Stores `m`'s piece `p`, evicting the least recently used pieces of any member that no
    /// reader of theirs protects (`protected`: `m`'s own readers' wants, asked now) until it
    /// fits; see the module doc for `must_keep`. A piece already stored is only marked used.
    pub(super) fn insert(
        &mut self,
        m: MemberId,
        p: PieceIndex,
        data: Bytes,
        must_keep: bool,
        protected: impl Fn(PieceIndex) -> bool,
    ) -> Placed {
        if self.pieces.get(&(m, p)).is_some() {
            return Placed {
                stored: true,
                own: Vec::new(),
            };
        }
        if !self.members.contains_key(&m) {
            return Placed::default();
        }
        let len = data.len() as u64;
        let excess = (self.used + self.reserved + len).saturating_sub(self.budget);
        // Victims in eviction order, found before evicting anything so a refusal changes nothing.
        let mut victims = Vec::new();
        let mut freed = 0u64;
        for (&(owner, q), bytes) in self.pieces.iter().rev() {
            if freed >= excess {
                break;
            }
            let kept = match owner == m {
                true => protected(q),
                false => self.members.get(&owner).is_some_and(|b| b.protects(q)),
            };
            if !kept {
                victims.push((owner, q));
                freed += bytes.len() as u64;
            }
        }
        if freed < excess && !must_keep {
            return Placed::default();
        }
        let mut own = Vec::new();
        for (owner, q) in victims {
            let Some(bytes) = self.pieces.pop(&(owner, q)) else {
                continue;
            };
            let n = bytes.len() as u64;
            self.used -= n;
            if let Some(b) = self.members.get_mut(&owner) {
                b.used -= n;
                if owner != m {
                    b.evicted.push(q);
                    b.wake.notify_one();
                }
            }
            if owner == m {
                own.push(q);
            }
        }
        if self.used + self.reserved + len > self.budget {
            tracing::debug!(
                piece = %p,
                used = self.used + self.reserved + len,
                budget = self.budget,
                "memory over budget to keep a piece a reader waits on"
            );
        }
        self.used += len;
        if let Some(b) = self.members.get_mut(&m) {
            b.used += len;
            // Evicted and stored again before it took the news: it holds the piece.
            b.evicted.retain(|&q| q != p);
        }
        self.pieces.put((m, p), data);
        Placed { stored: true, own }
    }

    /// The invariant's accounting, recomputed from the pieces (tests).
    #[cfg(test)]
    pub(super) fn check(&self) {
        let total: u64 = self.pieces.iter().map(|(_, b)| b.len() as u64).sum();
        assert_eq!(total, self.used, "used is the bytes held");
        for (&m, book) in &self.members {
            let own: u64 = (self.pieces.iter())
                .filter(|((o, _), _)| *o == m)
                .map(|(_, b)| b.len() as u64)
                .sum();
            assert_eq!(own, book.used, "a member's used is its bytes held");
        }
        let reserved: u64 = self.members.values().map(|b| b.reserved).sum();
        assert_eq!(reserved, self.reserved);
        let readers: usize = self.members.values().map(|b| b.readers).sum();
        assert_eq!(readers, self.readers);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::piece::Geometry;

    const PIECE: u64 = 100;

    fn idx(i: u32) -> PieceIndex {
        Geometry::new(PIECE as u32, 100 * PIECE)
            .unwrap()
            .piece(i)
            .unwrap()
    }

    fn data() -> Bytes {
        Bytes::from(vec![1u8; PIECE as usize])
    }

    fn none(_: PieceIndex) -> bool {
        false
    }

    fn two(budget: u64) -> (Books, MemberId, MemberId, Arc<Notify>) {
        let mut b = Books::new(budget);
        let wake = Arc::new(Notify::new());
        let x = b.join(Arc::new(Notify::new()));
        let y = b.join(wake.clone());
        (b, x, y, wake)
    }

    #[test]
    fn the_least_recently_used_piece_of_any_member_goes_first() {
        let (mut b, x, y, _) = two(3 * PIECE);
        b.insert(y, idx(0), data(), false, none);
        b.insert(x, idx(0), data(), false, none);
        b.insert(x, idx(1), data(), false, none);
        // y's piece is the oldest: x's next piece takes its place, not x's own.
        let r = b.insert(x, idx(2), data(), false, none);
        assert_eq!(
            r,
            Placed {
                stored: true,
                own: vec![]
            }
        );
        assert_eq!(b.take_evicted(y), [idx(0)]);
        assert_eq!(b.take_evicted(y), [], "taken once");
        assert!(b.peek(y, idx(0)).is_none(), "gone from memory at once");
        // Now x's oldest goes.
        b.get(x, idx(0));
        let r = b.insert(x, idx(3), data(), false, none);
        assert_eq!(r.own, [idx(1)]);
        assert_eq!((b.member_used(x), b.member_used(y)), (3 * PIECE, 0));
        b.check();
    }

    #[test]
    fn another_members_protected_window_is_never_evicted() {
        let (mut b, x, y, _) = two(3 * PIECE);
        b.insert(y, idx(0), data(), false, none);
        b.insert(y, idx(1), data(), false, none);
        b.protect(y, std::iter::once(0..2).collect());
        b.insert(x, idx(0), data(), false, none);
        // Only x's own piece is evictable; background data is refused rather than take y's.
        let r = b.insert(x, idx(1), data(), false, |q| q == idx(0));
        assert_eq!(r, Placed::default());
        let r = b.insert(x, idx(1), data(), false, none);
        assert_eq!(r.own, [idx(0)]);
        // A piece a read of x waits on goes over budget instead.
        let r = b.insert(x, idx(2), data(), true, |q| q == idx(1));
        assert_eq!(
            r,
            Placed {
                stored: true,
                own: vec![]
            }
        );
        assert_eq!(b.used, 4 * PIECE);
        assert!(b.take_evicted(y).is_empty());
        // y's reader moves on: the next insert evicts back to the budget, y's first.
        b.protect(y, vec![]);
        let r = b.insert(x, idx(3), data(), false, none);
        assert_eq!(r.own, [] as [PieceIndex; 0]);
        assert_eq!(b.take_evicted(y), [idx(0), idx(1)]);
        assert_eq!(b.used, 3 * PIECE);
        b.check();
    }

    #[test]
    fn reservations_of_every_member_count() {
        let (mut b, x, y, _) = two(3 * PIECE);
        b.set_reserved(y, 2 * PIECE);
        assert!(b.has_room_for(PIECE) && !b.has_room_for(PIECE + 1));
        b.insert(x, idx(0), data(), false, none);
        let r = b.insert(x, idx(1), data(), false, none);
        assert_eq!(r.own, [idx(0)]);
        b.set_readers(x, 1);
        b.set_readers(y, 2);
        assert_eq!(b.readers(), 3, "every member's readers count");
        b.leave(y, []);
        assert_eq!(b.readers(), 1);
        assert!(b.has_room_for(2 * PIECE));
        b.check();
    }

    #[tokio::test]
    async fn evicted_then_stored_again_before_taking_the_news_is_held() {
        let (mut b, x, y, wake) = two(PIECE);
        b.insert(y, idx(5), data(), false, none);
        b.insert(x, idx(0), data(), false, none);
        b.insert(y, idx(5), data(), true, none);
        assert_eq!(b.take_evicted(y), [] as [PieceIndex; 0]);
        assert_eq!(b.take_evicted(x), [idx(0)]);
        // y was woken for the first eviction.
        let woken = tokio::time::timeout(std::time::Duration::ZERO, wake.notified()).await;
        assert!(woken.is_ok());
    }

    #[test]
    fn a_member_leaving_frees_its_bytes() {
        let (mut b, x, y, _) = two(3 * PIECE);
        b.insert(y, idx(0), data(), false, none);
        b.insert(y, idx(1), data(), false, none);
        b.insert(x, idx(0), data(), false, none);
        b.leave(y, [idx(0), idx(1)]);
        assert_eq!(b.used, PIECE);
        assert!(b.has_room_for(2 * PIECE));
        b.check();
    }

    /// The invariant under a random walk of three members: the accounting always adds up,
    /// the sum of bytes held is within the budget unless a read's piece had to go over it,
    /// and a piece some member's reader protects is never evicted by another member.
    #[test]
    fn the_budget_holds_across_members() {
        for seed in 0..40 {
            let mut rng = StdRng::seed_from_u64(seed);
            let budget = 6 * PIECE;
            let mut b = Books::new(budget);
            let ms: Vec<MemberId> = (0..3).map(|_| b.join(Arc::new(Notify::new()))).collect();
            let mut held: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); 3];
            for _ in 0..500 {
                let k = rng.random_range(0..3);
                let m = ms[k];
                match rng.random_range(0..5) {
                    0 => {
                        let start = rng.random_range(0..8);
                        let range = start..start + rng.random_range(0..3);
                        b.protect(
                            m,
                            std::iter::once(range).filter(|r| !r.is_empty()).collect(),
                        );
                    }
                    1 => {
                        b.set_reserved(m, rng.random_range(0..2) * PIECE / 2);
                        b.set_readers(m, rng.random_range(0..3));
                    }
                    _ => {
                        let p = idx(rng.random_range(0..10));
                        let must_keep = rng.random_bool(0.1);
                        let used_before = b.used + b.reserved;
                        // The others' protected pieces, before the insert.
                        let guarded: Vec<(usize, u32)> = (0..3)
                            .filter(|&o| o != k)
                            .flat_map(|o| {
                                let book = &b.members[&ms[o]];
                                (held[o].iter())
                                    .filter(|&&q| book.protects(idx(q)))
                                    .map(move |&q| (o, q))
                                    .collect::<Vec<_>>()
                            })
                            .collect();
                        let r = b.insert(m, p, data(), must_keep, none);
                        if r.stored {
                            held[k].insert(p.get());
                        }
                        for q in r.own {
                            held[k].remove(&q.get());
                        }
                        for (o, &mo) in ms.iter().enumerate() {
                            for q in b.take_evicted(mo) {
                                assert!(
                                    !guarded.contains(&(o, q.get())),
                                    "seed {seed}: a protected piece of another member evicted"
                                );
                                held[o].remove(&q.get());
                            }
                        }
                        if !must_keep && used_before <= budget {
                            assert!(b.used + b.reserved <= budget, "seed {seed}: over budget");
                        }
                    }
                }
                b.check();
                for (o, &mo) in ms.iter().enumerate() {
                    let actual: BTreeSet<u32> =
                        (0..10).filter(|&i| b.peek(mo, idx(i)).is_some()).collect();
                    assert_eq!(
                        actual, held[o],
                        "seed {seed}: a member's view is the pool's"
                    );
                }
            }
        }
    }
}
