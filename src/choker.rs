//! Whom we upload to: BEP 3 tit-for-tat choking as a pure state machine.
//!
//! The session reports per-peer facts (interest, rates, snubbed, urgent) through the setters
//! and calls [`Choker::tick`] about once a second; `tick` answers with the choke/unchoke
//! messages to send. No I/O and no clock of its own: time comes in as an [`Instant`].
//!
//! The policy, after the reference client:
//! - Every [`RECHOKE_INTERVAL`] the `slots - 1` interested, non-snubbed peers that give us the
//!   most (our download rate from them; once we seed, our upload rate to them) hold the
//!   regular slots. Ties keep whoever already holds a slot, to avoid churn.
//! - One optimistic unchoke, moved every [`OPTIMISTIC_INTERVAL`] to another choked interested
//!   peer, so newcomers can prove themselves. Peers we never unchoked get [`NEW_PEER_WEIGHT`]
//!   times the chance. Snubbed peers may win it: it is their only way back.
//! - An interested `urgent` peer (it has a piece a blocked read waits on) is unchoked at the
//!   next tick, without waiting for the re-rank and ahead of the ranking: a tit-for-tat peer
//!   serves those it is unchoked by, so leaving it interested-but-choked by us would starve the
//!   read. Urgent peers stay within the slot count: they take slots first (the fastest of them,
//!   if there are more than slots), and the slowest others are choked to make room.
//! - A re-rank also happens at the next tick when a slot frees up (an unchoked peer leaves,
//!   loses interest or snubs us) or a peer becomes interested while slots are free.
//!
//! Invariant: `Peer::unchoked` is exactly what the last `tick` told the session, so `tick`
//! reports each change once and never repeats one.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How often the regular slots are re-ranked.
pub const RECHOKE_INTERVAL: Duration = Duration::from_secs(10);
/// How long one peer holds the optimistic slot.
pub const OPTIMISTIC_INTERVAL: Duration = Duration::from_secs(30);
/// Relative chance of a never-unchoked peer to win the optimistic slot.
pub const NEW_PEER_WEIGHT: u32 = 3;

#[derive(Debug, Default, Clone)]
struct Peer {
    interested: bool,
    download_rate: u64,
    upload_rate: u64,
    snubbed: bool,
    urgent: bool,
    /// What the last `tick` told the session.
    unchoked: bool,
    /// "New" for the optimistic weighting until we first unchoke it.
    ever_unchoked: bool,
}

/// The choking state of one torrent's peers. See the module doc for the policy.
#[derive(Debug)]
pub struct Choker {
    slots: usize,
    peers: HashMap<u64, Peer>,
    optimistic: Option<u64>,
    optimistic_since: Option<Instant>,
    last_rechoke: Option<Instant>,
    /// A slot freed up or a candidate appeared: re-rank at the next tick.
    dirty: bool,
    rng: SmallRng,
}

impl Choker {
    /// `slots` upload slots in all: `slots - 1` regular plus one optimistic (at least one).
    pub fn new(slots: usize) -> Self {
        Self::with_rng(slots, SmallRng::from_rng(&mut rand::rng()))
    }

    fn with_rng(slots: usize, rng: SmallRng) -> Self {
        Choker {
            slots: slots.max(1),
            peers: HashMap::new(),
            optimistic: None,
            optimistic_since: None,
            last_rechoke: None,
            dirty: false,
            rng,
        }
    }

    /// Whether `id` wants data from us. An unknown id is added (choked).
    pub fn set_interested(&mut self, id: u64, interested: bool) {
        let free = self.unchoked_count() < self.slots;
        let peer = self.peers.entry(id).or_default();
        if peer.interested != interested {
            peer.interested = interested;
            if (interested && free) || (!interested && peer.unchoked) {
                self.dirty = true;
            }
        }
    }

    /// Our download rate from `id` and upload rate to it, bytes/s.
    pub fn set_rates(&mut self, id: u64, download: u64, upload: u64) {
        let peer = self.peers.entry(id).or_default();
        peer.download_rate = download;
        peer.upload_rate = upload;
    }

    /// `id` sent us no block for 60 s while we were interested and it had unchoked us.
    pub fn set_snubbed(&mut self, id: u64, snubbed: bool) {
        let peer = self.peers.entry(id).or_default();
        if peer.snubbed != snubbed {
            peer.snubbed = snubbed;
            if snubbed && peer.unchoked {
                self.dirty = true;
            }
        }
    }

    /// A blocked read needs data that `id` has: keep it unchoked while it is interested.
    pub fn set_urgent(&mut self, id: u64, urgent: bool) {
        self.peers.entry(id).or_default().urgent = urgent;
    }

    /// Forget `id`; its slot is refilled at the next tick. No change is reported for it.
    pub fn peer_left(&mut self, id: u64) {
        if let Some(peer) = self.peers.remove(&id)
            && peer.unchoked
        {
            self.dirty = true;
        }
        if self.optimistic == Some(id) {
            self.optimistic = None;
            self.optimistic_since = None;
        }
    }

    /// Whether we last told `id` it is unchoked.
    pub fn is_unchoked(&self, id: u64) -> bool {
        self.peers.get(&id).is_some_and(|p| p.unchoked)
    }

    /// The peer holding the optimistic slot, if any.
    pub fn optimistic(&self) -> Option<u64> {
        self.optimistic
    }

    /// Advance to `now`: re-rank if due, then return the changes as `(peer, unchoke?)`, each
    /// reported once, sorted by peer id.
    pub fn tick(&mut self, now: Instant, we_are_seed: bool) -> Vec<(u64, bool)> {
        let due = self.dirty
            || self
                .last_rechoke
                .is_none_or(|t| now.saturating_duration_since(t) >= RECHOKE_INTERVAL);
        let urgent = self.urgent(we_are_seed);
        let mut want: HashSet<u64> = if due {
            self.last_rechoke = Some(now);
            self.dirty = false;
            self.rerank(now, we_are_seed, urgent.len())
        } else {
            self.peers
                .iter()
                .filter(|(_, p)| p.unchoked)
                .map(|(&id, _)| id)
                .collect()
        };
        self.make_room(&mut want, &urgent, we_are_seed);

        let mut changes = Vec::new();
        for (&id, peer) in &mut self.peers {
            let unchoke = want.contains(&id);
            if unchoke != peer.unchoked {
                peer.unchoked = unchoke;
                peer.ever_unchoked |= unchoke;
                changes.push((id, unchoke));
            }
        }
        changes.sort_unstable();
        changes
    }

    /// Interested urgent peers, fastest first, at most `slots` of them.
    fn urgent(&self, we_are_seed: bool) -> Vec<u64> {
        let mut urgent: Vec<(u64, u64)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.urgent && p.interested)
            .map(|(&id, p)| (id, Self::rate(p, we_are_seed)))
            .collect();
        urgent.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        urgent.truncate(self.slots);
        urgent.into_iter().map(|(id, _)| id).collect()
    }

    /// Adds the urgent peers to `want` and chokes the slowest others until it fits the slots.
    fn make_room(&mut self, want: &mut HashSet<u64>, urgent: &[u64], we_are_seed: bool) {
        want.extend(urgent.iter().copied());
        if want.len() <= self.slots {
            return;
        }
        let mut others: Vec<(u64, u64)> = want
            .iter()
            .filter(|id| !urgent.contains(id))
            .map(|&id| {
                (
                    id,
                    self.peers
                        .get(&id)
                        .map_or(0, |p| Self::rate(p, we_are_seed)),
                )
            })
            .collect();
        // Slowest first; among equals the optimistic one first (its turn is only a trial),
        // then the highest id.
        let optimistic = self.optimistic;
        others.sort_unstable_by(|a, b| {
            a.1.cmp(&b.1)
                .then((Some(b.0) == optimistic).cmp(&(Some(a.0) == optimistic)))
                .then(b.0.cmp(&a.0))
        });
        for (id, _) in others {
            if want.len() <= self.slots {
                break;
            }
            want.remove(&id);
            if Some(id) == self.optimistic {
                self.optimistic = None;
                self.optimistic_since = None;
            }
        }
    }

    fn rate(p: &Peer, we_are_seed: bool) -> u64 {
        if we_are_seed {
            p.upload_rate
        } else {
            p.download_rate
        }
    }

    /// The set of peers to unchoke besides the `reserved` urgent ones; updates the optimistic
    /// slot.
    fn rerank(&mut self, now: Instant, we_are_seed: bool, reserved: usize) -> HashSet<u64> {
        let keep = self.optimistic.filter(|id| {
            self.peers
                .get(id)
                .is_some_and(|p| p.interested && !p.urgent)
                && self
                    .optimistic_since
                    .is_some_and(|t| now.saturating_duration_since(t) < OPTIMISTIC_INTERVAL)
        });

        // Urgent peers are unchoked anyway: they hold `reserved` slots and are not ranked.
        let mut ranked: Vec<(u64, &Peer)> = self
            .peers
            .iter()
            .filter(|&(&id, p)| {
                p.interested && !p.urgent && (we_are_seed || !p.snubbed) && Some(id) != keep
            })
            .map(|(&id, p)| (id, p))
            .collect();
        let rate = |p: &Peer| Self::rate(p, we_are_seed);
        ranked.sort_unstable_by(|(ia, a), (ib, b)| {
            rate(b)
                .cmp(&rate(a))
                .then(b.unchoked.cmp(&a.unchoked))
                .then(ia.cmp(ib))
        });
        let mut want: HashSet<u64> = ranked
            .iter()
            .take((self.slots - 1).saturating_sub(reserved))
            .map(|&(id, _)| id)
            .collect();

        match keep {
            _ if reserved >= self.slots => {
                self.optimistic = None;
                self.optimistic_since = None;
            }
            Some(id) => {
                want.insert(id);
            }
            None => {
                let previous = self.optimistic;
                self.optimistic = self.pick_optimistic(&want, previous);
                self.optimistic_since = self.optimistic.map(|_| now);
                want.extend(self.optimistic);
            }
        }
        want
    }

    /// A weighted random choice among interested peers not already unchoked by rank; the
    /// previous holder only if nobody else qualifies.
    fn pick_optimistic(&mut self, regular: &HashSet<u64>, previous: Option<u64>) -> Option<u64> {
        let mut candidates: Vec<(u64, u32)> = self
            .peers
            .iter()
            .filter(|&(id, p)| p.interested && !p.urgent && !regular.contains(id))
            .map(|(&id, p)| {
                let weight = if p.ever_unchoked { 1 } else { NEW_PEER_WEIGHT };
                (id, weight)
            })
            .collect();
        if candidates.len() > 1 {
            candidates.retain(|&(id, _)| Some(id) != previous);
        }
        // HashMap order is arbitrary: sort so a seeded rng gives a reproducible choice.
        candidates.sort_unstable();
        let total: u32 = candidates.iter().map(|&(_, w)| w).sum();
        if total == 0 {
            return None;
        }
        let mut roll = self.rng.random_range(0..total);
        for &(id, weight) in &candidates {
            if roll < weight {
                return Some(id);
            }
            roll -= weight;
        }
        None
    }

    fn unchoked_count(&self) -> usize {
        self.peers.values().filter(|p| p.unchoked).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn choker(slots: usize, seed: u64) -> Choker {
        Choker::with_rng(slots, SmallRng::seed_from_u64(seed))
    }

    /// Interested peers `1..=rates.len()` with the given download rates.
    fn swarm(c: &mut Choker, rates: &[u64]) {
        for (i, &rate) in rates.iter().enumerate() {
            let id = i as u64 + 1;
            c.set_interested(id, true);
            c.set_rates(id, rate, 0);
        }
    }

    fn unchoked(c: &Choker) -> Vec<u64> {
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
}
