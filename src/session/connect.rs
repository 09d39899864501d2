//! The connector: one task that owns the session's address book (`addrbook.rs`), takes the
//! incoming peers the host routes here, dials the addresses discovery finds while there is
//! room, and turns useless peers over (`turnover.rs`) when every slot is taken and a read
//! waits for peers it has not tried. With slots shared by a library's torrents, every dial
//! and incoming connection also holds one of the process's (`caps.rs`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::addrbook::{AddressBook, BookStats, Outcome, Worked};
use super::caps::Seat;
use super::dial;
use super::host::Incoming;
use super::peers::PeerCmd;
use super::turnover;
use super::{PeerSource, Shared, peer};
use crate::wire::HandshakeError;

/// Addresses one session remembers (libtorrent keeps 3,000 by default).
const MAX_KNOWN: usize = 3000;
/// How long a read starves before trackers and the DHT are asked for peers early (they
/// still keep to their minimum intervals: `tracker::announcer::EARLY_FLOOR`).
const ASK_FOR_PEERS_AFTER: Duration = Duration::from_secs(5);

/// What a connection task tells the connector.
enum Event {
    /// A dial's handshakes are done and the peer was admitted.
    Admitted,
    /// A dial (and the connection it made, if any) ended; how it got as far as a BitTorrent
    /// handshake (transport, encrypted or not).
    Dialled(Outcome, Option<Worked>),
    /// The peer of an incoming connection, still open, said it listens here.
    IncomingListens(SocketAddr),
    /// An incoming connection ended; where its peer said it listens, and how it ended.
    IncomingEnded(Option<(SocketAddr, Outcome)>),
}

/// Runs the connector until shutdown.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut discovered: mpsc::Receiver<(PeerSource, Vec<SocketAddr>)>,
    mut incoming: mpsc::Receiver<Incoming>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let (events_tx, mut events) = mpsc::unbounded_channel::<(SocketAddr, Event)>();
    let mut book = AddressBook::new(MAX_KNOWN);
    // Dials started and not yet admitted or ended: they will need a slot.
    let mut dialling: HashSet<SocketAddr> = HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut starving_since: Option<Instant> = None;
    let mut seat = Seat::new(&shared.config);
    loop {
        // Asleep: no peers to turn over and no dials; the tick waits for the wake.
        let slept = shared.idle.slept();
        tokio::select! {
            addrs = discovered.recv() => {
                let Some((source, addrs)) = addrs else { return };
                let now = Instant::now();
                let mut new = false;
                for a in addrs {
                    new |= book.learn(a, source, now);
                }
                if new {
                    shared.known.send_replace(BookStats::of(&book));
                }
            }
            conn = incoming.recv() => {
                let Some(conn) = conn else { return };
                // Asleep: nobody comes in (a read wakes us and we dial them).
                if shared.idle.is_asleep() || shared.lock().peers.is_banned(conn.addr.ip()) {
                    continue;
                }
                // No slot of the process's for it: the connection closes.
                let Ok(slot) = seat.incoming() else { continue };
                let addr = conn.addr;
                book.incoming(addr, Instant::now());
                let (shared, events) = (shared.clone(), events_tx.clone());
                let accept = async move {
                    let started = Instant::now();
                    let mut listen = None;
                    let said = |l| {
                        listen = Some(l);
                        let _ = events.send((addr, Event::IncomingListens(l)));
                    };
                    let ran = peer::accept(shared, conn, said).await;
                    drop(slot);
                    let listen = listen.map(|l| (l, ended(ran, started)));
                    let _ = events.send((addr, Event::IncomingEnded(listen)));
                };
                tokio::spawn(accept.in_current_span());
            }
            event = events.recv() => {
                let Some((addr, event)) = event else { continue };
                match event {
                    Event::Admitted => {
                        dialling.remove(&addr);
                        book.connected(addr);
                    }
                    Event::Dialled(outcome, worked) => {
                        tracing::debug!(%addr, ?outcome, "dial ended");
                        dialling.remove(&addr);
                        book.finished(addr, outcome, Instant::now());
                        if let Some(w) = worked {
                            book.set_worked(addr, w);
                        }
                    }
                    Event::IncomingListens(listen) => book.listening(listen, Instant::now()),
                    Event::IncomingEnded(listen) => {
                        book.incoming_ended(addr);
                        if let Some((listen, outcome)) = listen {
                            book.listens(listen, outcome, Instant::now());
                        }
                        shared.known.send_replace(BookStats::of(&book));
                    }
                }
            }
            _ = shared.idle.awake(), if slept => tick.reset(),
            _ = tick.tick(), if !slept => {
                let now = Instant::now();
                let starving = turn_over(&shared, &mut book, &seat, now);
                if starving && starving_since.is_none() {
                    tracing::debug!(known = book.len(), "a read starves: every known address is tried again");
                }
                seat.tick(&shared, book.due_count(now) > 0, now);
                let since = *starving_since.get_or_insert(now);
                if !starving {
                    starving_since = None;
                } else if now - since >= ASK_FOR_PEERS_AFTER {
                    // The peers we know cannot serve the read: trackers and the DHT may know
                    // newer ones (a swarm whose seeders left and others arrived).
                    shared.want_peers.notify_waiters();
                }
                shared.known.send_replace(BookStats::of(&book));
            }
            _ = shared.redial.notified() => {
                // A read waits and no peer is connected: every address is worth a try now.
                book.starving(Instant::now(), Duration::ZERO);
            }
            _ = shutdown.changed() => return,
        }
        seat.set_awake(!shared.idle.slept());
        dial_due(&shared, &mut book, &seat, &mut dialling, &events_tx);
    }
}

/// A read waiting with nobody to serve it revives given-up addresses; with every slot taken,
/// useless peers make room for addresses we have not tried. Returns whether a read starves.
fn turn_over(shared: &Shared, book: &mut AddressBook, seat: &Seat, now: Instant) -> bool {
    // Before the state lock: nothing is locked under it.
    let process_full = seat.is_full();
    let st = shared.lock();
    let starving = st.starving();
    if starving {
        book.starving(now, super::addrbook::STARVING_MAX_WAIT);
    }
    if st.peers.len() < shared.config.max_peers && !process_full {
        return starving;
    }
    let due = book.due_count(now);
    if due == 0 {
        return starving;
    }
    let worths = st.peers.worths();
    for id in turnover::victims(&worths, now, due, starving) {
        tracing::debug!(peer = ?id, starving, "turning a useless peer over");
        st.peers.send(id, PeerCmd::Drop);
    }
    drop(st);
    starving
}

/// Starts dials for what is due, while there is room.
fn dial_due(
    shared: &Arc<Shared>,
    book: &mut AddressBook,
    seat: &Seat,
    dialling: &mut HashSet<SocketAddr>,
    events: &mpsc::UnboundedSender<(SocketAddr, Event)>,
) {
    if shared.idle.is_asleep() {
        return;
    }
    let now = Instant::now();
    let room = {
        let st = shared.lock();
        shared
            .config
            .max_peers
            .saturating_sub(st.peers.len() + dialling.len())
    };
    if room == 0 {
        return;
    }
    // A slot for each address due, no more: taking one for nothing would hold it from others.
    let slots = seat.dials(room.min(book.due_count(now)));
    for ((addr, source, worked), slot) in book.due(now, slots.len()).into_iter().zip(slots) {
        if shared.lock().peers.is_banned(addr.ip()) {
            book.finished(addr, Outcome::Banned, now);
            continue;
        }
        tracing::debug!(%addr, ?source, ?worked, "dialling");
        dialling.insert(addr);
        let (shared, events) = (shared.clone(), events.clone());
        let dial = async move {
            let (outcome, worked) = dial_one(shared, addr, source, worked, &events).await;
            drop(slot);
            let _ = events.send((addr, Event::Dialled(outcome, worked)));
        };
        tokio::spawn(dial.in_current_span());
    }
}

/// Dials one address (over uTP or TCP, encrypted or not, see `dial`) and runs the connection
/// to its end.
async fn dial_one(
    shared: Arc<Shared>,
    addr: SocketAddr,
    source: PeerSource,
    worked: Option<Worked>,
    events: &mpsc::UnboundedSender<(SocketAddr, Event)>,
) -> (Outcome, Option<Worked>) {
    let started = Instant::now();
    let admitted = || {
        let _ = events.send((addr, Event::Admitted));
    };
    let (ran, worked) = dial::dial(&shared, addr, source, worked, admitted).await;
    let outcome = match ran {
        Err(outcome) => outcome,
        Ok(ran) => ended(ran, started),
    };
    (outcome, worked)
}

/// How a connection that reached its handshake ended, for the address book.
fn ended(ran: Result<(), peer::PeerError>, started: Instant) -> Outcome {
    match ran {
        Err(peer::PeerError::Handshake(HandshakeError::Timeout)) => Outcome::TimedOut,
        Err(peer::PeerError::Handshake(HandshakeError::WrongTorrent)) => Outcome::WrongTorrent,
        Err(peer::PeerError::Handshake(HandshakeError::Wire(_))) => Outcome::HungUp,
        Err(peer::PeerError::SelfConnection) => Outcome::Myself,
        // Reached already over another connection, which may end before this address does.
        Err(peer::PeerError::Duplicate) => Outcome::Duplicate,
        Err(peer::PeerError::Banned) => Outcome::Banned,
        Err(peer::PeerError::Full) => Outcome::Full,
        Err(peer::PeerError::Useless | peer::PeerError::Idle) => Outcome::Useless,
        _ => Outcome::Ended {
            lasted: started.elapsed(),
        },
    }
}
