//! When to announce and what to take in: pure state machines, time passed in.
//!
//! Announcing ([`Schedule`]). A torrent is announced as soon as it is added, again
//! [`FIRST_DELAYS`] later (multicast is lost without notice, on Wi-Fi especially), then every
//! [`INTERVAL`]. BEP 14 asks for no more than one announce a minute on a big network: the
//! periodic announces of every torrent due within the next [`SHARE`] go out together, in one
//! datagram. A client that announces only when it starts and then every few minutes
//! (libtorrent) would not hear of us for minutes, so a torrent is also announced when
//! someone else announces it (an *answer*), at most once per [`ANSWER_GAP`] however many
//! peers announce it.
//!
//! Taking in ([`Intake`]). Anyone on the network can send announces: datagrams are read at
//! most [`DATAGRAMS_PER_SEC`] a second on average, and a peer is passed to its torrent (and
//! answered) once per [`REMEMBER`], not on every announce it repeats, with a bounded memory.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::metainfo::InfoHash;

/// After a torrent's first announce, and its second: the next one comes this much later.
pub(crate) const FIRST_DELAYS: [Duration; 2] = [Duration::from_secs(3), Duration::from_secs(60)];
/// Between periodic announces of a torrent (libtorrent's default too).
pub(crate) const INTERVAL: Duration = Duration::from_secs(5 * 60);
/// A periodic announce due within this long goes out with one due now.
pub(crate) const SHARE: Duration = Duration::from_secs(60);
/// Answers for one torrent, at most one per this long.
pub(crate) const ANSWER_GAP: Duration = Duration::from_secs(60);

/// Average datagrams read a second, and the burst allowed above it. Reading one costs
/// microseconds: the cap bounds the work a flood makes, well above what a busy network sends
/// (a libtorrent with 1,000 torrents announces about 3 a second).
pub(crate) const DATAGRAMS_PER_SEC: f64 = 50.0;
const DATAGRAM_BURST: f64 = 100.0;
/// A peer announcing a torrent again within this long is not passed on again.
pub(crate) const REMEMBER: Duration = INTERVAL;
/// (torrent, peer) pairs remembered at most; past that, new ones wait for old ones to expire.
pub(crate) const MAX_REMEMBERED: usize = 4096;

/// When each torrent is announced next.
#[derive(Default)]
pub(crate) struct Schedule {
    torrents: HashMap<InfoHash, Planned>,
}

struct Planned {
    /// The port announced with it.
    port: u16,
    /// The next planned announce, and how many went out so far.
    next: Instant,
    sent: usize,
    /// An answer owed, apart from the plan, and when the last one went out.
    answer_at: Option<Instant>,
    last_answer: Option<Instant>,
}

impl Planned {
    fn due(&self) -> Instant {
        self.answer_at.map_or(self.next, |a| a.min(self.next))
    }
}

impl Schedule {
    /// A torrent to announce with `port`, at once (again from the start, if it was there).
    pub(crate) fn add(&mut self, info_hash: InfoHash, port: u16, now: Instant) {
        let planned = Planned {
            port,
            next: now,
            sent: 0,
            answer_at: None,
            last_answer: None,
        };
        self.torrents.insert(info_hash, planned);
    }

    pub(crate) fn remove(&mut self, info_hash: &InfoHash) {
        self.torrents.remove(info_hash);
    }

    /// When something is due next; `None` with no torrent.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.torrents.values().map(Planned::due).min()
    }

    /// Someone else announced `info_hash`: announce it soon, so that they learn of us. An
    /// answer leaves the plan as it is.
    pub(crate) fn answer(&mut self, info_hash: &InfoHash, now: Instant) {
        let Some(p) = self.torrents.get_mut(info_hash) else {
            return;
        };
        let at = p.last_answer.map_or(now, |t| (t + ANSWER_GAP).max(now));
        if at < p.due() {
            p.answer_at = Some(at);
        }
    }

    /// What to announce now, by port (one datagram each, or a few if they do not fit), and
    /// each torrent's next announce planned.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<(u16, Vec<InfoHash>)> {
        if !self.torrents.values().any(|p| p.due() <= now) {
            return Vec::new();
        }
        let mut by_port: BTreeMap<u16, Vec<InfoHash>> = BTreeMap::new();
        for (hash, p) in &mut self.torrents {
            let periodic = p.sent > FIRST_DELAYS.len();
            let planned = p.next <= now || (periodic && p.next <= now + SHARE);
            let answer = p.answer_at.is_some_and(|a| a <= now);
            if planned {
                p.sent += 1;
                p.next = now + FIRST_DELAYS.get(p.sent - 1).copied().unwrap_or(INTERVAL);
            }
            if answer {
                p.last_answer = Some(now);
            }
            if planned || answer {
                p.answer_at = None;
                by_port.entry(p.port).or_default().push(*hash);
            }
        }
        by_port
            .into_iter()
            .map(|(port, mut hashes)| {
                hashes.sort();
                (port, hashes)
            })
            .collect()
    }
}

/// What announces from others are taken in.
pub(crate) struct Intake {
    tokens: f64,
    refilled: Instant,
    /// When each (torrent, peer) was last passed on.
    passed: HashMap<(InfoHash, SocketAddr), Instant>,
}

impl Intake {
    pub(crate) fn new(now: Instant) -> Intake {
        Intake {
            tokens: DATAGRAM_BURST,
            refilled: now,
            passed: HashMap::new(),
        }
    }

    /// Whether to read a datagram that arrived now (false: a flood; it is dropped unread).
    pub(crate) fn datagram(&mut self, now: Instant) -> bool {
        let secs = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + secs * DATAGRAMS_PER_SEC).min(DATAGRAM_BURST);
        self.refilled = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// Whether `peer`, announcing `info_hash` now, is news to pass on (and to answer).
    pub(crate) fn fresh(&mut self, info_hash: InfoHash, peer: SocketAddr, now: Instant) -> bool {
        let key = (info_hash, peer);
        if let Some(&at) = self.passed.get(&key)
            && now.saturating_duration_since(at) < REMEMBER
        {
            return false;
        }
        if self.passed.len() >= MAX_REMEMBERED && !self.passed.contains_key(&key) {
            self.passed
                .retain(|_, at| now.saturating_duration_since(*at) < REMEMBER);
            if self.passed.len() >= MAX_REMEMBERED {
                return false;
            }
        }
        self.passed.insert(key, now);
        true
    }

    /// A torrent is gone: forget its peers.
    pub(crate) fn forget(&mut self, info_hash: &InfoHash) {
        self.passed.retain(|(h, _), _| h != info_hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(b: u8) -> InfoHash {
        InfoHash([b; 20])
    }

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 168, 1, 7], port))
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    /// What went out at once: torrents by port.
    type Sent = Vec<(u16, Vec<InfoHash>)>;

    /// Runs the schedule to `until`, waking whenever something is due; what went out when
    /// (seconds after `t0`).
    fn run(s: &mut Schedule, t0: Instant, until: Duration) -> Vec<(u64, Sent)> {
        let mut out = Vec::new();
        while let Some(at) = s.next_due() {
            if at > t0 + until {
                break;
            }
            out.push(((at - t0).as_secs(), s.take_due(at)));
        }
        out
    }

    #[test]
    fn a_torrent_is_announced_at_once_then_soon_then_every_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        assert_eq!(s.next_due(), None);
        s.add(h(1), 6881, t0);
        let times: Vec<u64> = run(&mut s, t0, S(1000))
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(times, [0, 3, 63, 363, 663, 963]);
    }

    #[test]
    fn nothing_is_announced_before_it_is_due() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.add(h(1), 6881, t0);
        assert_eq!(s.take_due(t0), [(6881, vec![h(1)])]);
        assert!(s.take_due(t0 + S(2)).is_empty());
        assert_eq!(s.take_due(t0 + S(3)), [(6881, vec![h(1)])]);
    }

    #[test]
    fn torrents_due_together_share_a_datagram_per_port() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.add(h(2), 6881, t0);
        s.add(h(1), 6881, t0);
        s.add(h(3), 7000, t0);
        assert_eq!(
            s.take_due(t0),
            [(6881, vec![h(1), h(2)]), (7000, vec![h(3)])]
        );
    }

    #[test]
    fn periodic_announces_due_within_a_minute_go_out_together() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.add(h(1), 1, t0);
        s.add(h(2), 1, t0 + S(30));
        // Both periodic by 400 s: h(1) due at 363, h(2) at 393.
        let sent = run(&mut s, t0, S(700));
        let at_363 = sent
            .iter()
            .find(|(t, _)| *t == 363)
            .expect("an announce at 363 s");
        assert_eq!(at_363.1, [(1, vec![h(1), h(2)])]);
        assert!(sent.iter().all(|(t, _)| *t != 393), "{sent:?}");
        // But a start-up announce is never pulled forward: h(2)'s second one stays at 33 s.
        assert!(
            sent.iter()
                .any(|(t, d)| *t == 33 && d == &[(1, vec![h(2)])])
        );
    }

    #[test]
    fn an_answer_goes_out_at_once_then_at_most_once_per_gap() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.add(h(1), 1, t0);
        run(&mut s, t0, S(64)); // 0, 3, 63: periodic from here, next at 363
        s.answer(&h(1), t0 + S(100));
        assert_eq!(s.next_due(), Some(t0 + S(100)));
        assert_eq!(s.take_due(t0 + S(100)), [(1, vec![h(1)])]);
        // A second newcomer 10 s later waits for the gap; an unknown torrent is no one's.
        s.answer(&h(1), t0 + S(110));
        s.answer(&h(9), t0 + S(110));
        assert_eq!(s.next_due(), Some(t0 + S(160)));
        assert_eq!(s.take_due(t0 + S(160)), [(1, vec![h(1)])]);
        // The plan is kept: the periodic announce at 363 s.
        assert_eq!(s.next_due(), Some(t0 + S(363)));
    }

    #[test]
    fn an_answer_in_the_first_seconds_keeps_the_resend() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.add(h(1), 1, t0);
        s.take_due(t0);
        s.answer(&h(1), t0 + S(1));
        assert_eq!(s.take_due(t0 + S(1)), [(1, vec![h(1)])]);
        // The next newcomer's answer would wait for the gap: the resend comes first, and
        // answers it.
        s.answer(&h(1), t0 + S(2));
        let times: Vec<u64> = run(&mut s, t0, S(100))
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(times, [3, 63]);
    }

    #[test]
    fn a_removed_torrent_is_not_announced() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.add(h(1), 1, t0);
        s.remove(&h(1));
        assert_eq!(s.next_due(), None);
        assert!(s.take_due(t0).is_empty());
    }

    #[test]
    fn a_flood_of_datagrams_is_cut_to_the_rate() {
        let t0 = Instant::now();
        let mut i = Intake::new(t0);
        let burst = (0..1000).filter(|_| i.datagram(t0)).count();
        assert_eq!(burst, DATAGRAM_BURST as usize);
        // A minute later: the burst again, no more (the bucket does not fill past it).
        let later = (0..1000).filter(|_| i.datagram(t0 + S(60))).count();
        assert_eq!(later, DATAGRAM_BURST as usize);
        // Then the steady rate.
        let second = (0..1000).filter(|_| i.datagram(t0 + S(61))).count();
        assert_eq!(second, DATAGRAMS_PER_SEC as usize);
    }

    #[test]
    fn a_peer_is_passed_on_once_per_interval_per_torrent() {
        let t0 = Instant::now();
        let mut i = Intake::new(t0);
        assert!(i.fresh(h(1), peer(1), t0));
        assert!(!i.fresh(h(1), peer(1), t0 + S(3)));
        assert!(i.fresh(h(2), peer(1), t0 + S(3)), "another torrent");
        assert!(i.fresh(h(1), peer(2), t0 + S(3)), "another port");
        assert!(i.fresh(h(1), peer(1), t0 + REMEMBER));
        i.forget(&h(1));
        assert!(
            i.fresh(h(1), peer(2), t0 + S(301)),
            "forgotten with its torrent"
        );
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut i = Intake::new(t0);
        for n in 0..MAX_REMEMBERED {
            let p = SocketAddr::from(([10, 0, (n >> 8) as u8, n as u8], 1));
            assert!(i.fresh(h(1), p, t0));
        }
        assert!(!i.fresh(h(1), peer(1), t0 + S(1)), "full of recent peers");
        assert!(
            i.fresh(h(1), peer(1), t0 + REMEMBER),
            "the old ones expired"
        );
        assert_eq!(i.passed.len(), 1);
    }
}
