//! Verified pieces in memory, least-recently-used first out, within a byte budget that may be
//! shared with other torrents' stores (a [`MemoryPool`], see `pool.rs`).
//!
//! Pieces are [`Bytes`]: a reply copying from a piece holds its own reference, so eviction only
//! drops the store's handle and never frees bytes under a reader. What may be evicted is the
//! caller's call (`protected`: typically "some reader wants it"); the store only counts bytes.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Notify;

use super::pool::{MemberId, MemoryPool};
use crate::piece::PieceIndex;

/// What `insert` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Insert {
    /// False: the piece did not fit without evicting protected pieces and nobody waits on it,
    /// so it was dropped.
    pub stored: bool,
    /// This store's pieces evicted to make room, least recently used first: tell the picker.
    /// (Pieces of other stores of the pool that went are theirs to take: [`Store::take_evicted`].)
    pub evicted: Vec<PieceIndex>,
}

/// One torrent's pieces in a [`MemoryPool`]: the bytes and the budget are the pool's, shared
/// least recently used with the pool's other stores.
pub struct Store {
    pool: MemoryPool,
    id: MemberId,
    /// The pieces this store was last told it holds: its own inserts less its own evictions
    /// and what [`Store::take_evicted`] returned. A piece another store evicted stays here
    /// until taken, though its bytes are gone (`get` and `peek` say so at once).
    held: HashSet<PieceIndex>,
    wake: Arc<Notify>,
}

impl Store {
    /// A store with a pool of its own (one torrent, the whole budget).
    pub fn new(budget_bytes: u64) -> Self {
        Self::join(&MemoryPool::new(budget_bytes))
    }

    /// A new store sharing `pool`'s budget.
    pub fn join(pool: &MemoryPool) -> Self {
        let wake = Arc::new(Notify::new());
        let id = pool.lock().join(wake.clone());
        Self {
            pool: pool.clone(),
            id,
            held: HashSet::new(),
            wake,
        }
    }

    pub fn pool(&self) -> &MemoryPool {
        &self.pool
    }

    /// Notified when another store of the pool evicted pieces of this one: take them with
    /// [`Store::take_evicted`].
    pub fn evictions(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Pieces other stores evicted since the last call; they are no longer held.
    pub fn take_evicted(&mut self) -> Vec<PieceIndex> {
        let gone = self.pool.lock().take_evicted(self.id);
        for p in &gone {
            self.held.remove(p);
        }
        gone
    }

    /// What this torrent's readers want (piece ranges): no other store evicts those pieces.
    pub fn protect(&mut self, ranges: Vec<Range<u32>>) {
        let merged = crate::piece::merge_ranges(ranges);
        self.pool.lock().protect(self.id, merged);
    }

    /// This torrent's open readers; [`Store::readers_in_pool`] counts every store's.
    pub fn set_readers(&mut self, n: usize) {
        self.pool.lock().set_readers(self.id, n);
    }

    pub fn readers_in_pool(&self) -> usize {
        self.pool.lock().readers()
    }

    /// Takes `bytes` of the budget for memory held elsewhere (pieces being put together): the
    /// next inserts evict down to what is left.
    pub fn set_reserved(&mut self, bytes: u64) {
        self.pool.lock().set_reserved(self.id, bytes);
    }

    /// The piece, marked as just used.
    pub fn get(&mut self, p: PieceIndex) -> Option<Bytes> {
        self.pool.lock().get(self.id, p)
    }

    /// The piece, without touching its recency (uploads should not keep pieces alive).
    pub fn peek(&self, p: PieceIndex) -> Option<Bytes> {
        self.pool.lock().peek(self.id, p)
    }

    /// Held, as far as this store was told (see the field).
    pub fn contains(&self, p: PieceIndex) -> bool {
        self.held.contains(&p)
    }

    /// Stores a verified piece, evicting least-recently-used pieces of any store of the pool
    /// that are not protected until it fits the budget (`protected`: this torrent's readers'
    /// wants; the other stores' are what they last said with [`Store::protect`]).
    ///
    /// When it cannot fit without evicting protected pieces: with `must_keep` (a read waits on
    /// it) every unprotected piece goes and it is stored over budget anyway, since a read must
    /// never livelock; the overshoot is bounded by what readers protect, and later inserts evict
    /// back under budget. Without `must_keep` nothing is evicted and the piece is not stored:
    /// background data never pushes out a reader's window.
    ///
    /// A piece already stored is only marked used (verified data for one index is always the
    /// same bytes).
    pub fn insert(
        &mut self,
        p: PieceIndex,
        data: Bytes,
        must_keep: bool,
        protected: impl Fn(PieceIndex) -> bool,
    ) -> Insert {
        let placed = self
            .pool
            .lock()
            .insert(self.id, p, data, must_keep, protected);
        for q in &placed.own {
            self.held.remove(q);
        }
        if placed.stored {
            self.held.insert(p);
        }
        Insert {
            stored: placed.stored,
            evicted: placed.own,
        }
    }

    /// Bytes of this store's pieces.
    pub fn used_bytes(&self) -> u64 {
        self.pool.lock().member_used(self.id)
    }

    /// The pool's budget, shared with its other stores.
    pub fn budget(&self) -> u64 {
        self.pool.lock().budget()
    }

    /// The pieces held (see `contains`), in no order.
    pub fn pieces(&self) -> impl Iterator<Item = PieceIndex> + '_ {
        self.held.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Whether `bytes` more fit in the pool without evicting anything (`used + reserved +
    /// bytes <= budget`, over every store). The session turns background fetching off while
    /// this is false for a piece.
    pub fn has_room_for(&self, bytes: u64) -> bool {
        self.pool.lock().has_room_for(bytes)
    }
}

impl Store {
    /// Leaves the pool for good (its torrent stopped): its pieces go, their bytes to the other
    /// stores, and nothing is stored again.
    pub fn release(&mut self) {
        self.pool.lock().leave(self.id, self.held.drain());
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::piece::Geometry;

    const PIECE: u64 = 100;

    fn idx(i: u32) -> PieceIndex {
        Geometry::new(PIECE as u32, 100 * PIECE)
            .unwrap()
            .piece(i)
            .unwrap()
    }

    fn data(i: u32) -> Bytes {
        Bytes::from(vec![i as u8; PIECE as usize])
    }

    fn none(_: PieceIndex) -> bool {
        false
    }

    fn stored(s: &Store) -> Vec<u32> {
        let mut v: Vec<u32> = (0..100).filter(|&i| s.contains(idx(i))).collect();
        v.sort_unstable();
        v
    }

    /// A store holding pieces `0..n`, inserted in order (0 least recently used).
    fn filled(budget: u64, n: u32) -> Store {
        let mut s = Store::new(budget);
        for i in 0..n {
            assert!(s.insert(idx(i), data(i), false, none).stored);
        }
        s
    }

    #[test]
    fn evicts_least_recently_used_to_fit_the_budget() {
        let mut s = filled(3 * PIECE, 3);
        assert!(!s.has_room_for(PIECE));
        let r = s.insert(idx(3), data(3), false, none);
        assert_eq!(
            r,
            Insert {
                stored: true,
                evicted: vec![idx(0)]
            }
        );
        assert_eq!(stored(&s), vec![1, 2, 3]);
        assert_eq!(s.used_bytes(), 3 * PIECE);
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn evicts_several_small_pieces_for_one_big_one() {
        let mut s = filled(3 * PIECE, 3);
        let big = Bytes::from(vec![9u8; 2 * PIECE as usize]);
        let r = s.insert(idx(9), big, false, none);
        assert_eq!(r.evicted, vec![idx(0), idx(1)]);
        assert_eq!(s.used_bytes(), 3 * PIECE);
    }

    #[test]
    fn get_refreshes_recency_and_peek_does_not() {
        let mut s = filled(3 * PIECE, 3);
        assert_eq!(s.get(idx(0)), Some(data(0)));
        assert_eq!(s.peek(idx(1)), Some(data(1)));
        let r = s.insert(idx(3), data(3), false, none);
        assert_eq!(r.evicted, vec![idx(1)]);
    }

    #[test]
    fn protected_pieces_survive_eviction() {
        let mut s = filled(3 * PIECE, 3);
        let r = s.insert(idx(3), data(3), false, |p| p == idx(0) || p == idx(1));
        assert_eq!(r.evicted, vec![idx(2)]);
        assert_eq!(stored(&s), vec![0, 1, 3]);
    }

    #[test]
    fn background_insert_refused_rather_than_evict_protected() {
        let mut s = filled(2 * PIECE, 2);
        let r = s.insert(idx(5), data(5), false, |p| p == idx(1));
        // Evicting 0 alone would fit, so that happens.
        assert!(r.stored);
        let r = s.insert(idx(6), data(6), false, |p| p == idx(1) || p == idx(5));
        assert_eq!(r, Insert::default());
        assert_eq!(stored(&s), vec![1, 5], "a refusal evicts nothing");
        assert!(s.get(idx(6)).is_none());
    }

    #[test]
    fn refusal_evicts_nothing_even_when_some_space_was_evictable() {
        let mut s = filled(3 * PIECE, 3);
        let big = Bytes::from(vec![9u8; 3 * PIECE as usize]);
        let r = s.insert(idx(9), big, false, |p| p == idx(2));
        assert_eq!(r, Insert::default());
        assert_eq!(stored(&s), vec![0, 1, 2]);
    }

    #[test]
    fn must_keep_goes_over_budget_then_later_inserts_shrink_back() {
        let mut s = filled(2 * PIECE, 2);
        let reader = |p: PieceIndex| p == idx(0) || p == idx(1);
        let r = s.insert(idx(2), data(2), true, reader);
        assert_eq!(
            r,
            Insert {
                stored: true,
                evicted: vec![]
            }
        );
        assert_eq!(s.used_bytes(), 3 * PIECE);
        assert!(!s.has_room_for(0));
        // The reader moved on: the next insert evicts back to the budget.
        let r = s.insert(idx(3), data(3), false, none);
        assert_eq!(r.evicted, vec![idx(0), idx(1)]);
        assert_eq!(s.used_bytes(), 2 * PIECE);
        assert_eq!(stored(&s), vec![2, 3]);
    }

    #[test]
    fn must_keep_evicts_what_it_can_before_overshooting() {
        let mut s = filled(2 * PIECE, 2);
        let r = s.insert(idx(2), data(2), true, |p| p == idx(1));
        assert_eq!(r.evicted, vec![idx(0)]);
        assert_eq!(s.used_bytes(), 2 * PIECE);
    }

    #[test]
    fn budget_smaller_than_one_piece_still_serves_must_keep() {
        let mut s = Store::new(PIECE / 2);
        assert!(!s.insert(idx(0), data(0), false, none).stored);
        assert!(s.is_empty());
        assert!(s.insert(idx(0), data(0), true, none).stored);
        assert_eq!(s.get(idx(0)), Some(data(0)));
        let r = s.insert(idx(1), data(1), true, none);
        assert_eq!(r.evicted, vec![idx(0)]);
        assert_eq!(stored(&s), vec![1]);
    }

    #[test]
    fn held_piece_stays_valid_after_eviction() {
        let mut s = filled(PIECE, 1);
        let held = s.get(idx(0)).unwrap();
        let r = s.insert(idx(1), data(1), false, none);
        assert_eq!(r.evicted, vec![idx(0)]);
        assert!(!s.contains(idx(0)));
        assert_eq!(held, data(0));
    }

    #[test]
    fn inserting_a_stored_piece_again_only_touches_it() {
        let mut s = filled(2 * PIECE, 2);
        let r = s.insert(idx(0), data(0), false, none);
        assert_eq!(
            r,
            Insert {
                stored: true,
                evicted: vec![]
            }
        );
        assert_eq!(s.used_bytes(), 2 * PIECE);
        let r = s.insert(idx(2), data(2), false, none);
        assert_eq!(r.evicted, vec![idx(1)]);
    }

    #[test]
    fn another_stores_eviction_frees_bytes_at_once_and_is_taken_once() {
        let pool = MemoryPool::new(2 * PIECE);
        let mut a = Store::join(&pool);
        let mut b = Store::join(&pool);
        a.insert(idx(0), data(0), false, none);
        b.insert(idx(0), data(0), false, none);
        b.insert(idx(1), data(1), false, none);
        // a's piece was the oldest: its bytes are gone, a still counts it held until told.
        assert_eq!((a.used_bytes(), b.used_bytes()), (0, 2 * PIECE));
        assert!(a.get(idx(0)).is_none() && a.peek(idx(0)).is_none());
        assert!(a.contains(idx(0)));
        assert_eq!(a.take_evicted(), vec![idx(0)]);
        assert!(!a.contains(idx(0)) && a.is_empty());
        // b's reader protects piece 1: a's insert takes b's piece 0 only.
        b.protect(std::iter::once(1..2).collect());
        let r = a.insert(idx(5), data(5), false, none);
        assert_eq!(r.evicted, vec![]);
        assert_eq!(b.take_evicted(), vec![idx(0)]);
        // A stopped store frees its bytes and stores nothing more.
        b.release();
        assert_eq!(pool.used(), PIECE);
        assert!(!b.insert(idx(2), data(2), false, none).stored);
        drop(b);
        assert_eq!(pool.used(), PIECE);
    }

    #[test]
    fn has_room_for_counts_only_free_budget() {
        let s = filled(3 * PIECE, 2);
        assert_eq!(s.budget(), 3 * PIECE);
        assert!(s.has_room_for(PIECE));
        assert!(!s.has_room_for(PIECE + 1));
        assert!(!s.has_room_for(u64::MAX));
    }
}
