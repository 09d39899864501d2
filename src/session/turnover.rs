//! Peer turnover: when every slot is taken and there are addresses we have not tried, which
//! connected peers to drop for them. A pure decision with the time passed in.
//!
//! A crowd of peers with nothing we need (or that keep us choked) must not hold every slot
//! while a read waits: libtorrent turns such peers over, and so do we. The rules:
//! - Never dropped: a peer that can serve a waiting read (it has a piece the read needs and
//!   does not choke us), or that is sending us data.
//! - First to go: peers with nothing we want, once they had [`NOTHING_GRACE`] to say what
//!   they have; then peers that keep us choked while we want their pieces, after
//!   [`CHOKED_GRACE`]; incoming before outgoing among equals (a crowd that connects to us first
//!   does not get to lock us out), the longest connected first.
//! - While a read starves (it waits and no connected peer can serve it), up to
//!   [`STARVING_BATCH`] go at a time and the graces are short; otherwise one at a time, and
//!   only peers useless for [`CALM_GRACE`].
//! - Silent peers (wanted, not choking us, yet sending nothing) are dropped only while a read
//!   starves, after the useless ones.

use std::time::Duration;

use tokio::time::Instant;

use crate::picker::PeerId;

/// How long a new peer has to say what it has before "nothing we want" counts.
pub(crate) const NOTHING_GRACE: Duration = Duration::from_secs(5);
/// How long a peer may keep us choked while we want its pieces, while a read starves.
pub(crate) const CHOKED_GRACE: Duration = Duration::from_secs(20);
/// Without a starving read, a peer must have been useless this long to be turned over.
pub(crate) const CALM_GRACE: Duration = Duration::from_secs(120);
/// Peers dropped at once while a read starves.
pub(crate) const STARVING_BATCH: usize = 4;

/// What the session knows of one connected peer's worth to us, kept fresh by its task.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Worth {
    pub(crate) connected_at: Instant,
    pub(crate) incoming: bool,
    /// It has pieces we still want (we are interested).
    pub(crate) wanted: bool,
    /// It has a piece a waiting read needs.
    pub(crate) urgent: bool,
    /// Since when it keeps us choked while we want its pieces.
    pub(crate) choking_since: Option<Instant>,
    /// Bytes/s of block data it sends us, smoothed.
    pub(crate) rate: u64,
}

impl Worth {
    /// It has a piece a waiting read needs, and does not choke us.
    pub(crate) fn serves_read(&self) -> bool {
        self.urgent && self.choking_since.is_none()
    }

    /// It sends us data we want and does not choke us.
    fn delivers(&self) -> bool {
        self.rate > 0 && self.wanted && self.choking_since.is_none()
    }

    pub(crate) fn new(now: Instant, incoming: bool) -> Self {
        Self {
            connected_at: now,
            incoming,
            wanted: false,
            urgent: false,
            choking_since: None,
            rate: 0,
        }
    }
}

/// Why a peer is worth little, in the order they go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    NothingWanted,
    ChokesUs,
    Silent,
}

/// Peers to drop now so that up to `room_wanted` addresses can be dialled; `starving`: a read
/// waits and no connected peer can serve it.
pub(crate) fn victims(
    peers: &[(PeerId, Worth)],
    now: Instant,
    room_wanted: usize,
    starving: bool,
) -> Vec<PeerId> {
    let limit = room_wanted.min(if starving { STARVING_BATCH } else { 1 });
    if limit == 0 {
        return Vec::new();
    }
    let age = |since: Instant| now.saturating_duration_since(since);
    let mut faulty: Vec<(Fault, bool, Instant, PeerId)> = (peers.iter())
        .filter(|(_, w)| !w.serves_read() && !w.delivers())
        .filter_map(|&(id, w)| {
            let connected = age(w.connected_at);
            let fault = if !w.wanted {
                let grace = if starving { NOTHING_GRACE } else { CALM_GRACE };
                (connected >= grace).then_some(Fault::NothingWanted)?
            } else if let Some(since) = w.choking_since {
                let grace = if starving { CHOKED_GRACE } else { CALM_GRACE };
                (age(since) >= grace).then_some(Fault::ChokesUs)?
            } else if starving && connected >= CHOKED_GRACE {
                Fault::Silent
            } else {
                return None;
            };
            Some((fault, !w.incoming, w.connected_at, id))
        })
        .collect();
    // Worst fault first; incoming before outgoing; longest connected first.
    faulty.sort_unstable();
    faulty.into_iter().take(limit).map(|(.., id)| id).collect()
}

/// The `n` peers worth least, to give their slots back to another torrent's claim (no grace:
/// the slots are owed): a peer serving a waiting read last, then one sending us data; among the
/// rest the slowest first, incoming before outgoing, the newest first.
pub(crate) fn least_useful(peers: &[(PeerId, Worth)], n: usize) -> Vec<PeerId> {
    let mut ranked: Vec<_> = (peers.iter())
        .map(|&(id, w)| {
            let key = (
                w.serves_read(),
                w.delivers(),
                w.rate,
                !w.incoming,
                std::cmp::Reverse(w.connected_at),
            );
            (key, id)
        })
        .collect();
    ranked.sort_by_key(|&(key, _)| key);
    ranked.into_iter().take(n).map(|(_, id)| id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn worth(t0: Instant, incoming: bool) -> Worth {
        Worth::new(t0, incoming)
    }

    #[test]
    fn a_starving_read_drops_the_crowd_with_nothing_we_want_incoming_first() {
        let t0 = Instant::now();
        let now = t0 + S * 10;
        let mut peers = Vec::new();
        for i in 0..6 {
            peers.push((PeerId(i), worth(t0, i % 2 == 0)));
        }
        let got = victims(&peers, now, 10, true);
        assert_eq!(got, [PeerId(0), PeerId(2), PeerId(4), PeerId(1)]);
        // Calm: nobody yet, they have been useless only 10 s.
        assert!(victims(&peers, now, 10, false).is_empty());
        assert_eq!(victims(&peers, t0 + CALM_GRACE, 10, false), [PeerId(0)]);
    }

    #[test]
    fn a_peer_a_read_needs_or_that_delivers_is_never_dropped() {
        let t0 = Instant::now();
        let now = t0 + S * 600;
        let mut urgent = worth(t0, true);
        urgent.urgent = true;
        let mut delivering = worth(t0, true);
        delivering.wanted = true;
        delivering.rate = 10;
        let peers = [(PeerId(1), urgent), (PeerId(2), delivering)];
        assert!(victims(&peers, now, 10, true).is_empty());
        assert!(victims(&peers, now, 10, false).is_empty());
    }

    #[test]
    fn chokers_go_after_the_useless_and_silent_peers_last() {
        let t0 = Instant::now();
        let now = t0 + S * 100;
        let useless = worth(t0 + S * 90, false);
        let mut choker = worth(t0, false);
        choker.wanted = true;
        choker.choking_since = Some(t0 + S * 70);
        let mut slow = worth(t0, false);
        slow.wanted = true;
        slow.rate = 0;
        let mut slower = slow;
        slower.connected_at = t0 + S;
        let peers = [
            (PeerId(4), slow),
            (PeerId(3), slower),
            (PeerId(2), choker),
            (PeerId(1), useless),
        ];
        assert_eq!(
            victims(&peers, now, 4, true),
            [PeerId(1), PeerId(2), PeerId(4), PeerId(3)]
        );
        // Just choked, without a starving read: kept.
        choker.choking_since = Some(now - S);
        assert!(victims(&[(PeerId(2), choker)], now, 4, false).is_empty());
    }

    #[test]
    fn slots_owed_to_another_torrent_come_from_the_least_useful_peers() {
        let t0 = Instant::now();
        let mut serving = worth(t0, true);
        serving.urgent = true;
        let mut fast = worth(t0, false);
        (fast.wanted, fast.rate) = (true, 100);
        let mut slow = fast;
        slow.rate = 10;
        let idle_out = worth(t0, false);
        let idle_in_new = worth(t0 + S, true);
        let idle_in_old = worth(t0, true);
        let peers = [
            (PeerId(1), serving),
            (PeerId(2), fast),
            (PeerId(3), slow),
            (PeerId(4), idle_out),
            (PeerId(5), idle_in_old),
            (PeerId(6), idle_in_new),
        ];
        let order = [6, 5, 4, 3, 2, 1].map(PeerId);
        assert_eq!(least_useful(&peers, 6), order);
        assert_eq!(least_useful(&peers, 2), order[..2]);
        assert!(least_useful(&peers, 0).is_empty());
    }

    #[test]
    fn no_more_than_asked_for() {
        let t0 = Instant::now();
        let peers: Vec<_> = (0..10).map(|i| (PeerId(i), worth(t0, false))).collect();
        let later = t0 + CALM_GRACE;
        assert_eq!(victims(&peers, later, 2, true).len(), 2);
        assert_eq!(victims(&peers, later, 10, false).len(), 1);
        assert!(victims(&peers, later, 0, true).is_empty());
    }
}
