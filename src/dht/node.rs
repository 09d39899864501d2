//! The DHT node on its UDP socket: the receive task (answers queries, routes responses to the
//! queries waiting for them), `query` (one request with its timeout), bootstrap and the
//! periodic upkeep of the table, and the [`Dht`] handle the session holds.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{debug, trace};

use super::krpc::{Body, Message, NodeId, NodeInfo, Query, Response};
use super::lookup;
use super::routing::{Insert, RoutingTable};
use super::server::Server;

/// Public routers for a first bootstrap (a mount with no saved nodes).
pub const DEFAULT_BOOTSTRAP: &[&str] = &[
    "router.bittorrent.com:6881",
    "router.utorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "dht.libtorrent.org:25401",
];
/// How long a query waits for its response before the node counts as having failed it.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// Upkeep period: peer-store expiry, pings of questionable nodes, stale bucket refresh.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(60);
/// Queries of ours in flight at once; past this, new ones fail at once with `Busy`.
const MAX_PENDING: usize = 2048;
/// Seeds queried at bootstrap (a saved table holds at most 160 x 8 nodes).
const MAX_SEEDS: usize = 256;
/// Larger datagrams are truncated, then refused by the decoder; KRPC stays under 1,500 bytes.
const MAX_DATAGRAM: usize = 4096;
/// Peer batches a `get_peers` lookup may queue before it waits for the session to read.
const PEER_BATCHES: usize = 32;

#[derive(Debug, Clone)]
pub struct DhtConfig {
    /// Bootstrap routers, `host:port`. They are queried but never enter the routing table.
    pub bootstrap: Vec<String>,
    /// Known nodes: a saved table ([`super::SavedState`]) or a torrent's `nodes`.
    pub nodes: Vec<SocketAddr>,
    /// Our node id; random when `None` (pass the saved one to keep our place in the DHT).
    pub id: Option<NodeId>,
    /// BEP 43: answer no queries and ask others not to route to us.
    pub read_only: bool,
}

impl Default for DhtConfig {
    fn default() -> Self {
        DhtConfig {
            bootstrap: DEFAULT_BOOTSTRAP.iter().map(|s| s.to_string()).collect(),
            nodes: Vec::new(),
            id: None,
            read_only: false,
        }
    }
}

#[derive(Debug, Error)]
pub enum DhtError {
    #[error("DHT socket: {0}")]
    Socket(#[from] io::Error),
    #[error("DHT socket is bound to {0}; only IPv4 is supported")]
    NotIpv4(SocketAddr),
}

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
}

/// A query of ours waiting for its response.
struct Pending {
    addr: SocketAddrV4,
    /// Tells this query from a later one that reuses its transaction id.
    seq: u64,
    tx: oneshot::Sender<Result<Response, QueryError>>,
}

struct State {
    table: RoutingTable,
    server: Server,
    /// Outstanding queries by transaction id; a response counts only from the queried address.
    pending: HashMap<u16, Pending>,
    next_tid: u16,
    next_seq: u64,
    /// Resolved bootstrap routers: their answers are used, but they are not DHT nodes.
    routers: HashSet<SocketAddrV4>,
}

pub(crate) struct Inner {
    pub(crate) id: NodeId,
    socket: UdpSocket,
    read_only: bool,
    /// Everything mutable. A std `Mutex`: held only for short synchronous steps, never across
    /// an `.await`, so it cannot deadlock with the tasks.
    state: Mutex<State>,
    shutdown: watch::Sender<bool>,
    /// Set once the table holds a node that answered us, or the first bootstrap ended:
    /// lookups wait for it rather than start empty, but not for the whole bootstrap, whose
    /// last queries may wait out a dead node's timeout (a saved table is full of them).
    ready: watch::Sender<bool>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while locked leaves consistent-enough state for a DHT; keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The closest nodes of the table to start a lookup from; the target's bucket counts as
    /// refreshed.
    pub(crate) fn lookup_start(&self, target: &NodeId) -> Vec<NodeInfo> {
        let now = Instant::now();
        let mut st = self.state();
        st.table.touch(target, now);
        st.table.closest(target, super::routing::K, now)
    }

    /// Peers announced to us for `info_hash`: a lookup starts with them.
    pub(crate) fn stored_peers(&self, info_hash: &NodeId) -> Vec<SocketAddrV4> {
        self.state()
            .server
            .peers
            .peers(info_hash, usize::MAX, Instant::now())
    }

    pub(crate) async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    async fn wait_shutdown(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|stop| *stop).await;
    }

    fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// Sends one query and waits up to [`QUERY_TIMEOUT`] for its response. A timeout counts
/// against the node in the routing table; a response puts it there (see `handle`).
pub(crate) async fn query(
    inner: &Arc<Inner>,
    addr: SocketAddrV4,
    query: Query,
) -> Result<Response, QueryError> {
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
    if let Err(e) = inner.socket.send_to(&packet, SocketAddr::V4(addr)).await {
        return Err(QueryError::Send(e.kind()));
    }
    match tokio::time::timeout(QUERY_TIMEOUT, rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(QueryError::Shutdown),
        Err(_) => {
            inner.state().table.failed(addr, Instant::now());
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
fn spawn_ping(inner: &Arc<Inner>, addr: SocketAddrV4) {
    if inner.state().pending.values().any(|p| p.addr == addr) {
        return;
    }
    let inner = inner.clone();
    tokio::spawn(async move {
        let id = inner.id;
        let _ = query(&inner, addr, Query::Ping { id }).await;
    });
}

async fn recv_loop(inner: Arc<Inner>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (len, src) = tokio::select! {
            _ = inner.wait_shutdown() => break,
            r = inner.socket.recv_from(&mut buf) => match r {
                Ok(got) => got,
                Err(e) => {
                    debug!("DHT receive failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        if let SocketAddr::V4(src) = src {
            handle(&inner, &buf[..len], src).await;
        }
    }
    // Dropping the senders fails every waiting query with `Shutdown`.
    inner.state().pending.clear();
}

async fn handle(inner: &Arc<Inner>, packet: &[u8], src: SocketAddrV4) {
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
                let reply = st.server.answer(&st.table, &query, src, now);
                let from = NodeInfo {
                    id: query.id(),
                    addr: src,
                };
                let verify = reply.is_some() && !read_only && st.table.queried(from, now);
                (reply, verify)
            };
            if let Some(body) = reply {
                let packet = Message { tid: msg.tid, body }.encode();
                if let Err(e) = inner.socket.send_to(&packet, SocketAddr::V4(src)).await {
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

/// Hands a response to the query waiting for it: same transaction id, same address.
fn resolve(
    inner: &Arc<Inner>,
    tid: &[u8],
    src: SocketAddrV4,
    result: Result<Response, QueryError>,
) {
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
        if let Ok(r) = &result
            && !st.routers.contains(&src)
        {
            let node = NodeInfo {
                id: r.id,
                addr: src,
            };
            if let Insert::Cached { ping } = st.table.responded(node, Instant::now()) {
                to_ping = ping;
            }
            inner
                .ready
                .send_if_modified(|ready| !std::mem::replace(ready, true));
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

/// Config nodes plus resolved routers, IPv4 only. Routers are remembered as such.
async fn resolve_seeds(inner: &Inner, config: &DhtConfig) -> Vec<SocketAddrV4> {
    let mut seeds: Vec<SocketAddrV4> = config
        .nodes
        .iter()
        .filter_map(|a| match a {
            SocketAddr::V4(v4) => Some(*v4),
            SocketAddr::V6(_) => None,
        })
        .collect();
    for host in &config.bootstrap {
        let resolved =
            tokio::time::timeout(Duration::from_secs(10), tokio::net::lookup_host(host)).await;
        match resolved {
            Ok(Ok(addrs)) => {
                for a in addrs {
                    if let SocketAddr::V4(v4) = a {
                        inner.state().routers.insert(v4);
                        seeds.push(v4);
                    }
                }
            }
            Ok(Err(e)) => debug!(host, "DHT router did not resolve: {e}"),
            Err(_) => debug!(host, "DHT router did not resolve in time"),
        }
    }
    let mut seen = HashSet::new();
    seeds.retain(|a| seen.insert(*a));
    seeds
}

/// Asks every seed for the nodes near our id (their answers fill the table), then walks
/// towards our id: the nodes near us are the ones that will ask us, and we them.
async fn bootstrap(inner: &Arc<Inner>, seeds: &[SocketAddrV4]) {
    let mut set = JoinSet::new();
    for &addr in seeds.iter().take(MAX_SEEDS) {
        let inner = inner.clone();
        set.spawn(async move {
            let q = Query::FindNode {
                id: inner.id,
                target: inner.id,
            };
            query(&inner, addr, q).await
        });
    }
    let mut found = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Ok(Ok(r)) = joined {
            found.extend(r.nodes);
        }
    }
    lookup::run(inner, inner.id, None, found).await;
    debug!(
        nodes = inner.state().table.nodes().count(),
        "DHT bootstrap done"
    );
}

/// Bootstrap, then upkeep every minute until shutdown.
async fn maintain(inner: Arc<Inner>, config: DhtConfig) {
    let work = async {
        let seeds = resolve_seeds(&inner, &config).await;
        bootstrap(&inner, &seeds).await;
        inner.ready.send_replace(true);
        let sparse = inner.state().table.sparse_targets(&mut rand::rng());
        for target in sparse {
            lookup::run(&inner, target, None, Vec::new()).await;
        }
        let mut tick = tokio::time::interval(MAINTENANCE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = Instant::now();
            let (targets, questionable, empty) = {
                let mut st = inner.state();
                st.server.peers.expire(now);
                st.server.limiter.forget_idle(now);
                let targets = st.table.refresh_targets(now, &mut rand::rng());
                (
                    targets,
                    st.table.questionable(now),
                    st.table.nodes().next().is_none(),
                )
            };
            for node in questionable {
                spawn_ping(&inner, node.addr);
            }
            if empty {
                debug!("DHT routing table empty: bootstrapping again");
                let seeds = resolve_seeds(&inner, &config).await;
                bootstrap(&inner, &seeds).await;
            }
            for target in targets {
                lookup::run(&inner, target, None, Vec::new()).await;
            }
        }
    };
    tokio::select! {
        _ = inner.wait_shutdown() => {}
        _ = work => {}
    }
    // A lookup waiting for bootstrap must not wait forever.
    inner.ready.send_replace(true);
}

/// A handle on the DHT node. Clones share the node; it shuts down on [`Dht::shutdown`] or when
/// the last handle is dropped.
#[derive(Clone)]
pub struct Dht {
    inner: Arc<Inner>,
    _last_handle: Arc<ShutdownOnDrop>,
}

struct ShutdownOnDrop(Arc<Inner>);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        self.0.shutdown.send_replace(true);
    }
}

impl std::fmt::Debug for Dht {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dht")
            .field("local_addr", &self.inner.socket.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Dht {
    /// Starts the node on `socket` (IPv4): the receive task, then bootstrap and upkeep in the
    /// background. Call within a tokio runtime.
    pub fn bind(socket: UdpSocket, config: DhtConfig) -> Result<Dht, DhtError> {
        let local = socket.local_addr()?;
        if !local.is_ipv4() {
            return Err(DhtError::NotIpv4(local));
        }
        let now = Instant::now();
        let id = config.id.unwrap_or_else(rand::random);
        let inner = Arc::new(Inner {
            id,
            socket,
            read_only: config.read_only,
            state: Mutex::new(State {
                table: RoutingTable::new(id, now),
                server: Server::new(now),
                pending: HashMap::new(),
                next_tid: rand::random(),
                next_seq: 0,
                routers: HashSet::new(),
            }),
            shutdown: watch::channel(false).0,
            ready: watch::channel(false).0,
        });
        tokio::spawn(recv_loop(inner.clone()));
        tokio::spawn(maintain(inner.clone(), config));
        debug!(%local, "DHT node started");
        Ok(Dht {
            _last_handle: Arc::new(ShutdownOnDrop(inner.clone())),
            inner,
        })
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn local_addr(&self) -> Result<SocketAddr, DhtError> {
        Ok(self.inner.socket.local_addr()?)
    }

    /// Good nodes in the routing table (the status line's "DHT: N nodes").
    pub fn node_count(&self) -> usize {
        self.inner.state().table.good_count(Instant::now())
    }

    /// Addresses of the table's nodes that are not bad, to save for the next start.
    pub fn routing_nodes(&self) -> Vec<SocketAddr> {
        let now = Instant::now();
        let st = self.inner.state();
        st.table
            .closest(&self.inner.id, usize::MAX, now)
            .into_iter()
            .map(|n| SocketAddr::V4(n.addr))
            .collect()
    }

    /// Pings a node learnt elsewhere (a peer's BEP 5 `port` message); it joins the table if
    /// it answers.
    pub fn add_node(&self, addr: SocketAddr) {
        if let SocketAddr::V4(v4) = addr {
            spawn_ping(&self.inner, v4);
        }
    }

    /// Runs one `get_peers` lookup for `info_hash` (after the first bootstrap), sending peers
    /// in batches as responses bring them; with a port, then announces it to the closest
    /// nodes that gave tokens. The channel closes when all that is done.
    pub fn get_peers(
        &self,
        info_hash: NodeId,
        announce_port: Option<u16>,
    ) -> mpsc::Receiver<Vec<SocketAddr>> {
        let (tx, rx) = mpsc::channel(PEER_BATCHES);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let work = async {
                inner.wait_ready().await;
                let look = lookup::run(&inner, info_hash, Some(&tx), Vec::new()).await;
                if let Some(port) = announce_port {
                    lookup::announce(&inner, info_hash, port, &look).await;
                }
            };
            tokio::select! {
                _ = inner.wait_shutdown() => {}
                _ = work => {}
            }
        });
        rx
    }

    /// Stops every task of this node; lookups in progress end and close their channels.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }
}
