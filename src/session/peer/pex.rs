//! Peer exchange (BEP 11, `ut_pex`): peers tell each other whom they are connected to.
//!
//! Per connection, [`PeerPex`] keeps both directions:
//! - sending: the first message as soon as we have someone to name, then at most once a
//!   minute the difference (added/dropped) from what we told this peer before;
//! - receiving: addresses from `added`/`added6` pass [`Exclude`] (no port 0, not us, not
//!   banned, not connected), at most [`MAX_ADDED`] per message and a token bucket per peer,
//!   so a peer flooding PEX messages cannot flood discovery.
//!
//! Private torrents (BEP 27) do no PEX at all: the caller never creates a [`PeerPex`].
//! The pure parts ([`Sender`], [`Receiver`], [`Exclude`]) take the time as an argument and are
//! tested without sockets.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

use crate::picker::PeerId;
use crate::session::Shared;
use crate::wire::extension::{Pex, PexFlags};

/// Our extension id for `ut_pex`: what peers send their PEX messages under.
pub(crate) const OUR_UT_PEX: u8 = 2;
/// BEP 11: at most 50 added (and 50 dropped) peers per message; we read no more either.
pub(crate) const MAX_ADDED: usize = 50;
/// BEP 11: no more than one message a minute to a peer.
pub(crate) const SEND_INTERVAL: Duration = Duration::from_secs(60);
/// Addresses accepted from one peer: a burst of this many, then [`RECV_PER_MINUTE`].
const RECV_BURST: f64 = 100.0;
const RECV_PER_MINUTE: f64 = 50.0;

/// What a received address must not be.
pub(crate) struct Exclude<'a> {
    /// Our listening address (its IP may be unspecified) and what the peer says our IP is.
    pub listen: SocketAddr,
    pub yourip: Option<IpAddr>,
    pub banned: &'a HashSet<IpAddr>,
    /// Addresses of connected peers, both where they connect from and where they listen.
    pub connected: &'a HashSet<SocketAddr>,
}

impl Exclude<'_> {
    pub fn allows(&self, a: SocketAddr) -> bool {
        let ip = a.ip();
        if a.port() == 0 || ip.is_unspecified() || ip.is_multicast() {
            return false;
        }
        if let IpAddr::V4(v4) = ip
            && v4.is_broadcast()
        {
            return false;
        }
        let ours = a.port() == self.listen.port()
            && (ip.is_loopback()
                || ip == self.listen.ip()
                || self.yourip == Some(ip)
                || ip.to_canonical().is_loopback());
        !ours && !self.banned.contains(&ip) && !self.connected.contains(&a)
    }
}

/// Bounds what one peer's PEX messages can add to discovery.
pub(crate) struct Receiver {
    tokens: f64,
    at: Instant,
}

impl Receiver {
    pub fn new(now: Instant) -> Self {
        Self {
            tokens: RECV_BURST,
            at: now,
        }
    }

    /// The new candidates in one message's `added`: the first [`MAX_ADDED`] entries, those
    /// `allows` lets through, no duplicates, as many as the bucket holds tokens for.
    pub fn accept(
        &mut self,
        now: Instant,
        added: &[(SocketAddr, PexFlags)],
        allows: impl Fn(SocketAddr) -> bool,
    ) -> Vec<SocketAddr> {
        let minutes = now.saturating_duration_since(self.at).as_secs_f64() / 60.0;
        self.tokens = (self.tokens + minutes * RECV_PER_MINUTE).min(RECV_BURST);
        self.at = now;
        let mut out: Vec<SocketAddr> = Vec::new();
        for &(a, _) in added.iter().take(MAX_ADDED) {
            if self.tokens < 1.0 {
                break;
            }
            if allows(a) && !out.contains(&a) {
                self.tokens -= 1.0;
                out.push(a);
            }
        }
        out
    }
}

/// What we told one peer, and when.
#[derive(Default)]
pub(crate) struct Sender {
    sent: HashMap<SocketAddr, PexFlags>,
    last: Option<Instant>,
}

impl Sender {
    /// A message may go out at `now` (if anything changed).
    pub fn due(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|last| now.saturating_duration_since(last) >= SEND_INTERVAL)
    }

    /// The message due at `now` given the peers we are `connected` to (listen address and
    /// flags, the recipient excluded), or `None`: nothing changed, or the last message was
    /// less than [`SEND_INTERVAL`] ago. A peer whose flags changed is added again.
    pub fn poll(&mut self, now: Instant, connected: &HashMap<SocketAddr, PexFlags>) -> Option<Pex> {
        if !self.due(now) {
            return None;
        }
        let mut added: Vec<(SocketAddr, PexFlags)> = connected
            .iter()
            .filter(|(a, f)| self.sent.get(a) != Some(f))
            .map(|(a, f)| (*a, *f))
            .collect();
        let mut dropped: Vec<SocketAddr> = (self.sent.keys())
            .filter(|a| !connected.contains_key(a))
            .copied()
            .collect();
        if added.is_empty() && dropped.is_empty() {
            return None;
        }
        // Sorted so a message does not depend on hash order; the rest goes next time.
        added.sort_by_key(|(a, _)| *a);
        dropped.sort();
        added.truncate(MAX_ADDED);
        dropped.truncate(MAX_ADDED);
        for (a, f) in &added {
            self.sent.insert(*a, *f);
        }
        for a in &dropped {
            self.sent.remove(a);
        }
        self.last = Some(now);
        Some(Pex { added, dropped })
    }
}

/// PEX on one connection of a public torrent.
pub(crate) struct PeerPex {
    /// The id to send our messages under, from the peer's extended handshake.
    theirs: Option<u8>,
    yourip: Option<IpAddr>,
    sender: Sender,
    receiver: Receiver,
}

impl PeerPex {
    pub fn new() -> Self {
        Self {
            theirs: None,
            yourip: None,
            sender: Sender::default(),
            receiver: Receiver::new(Instant::now()),
        }
    }

    pub fn on_handshake(&mut self, theirs: Option<u8>, yourip: Option<IpAddr>) {
        self.theirs = theirs;
        self.yourip = yourip;
    }

    /// A `ut_pex` message from the peer: new candidates go to discovery. Malformed ones are
    /// ignored, as BEP 10 asks of extension messages.
    pub fn on_message(&mut self, shared: &Shared, from: SocketAddr, payload: &[u8]) {
        let pex = match Pex::decode(payload) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(%from, "bad PEX message ignored: {e}");
                return;
            }
        };
        let accepted = {
            let st = shared.lock();
            let connected = st.peers.addresses();
            let exclude = Exclude {
                listen: SocketAddr::new(shared.config.listen.ip(), shared.listen_port),
                yourip: self.yourip,
                banned: st.peers.banned(),
                connected: &connected,
            };
            self.receiver
                .accept(Instant::now(), &pex.added, |a| exclude.allows(a))
        };
        tracing::debug!(
            %from,
            added = pex.added.len(),
            dropped = pex.dropped.len(),
            accepted = accepted.len(),
            "PEX received"
        );
        if !accepted.is_empty() {
            shared.discover_from_pex(accepted);
        }
    }

    /// The payload of the PEX message due to peer `me` now, with the id to send it under.
    pub fn tick(&mut self, shared: &Shared, me: PeerId, to: SocketAddr) -> Option<(u8, Vec<u8>)> {
        let theirs = self.theirs?;
        let now = Instant::now();
        if !self.sender.due(now) {
            return None;
        }
        let connected = shared.lock().peers.pex_view(me, to);
        let pex = self.sender.poll(now, &connected)?;
        tracing::debug!(
            %to,
            added = pex.added.len(),
            dropped = pex.dropped.len(),
            "PEX sent"
        );
        Some((theirs, pex.encode()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn none() -> impl Fn(SocketAddr) -> bool {
        |_| true
    }

    #[test]
    fn exclude_drops_port_zero_ourselves_banned_and_connected() {
        let banned: HashSet<IpAddr> = [IpAddr::from([10, 0, 0, 9])].into();
        let connected: HashSet<SocketAddr> = [addr("10.0.0.2:7000")].into();
        let ex = Exclude {
            listen: addr("0.0.0.0:6881"),
            yourip: Some(IpAddr::from([203, 0, 113, 5])),
            banned: &banned,
            connected: &connected,
        };
        for bad in [
            "10.0.0.1:0",
            "127.0.0.1:6881",
            "[::1]:6881",
            "[::ffff:127.0.0.1]:6881",
            "203.0.113.5:6881",
            "10.0.0.9:5000",
            "10.0.0.2:7000",
            "0.0.0.0:5000",
            "255.255.255.255:5000",
            "224.0.0.1:5000",
        ] {
            assert!(!ex.allows(addr(bad)), "{bad} should be excluded");
        }
        for good in [
            "10.0.0.1:6881",
            "127.0.0.1:6882",
            "203.0.113.5:6882",
            "10.0.0.2:7001",
            "[2001:db8::1]:6881",
        ] {
            assert!(ex.allows(addr(good)), "{good} should be allowed");
        }
        let bound = Exclude {
            listen: addr("192.0.2.1:6881"),
            yourip: None,
            ..ex
        };
        assert!(!bound.allows(addr("192.0.2.1:6881")));
        assert!(bound.allows(addr("203.0.113.5:6881")));
    }

    fn many(n: usize, first_port: u16) -> Vec<(SocketAddr, PexFlags)> {
        (0..n)
            .map(|i| {
                let a = SocketAddr::from(([10, 1, (i / 250) as u8, 1], first_port + i as u16));
                (a, PexFlags::default())
            })
            .collect()
    }

    #[test]
    fn receiver_reads_at_most_fifty_per_message_without_duplicates() {
        let t0 = Instant::now();
        let mut r = Receiver::new(t0);
        let got = r.accept(t0, &many(120, 1000), none());
        assert_eq!(got, many(50, 1000).iter().map(|x| x.0).collect::<Vec<_>>());
        // Refused and repeated entries count toward the 50 read, not toward the bucket.
        let mut msg = many(3, 5000);
        msg.push(msg[0]);
        msg.push((addr("10.9.9.9:0"), PexFlags::default()));
        let mut r = Receiver::new(t0);
        let got = r.accept(t0, &msg, |a| a.port() != 0);
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn a_flooding_peer_gets_a_bounded_number_of_addresses_in() {
        let t0 = Instant::now();
        let mut r = Receiver::new(t0);
        let mut total = 0;
        // 100 messages of 50 fresh addresses, all in the same second.
        for i in 0..100u16 {
            total += r.accept(t0, &many(50, 1000 + i * 50), none()).len();
        }
        assert_eq!(total, RECV_BURST as usize);
        // Ten minutes of one message a second: the refill rate, not the message rate, counts.
        let mut t = t0;
        let mut later = 0;
        for i in 0..600u32 {
            t += Duration::from_secs(1);
            later += r.accept(t, &many(50, (i % 1000) as u16), none()).len();
        }
        assert!(
            (490..=510).contains(&later),
            "{later} addresses in 10 minutes at 50 a minute"
        );
        // A quiet peer earns its burst back, no more.
        let got = r.accept(t + Duration::from_secs(3600), &many(200, 30000), none());
        assert_eq!(got.len(), MAX_ADDED);
        let got = r.accept(t + Duration::from_secs(3600), &many(200, 40000), none());
        assert_eq!(got.len(), RECV_BURST as usize - MAX_ADDED);
    }

    fn view(entries: &[(&str, PexFlags)]) -> HashMap<SocketAddr, PexFlags> {
        entries.iter().map(|(a, f)| (addr(a), *f)).collect()
    }

    #[test]
    fn sender_sends_everyone_first_then_diffs_at_most_once_a_minute() {
        let t0 = Instant::now();
        let mut s = Sender::default();
        assert_eq!(s.poll(t0, &HashMap::new()), None, "nobody to name yet");
        let r = PexFlags::REACHABLE;
        let seed = PexFlags(PexFlags::REACHABLE.0 | PexFlags::SEED.0);
        let v1 = view(&[("10.0.0.2:2", r), ("10.0.0.1:1", seed)]);
        let first = s.poll(t0 + Duration::from_secs(1), &v1).unwrap();
        assert_eq!(
            first.added,
            [(addr("10.0.0.1:1"), seed), (addr("10.0.0.2:2"), r)]
        );
        assert!(first.dropped.is_empty());
        // Within the minute nothing goes out, whatever changed.
        let v2 = view(&[("10.0.0.2:2", r), ("10.0.0.3:3", PexFlags::default())]);
        for secs in [2, 30, 60] {
            assert_eq!(s.poll(t0 + Duration::from_secs(secs), &v2), None, "{secs}");
        }
        let diff = s.poll(t0 + Duration::from_secs(61), &v2).unwrap();
        assert_eq!(diff.added, [(addr("10.0.0.3:3"), PexFlags::default())]);
        assert_eq!(diff.dropped, [addr("10.0.0.1:1")]);
        // Nothing changed: no message, and a change after that goes out at once.
        assert_eq!(s.poll(t0 + Duration::from_secs(200), &v2), None);
        let v3 = view(&[("10.0.0.2:2", seed), ("10.0.0.3:3", PexFlags::default())]);
        let flags = s.poll(t0 + Duration::from_secs(201), &v3).unwrap();
        assert_eq!(flags.added, [(addr("10.0.0.2:2"), seed)]);
        assert!(flags.dropped.is_empty());
    }

    #[test]
    fn sender_caps_a_message_at_fifty_and_sends_the_rest_later() {
        let t0 = Instant::now();
        let mut s = Sender::default();
        let all: HashMap<SocketAddr, PexFlags> = many(120, 1000).into_iter().collect();
        let mut seen = HashSet::new();
        for minute in 0..3 {
            let m = s.poll(t0 + SEND_INTERVAL * minute, &all).unwrap();
            assert!(m.added.len() <= MAX_ADDED);
            seen.extend(m.added.iter().map(|x| x.0));
        }
        assert_eq!(seen.len(), 120);
        assert_eq!(s.poll(t0 + SEND_INTERVAL * 3, &all), None);
        let m = s.poll(t0 + SEND_INTERVAL * 4, &HashMap::new()).unwrap();
        assert_eq!(m.dropped.len(), MAX_ADDED);
    }
}
