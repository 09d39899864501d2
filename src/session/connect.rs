//! Connections: taking the incoming peers the host routes here, and dialling the addresses
//! discovery finds, up to `max_peers`, with a backoff for addresses that fail.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::host::Incoming;
use super::stream::Transport;
use super::{PeerSource, Shared, peer};

/// Attempts at an address before it is forgotten until discovery names it again...
const MAX_FAILURES: u32 = 5;
/// ...unless a read waits and no peer is connected ("starving"): then every known address is
/// tried again and again, the pause between tries doubling up to this, so that seeders coming
/// back at their old addresses are found without a tracker's help.
const STARVING_RETRY_MAX: Duration = Duration::from_secs(30);

/// The pause before the next try at an address that failed `failures` times in a row.
fn retry_delay(failures: u32, starving: bool) -> Duration {
    let d = Duration::from_secs(5 << failures.min(6));
    if starving {
        d.min(STARVING_RETRY_MAX)
    } else {
        d
    }
}

/// Takes the connections the host routed to this torrent.
pub(crate) async fn accept_incoming(shared: Arc<Shared>, mut incoming: mpsc::Receiver<Incoming>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            next = incoming.recv() => {
                let Some(conn) = next else { return };
                if shared.lock().peers.is_banned(conn.addr.ip()) {
                    continue;
                }
                tokio::spawn(peer::accept(shared.clone(), conn));
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// A read waits on a piece and no peer is connected to fetch it from.
fn starving(shared: &Shared) -> bool {
    shared.lock().starving()
}

/// How a dial ended, for the connector's bookkeeping.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialled {
    /// A peer session ran (and has ended).
    Connected,
    Failed,
    /// The address was our own listener.
    Myself,
}

struct Candidate {
    source: PeerSource,
    failures: u32,
    next_try: Instant,
    /// The transport it last connected over: tried alone first next time (`dial.rs`).
    transport: Option<Transport>,
}

/// Dials new addresses while there is room for more peers.
pub(crate) async fn connect_loop(
    shared: Arc<Shared>,
    mut discovered: mpsc::Receiver<(PeerSource, Vec<SocketAddr>)>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let (done_tx, mut done_rx) =
        mpsc::unbounded_channel::<(SocketAddr, Dialled, Option<Transport>)>();
    // Our own listen address, as trackers hand it back to us: never dialled again.
    let mut ourselves: HashSet<SocketAddr> = HashSet::new();
    let mut candidates: HashMap<SocketAddr, Candidate> = HashMap::new();
    let mut queue: VecDeque<SocketAddr> = VecDeque::new();
    let mut active: HashSet<SocketAddr> = HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            addrs = discovered.recv() => {
                let Some((source, addrs)) = addrs else { return };
                let mut st = shared.lock();
                for a in addrs.into_iter().filter(|a| !ourselves.contains(a)) {
                    st.peers.known.insert(a, source);
                    if !active.contains(&a) && !candidates.contains_key(&a) {
                        let next_try = Instant::now();
                        candidates.insert(a, Candidate { source, failures: 0, next_try, transport: None });
                        queue.push_back(a);
                    }
                }
            }
            done = done_rx.recv() => {
                let Some((addr, dialled, transport)) = done else { continue };
                active.remove(&addr);
                if dialled == Dialled::Myself {
                    ourselves.insert(addr);
                    candidates.remove(&addr);
                    shared.lock().peers.known.remove(&addr);
                    continue;
                }
                let connected = dialled == Dialled::Connected;
                let starving = starving(&shared);
                if let Some(c) = candidates.get_mut(&addr) {
                    c.failures = if connected { 1 } else { c.failures.saturating_add(1) };
                    c.transport = transport.or(c.transport);
                    if c.failures > MAX_FAILURES && !starving {
                        candidates.remove(&addr);
                    } else {
                        c.next_try = Instant::now() + retry_delay(c.failures, starving);
                        queue.push_back(addr);
                    }
                }
            }
            _ = tick.tick() => {
                if starving(&shared) {
                    // Addresses given up on come back, and none waits longer than the cap.
                    let known: Vec<(SocketAddr, PeerSource)> =
                        shared.lock().peers.known.dialable().collect();
                    let now = Instant::now();
                    for (a, source) in known {
                        if active.contains(&a) {
                            continue;
                        }
                        let c = candidates.entry(a).or_insert_with(|| {
                            queue.push_back(a);
                            Candidate { source, failures: 0, next_try: now, transport: None }
                        });
                        c.next_try = c.next_try.min(now + STARVING_RETRY_MAX);
                    }
                }
            }
            _ = shared.redial.notified() => {
                let now = Instant::now();
                for c in candidates.values_mut() {
                    c.next_try = c.next_try.min(now);
                }
            }
            _ = shutdown.changed() => return,
        }
        // Dial what is due, while there is room.
        let (room, banned) = {
            let st = shared.lock();
            let room = shared
                .config
                .max_peers
                .saturating_sub(st.peers.len().max(active.len()));
            (room, st.peers.banned().clone())
        };
        let now = Instant::now();
        let mut budget = room;
        for _ in 0..queue.len() {
            if budget == 0 {
                break;
            }
            let Some(addr) = queue.pop_front() else { break };
            let Some(c) = candidates.get(&addr) else {
                continue;
            };
            if banned.contains(&addr.ip()) {
                candidates.remove(&addr);
                continue;
            }
            if c.next_try > now || active.contains(&addr) {
                queue.push_back(addr);
                continue;
            }
            budget -= 1;
            active.insert(addr);
            let (source, first) = (c.source, c.transport);
            let shared = shared.clone();
            let done = done_tx.clone();
            tokio::spawn(async move {
                let handshake = |stream| peer::handshake(&shared, stream, addr);
                let dial = shared.dialer.dial(addr, first, handshake).await;
                let (dialled, transport) = match dial {
                    Ok(((stream, theirs), transport)) => {
                        let run = peer::dialled(shared, stream, addr, source, theirs);
                        let dialled = match run.await {
                            Err(peer::PeerError::SelfConnection) => Dialled::Myself,
                            Err(peer::PeerError::Banned) => Dialled::Failed,
                            _ => Dialled::Connected,
                        };
                        (dialled, Some(transport))
                    }
                    Err(e) => {
                        tracing::trace!(%addr, "dial failed: {e}");
                        (Dialled::Failed, None)
                    }
                };
                let _ = done.send((addr, dialled, transport));
            });
        }
    }
}
