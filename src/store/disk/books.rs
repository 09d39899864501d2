//! The accounting of one disk cache shared by a process's torrents: which piece files of which
//! info-hash directory it counts, one least-recently-used order across them, and what may be
//! evicted for whom. No I/O: the pool (`pool.rs`) and the stores (`mod.rs`) do the files, and
//! call this under the books' mutex.
//!
//! # The invariant
//! - `used` is the sum of the lengths of every piece counted; each directory's `used` is its
//!   part. A directory is a member's (a torrent of this process has it mounted) or stale.
//! - `used <= budget` after every operation but counting what is on disk (`index_stale`, and
//!   `join` until its `make_room`): a put that cannot fit without evicting what may not be
//!   evicted evicts nothing and is refused (no read waits on a disk write: the piece is in
//!   memory already). After a join, room is made for what it found, stale pieces first, then
//!   the least recently used, the joining torrent's own too: so that always succeeds.
//! - Eviction order: every stale piece first, oldest first; then the members' pieces in one
//!   least-recently-used order.
//! - Never evicted: a piece being read (pinned), and, for another member, a piece its readers
//!   want (`protect`): each member's floor. A member's own puts evict its own pieces in plain
//!   least-recently-used order, as a cache of one torrent does.
//! - A member is told of its pieces another member's put evicted (`take_evicted`, and its
//!   `wake`), so it stops announcing them; until then they are gone already (loads find them
//!   missing).

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

/// An info-hash: names a directory of the cache.
pub(crate) type Hash = [u8; 20];

/// A member's claim on its directory: a newer member of the same directory makes an older
/// ticket stale (it then stores, loads and protects nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub(crate) dir: Hash,
    generation: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    len: u32,
    /// Last use; also the file's mtime.
    stamp: SystemTime,
    /// Loads reading the file now.
    pins: u32,
}

/// A piece file found on disk: its piece, length and last use.
pub(crate) type Found = (u32, u32, SystemTime);

/// A piece file to delete, its bytes already out of the books.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Victim {
    pub(crate) dir: Hash,
    pub(crate) piece: u32,
    pub(crate) len: u32,
    /// Its directory had no member: it may be another process's by now (see `pool.rs`).
    pub(crate) stale: bool,
}

/// What making room did: every file to delete, and which of them were the member's own.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Evicted {
    pub(crate) victims: Vec<Victim>,
    pub(crate) own: Vec<u32>,
}

struct Member {
    generation: u64,
    /// What its readers want, sorted and merged: never evicted for another member.
    protected: Vec<Range<u32>>,
    /// Its pieces another member's put evicted, not yet taken.
    evicted: Vec<u32>,
    wake: Arc<Notify>,
    /// Its `used`, readable without the books.
    gauge: Arc<AtomicU64>,
}

impl Member {
    fn protects(&self, piece: u32) -> bool {
        let at = self.protected.partition_point(|r| r.end <= piece);
        self.protected.get(at).is_some_and(|r| r.contains(&piece))
    }
}

#[derive(Default)]
struct Dir {
    entries: HashMap<u32, Entry>,
    used: u64,
    member: Option<Member>,
}

/// The books of a disk pool.
pub(crate) struct Books {
    budget: u64,
    used: u64,
    dirs: HashMap<Hash, Dir>,
    /// Pieces of stale directories, oldest first (ties by directory, then piece).
    stale: BTreeSet<(SystemTime, Hash, u32)>,
    /// Pieces of members' directories, least recently used first.
    live: BTreeSet<(SystemTime, Hash, u32)>,
    last_stamp: SystemTime,
    next_generation: u64,
    /// `used`, readable without the books.
    total: Arc<AtomicU64>,
    /// A member left since the members' directories were last published (`claims.rs`).
    left: bool,
}

impl Books {
    pub(crate) fn new(budget: u64) -> Books {
        Books {
            budget,
            used: 0,
            dirs: HashMap::new(),
            stale: BTreeSet::new(),
            live: BTreeSet::new(),
            last_stamp: SystemTime::UNIX_EPOCH,
            next_generation: 0,
            total: Arc::new(AtomicU64::new(0)),
            left: false,
        }
    }

    pub(crate) fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes of every piece counted, stale directories' included.
    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    pub(crate) fn total_gauge(&self) -> Arc<AtomicU64> {
        self.total.clone()
    }

    /// Counts `files` of a directory no member has (a torrent not mounted now), replacing
    /// what was counted of it; nothing is evicted (see [`Books::make_room`]).
    pub(crate) fn index_stale(&mut self, dir: Hash, files: Vec<Found>) {
        self.replace(dir, files);
    }

    /// Makes `dir`'s the member's, counting `files` as what it holds (replacing what was
    /// counted of it); an earlier member of `dir` is replaced. Returns the ticket and the
    /// member's gauge; room is made by [`Books::make_room`] after.
    pub(crate) fn join(
        &mut self,
        dir: Hash,
        files: Vec<Found>,
        wake: Arc<Notify>,
    ) -> (Ticket, Arc<AtomicU64>) {
        self.replace(dir, files);
        let generation = self.next_generation;
        self.next_generation += 1;
        let gauge = Arc::new(AtomicU64::new(0));
        let d = self.dirs.entry(dir).or_default();
        d.member = Some(Member {
            generation,
            protected: Vec::new(),
            evicted: Vec::new(),
            wake,
            gauge: gauge.clone(),
        });
        gauge.store(d.used, Ordering::Relaxed);
        for (&piece, e) in &d.entries {
            self.stale.remove(&(e.stamp, dir, piece));
            self.live.insert((e.stamp, dir, piece));
        }
        (Ticket { dir, generation }, gauge)
    }

    /// The member leaves (its torrent stopped): its pieces stay, stale now, the first to go.
    pub(crate) fn leave(&mut self, t: Ticket) {
        if !self.is_member(t) {
            return;
        }
        let Some(d) = self.dirs.get_mut(&t.dir) else {
            return;
        };
        let Some(member) = d.member.take() else {
            return;
        };
        member.gauge.store(0, Ordering::Relaxed);
        for (&piece, e) in &d.entries {
            self.live.remove(&(e.stamp, t.dir, piece));
            self.stale.insert((e.stamp, t.dir, piece));
        }
        self.left = true;
    }

    /// The members' directories, and whether one left since the last call.
    pub(crate) fn members(&mut self) -> (Vec<Hash>, bool) {
        let dirs = (self.dirs.iter())
            .filter(|(_, d)| d.member.is_some())
            .map(|(h, _)| *h)
            .collect();
        (dirs, std::mem::take(&mut self.left))
    }

    /// Whether a member left since the last call (or `members`).
    pub(crate) fn take_left(&mut self) -> bool {
        std::mem::take(&mut self.left)
    }

    /// Whether `t` is its directory's member now.
    pub(crate) fn is_member(&self, t: Ticket) -> bool {
        self.member(t).is_some()
    }

    fn member(&self, t: Ticket) -> Option<&Member> {
        let m = self.dirs.get(&t.dir)?.member.as_ref()?;
        (m.generation == t.generation).then_some(m)
    }

    fn member_mut(&mut self, t: Ticket) -> Option<&mut Member> {
        let m = self.dirs.get_mut(&t.dir)?.member.as_mut()?;
        (m.generation == t.generation).then_some(m)
    }

    /// What `t`'s readers want (piece ranges): no other member's put evicts those pieces.
    pub(crate) fn protect(&mut self, t: Ticket, ranges: Vec<Range<u32>>) {
        let merged = crate::piece::merge_ranges(ranges);
        if let Some(m) = self.member_mut(t) {
            m.protected = merged;
        }
    }

    /// `t`'s pieces other members evicted since it last asked.
    pub(crate) fn take_evicted(&mut self, t: Ticket) -> Vec<u32> {
        self.member_mut(t)
            .map_or_else(Vec::new, |m| std::mem::take(&mut m.evicted))
    }

    /// `t`'s own `pieces` went without it being told (a put that failed after making room):
    /// the news comes as for another member's evictions.
    pub(crate) fn tell_evicted(&mut self, t: Ticket, pieces: &[u32]) {
        if let Some(m) = self.member_mut(t).filter(|_| !pieces.is_empty()) {
            m.evicted.extend_from_slice(pieces);
            m.wake.notify_one();
        }
    }

    /// `t`'s pieces, ascending (nothing once it is no member).
    pub(crate) fn pieces(&self, t: Ticket) -> Vec<u32> {
        if !self.is_member(t) {
            return Vec::new();
        }
        let mut pieces: Vec<u32> = self.dirs[&t.dir].entries.keys().copied().collect();
        pieces.sort_unstable();
        pieces
    }

    pub(crate) fn contains(&self, t: Ticket, piece: u32) -> bool {
        self.is_member(t) && self.dirs[&t.dir].entries.contains_key(&piece)
    }

    /// The length of `t`'s `piece`, if counted.
    pub(crate) fn len_of(&self, t: Ticket, piece: u32) -> Option<u32> {
        self.member(t)?;
        self.dirs[&t.dir].entries.get(&piece).map(|e| e.len)
    }

    /// A load of `t`'s `piece` begins: marked as just used, and not evicted until
    /// [`Books::unpin`]. Its length and new stamp (for the file's mtime), if counted.
    pub(crate) fn pin(&mut self, t: Ticket, piece: u32) -> Option<(u32, SystemTime)> {
        self.member(t)?;
        let old = self.dirs[&t.dir].entries.get(&piece).copied()?;
        let stamp = self.next_stamp();
        let e = self.dirs.get_mut(&t.dir)?.entries.get_mut(&piece)?;
        e.stamp = stamp;
        e.pins += 1;
        self.live.remove(&(old.stamp, t.dir, piece));
        self.live.insert((stamp, t.dir, piece));
        Some((old.len, stamp))
    }

    /// The load of `dir`'s `piece` ended.
    pub(crate) fn unpin(&mut self, dir: Hash, piece: u32) {
        let e = (self.dirs.get_mut(&dir)).and_then(|d| d.entries.get_mut(&piece));
        if let Some(e) = e {
            e.pins = e.pins.saturating_sub(1);
        }
    }

    /// Stops counting `dir`'s `piece` (its file is gone, bad, or deleted by the caller).
    /// Returns its length if it was counted.
    pub(crate) fn forget(&mut self, dir: Hash, piece: u32) -> Option<u32> {
        let d = self.dirs.get_mut(&dir)?;
        let e = d.entries.remove(&piece)?;
        let len = u64::from(e.len);
        d.used -= len;
        if let Some(m) = &d.member {
            m.gauge.store(d.used, Ordering::Relaxed);
        }
        self.used -= len;
        self.total.store(self.used, Ordering::Relaxed);
        let key = (e.stamp, dir, piece);
        self.stale.remove(&key);
        self.live.remove(&key);
        Some(e.len)
    }

    /// Stops counting a stale directory at all (another process mounts it now, or it is
    /// gone): its files are not this pool's to count or delete.
    pub(crate) fn drop_stale_dir(&mut self, dir: Hash) {
        let stale = self.dirs.get(&dir).is_some_and(|d| d.member.is_none());
        if !stale {
            return;
        }
        let pieces: Vec<u32> = self.dirs[&dir].entries.keys().copied().collect();
        for p in pieces {
            self.forget(dir, p);
        }
        self.dirs.remove(&dir);
    }

    /// A stamp for a piece about to be written (its file's mtime), later than any so far.
    pub(crate) fn stamp(&mut self) -> SystemTime {
        self.next_stamp()
    }

    /// Counts `dir`'s `piece` of `len` bytes, just written with `stamp` (after
    /// [`Books::make_room`]).
    pub(crate) fn stored(&mut self, dir: Hash, piece: u32, len: u32, stamp: SystemTime) {
        self.forget(dir, piece);
        self.insert(dir, piece, len, stamp);
        let d = self.dirs.get_mut(&dir).expect("inserted");
        if let Some(m) = &mut d.member {
            // Evicted and stored again before it took the news: it holds the piece.
            m.evicted.retain(|&q| q != piece);
        }
    }

    /// Makes room for `extra` more bytes by evicting, for `by` (a member, or nobody):
    /// victims in eviction order (see the module doc), found before anything changes. If
    /// that cannot free enough, nothing changes and the answer is `None`; with `partial`
    /// (a join or an open, which must count what is on disk), whatever may go goes.
    /// The victims leave the books at once; each other member is told of its own.
    pub(crate) fn make_room(
        &mut self,
        by: Option<Ticket>,
        extra: u64,
        partial: bool,
    ) -> Option<Evicted> {
        let excess = (self.used + extra).saturating_sub(self.budget);
        let by = by.filter(|&t| self.is_member(t)).map(|t| t.dir);
        let mut chosen = Vec::new();
        let mut freed = 0u64;
        let order =
            (self.stale.iter().map(|k| (k, true))).chain(self.live.iter().map(|k| (k, false)));
        for (&(_, dir, piece), stale) in order {
            if freed >= excess {
                break;
            }
            let d = &self.dirs[&dir];
            let e = &d.entries[&piece];
            let floor = Some(dir) != by && d.member.as_ref().is_some_and(|m| m.protects(piece));
            if e.pins > 0 || floor {
                continue;
            }
            chosen.push((dir, piece, stale));
            freed += u64::from(e.len);
        }
        if freed < excess && !partial {
            return None;
        }
        let mut out = Evicted::default();
        for (dir, piece, stale) in chosen {
            let Some(len) = self.forget(dir, piece) else {
                continue;
            };
            out.victims.push(Victim {
                dir,
                piece,
                len,
                stale,
            });
            if Some(dir) == by {
                out.own.push(piece);
            } else if let Some(m) = self.dirs.get_mut(&dir).and_then(|d| d.member.as_mut()) {
                m.evicted.push(piece);
                m.wake.notify_one();
            }
        }
        Some(out)
    }

    /// Counts `files` as `dir`'s, replacing what was counted of it.
    fn replace(&mut self, dir: Hash, files: Vec<Found>) {
        let old: Vec<u32> =
            (self.dirs.get(&dir)).map_or_else(Vec::new, |d| d.entries.keys().copied().collect());
        for p in old {
            self.forget(dir, p);
        }
        for (piece, len, stamp) in files {
            self.forget(dir, piece);
            self.insert(dir, piece, len, stamp);
            self.last_stamp = self.last_stamp.max(stamp);
        }
    }

    fn insert(&mut self, dir: Hash, piece: u32, len: u32, stamp: SystemTime) {
        let d = self.dirs.entry(dir).or_default();
        let e = Entry {
            len,
            stamp,
            pins: 0,
        };
        d.entries.insert(piece, e);
        d.used += u64::from(len);
        let key = (stamp, dir, piece);
        match &d.member {
            Some(m) => {
                m.gauge.store(d.used, Ordering::Relaxed);
                self.live.insert(key);
            }
            None => {
                self.stale.insert(key);
            }
        }
        self.used += u64::from(len);
        self.total.store(self.used, Ordering::Relaxed);
    }

    /// Now, but strictly after the previous stamp, so order within a run never ties.
    fn next_stamp(&mut self) -> SystemTime {
        let now = SystemTime::now();
        self.last_stamp = if now > self.last_stamp {
            now
        } else {
            self.last_stamp + Duration::from_nanos(1)
        };
        self.last_stamp
    }

    /// The invariant's accounting, recomputed from the entries (tests).
    #[cfg(test)]
    pub(crate) fn check(&self) {
        let mut total = 0u64;
        for (dir, d) in &self.dirs {
            let used: u64 = d.entries.values().map(|e| u64::from(e.len)).sum();
            assert_eq!(used, d.used, "a directory's used is its bytes");
            if let Some(m) = &d.member {
                assert_eq!(m.gauge.load(Ordering::Relaxed), used, "the gauge follows");
            }
            for (&p, e) in &d.entries {
                let key = (e.stamp, *dir, p);
                let (live, stale) = (self.live.contains(&key), self.stale.contains(&key));
                assert_eq!((live, stale), (d.member.is_some(), d.member.is_none()));
            }
            total += used;
        }
        assert_eq!(total, self.used, "used is every directory's bytes");
        assert_eq!(self.live.len() + self.stale.len(), {
            self.dirs.values().map(|d| d.entries.len()).sum::<usize>()
        });
        assert_eq!(self.total.load(Ordering::Relaxed), self.used);
    }

    /// Whether `dir`'s member's readers protect `piece` (tests).
    #[cfg(test)]
    pub(crate) fn protects(&self, dir: Hash, piece: u32) -> bool {
        (self.dirs.get(&dir))
            .and_then(|d| d.member.as_ref())
            .is_some_and(|m| m.protects(piece))
    }

    /// Whether `dir` has a member (tests).
    #[cfg(test)]
    pub(crate) fn has_member(&self, dir: Hash) -> bool {
        self.dirs.get(&dir).is_some_and(|d| d.member.is_some())
    }

    /// Every piece counted, with whether it is stale (tests).
    #[cfg(test)]
    pub(crate) fn all(&self) -> Vec<(Hash, u32, bool)> {
        let mut out: Vec<_> = (self.dirs.iter())
            .flat_map(|(dir, d)| {
                let stale = d.member.is_none();
                d.entries.keys().map(move |&p| (*dir, p, stale))
            })
            .collect();
        out.sort_unstable();
        out
    }
}
