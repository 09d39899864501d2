//! Every peer address a session knows, and when to dial each: a pure state machine with the
//! time passed in, owned by the connector task.
//!
//! Each address remembers how its last attempt ended, and waits a backoff chosen by that
//! outcome: a peer that refused or timed out waits minutes, then longer, and is given up after
//! a few tries; one for another torrent, one we banned, and our own address are never dialled
//! again; a peer we dropped as useless waits ten minutes; one that ran a while and ended is
//! dialled again soon. While a read starves, every address that is not dead is tried again,
//! none waiting more than [`STARVING_MAX_WAIT`], so seeders coming back at old addresses are
//! found without a tracker's help.
//!
//! The book is bounded ([`AddressBook::new`]'s limit): a new address past it takes the place
//! of the one least worth keeping (given up on, then the most failed, then the oldest news);
//! addresses being dialled or connected are never dropped.
//!
//! A peer that connected to us is known by its outgoing port, where nobody listens; the port
//! its extended handshake names is learnt as soon as it comes ([`AddressBook::listening`]):
//! not dialled while the connection lasts, even when a tracker or PEX names it too. When the
//! connection ends ([`AddressBook::listens`]) it waits the backoff of how it ended, as a
//! dialled one would; one claim per connection. Its IP
//! is the one it connected from, so a peer can only have us dial itself, and at most
//! [`CLAIMS_PER_IP`] such addresses of one IP are kept.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::discovery::{PeerSource, SourceCount};
use super::encryption::Attempt;
use super::stream::Transport;

/// How a connection to an address got as far as the BitTorrent handshake: tried first next
/// time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Worked {
    pub(crate) transport: Transport,
    pub(crate) attempt: Attempt,
}

/// Failed attempts (refused, timed out, hung up) before an address is given up on, until a
/// read starves.
pub(crate) const MAX_FAILURES: u32 = 5;
/// While a read starves, no address waits longer than this for its next try.
pub(crate) const STARVING_MAX_WAIT: Duration = Duration::from_secs(30);
/// A connection that lasted this long was a good one: its failures are forgotten.
const GOOD_CONNECTION: Duration = Duration::from_secs(60);
/// Addresses of one IP known only from what peers connecting from it said (several clients
/// behind one NAT); past this the oldest news is dropped for the newest.
pub(crate) const CLAIMS_PER_IP: usize = 4;

/// How one attempt at an address ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A connection ran (handshakes done) and ended after `lasted`.
    Ended { lasted: Duration },
    /// Connecting failed at once (refused, unreachable, reset).
    Refused,
    /// Connecting or the handshake took too long.
    TimedOut,
    /// The peer closed the connection during the handshake.
    HungUp,
    /// Its handshake named another torrent.
    WrongTorrent,
    /// We banned it (bad data).
    Banned,
    /// The address is our own listener.
    Myself,
    /// We had no free slot once its handshake was done.
    Full,
    /// We dropped it to make room: it had nothing we wanted, or kept us choked.
    Useless,
    /// The peer behind it is connected to us already, over another connection (it connected
    /// in from another port, say): tried again in a minute or so, as that one may end.
    Duplicate,
    /// Our side failed (out of file descriptors): not the address's fault.
    Local,
}

impl Outcome {
    /// The pause before the next try after this outcome, the `failures`-th in a row; `None`:
    /// never again.
    fn backoff(self, failures: u32) -> Option<Duration> {
        let doubling = |base: u64| Duration::from_secs(base << failures.saturating_sub(1).min(6));
        match self {
            Outcome::Ended { .. } => Some(doubling(30).min(Duration::from_secs(30 * 60))),
            Outcome::Refused => Some(doubling(60)),
            Outcome::TimedOut => Some(doubling(30)),
            Outcome::HungUp => Some(doubling(120)),
            Outcome::Useless => Some(doubling(600).min(Duration::from_secs(3600))),
            Outcome::Duplicate => Some(doubling(60).min(Duration::from_secs(30 * 60))),
            Outcome::Full | Outcome::Local => Some(Duration::from_secs(10)),
            Outcome::WrongTorrent | Outcome::Banned | Outcome::Myself => None,
        }
    }

    /// Counts toward giving the address up.
    fn is_failure(self) -> bool {
        matches!(
            self,
            Outcome::Refused | Outcome::TimedOut | Outcome::HungUp | Outcome::Useless
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    /// Waiting for `next_try`.
    Idle,
    Dialing,
    Connected,
    /// The address a peer connected to us from another port said it listens at: not dialled
    /// while that connection lasts (it would be a second connection to the same peer).
    ConnectedIn,
    /// Given up on after too many failures; tried again only while a read starves.
    GivenUp,
    /// Never dialled again (another torrent, banned, ourselves).
    Dead,
}

#[derive(Clone, Debug)]
struct Entry {
    /// Bit set of the `PeerSource`s that named it.
    sources: u8,
    status: Status,
    failures: u32,
    /// Ever dialled: addresses never tried go first.
    tried: bool,
    /// The transport and encryption that last got as far as a BitTorrent handshake, tried first.
    worked: Option<Worked>,
    next_try: Instant,
    /// When discovery last named it (or it connected): old news is dropped first.
    seen: Instant,
}

impl Entry {
    /// Where it should go when the book is full: greater is dropped first. Dialling and
    /// connected addresses are never dropped (`None`).
    fn drop_rank(&self) -> Option<(u8, u32)> {
        let class = match self.status {
            Status::Dialing | Status::Connected | Status::ConnectedIn => return None,
            Status::GivenUp => 3,
            Status::Idle if self.failures > 0 => 2,
            Status::Idle => 1,
            // Kept last: forgetting one means dialling it again.
            Status::Dead => 0,
        };
        Some((class, self.failures))
    }
}

/// What the connector publishes of its book for `Stats`.
#[derive(Clone, Debug, Default)]
pub(crate) struct BookStats {
    pub(crate) known: usize,
    /// Known addresses by source (`connected` left at zero).
    pub(crate) by_source: Vec<SourceCount>,
}

impl BookStats {
    pub(crate) fn of(book: &AddressBook) -> Self {
        Self {
            known: book.len(),
            by_source: book.known_by_source(),
        }
    }
}

/// The addresses of one torrent's peers. See the module doc.
pub(crate) struct AddressBook {
    entries: HashMap<SocketAddr, Entry>,
    limit: usize,
}

impl AddressBook {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            entries: HashMap::new(),
            limit: limit.max(1),
        }
    }

    /// `source` named `addr`. True if the address is new to the book. An IPv4-mapped IPv6
    /// address (`::ffff:a.b.c.d`, as some peers write IPv4 ones into IPv6 lists) is kept as
    /// the IPv4 address it is: our IPv6 sockets are IPv6-only, and one peer is one entry.
    pub(crate) fn learn(&mut self, addr: SocketAddr, source: PeerSource, now: Instant) -> bool {
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        if let Some(e) = self.entries.get_mut(&addr) {
            e.sources |= source.bit();
            e.seen = now;
            return false;
        }
        if self.entries.len() >= self.limit && !self.make_room() {
            return false;
        }
        // Incoming connections come from a port nobody listens on: known, never dialled.
        let status = if source == PeerSource::Incoming {
            Status::Connected
        } else {
            Status::Idle
        };
        self.entries.insert(
            addr,
            Entry {
                sources: source.bit(),
                status,
                failures: 0,
                tried: false,
                worked: None,
                next_try: now,
                seen: now,
            },
        );
        true
    }

    /// A peer connected to us from `addr`.
    pub(crate) fn incoming(&mut self, addr: SocketAddr, now: Instant) {
        self.learn(addr, PeerSource::Incoming, now);
        if let Some(e) = self.entries.get_mut(&addr) {
            e.status = Status::Connected;
        }
    }

    /// An incoming connection from `addr` ended: an address only it named is forgotten.
    pub(crate) fn incoming_ended(&mut self, addr: SocketAddr) {
        if let Some(e) = self.entries.get_mut(&addr) {
            if e.sources == PeerSource::Incoming.bit() {
                self.entries.remove(&addr);
            } else if e.status == Status::Connected {
                e.status = Status::Idle;
            }
        }
    }

    /// The peer of an incoming connection, still open, said it listens at `addr` (its
    /// extended handshake `p`, at the IP it connected from): the address is known, and not
    /// dialled while the connection lasts, unless it is dead.
    pub(crate) fn listening(&mut self, addr: SocketAddr, now: Instant) {
        let Some(addr) = self.claim(addr, now) else {
            return;
        };
        if let Some(e) = self.entries.get_mut(&addr)
            && matches!(e.status, Status::Idle | Status::GivenUp)
        {
            e.status = Status::ConnectedIn;
        }
    }

    /// An incoming connection's peer said it listens at `addr` (see [`Self::listening`]) and
    /// the connection ended with `outcome`: the address is dialable after the backoff of that
    /// outcome, unless connected otherwise or being dialled.
    pub(crate) fn listens(&mut self, addr: SocketAddr, outcome: Outcome, now: Instant) {
        let Some(addr) = self.claim(addr, now) else {
            return;
        };
        if (self.entries.get(&addr))
            .is_some_and(|e| matches!(e.status, Status::Idle | Status::ConnectedIn))
        {
            self.finished(addr, outcome, now);
        }
    }

    /// A listen address a peer claimed, in the book (as its canonical form), unless port 0.
    fn claim(&mut self, addr: SocketAddr, now: Instant) -> Option<SocketAddr> {
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        if addr.port() == 0 {
            return None;
        }
        if !self.entries.contains_key(&addr) {
            self.forget_old_claims(addr);
        }
        self.learn(addr, PeerSource::Handshake, now);
        Some(addr)
    }

    /// Keeps room for one more address of `addr`'s IP known only from a handshake (dead ones
    /// are kept, so they stay dead; the book's limit bounds them).
    fn forget_old_claims(&mut self, addr: SocketAddr) {
        let only = PeerSource::Handshake.bit();
        let mut claims: Vec<(Instant, SocketAddr)> = (self.entries.iter())
            .filter(|(a, e)| a.ip() == addr.ip() && e.sources == only)
            .filter(|(_, e)| matches!(e.status, Status::Idle | Status::GivenUp))
            .map(|(a, e)| (e.seen, *a))
            .collect();
        claims.sort_unstable();
        let excess = (claims.len() + 1).saturating_sub(CLAIMS_PER_IP);
        for (_, a) in claims.into_iter().take(excess) {
            self.entries.remove(&a);
        }
    }

    /// Up to `max` addresses to dial now, never tried ones first, then the longest waiting;
    /// each is marked as being dialled, with the source to credit a connection to and the kind
    /// of connection that worked there before.
    pub(crate) fn due(
        &mut self,
        now: Instant,
        max: usize,
    ) -> Vec<(SocketAddr, PeerSource, Option<Worked>)> {
        let mut due: Vec<(bool, Instant, SocketAddr)> = (self.entries.iter())
            .filter(|(_, e)| e.status == Status::Idle && e.next_try <= now && dialable(e.sources))
            .map(|(a, e)| (e.tried, e.next_try, *a))
            .collect();
        due.sort_unstable();
        due.truncate(max);
        due.into_iter()
            .filter_map(|(_, _, a)| {
                let e = self.entries.get_mut(&a)?;
                e.status = Status::Dialing;
                e.tried = true;
                Some((a, first_source(e.sources)?, e.worked))
            })
            .collect()
    }

    /// How many addresses could be dialled now.
    pub(crate) fn due_count(&self, now: Instant) -> usize {
        (self.entries.values())
            .filter(|e| e.status == Status::Idle && e.next_try <= now && dialable(e.sources))
            .count()
    }

    /// Whether some address could be dialled now.
    #[cfg(test)]
    pub(crate) fn any_due(&self, now: Instant) -> bool {
        (self.entries.values())
            .any(|e| e.status == Status::Idle && e.next_try <= now && dialable(e.sources))
    }

    /// A dial of `addr` got as far as a BitTorrent handshake this way: tried first next time.
    pub(crate) fn set_worked(&mut self, addr: SocketAddr, worked: Worked) {
        if let Some(e) = self.entries.get_mut(&addr) {
            e.worked = Some(worked);
        }
    }

    /// The dial of `addr` connected: its handshakes are done and the peer admitted.
    pub(crate) fn connected(&mut self, addr: SocketAddr) {
        if let Some(e) = self.entries.get_mut(&addr) {
            e.status = Status::Connected;
        }
    }

    /// An attempt at `addr` (or the connection it made) ended with `outcome`.
    pub(crate) fn finished(&mut self, addr: SocketAddr, outcome: Outcome, now: Instant) {
        let Some(e) = self.entries.get_mut(&addr) else {
            return;
        };
        match outcome {
            Outcome::Ended { lasted } if lasted >= GOOD_CONNECTION => e.failures = 0,
            Outcome::Ended { .. } => e.failures += 1,
            o if o.is_failure() => e.failures += 1,
            _ => {}
        }
        e.status = match outcome.backoff(e.failures.max(1)) {
            None => Status::Dead,
            Some(_) if outcome.is_failure() && e.failures >= MAX_FAILURES => Status::GivenUp,
            Some(wait) => {
                e.next_try = now + wait;
                Status::Idle
            }
        };
    }

    /// A read waits and no connected peer can serve it: every address not dead is tried again
    /// within `max_wait` ([`STARVING_MAX_WAIT`] while it lasts, at once when no peer is
    /// connected at all).
    pub(crate) fn starving(&mut self, now: Instant, max_wait: Duration) {
        for e in self.entries.values_mut() {
            if matches!(e.status, Status::Idle | Status::GivenUp) {
                e.status = Status::Idle;
                e.next_try = e.next_try.min(now + max_wait);
            }
        }
    }

    /// Addresses known and alive (dead ones are kept only so they are not dialled again).
    pub(crate) fn len(&self) -> usize {
        self.alive().count()
    }

    fn alive(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values().filter(|e| e.status != Status::Dead)
    }

    /// Known addresses by the source that named them (an address named by two counts under
    /// both), in [`PeerSource::ALL`] order; `connected` left at zero for the caller.
    pub(crate) fn known_by_source(&self) -> Vec<SourceCount> {
        PeerSource::ALL
            .iter()
            .map(|&source| SourceCount {
                source,
                connected: 0,
                known: (self.alive())
                    .filter(|e| e.sources & source.bit() != 0)
                    .count(),
            })
            .collect()
    }

    /// Drops the entry least worth keeping; false if every entry is in use.
    fn make_room(&mut self) -> bool {
        let worst = (self.entries.iter())
            .filter_map(|(a, e)| Some((e.drop_rank()?, std::cmp::Reverse(e.seen), *a)))
            .max();
        match worst {
            Some((_, _, a)) => {
                self.entries.remove(&a);
                true
            }
            None => false,
        }
    }
}

/// Named by a source that gives listening addresses (an incoming address alone is the peer's
/// outgoing port, where nobody listens).
fn dialable(sources: u8) -> bool {
    sources & !PeerSource::Incoming.bit() != 0
}

/// The first source in [`PeerSource::ALL`] order that named it, incoming aside.
fn first_source(sources: u8) -> Option<PeerSource> {
    PeerSource::ALL
        .into_iter()
        .filter(|&s| s != PeerSource::Incoming)
        .find(|s| sources & s.bit() != 0)
}

#[cfg(test)]
mod tests;
