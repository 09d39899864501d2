use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// Takes slots for `id` while the policy gives them; how many it took.
fn fill(p: &mut SlotPolicy, id: HolderId, incoming: bool) -> usize {
    let mut n = 0;
    while p.take(id, incoming) {
        n += 1;
    }
    n
}

#[test]
fn one_torrent_has_the_whole_total_and_incoming_leaves_the_reserve() {
    let mut p = SlotPolicy::new(10);
    let a = p.join();
    assert_eq!(p.room(a), 10);
    assert_eq!(fill(&mut p, a, true), 10 - outgoing_reserve(10));
    assert_eq!(fill(&mut p, a, false), outgoing_reserve(10));
    assert_eq!(p.used(), 10);
    assert!(!p.may_take(a, false));
    assert_eq!(p.to_drop(a), 0, "nobody else claims");
    p.release(a, false);
    assert!(!p.may_take(a, true), "the reserve is the dials'");
    assert!(p.take(a, false));
}

#[test]
fn a_sleeping_torrent_takes_nothing_and_the_awake_share_the_total() {
    let mut p = SlotPolicy::new(80);
    let ids: Vec<HolderId> = (0..100).map(|_| p.join()).collect();
    assert_eq!(p.share(), 1, "more awake than slots");
    for &id in &ids[1..] {
        p.set_awake(id, false);
    }
    assert_eq!(p.share(), 80);
    assert!(!p.may_take(ids[1], false));
    assert!(!p.take(ids[1], true));
    assert_eq!(
        fill(&mut p, ids[0], false),
        80,
        "the one awake takes them all"
    );
    p.set_awake(ids[1], true);
    assert_eq!(p.share(), 40);
}

#[test]
fn a_claim_is_met_by_the_torrent_over_its_share_and_nobody_else_takes_meanwhile() {
    let mut p = SlotPolicy::new(8);
    let (a, b, c) = (p.join(), p.join(), p.join());
    p.set_awake(c, false);
    assert_eq!(fill(&mut p, a, false), 8);
    // B's read waits: its share is 4 of 8, and A gives back what B lacks.
    p.set_claiming(b, true);
    assert_eq!(p.share(), 4);
    assert_eq!((p.to_drop(a), p.to_drop(b)), (4, 0));
    p.dropping(a, 4);
    assert_eq!(p.to_drop(a), 0, "told once, not again while they go");
    for _ in 0..4 {
        p.release(a, false);
    }
    assert!(!p.take(a, false), "A is at its share while B claims");
    assert_eq!(p.room(b), 4);
    assert_eq!(fill(&mut p, b, false), 4);
    assert_eq!((p.held(a), p.held(b)), (4, 4));
    // B's claim is met; with a slot free A may take it again.
    p.release(b, false);
    p.set_claiming(b, false);
    assert!(p.take(a, false));
    assert_eq!(p.to_drop(a), 0);
}

#[test]
fn free_slots_meet_a_claim_before_anyone_is_told_to_drop() {
    let mut p = SlotPolicy::new(10);
    let (a, b) = (p.join(), p.join());
    for _ in 0..7 {
        assert!(p.take(a, false));
    }
    p.set_claiming(b, true);
    // B lacks 5 of its share; 3 are free, so A, 2 over its share, drops 2.
    assert_eq!(p.to_drop(a), 2);
    assert_eq!(p.room(b), 3);
}

#[test]
fn a_torrent_that_left_is_forgotten_when_its_last_slot_comes_back() {
    let mut p = SlotPolicy::new(4);
    let (a, b) = (p.join(), p.join());
    assert!(p.take(a, false));
    p.leave(a);
    assert_eq!(p.share(), 4, "only B is awake");
    assert_eq!(p.used(), 1);
    p.release(a, false);
    assert_eq!(p.used(), 0);
    assert_eq!(fill(&mut p, b, false), 4);
}

#[test]
fn handles_give_their_slots_back_when_dropped() {
    let slots = PeerSlots::new(2);
    let a = slots.join();
    let b = slots.join();
    let (s1, s2) = (a.take(false), a.take(false));
    assert!(s1.is_some() && s2.is_some());
    assert!(b.take(false).is_none());
    assert_eq!(b.update(true, true), 0);
    assert_eq!(a.update(true, false), 1, "A holds 2, its share is 1");
    drop(s1);
    let s3 = b.take(true);
    assert!(s3.is_some(), "the freed slot goes to B");
    assert!(a.take(false).is_none());
    drop(a);
    assert_eq!(slots.used(), 2, "A's connection still holds its slot");
    drop(s2);
    assert_eq!(slots.used(), 1);
    assert_eq!(b.room(), 1);
}

/// The model's view of one torrent: the slots it holds, by kind.
#[derive(Default, Clone)]
struct Model {
    incoming: usize,
    outgoing: usize,
}

/// After any sequence of takes, releases, sleeps, wakes, claims, drops, joins and leaves: the
/// process never holds more than the total, nor incoming more than the total less the
/// reserve; a sleeping torrent takes nothing; and a claimant under its share (no more awake
/// than slots) always has a way forward: a free slot it may take, a slot on its way back, or a
/// torrent told to drop one. From any state, when the others drop what they are told and take
/// whatever they may, the claimant reaches its share within a few rounds.
#[test]
fn random_walk_total_and_fair_share_hold() {
    for seed in 0..300 {
        let mut rng = StdRng::seed_from_u64(seed);
        let total = rng.random_range(1..=24);
        let mut p = SlotPolicy::new(total);
        let mut ids: Vec<(HolderId, Model)> = (0..rng.random_range(1..=5))
            .map(|_| (p.join(), Model::default()))
            .collect();
        let mut gone: Vec<(HolderId, Model)> = Vec::new();
        for step in 0..400 {
            let i = rng.random_range(0..ids.len());
            let id = ids[i].0;
            match rng.random_range(0..100) {
                0..40 => {
                    let incoming = rng.random_bool(0.3);
                    let asleep = !p.holders[&id].awake;
                    if p.take(id, incoming) {
                        assert!(!asleep, "seed {seed} step {step}: asleep and took");
                        let m = &mut ids[i].1;
                        *if incoming {
                            &mut m.incoming
                        } else {
                            &mut m.outgoing
                        } += 1;
                    }
                }
                40..60 => release_one(&mut p, &mut ids[i], &mut rng),
                60..70 => p.set_awake(id, rng.random_bool(0.6)),
                70..80 => p.set_claiming(id, rng.random_bool(0.5)),
                80..92 => {
                    // Told to drop: marks them going; some go at once.
                    let n = p.to_drop(id);
                    p.dropping(id, n);
                    for _ in 0..rng.random_range(0..=n) {
                        release_one(&mut p, &mut ids[i], &mut rng);
                    }
                }
                92..95 if ids.len() < 6 => ids.push((p.join(), Model::default())),
                95..97 if ids.len() > 1 => {
                    let (id, m) = ids.swap_remove(i);
                    p.leave(id);
                    gone.push((id, m));
                }
                97..100 if !gone.is_empty() => {
                    let k = rng.random_range(0..gone.len());
                    release_one(&mut p, &mut gone[k], &mut rng);
                }
                _ => {}
            }
            check(&p, seed, step);
            if step % 50 == 49
                && let Some(&(c, _)) = ids.iter().find(|(c, _)| is_claimant(&p, *c))
            {
                converges(p.clone(), c, seed, step);
            }
        }
    }
}

fn release_one(p: &mut SlotPolicy, (id, m): &mut (HolderId, Model), rng: &mut StdRng) {
    let incoming = match (m.incoming > 0, m.outgoing > 0) {
        (false, false) => return,
        (true, true) => rng.random_bool(0.5),
        (only_incoming, _) => only_incoming,
    };
    *if incoming {
        &mut m.incoming
    } else {
        &mut m.outgoing
    } -= 1;
    p.release(*id, incoming);
}

fn is_claimant(p: &SlotPolicy, id: HolderId) -> bool {
    p.is_claimant(&p.holders[&id])
}

fn check(p: &SlotPolicy, seed: u64, step: usize) {
    let at = format!("seed {seed} step {step}: {p:?}");
    assert!(p.used() <= p.total, "over the total: {at}");
    let came: usize = p.holders.values().map(|h| h.incoming).sum();
    assert!(came <= p.total - outgoing_reserve(p.total), "{at}");
    let awake = p.holders.values().filter(|h| h.awake).count();
    if awake > p.total {
        return;
    }
    let ids: Vec<HolderId> = p.holders.keys().copied().collect();
    let coming: usize = p.holders.values().map(|h| h.dropping).sum();
    let told: usize = ids.iter().map(|&o| p.to_drop(o)).sum();
    for &c in ids.iter().filter(|&&c| is_claimant(p, c)) {
        assert!(
            p.may_take(c, false) || coming > 0 || told > 0,
            "a claimant under its share is stuck: {at}"
        );
    }
    // The free slots are the claims' first: nobody else takes what they lack.
    let free = p.total - p.used();
    for &o in ids.iter().filter(|&&o| !is_claimant(p, o)) {
        if free <= p.lacking_but(o) {
            assert!(!p.may_take(o, false), "took from a claim: {at}");
        }
    }
    // `room` is what successive takes give.
    for &o in &ids {
        let mut q = p.clone();
        assert_eq!(p.room(o), fill(&mut q, o, false), "room of {o:?}: {at}");
    }
}

/// Rounds in which every torrent drops what it is told (the slots come back at once) and every
/// other torrent takes whatever it may before the claimant: `c` reaches its share.
fn converges(mut p: SlotPolicy, c: HolderId, seed: u64, step: usize) {
    if p.holders.values().filter(|h| h.awake).count() > p.total {
        return;
    }
    let start = p.clone();
    for _round in 0..2 {
        let ids: Vec<HolderId> = p.holders.keys().copied().collect();
        for &o in &ids {
            let n = p.to_drop(o);
            for _ in 0..n {
                // Dials first: a model does not need to tell them apart here.
                let incoming = p.holders[&o].incoming > 0 && p.holders[&o].incoming == p.held(o);
                p.release(o, incoming);
            }
        }
        // Whatever was on its way back has come back.
        for h in p.holders.values_mut() {
            h.dropping = 0;
        }
        for &o in ids.iter().filter(|&&o| o != c) {
            fill(&mut p, o, false);
        }
        fill(&mut p, c, false);
        if p.held(c) >= p.share() {
            return;
        }
    }
    panic!("seed {seed} step {step}: {c:?} did not reach its share from {start:?}: {p:?}");
}
