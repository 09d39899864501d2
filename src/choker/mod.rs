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
use std::hash::Hash;
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

/// The choking state of one torrent's peers, each named by the session's `Id` for it. See the
/// module doc for the policy.
#[derive(Debug)]
pub struct Choker<Id> {
    slots: usize,
    peers: HashMap<Id, Peer>,
    optimistic: Option<Id>,
    optimistic_since: Option<Instant>,
    last_rechoke: Option<Instant>,
    /// A slot freed up or a candidate appeared: re-rank at the next tick.
    dirty: bool,
    rng: SmallRng,
}

impl<Id: Copy + Eq + Hash + Ord> Choker<Id> {
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
    pub fn set_interested(&mut self, id: Id, interested: bool) {
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
    pub fn set_rates(&mut self, id: Id, download: u64, upload: u64) {
        let peer = self.peers.entry(id).or_default();
        peer.download_rate = download;
        peer.upload_rate = upload;
    }

    /// `id` sent us no block for 60 s while we were interested and it had unchoked us.
    pub fn set_snubbed(&mut self, id: Id, snubbed: bool) {
        let peer = self.peers.entry(id).or_default();
        if peer.snubbed != snubbed {
            peer.snubbed = snubbed;
            if snubbed && peer.unchoked {
                self.dirty = true;
            }
        }
    }

    /// A blocked read needs data that `id` has: keep it unchoked while it is interested.
    pub fn set_urgent(&mut self, id: Id, urgent: bool) {
        self.peers.entry(id).or_default().urgent = urgent;
    }

    /// Forget `id`; its slot is refilled at the next tick. No change is reported for it.
    pub fn peer_left(&mut self, id: Id) {
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
    pub fn is_unchoked(&self, id: Id) -> bool {
        self.peers.get(&id).is_some_and(|p| p.unchoked)
    }

    /// The peer holding the optimistic slot, if any.
    pub fn optimistic(&self) -> Option<Id> {
        self.optimistic
    }

    /// Advance to `now`: re-rank if due, then return the changes as `(peer, unchoke?)`, each
    /// reported once, sorted by peer id.
    pub fn tick(&mut self, now: Instant, we_are_seed: bool) -> Vec<(Id, bool)> {
        let due = self.dirty
            || self
                .last_rechoke
                .is_none_or(|t| now.saturating_duration_since(t) >= RECHOKE_INTERVAL);
        let urgent = self.urgent(we_are_seed);
        let mut want: HashSet<Id> = if due {
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
    fn urgent(&self, we_are_seed: bool) -> Vec<Id> {
        let mut urgent: Vec<(Id, u64)> = self
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
    fn make_room(&mut self, want: &mut HashSet<Id>, urgent: &[Id], we_are_seed: bool) {
        want.extend(urgent.iter().copied());
        if want.len() <= self.slots {
            return;
        }
        let mut others: Vec<(Id, u64)> = want
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
    fn rerank(&mut self, now: Instant, we_are_seed: bool, reserved: usize) -> HashSet<Id> {
        let keep = self.optimistic.filter(|id| {
            self.peers
                .get(id)
                .is_some_and(|p| p.interested && !p.urgent)
                && self
                    .optimistic_since
                    .is_some_and(|t| now.saturating_duration_since(t) < OPTIMISTIC_INTERVAL)
        });

        // Urgent peers are unchoked anyway: they hold `reserved` slots and are not ranked.
        let mut ranked: Vec<(Id, &Peer)> = self
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
        let mut want: HashSet<Id> = ranked
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
    fn pick_optimistic(&mut self, regular: &HashSet<Id>, previous: Option<Id>) -> Option<Id> {
        let mut candidates: Vec<(Id, u32)> = self
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
mod tests;
