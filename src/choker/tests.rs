//! The policy tick by tick: ranking, the optimistic slot, urgent peers, churn.

use super::*;

const S: Duration = Duration::from_secs(1);

fn choker(slots: usize, seed: u64) -> Choker<u64> {
    Choker::with_rng(slots, SmallRng::seed_from_u64(seed))
}

/// Interested peers `1..=rates.len()` with the given download rates.
fn swarm(c: &mut Choker<u64>, rates: &[u64]) {
    for (i, &rate) in rates.iter().enumerate() {
        let id = i as u64 + 1;
        c.set_interested(id, true);
        c.set_rates(id, rate, 0);
    }
}

fn unchoked(c: &Choker<u64>) -> Vec<u64> {
    let mut ids: Vec<u64> = c
        .peers
        .keys()
        .copied()
        .filter(|&id| c.is_unchoked(id))
        .collect();
    ids.sort_unstable();
    ids
}

#[test]
fn best_uploaders_win_the_regular_slots() {
    let mut c = choker(4, 1);
    swarm(&mut c, &[100, 200, 300, 400, 500, 600]);
    let t0 = Instant::now();
    let changes = c.tick(t0, false);
    assert!(changes.iter().all(|&(_, unchoke)| unchoke));
    let open = unchoked(&c);
    assert_eq!(open.len(), 4);
    for id in [4, 5, 6] {
        assert!(
            open.contains(&id),
            "{id} should hold a regular slot: {open:?}"
        );
    }
    let opt = c.optimistic().expect("an optimistic unchoke");
    assert!([1, 2, 3].contains(&opt));

    // Peer 1 becomes the best; it moves up at the next re-rank, not before.
    c.set_rates(1, 10_000, 0);
    c.set_rates(4, 0, 0);
    assert_eq!(c.tick(t0 + 5 * S, false), vec![]);
    let changes = c.tick(t0 + 10 * S, false);
    assert!(c.is_unchoked(1));
    assert!(changes.contains(&(4, false)), "{changes:?}");
    assert_eq!(unchoked(&c).len(), 4);
}

#[test]
fn changes_are_reported_once() {
    let mut c = choker(3, 2);
    swarm(&mut c, &[10, 20, 30]);
    let t0 = Instant::now();
    assert_eq!(c.tick(t0, false).len(), 3);
    assert_eq!(c.tick(t0, false), vec![]);
    assert_eq!(c.tick(t0 + 3 * S, false), vec![]);
    assert_eq!(c.tick(t0 + 10 * S, false), vec![]);
}

#[test]
fn optimistic_slot_rotates_every_30_seconds() {
    let mut c = choker(2, 3);
    swarm(&mut c, &[1000, 0, 0, 0]);
    let t0 = Instant::now();
    c.tick(t0, false);
    let first = c.optimistic().expect("an optimistic unchoke");
    assert_ne!(first, 1, "peer 1 holds the regular slot");
    for secs in [10, 20, 29] {
        assert_eq!(c.tick(t0 + secs * S, false), vec![], "at {secs} s");
        assert_eq!(c.optimistic(), Some(first));
    }
    let changes = c.tick(t0 + 30 * S, false);
    let second = c.optimistic().expect("an optimistic unchoke");
    assert_ne!(second, first);
    assert_ne!(second, 1);
    assert_eq!(changes.len(), 2);
    assert!(changes.contains(&(first, false)) && changes.contains(&(second, true)));
    assert!(c.is_unchoked(1));

    c.tick(t0 + 60 * S, false);
    assert_ne!(c.optimistic(), Some(second));
}

#[test]
fn seed_ranks_by_upload_rate() {
    let mut c = choker(3, 4);
    // Download rates favour 1 and 2; upload rates favour 3 and 4.
    for (id, down, up) in [
        (1, 900, 1),
        (2, 800, 2),
        (3, 1, 900),
        (4, 2, 800),
        (5, 0, 0),
    ] {
        c.set_interested(id, true);
        c.set_rates(id, down, up);
    }
    let t0 = Instant::now();
    c.tick(t0, false);
    assert!(c.is_unchoked(1) && c.is_unchoked(2));

    c.tick(t0 + 10 * S, true);
    assert!(c.is_unchoked(3) && c.is_unchoked(4), "{:?}", unchoked(&c));
    assert!(!c.is_unchoked(1), "best downloader, worst uploader");
    assert_eq!(unchoked(&c).len(), 3);
}

#[test]
fn snubbed_peer_loses_its_slot() {
    let mut c = choker(3, 5);
    swarm(&mut c, &[400, 300, 200, 100]);
    let t0 = Instant::now();
    c.tick(t0, false);
    assert!(c.is_unchoked(1) && c.is_unchoked(2));

    c.set_snubbed(1, true);
    // A freed slot is refilled at the next tick, without waiting for the 10 s re-rank.
    let changes = c.tick(t0 + S, false);
    assert!(changes.contains(&(1, false)), "{changes:?}");
    assert!(!c.is_unchoked(1));
    assert_eq!(unchoked(&c).len(), 3);
    c.tick(t0 + 10 * S, false);
    assert!(!c.is_unchoked(1), "snubbed peers get no regular slot");
}

#[test]
fn urgent_peer_takes_a_slot_at_once_ahead_of_faster_peers() {
    let mut c = choker(3, 6);
    swarm(&mut c, &[500, 400, 300, 200, 0]);
    let t0 = Instant::now();
    c.tick(t0, false);
    assert!(c.is_unchoked(1) && c.is_unchoked(2));
    assert!(!c.is_unchoked(5) || c.optimistic() == Some(5));

    // Peer 5 (slowest) has what a blocked read needs: unchoked at the next tick, no
    // waiting for the re-rank, and someone slower than peer 1 makes room.
    c.set_urgent(5, true);
    let changes = c.tick(t0 + S, false);
    assert!(c.is_unchoked(5), "{changes:?}");
    assert!(c.is_unchoked(1), "the fastest keeps its slot");
    assert_eq!(
        unchoked(&c).len(),
        3,
        "within the slots: {:?}",
        unchoked(&c)
    );

    for secs in [10, 20, 30, 40, 60, 90] {
        c.tick(t0 + secs * S, false);
        assert!(c.is_unchoked(5), "at {secs} s");
        assert!(c.is_unchoked(1), "at {secs} s");
        assert_eq!(unchoked(&c).len(), 3, "at {secs} s: {:?}", unchoked(&c));
        assert_ne!(c.optimistic(), Some(5), "urgent is not the optimistic slot");
    }

    // No longer needed: it competes like anyone else at the next re-rank.
    c.set_urgent(5, false);
    c.tick(t0 + 100 * S, false);
    assert!(!c.is_unchoked(5) || c.optimistic() == Some(5));
    assert!(c.is_unchoked(1) && c.is_unchoked(2));
}

#[test]
fn more_urgent_peers_than_slots_unchokes_the_fastest_of_them() {
    let mut c = choker(2, 8);
    swarm(&mut c, &[10, 40, 30, 20]);
    for id in 1..=4 {
        c.set_urgent(id, true);
    }
    let t0 = Instant::now();
    c.tick(t0, false);
    assert_eq!(unchoked(&c), vec![2, 3]);
    assert_eq!(c.optimistic(), None, "no slot left for a trial");
    // Rates change between re-ranks: the urgent set follows at once, still within 2.
    c.set_rates(1, 100, 0);
    c.tick(t0 + S, false);
    assert_eq!(unchoked(&c), vec![1, 2]);
}

#[test]
fn an_urgent_peer_is_unchoked_only_once_interested() {
    let mut c = choker(2, 9);
    swarm(&mut c, &[500, 400]);
    let t0 = Instant::now();
    c.tick(t0, false);
    c.set_urgent(5, true);
    assert_eq!(
        c.tick(t0 + S, false),
        vec![],
        "not interested: nothing to unchoke"
    );
    c.set_interested(5, true);
    let changes = c.tick(t0 + 2 * S, false);
    assert!(changes.contains(&(5, true)), "{changes:?}");
    assert_eq!(unchoked(&c).len(), 2);
}

/// A tit-for-tat peer serves only peers that unchoke it. Peer 4 holds the piece a read
/// waits on and, being choked by us at first, sends nothing; faster peers would keep it out
/// of every regular slot. The urgent rule unchokes it at the next tick, it reciprocates,
/// and the read is served every second from then on, the slot count never exceeded.
#[test]
fn reciprocation_keeps_a_tit_for_tat_peer_serving_a_blocked_read() {
    let mut c = choker(3, 10);
    swarm(&mut c, &[900, 800, 700, 0]);
    let t0 = Instant::now();
    c.tick(t0, false);
    c.set_urgent(4, true);
    let mut served = 0;
    for secs in 1..=120 {
        // Peer 4 uploads to us while we unchoke it (what it saw last second).
        let rate = if c.is_unchoked(4) { 600 } else { 0 };
        c.set_rates(4, rate, 0);
        c.tick(t0 + secs * S, false);
        assert!(unchoked(&c).len() <= 3, "at {secs} s: {:?}", unchoked(&c));
        assert!(c.is_unchoked(4), "starved by our choke at {secs} s");
        served += u64::from(rate > 0);
    }
    assert_eq!(served, 119, "served from the second tick on");
}

#[test]
fn leaving_and_uninterested_peers_free_their_slot() {
    let mut c = choker(3, 7);
    swarm(&mut c, &[300, 200, 100, 50]);
    let t0 = Instant::now();
    c.tick(t0, false);
    assert!(c.is_unchoked(1) && c.is_unchoked(2));

    c.peer_left(1);
    let changes = c.tick(t0 + S, false);
    assert!(changes.iter().all(|&(id, _)| id != 1), "{changes:?}");
    assert_eq!(unchoked(&c).len(), 3);

    c.set_interested(2, false);
    let changes = c.tick(t0 + 2 * S, false);
    assert!(changes.contains(&(2, false)), "{changes:?}");
    // Peers 3 and 4 remain: both unchoked, one regular and one optimistic.
    assert_eq!(unchoked(&c), vec![3, 4]);
}

#[test]
fn new_peers_win_the_optimistic_slot_three_times_as_often() {
    let mut new_wins = 0;
    let trials = 400;
    for seed in 0..trials {
        let mut c = choker(1, seed);
        let t0 = Instant::now();
        // Peers 1 and 2 each get unchoked once, so they are no longer new.
        c.set_interested(1, true);
        c.tick(t0, false);
        c.set_interested(1, false);
        c.set_interested(2, true);
        c.tick(t0 + S, false);
        assert_eq!(c.optimistic(), Some(2));
        c.set_interested(1, true);
        c.set_interested(3, true);
        // At rotation peer 2 (the holder) is skipped: old peer 1 against new peer 3.
        c.tick(t0 + 31 * S, false);
        match c.optimistic() {
            Some(3) => new_wins += 1,
            Some(1) => {}
            other => panic!("unexpected optimistic {other:?}"),
        }
    }
    // Expected 300 of 400 (3:1); a fair coin would give 200.
    assert!((260..=340).contains(&new_wins), "{new_wins}");
}
