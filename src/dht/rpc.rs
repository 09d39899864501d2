//! KRPC over the node's socket, and the core every task of the node shares ([`Inner`]: the
//! socket, the locked state, the shutdown and ready signals).
//!
//! `query` sends one query and waits for its response; the receive task of each socket
//! (`recv_loop`) routes each response to the query waiting for it and answers the queries of
//! other nodes. Lookups and the node's upkeep both send through `query`; neither knows the
//! other.
//!
//! A node has a socket per address family it speaks (BEP 32): each address is queried through
//! the socket of its family, and each node that answers goes into the table of its family.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::{oneshot, watch};
use tracing::{debug, trace};

use super::krpc::{Body, Message, NodeId, NodeInfo, Query, Response, Want};
use super::routing::{Insert, K, Tables};
use super::server::Server;
use crate::net::Family;
use crate::net::udp::Channel;

/// How long a query waits for its response before the node counts as having failed it.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// Queries of ours in flight at once; past this, new ones fail at once with `Busy`.
const MAX_PENDING: usize = 2048;

/// Why one query got no usable response.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum QueryError {
    #[error("DHT query timed out")]
    Timeout,
    #[error("DHT node answered error {code}: {message}")]
    Remote { code: i64, message: String },
    #[error("DHT query could not be sent: {0}")]
    Send(io::ErrorKind),
    #[error("too many DHT queries in flight")]
    Busy,
    #[error("DHT is shut down")]
    Shutdown,
    #[error("no {0} DHT socket")]
    NoSocket(Family),
}

/// A query of ours waiting for its response.
struct Pending {
    addr: SocketAddr,
    /// Tells this query from a later one that reuses its transaction id.
    seq: u64,
    tx: oneshot::Sender<Result<Response, QueryError>>,
}

/// Everything mutable about the node.
pub(super) struct State {
    /// One routing table per family (BEP 32); only those of the node's sockets fill.
    pub(super) tables: Tables,
    pub(super) server: Server,
    /// Outstanding queries by transaction id; a response counts only from the queried address.
    pending: HashMap<u16, Pending>,
    next_tid: u16,
    next_seq: u64,
    /// Resolved bootstrap routers: their answers are used, but they are not DHT nodes.
    pub(super) routers: HashSet<SocketAddr>,
}

pub(super) struct Inner {
    pub(super) id: NodeId,
    /// The DHT's side of the process's UDP port of each family (uTP may share them).
    sockets: [Option<Channel>; 2],
    read_only: bool,
    /// Guards the table, the server state and the pending queries; never held across `.await`.
    state: Mutex<State>,
    shutdown: watch::Sender<bool>,
    /// Set once the table holds a node that answered us, or the first bootstrap ended:
    /// lookups wait for it rather than start empty, but not for the whole bootstrap, whose
    /// last queries may wait out a dead node's timeout (a saved table is full of them).
    ready: watch::Sender<bool>,
}

impl Inner {
    /// The node on `sockets` (at most one per family), with a receive task for each started.
    /// Call within a tokio runtime.
    pub(super) fn start(sockets: [Option<Channel>; 2], id: NodeId, read_only: bool) -> Arc<Inner> {
        let now = Instant::now();
        let inner = Arc::new(Inner {
            id,
            sockets,
            read_only,
            state: Mutex::new(State {
                tables: Tables::new(id, now),
                server: Server::new(now),
                pending: HashMap::new(),
                next_tid: rand::random(),
                next_seq: 0,
                routers: HashSet::new(),
            }),
            shutdown: watch::channel(false).0,
            ready: watch::channel(false).0,
        });
        for family in inner.families() {
            tokio::spawn(recv_loop(inner.clone(), family));
        }
        inner
    }

    /// The families the node has a socket of.
    pub(super) fn families(&self) -> Vec<Family> {
        (Family::ALL.into_iter())
            .filter(|f| self.sockets[f.index()].is_some())
            .collect()
    }

    fn socket(&self, family: Family) -> Option<&Channel> {
        self.sockets[family.index()].as_ref()
    }

    /// What to ask a node of `family` for: the other family's nodes too while our table of
    /// it is thin (BEP 32: how a node that speaks both fills its second table, whose own
    /// routers and saved nodes may be few).
    pub(super) fn want(&self, family: Family) -> Want {
        let other = match family {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        };
        let thin = self.socket(other).is_some()
            && self.state().tables.of(other).good_count(Instant::now()) < K;
        match thin {
            true => Want::BOTH,
            false => Want::OWN,
        }
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// The address of each socket, IPv4 first.
    pub(super) fn local_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        self.sockets
            .iter()
            .flatten()
            .map(Channel::local_addr)
            .collect()
    }

    /// The closest nodes of `family`'s table to start a lookup from; the target's bucket
    /// counts as refreshed.
    pub(super) fn lookup_start(&self, family: Family, target: &NodeId) -> Vec<NodeInfo> {
        let now = Instant::now();
        let mut st = self.state();
        let table = st.tables.of_mut(family);
        table.touch(target, now);
        table.closest(target, K, now)
    }

    /// Peers of `family` announced to us for `info_hash`: a lookup starts with them.
    pub(super) fn stored_peers(&self, family: Family, info_hash: &NodeId) -> Vec<SocketAddr> {
        self.state()
            .server
            .peers
            .peers(info_hash, family, usize::MAX, Instant::now())
    }

    /// Lets lookups start (see `ready`).
    pub(super) fn set_ready(&self) {
        self.ready.send_replace(true);
    }

    pub(super) async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// Ends the receive task and every task that waits on [`Inner::wait_shutdown`].
    pub(super) fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    pub(super) async fn wait_shutdown(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
    }

    fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// Sends one query through the socket of `addr`'s family and waits up to [`QUERY_TIMEOUT`]
/// for its response. A timeout counts against the node in the routing table; a response puts
/// it there (see `handle`).
pub(super) async fn query(
    inner: &Arc<Inner>,
    addr: SocketAddr,
    query: Query,
) -> Result<Response, QueryError> {
    let family = Family::of(&addr);
    let Some(socket) = inner.socket(family) else {
        return Err(QueryError::NoSocket(family));
    };
    let (tx, rx) = oneshot::channel();
    let (tid, seq) = {
        let mut st = inner.state();
        if inner.is_shut_down() {
            return Err(QueryError::Shutdown);
        }
        if st.pending.len() >= MAX_PENDING {
            return Err(QueryError::Busy);
        }
        let mut tid = st.next_tid;
        while st.pending.contains_key(&tid) {
            tid = tid.wrapping_add(1);
        }
        st.next_tid = tid.wrapping_add(1);
        let seq = st.next_seq;
        st.next_seq += 1;
        st.pending.insert(tid, Pending { addr, seq, tx });
        (tid, seq)
    };
    // Removes the entry however this future ends (timeout, error, or dropped by its caller).
    let _forget = Forget { inner, tid, seq };
    let packet = Message {
        tid: tid.to_be_bytes().to_vec(),
        body: Body::Query {
            query,
            read_only: inner.read_only,
        },
    }
    .encode();
    if let Err(e) = socket.send_to(&packet, addr).await {
        return Err(QueryError::Send(e.kind()));
    }
    match tokio::time::timeout(QUERY_TIMEOUT, rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(QueryError::Shutdown),
        Err(_) => {
            inner
                .state()
                .tables
                .for_addr(&addr)
                .failed(addr, Instant::now());
            Err(QueryError::Timeout)
        }
    }
}

struct Forget<'a> {
    inner: &'a Inner,
    tid: u16,
    seq: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        let mut st = self.inner.state();
        if st.pending.get(&self.tid).is_some_and(|p| p.seq == self.seq) {
            st.pending.remove(&self.tid);
        }
    }
}

/// Pings `addr` in the background unless a query to it is already out. The answer, if any,
/// enters or refreshes the table; silence counts as a failure.
pub(super) fn spawn_ping(inner: &Arc<Inner>, addr: SocketAddr) {
    if inner.socket(Family::of(&addr)).is_none()
        || inner.state().pending.values().any(|p| p.addr == addr)
    {
        return;
    }
    let inner = inner.clone();
    tokio::spawn(async move {
        let id = inner.id;
        let _ = query(&inner, addr, Query::Ping { id }).await;
    });
}

/// Receives on the socket of `family` until shutdown.
async fn recv_loop(inner: Arc<Inner>, family: Family) {
    let Some(socket) = inner.socket(family) else {
        return;
    };
    loop {
        let datagram = tokio::select! {
            _ = inner.wait_shutdown() => break,
            r = socket.recv() => match r {
                Ok(got) => got,
                Err(e) => {
                    debug!("DHT receive failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        // An IPv4-mapped source on the IPv6 socket is no IPv6 node.
        if Family::of_ip(datagram.from.ip().to_canonical()) == family {
            handle(&inner, &datagram.data, datagram.from).await;
        }
    }
    // Dropping the senders fails every waiting query with `Shutdown`.
    inner.state().pending.clear();
}

async fn handle(inner: &Arc<Inner>, packet: &[u8], src: SocketAddr) {
    let msg = match Message::decode(packet) {
        Ok(m) => m,
        Err(e) => {
            trace!(%src, "ignored a malformed DHT packet: {e}");
            return;
        }
    };
    match msg.body {
        Body::Query { query, read_only } => {
            if inner.read_only {
                return;
            }
            let now = Instant::now();
            let (reply, verify) = {
                let mut st = inner.state();
                let st = &mut *st;
                let reply = st.server.answer(&st.tables, &query, src, now);
                let from = NodeInfo {
                    id: query.id(),
                    addr: src,
                };
                let verify =
                    reply.is_some() && !read_only && st.tables.for_addr(&src).queried(from, now);
                (reply, verify)
            };
            if let Some((body, socket)) = reply.zip(inner.socket(Family::of(&src))) {
                let packet = Message { tid: msg.tid, body }.encode();
                if let Err(e) = socket.send_to(&packet, src).await {
                    debug!(%src, "DHT reply failed: {e}");
                }
            }
            if verify {
                spawn_ping(inner, src);
            }
        }
        Body::Response(r) => resolve(inner, &msg.tid, src, Ok(r)),
        Body::Error { code, message } => resolve(
            inner,
            &msg.tid,
            src,
            Err(QueryError::Remote { code, message }),
        ),
    }
}

/// Hands a response to the query waiting for it: same transaction id, same address. Nodes of
/// the other family it carries (asked for with `want`) are pinged while that table is thin:
/// those that answer join it.
fn resolve(inner: &Arc<Inner>, tid: &[u8], src: SocketAddr, result: Result<Response, QueryError>) {
    let Ok(tid) = <[u8; 2]>::try_from(tid).map(u16::from_be_bytes) else {
        return;
    };
    let mut to_ping = Vec::new();
    let pending = {
        let mut st = inner.state();
        if st.pending.get(&tid).is_none_or(|p| p.addr != src) {
            trace!(%src, tid, "DHT response matches no query");
            return;
        }
        let pending = st.pending.remove(&tid);
        let now = Instant::now();
        if let Ok(r) = &result
            && !st.routers.contains(&src)
        {
            let node = NodeInfo {
                id: r.id,
                addr: src,
            };
            if let Insert::Cached { ping } = st.tables.for_addr(&src).responded(node, now) {
                to_ping = ping;
            }
            inner
                .ready
                .send_if_modified(|ready| !std::mem::replace(ready, true));
        }
        if let Ok(r) = &result {
            for family in Family::ALL.into_iter().filter(|f| *f != Family::of(&src)) {
                if inner.socket(family).is_some() && st.tables.of(family).good_count(now) < K {
                    to_ping.extend(r.nodes_of(family).iter().take(K).copied());
                }
            }
        }
        pending
    };
    if let Some(p) = pending {
        let _ = p.tx.send(result);
    }
    for node in to_ping {
        spawn_ping(inner, node.addr);
    }
}
