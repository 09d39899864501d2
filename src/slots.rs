//! Peer slots shared by the torrents of a process: `--max-peers` of a library mount is one
//! total that the torrents share as they need it, not a part fixed per torrent (an even split
//! would leave a torrent being played 1 peer of 80 in a library of 100, while 99 sleeping ones
//! hold shares they cannot use). A pure state machine ([`SlotPolicy`]) under a leaf lock
//! ([`PeerSlots`]); a connection holds its [`Slot`] from its dial (or its arrival) to its end.
//!
//! # The policy
//! - The process never holds more than `total` slots.
//! - A sleeping torrent holds none and takes none.
//! - An awake torrent takes slots while the process holds fewer than the total.
//! - The fair share is `total / awake torrents` (at least 1). A torrent under its share that
//!   *claims* (a read of it waits, and it has addresses to try) comes first: the free slots
//!   go to what the claims lack before anyone else takes one, and when they do not cover it,
//!   torrents over their share are told to give the rest back ([`SlotPolicy::to_drop`]: the
//!   largest excess first; they drop their least useful peers).
//! - Incoming connections take slots as dials do, but never the last [`outgoing_reserve`] of
//!   the total: a crowd connecting to us does not leave the process unable to dial.
//!
//! # The guarantee
//! With no more torrents awake than slots, the shares add up to at most the total, so a
//! claimant under its share always has a way forward: a free slot it may take, a slot on its
//! way back, or a torrent over its share told to drop one. The random walk in the tests checks
//! this after every step, and that a claimant reaches its share when the others do as told.
//! (With more torrents awake than slots, a share is 1 and a claimant gets its slot as one
//! frees.)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// Slots never given to incoming connections: a fifth, and at least one from three slots up.
pub fn outgoing_reserve(total: usize) -> usize {
    if total < 3 { 0 } else { (total / 5).max(1) }
}

/// One torrent's place in the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HolderId(u64);

#[derive(Clone, Debug, Default)]
struct Holder {
    /// Slots held: connections and dials in flight.
    held: usize,
    /// Of them, incoming connections.
    incoming: usize,
    awake: bool,
    /// A read waits and there are addresses to try.
    claiming: bool,
    /// Peers told to go and not gone yet: their slots are on the way back.
    dropping: usize,
    /// Left the process (its session ended); forgotten once it holds nothing.
    left: bool,
}

/// The shared slots as a pure state machine; see the module doc.
#[derive(Clone, Debug)]
pub struct SlotPolicy {
    total: usize,
    holders: BTreeMap<HolderId, Holder>,
    next: u64,
}

impl SlotPolicy {
    /// `total` slots (at least one).
    pub fn new(total: usize) -> Self {
        Self {
            total: total.max(1),
            holders: BTreeMap::new(),
            next: 0,
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// A new torrent, awake and holding nothing.
    pub fn join(&mut self) -> HolderId {
        self.next += 1;
        let id = HolderId(self.next);
        let awake = Holder {
            awake: true,
            ..Holder::default()
        };
        self.holders.insert(id, awake);
        id
    }

    /// A torrent's session ended; the slots its connections still hold come back as they end.
    pub fn leave(&mut self, id: HolderId) {
        if let Some(h) = self.holders.get_mut(&id) {
            (h.left, h.awake, h.claiming) = (true, false, false);
            if h.held == 0 {
                self.holders.remove(&id);
            }
        }
    }

    pub fn set_awake(&mut self, id: HolderId, awake: bool) {
        if let Some(h) = self.holders.get_mut(&id).filter(|h| !h.left) {
            h.awake = awake;
            h.claiming &= awake;
        }
    }

    /// Whether a read of the torrent waits while it has addresses to try.
    pub fn set_claiming(&mut self, id: HolderId, claiming: bool) {
        if let Some(h) = self.holders.get_mut(&id).filter(|h| !h.left) {
            h.claiming = claiming && h.awake;
        }
    }

    /// Slots held by the process.
    pub fn used(&self) -> usize {
        self.holders.values().map(|h| h.held).sum()
    }

    /// Slots `id` holds.
    pub fn held(&self, id: HolderId) -> usize {
        self.holders.get(&id).map_or(0, |h| h.held)
    }

    /// An awake torrent's fair share: the total over the awake torrents, at least 1.
    pub fn share(&self) -> usize {
        let awake = self.holders.values().filter(|h| h.awake).count();
        (self.total / awake.max(1)).max(1)
    }

    fn share_of(&self, h: &Holder) -> usize {
        if h.awake { self.share() } else { 0 }
    }

    fn is_claimant(&self, h: &Holder) -> bool {
        h.claiming && h.awake && h.held < self.share()
    }

    /// What the claims of torrents other than `id` lack of their shares.
    fn lacking_but(&self, id: HolderId) -> usize {
        let share = self.share();
        (self.holders.iter())
            .filter(|(o, h)| **o != id && self.is_claimant(h))
            .map(|(_, h)| share - h.held)
            .sum()
    }

    /// Whether `id` may take one more slot now (for an incoming connection or a dial): a
    /// claimant while a slot is free, anyone else while more are free than the claims lack.
    pub fn may_take(&self, id: HolderId, incoming: bool) -> bool {
        let Some(h) = self.holders.get(&id).filter(|h| h.awake) else {
            return false;
        };
        let free = self.total.saturating_sub(self.used());
        if free == 0 {
            return false;
        }
        if incoming {
            let came: usize = self.holders.values().map(|h| h.incoming).sum();
            if came >= self.total - outgoing_reserve(self.total) {
                return false;
            }
        }
        self.is_claimant(h) || free > self.lacking_but(id)
    }

    /// Takes a slot if [`SlotPolicy::may_take`]; true if taken.
    pub fn take(&mut self, id: HolderId, incoming: bool) -> bool {
        if !self.may_take(id, incoming) {
            return false;
        }
        let h = self.holders.get_mut(&id).expect("may_take found it");
        h.held += 1;
        h.incoming += usize::from(incoming);
        true
    }

    /// How many dials `id` may start now: what successive [`SlotPolicy::take`]s would give.
    pub fn room(&self, id: HolderId) -> usize {
        let Some(h) = self.holders.get(&id).filter(|h| h.awake) else {
            return 0;
        };
        let free = self.total.saturating_sub(self.used());
        let others = self.lacking_but(id);
        // A claimant takes up to its share, then (no longer claiming) what the others leave.
        let claimed = if self.is_claimant(h) {
            free.min(self.share() - h.held)
        } else {
            0
        };
        claimed + (free - claimed).saturating_sub(others)
    }

    /// A connection of `id` ended (or a dial came to nothing): its slot is free.
    pub fn release(&mut self, id: HolderId, incoming: bool) {
        let Some(h) = self.holders.get_mut(&id) else {
            return;
        };
        h.held = h.held.saturating_sub(1);
        if incoming {
            h.incoming = h.incoming.saturating_sub(1);
        }
        h.dropping = h.dropping.saturating_sub(1).min(h.held);
        if h.left && h.held == 0 {
            self.holders.remove(&id);
        }
    }

    /// How many of its peers `id` should drop now so that the claims can be met: nothing
    /// without a claim, nor while the free slots and those on their way back cover them; else
    /// what they lack, taken from the torrents over their share, the largest excess first.
    pub fn to_drop(&self, id: HolderId) -> usize {
        let share = self.share();
        let need: usize = (self.holders.values())
            .filter(|h| self.is_claimant(h))
            .map(|h| share - h.held)
            .sum();
        let coming: usize = self.holders.values().map(|h| h.dropping).sum();
        let free = self.total.saturating_sub(self.used()) + coming;
        let Some(mut lacking) = need.checked_sub(free).filter(|&n| n > 0) else {
            return 0;
        };
        let mut over: Vec<(usize, HolderId)> = (self.holders.iter())
            .map(|(o, h)| ((h.held - h.dropping).saturating_sub(self.share_of(h)), *o))
            .filter(|&(excess, _)| excess > 0)
            .collect();
        over.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (excess, o) in over {
            let k = excess.min(lacking);
            if o == id {
                return k;
            }
            lacking -= k;
            if lacking == 0 {
                break;
            }
        }
        0
    }

    /// `id` told `n` of its peers to go: their slots count as coming back until released.
    pub fn dropping(&mut self, id: HolderId, n: usize) {
        if let Some(h) = self.holders.get_mut(&id) {
            h.dropping = (h.dropping + n).min(h.held);
        }
    }
}

/// [`SlotPolicy`] shared by a process's sessions; cheap to clone. The lock is a leaf: taken
/// for one policy step, with no other lock held.
#[derive(Clone, Debug)]
pub struct PeerSlots {
    policy: Arc<Mutex<SlotPolicy>>,
}

impl PeerSlots {
    pub fn new(total: usize) -> Self {
        Self {
            policy: Arc::new(Mutex::new(SlotPolicy::new(total))),
        }
    }

    pub fn total(&self) -> usize {
        lock(&self.policy).total()
    }

    /// Slots held by the process now.
    pub fn used(&self) -> usize {
        lock(&self.policy).used()
    }

    /// A new torrent's place, awake; it leaves when the handle is dropped.
    pub fn join(&self) -> SlotHolder {
        let id = lock(&self.policy).join();
        SlotHolder {
            policy: self.policy.clone(),
            id,
        }
    }
}

/// One torrent's place among the shared slots.
#[derive(Debug)]
pub struct SlotHolder {
    policy: Arc<Mutex<SlotPolicy>>,
    id: HolderId,
}

impl SlotHolder {
    /// A slot for one more connection, if the policy gives one now.
    pub fn take(&self, incoming: bool) -> Option<Slot> {
        lock(&self.policy).take(self.id, incoming).then(|| Slot {
            policy: self.policy.clone(),
            id: self.id,
            incoming,
        })
    }

    /// How many dials may start now.
    pub fn room(&self) -> usize {
        lock(&self.policy).room(self.id)
    }

    /// Awake or asleep, and whether a read waits with addresses to try; returns how many
    /// peers to drop now for another torrent's claim ([`SlotPolicy::to_drop`]).
    pub fn update(&self, awake: bool, claiming: bool) -> usize {
        let mut p = lock(&self.policy);
        p.set_awake(self.id, awake);
        p.set_claiming(self.id, claiming);
        p.to_drop(self.id)
    }

    /// `n` peers were told to go.
    pub fn dropping(&self, n: usize) {
        lock(&self.policy).dropping(self.id, n);
    }

    /// Whether this torrent could take a slot for a dial now.
    pub fn may_dial(&self) -> bool {
        lock(&self.policy).may_take(self.id, false)
    }
}

impl Drop for SlotHolder {
    fn drop(&mut self) {
        lock(&self.policy).leave(self.id);
    }
}

/// One connection's slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    policy: Arc<Mutex<SlotPolicy>>,
    id: HolderId,
    incoming: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.policy).release(self.id, self.incoming);
    }
}

#[cfg(test)]
mod tests;
