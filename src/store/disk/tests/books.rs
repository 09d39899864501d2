//! The disk pool's books alone: the order of eviction across torrents, each torrent's floor,
//! pieces being read, and a random walk of every operation against the invariant.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;

use crate::store::disk::books::{Books, Evicted, Found, Hash, Ticket, Victim};

const PIECE: u32 = 100;

fn hash(i: u8) -> Hash {
    [i; 20]
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn member(b: &mut Books, i: u8) -> Ticket {
    b.join(hash(i), Vec::new(), Arc::new(Notify::new())).0
}

/// What the store does for a put: the old copy out, room made, then counted.
fn put(b: &mut Books, t: Ticket, piece: u32, len: u32) -> Option<Evicted> {
    b.forget(t.dir, piece);
    let made = b.make_room(Some(t), u64::from(len), false)?;
    let stamp = b.stamp();
    b.stored(t.dir, piece, len, stamp);
    Some(made)
}

fn victim(dir: u8, piece: u32, stale: bool) -> Victim {
    Victim {
        dir: hash(dir),
        piece,
        len: PIECE,
        stale,
    }
}

#[test]
fn one_least_recently_used_order_across_torrents() {
    let mut b = Books::new(3 * u64::from(PIECE));
    let (x, y) = (member(&mut b, 1), member(&mut b, 2));
    put(&mut b, y, 0, PIECE);
    put(&mut b, x, 0, PIECE);
    put(&mut b, x, 1, PIECE);
    // y's piece is the oldest: x's next piece takes its place, and y is told.
    let made = put(&mut b, x, 2, PIECE).expect("room");
    assert_eq!(made.victims, [victim(2, 0, false)]);
    assert!(made.own.is_empty());
    assert_eq!(b.take_evicted(y), [0]);
    assert_eq!(b.take_evicted(y), [] as [u32; 0], "taken once");
    // A load marks a piece as used: x's oldest is then 1.
    b.pin(x, 0).expect("counted");
    b.unpin(x.dir, 0);
    let made = put(&mut b, x, 3, PIECE).expect("room");
    assert_eq!(made.own, [1]);
    assert_eq!(b.used(), 3 * u64::from(PIECE));
    b.check();
}

#[test]
fn pieces_of_torrents_not_mounted_go_first_oldest_first() {
    let mut b = Books::new(4 * u64::from(PIECE));
    let found = |pieces: &[(u32, u64)]| -> Vec<Found> {
        pieces.iter().map(|&(p, s)| (p, PIECE, at(s))).collect()
    };
    // Left by earlier mounts: two directories, their pieces last used at 10, 20 and 15.
    b.index_stale(hash(7), found(&[(0, 10), (1, 20)]));
    b.index_stale(hash(8), found(&[(5, 15)]));
    let x = member(&mut b, 1);
    // Newer than any stale piece (stamps are now), yet never evicted before them.
    put(&mut b, x, 0, PIECE).expect("fits");
    let made = put(&mut b, x, 1, PIECE).expect("room");
    assert_eq!(made.victims, [victim(7, 0, true)]);
    let made = put(&mut b, x, 2, PIECE).expect("room");
    assert_eq!(made.victims, [victim(8, 5, true)]);
    let made = put(&mut b, x, 3, PIECE).expect("room");
    assert_eq!(made.victims, [victim(7, 1, true)]);
    let made = put(&mut b, x, 4, PIECE).expect("room");
    assert_eq!(made.own, [0], "no stale piece left: its own oldest");
    b.check();
}

#[test]
fn a_torrent_that_leaves_leaves_its_pieces_stale_and_takes_them_back() {
    let mut b = Books::new(3 * u64::from(PIECE));
    let (x, y) = (member(&mut b, 1), member(&mut b, 2));
    put(&mut b, y, 0, PIECE);
    put(&mut b, x, 0, PIECE);
    put(&mut b, x, 1, PIECE);
    b.leave(x);
    assert!(!b.is_member(x) && b.pieces(x).is_empty());
    assert_eq!(b.members(), (vec![hash(2)], true), "to publish again");
    assert!(!b.members().1);
    // x's pieces are newer than y's, but stale now: they go first.
    let made = put(&mut b, y, 1, PIECE).expect("room");
    assert_eq!(made.victims, [victim(1, 0, true)]);
    // x comes back and finds its piece 1 on disk.
    let found = vec![(1, PIECE, at(1))];
    let (x, _) = b.join(hash(1), found, Arc::new(Notify::new()));
    assert_eq!(b.pieces(x), [1]);
    assert_eq!(b.make_room(Some(x), 0, true), Some(Evicted::default()));
    b.check();
}

#[test]
fn another_torrents_floor_and_pieces_being_read_never_go() {
    let mut b = Books::new(3 * u64::from(PIECE));
    let (x, y) = (member(&mut b, 1), member(&mut b, 2));
    put(&mut b, y, 0, PIECE);
    put(&mut b, y, 1, PIECE);
    put(&mut b, x, 0, PIECE);
    b.protect(y, vec![1..2, 0..1]);
    // Only x's own piece may go: it goes, for x's own put.
    let made = put(&mut b, x, 1, PIECE).expect("room");
    assert_eq!(made.own, [0]);
    // x's piece 1 is being read and y's are its floor: nothing may go, nothing changes.
    b.pin(x, 1).expect("counted");
    let before = b.all();
    assert_eq!(put(&mut b, x, 2, PIECE), None);
    assert_eq!(b.all(), before, "a refusal changes nothing");
    // y's own put is not held back by y's floor.
    assert_eq!(put(&mut b, y, 2, PIECE).expect("room").own, [0]);
    b.unpin(x.dir, 1);
    b.protect(y, Vec::new());
    assert_eq!(put(&mut b, x, 2, PIECE).expect("room").victims.len(), 1);
    b.check();
}

#[test]
fn a_newer_member_of_the_same_directory_replaces_the_older() {
    let mut b = Books::new(3 * u64::from(PIECE));
    let old = member(&mut b, 1);
    put(&mut b, old, 0, PIECE);
    let (new, _) = b.join(hash(1), vec![(0, PIECE, at(1))], Arc::new(Notify::new()));
    assert!(!b.is_member(old) && b.is_member(new));
    b.leave(old);
    assert!(b.has_member(hash(1)), "the old one leaving changes nothing");
    assert_eq!(b.members(), (vec![hash(1)], false));
    assert_eq!(b.pieces(new), [0]);
    b.check();
}

/// The invariant under a random walk of four directories (three that join and leave, one
/// stale from the start): the accounting adds up; the bytes counted never exceed the budget;
/// a put that cannot fit changes nothing; a piece being read, or one another member's readers
/// protect, is never evicted; no member's piece goes while a stale piece that may go remains;
/// and each member's pieces, as it was told, are the books' own.
#[test]
fn the_budget_holds_across_torrents() {
    // How often each case came up, over every seed: the walk must reach them all.
    let (mut refused, mut stale_went, mut others_went) = (0, 0, 0);
    for seed in 0..60 {
        let mut rng = StdRng::seed_from_u64(seed);
        let budget = 6 * u64::from(PIECE);
        let mut b = Books::new(budget);
        let stale: Vec<Found> = (0..4).map(|p| (p, PIECE, at(u64::from(p)))).collect();
        b.index_stale(hash(9), stale);
        assert!(b.make_room(None, 0, true).is_some());
        let mut tickets: Vec<Option<Ticket>> = vec![None; 3];
        // Each member's pieces, as it was told (its puts, its own evictions, taken news).
        let mut told: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); 3];
        let mut pinned: Vec<(usize, u32)> = Vec::new();
        for step in 0..600 {
            let k = rng.random_range(0..3);
            let ctx = format!("seed {seed} step {step}");
            match (rng.random_range(0..8), tickets[k]) {
                (0, None) => {
                    // Joins and finds on disk what it had counted when it left, if anything.
                    let found: Vec<Found> = (b.all().into_iter())
                        .filter(|&(d, _, _)| d == hash(k as u8))
                        .map(|(_, p, _)| (p, PIECE, at(u64::from(p))))
                        .collect();
                    let wake = Arc::new(Notify::new());
                    let (t, _) = b.join(hash(k as u8), found, wake);
                    tickets[k] = Some(t);
                    told[k] = b.pieces(t).into_iter().collect();
                    let made = b.make_room(Some(t), 0, true).expect("partial");
                    for p in made.own {
                        told[k].remove(&p);
                    }
                }
                (0, Some(t)) if rng.random_bool(0.3) => {
                    b.leave(t);
                    tickets[k] = None;
                    // Loads in flight end after the torrent left.
                    for &(_, p) in pinned.iter().filter(|&&(m, _)| m == k) {
                        b.unpin(t.dir, p);
                    }
                    pinned.retain(|&(m, _)| m != k);
                }
                (1, Some(t)) => {
                    let start = rng.random_range(0..10);
                    b.protect(
                        t,
                        std::iter::once(start..start + rng.random_range(0..4)).collect(),
                    );
                }
                (2, Some(t)) => match pinned.iter().position(|&(m, _)| m == k) {
                    Some(i) if rng.random_bool(0.5) => {
                        let (_, p) = pinned.remove(i);
                        b.unpin(t.dir, p);
                    }
                    _ => {
                        let p = rng.random_range(0..10);
                        if b.pin(t, p).is_some() {
                            pinned.push((k, p));
                        }
                    }
                },
                (_, Some(t)) => {
                    let p = rng.random_range(0..10);
                    let len = if rng.random_bool(0.3) {
                        PIECE / 2
                    } else {
                        PIECE
                    };
                    if pinned.contains(&(k, p)) {
                        // Never a put of a piece being read: the session loads only what is
                        // on disk, and writes only what is not.
                        continue;
                    }
                    // A copy already there goes first (as the store deletes it).
                    b.forget(t.dir, p);
                    told[k].remove(&p);
                    let before = b.all();
                    // What may not go for this put: others' floors and every pinned piece.
                    let kept: Vec<(Hash, u32)> = (before.iter())
                        .filter(|&&(d, q, _)| {
                            (d != t.dir && b.protects(d, q))
                                || (pinned.iter()).any(|&(m, r)| hash(m as u8) == d && r == q)
                        })
                        .map(|&(d, q, _)| (d, q))
                        .collect();
                    match put(&mut b, t, p, len) {
                        None => {
                            refused += 1;
                            assert_eq!(b.all(), before, "{ctx}: a refusal changed the books");
                        }
                        Some(made) => {
                            told[k].insert(p);
                            stale_went += made.victims.iter().filter(|v| v.stale).count();
                            others_went += (made.victims.iter())
                                .filter(|v| !v.stale && v.dir != t.dir)
                                .count();
                            for v in &made.victims {
                                assert!(
                                    !kept.contains(&(v.dir, v.piece)),
                                    "{ctx}: evicted {v:?}, which may not go"
                                );
                            }
                            if made.victims.iter().any(|v| !v.stale) {
                                let stale_left = (b.all().into_iter()).any(|(_, _, s)| s);
                                assert!(!stale_left, "{ctx}: a member's piece before a stale one");
                            }
                            let own: Vec<u32> = (made.victims.iter())
                                .filter(|v| v.dir == t.dir)
                                .map(|v| v.piece)
                                .collect();
                            assert_eq!(own, made.own, "{ctx}");
                            for q in made.own {
                                told[k].remove(&q);
                            }
                        }
                    }
                }
                _ => {}
            }
            for (m, t) in tickets.iter().enumerate() {
                if let Some(t) = *t {
                    for q in b.take_evicted(t) {
                        assert!(told[m].remove(&q), "{ctx}: evicted {q} of {m}, never held");
                    }
                    let actual: BTreeSet<u32> = b.pieces(t).into_iter().collect();
                    assert_eq!(actual, told[m], "{ctx}: member {m}'s view is the books'");
                }
            }
            assert!(b.used() <= budget, "{ctx}: {} over {budget}", b.used());
            b.check();
        }
    }
    assert!(
        refused > 0 && stale_went > 0 && others_went > 0,
        "refused {refused}, stale evicted {stale_went}, others' evicted {others_went}"
    );
}
