//! The DHT node: bootstrap, the periodic upkeep of the routing tables, and the [`Dht`] handle
//! the session holds. Queries go out through [`super::rpc`]; lookups through [`super::lookup`].
//!
//! A node on sockets of both families takes part in both DHTs with one id (BEP 32): each
//! family's table is bootstrapped, refreshed and looked up in on its own, and a `get_peers`
//! walks both at once.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{Instrument, debug};

use super::krpc::{NodeId, NodeInfo, Query};
use super::lookup;
use super::rpc::{Inner, query, spawn_ping};
use crate::net::Family;
use crate::net::udp::{Channel, Protocol, UdpPort};

/// Public routers for a first bootstrap (a mount with no saved nodes).
pub const DEFAULT_BOOTSTRAP: &[&str] = &[
    "router.bittorrent.com:6881",
    "router.utorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "dht.libtorrent.org:25401",
];
/// Upkeep period: peer-store expiry, pings of questionable nodes, stale bucket refresh.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(60);
/// Seeds queried at bootstrap (a saved table holds at most 160 x 8 nodes of each family).
const MAX_SEEDS: usize = 512;
/// Peer batches a `get_peers` lookup may queue before it waits for the session to read.
const PEER_BATCHES: usize = 32;

#[derive(Debug, Clone)]
pub struct DhtConfig {
    /// Bootstrap routers, `host:port`. They are queried but never enter the routing table.
    pub bootstrap: Vec<String>,
    /// Known nodes of either family: a saved table ([`super::SavedState`]) or a torrent's
    /// `nodes`.
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
    #[error("the DHT has no UDP socket to run on")]
    NoSocket,
}

/// Config nodes plus resolved routers, of the families we have a socket of. Routers are
/// remembered as such.
async fn resolve_seeds(inner: &Inner, config: &DhtConfig) -> Vec<SocketAddr> {
    let families = inner.families();
    let ours = |a: &SocketAddr| families.contains(&Family::of(a));
    let mut seeds: Vec<SocketAddr> = config.nodes.iter().copied().filter(ours).collect();
    for host in &config.bootstrap {
        let resolved =
            tokio::time::timeout(Duration::from_secs(10), tokio::net::lookup_host(host)).await;
        match resolved {
            Ok(Ok(addrs)) => {
                for a in addrs.filter(ours) {
                    inner.state().routers.insert(a);
                    seeds.push(a);
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

/// Asks every seed for the nodes near our id (their answers fill the tables), then walks
/// towards our id in each family: the nodes near us are the ones that will ask us, and we
/// them.
async fn bootstrap(inner: &Arc<Inner>, seeds: &[SocketAddr]) {
    let mut set = JoinSet::new();
    for &addr in seeds.iter().take(MAX_SEEDS) {
        let inner = inner.clone();
        set.spawn(async move {
            let q = Query::FindNode {
                id: inner.id,
                target: inner.id,
                want: inner.want(Family::of(&addr)),
            };
            query(&inner, addr, q).await
        });
    }
    let mut found: Vec<NodeInfo> = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Ok(Ok(r)) = joined {
            found.extend(r.nodes);
            found.extend(r.nodes6);
        }
    }
    each_family(inner, |family| {
        let found = found.iter().filter(|n| Family::of(&n.addr) == family);
        lookup::run(inner, family, inner.id, None, found.copied().collect())
    })
    .await;
    let st = inner.state();
    debug!(
        v4 = st.tables.of(Family::V4).nodes().count(),
        v6 = st.tables.of(Family::V6).nodes().count(),
        "DHT bootstrap done"
    );
}

/// Runs `f` for each family the node has a socket of, at once.
async fn each_family<F, Fut>(inner: &Inner, f: F) -> Vec<Fut::Output>
where
    F: Fn(Family) -> Fut,
    Fut: std::future::Future,
{
    let families = inner.families();
    let mut futs: Vec<_> = families.into_iter().map(f).map(Box::pin).collect();
    let mut outs = Vec::new();
    match futs.len() {
        0 => {}
        1 => outs.push(futs.remove(0).await),
        _ => {
            let b = futs.remove(1);
            let a = futs.remove(0);
            let (a, b) = tokio::join!(a, b);
            outs.extend([a, b]);
        }
    }
    outs
}

/// Bootstrap, then upkeep every minute until shutdown.
async fn maintain(inner: Arc<Inner>, config: DhtConfig) {
    let work = async {
        let seeds = resolve_seeds(&inner, &config).await;
        bootstrap(&inner, &seeds).await;
        inner.set_ready();
        each_family(&inner, |family| {
            let inner = &inner;
            async move {
                let sparse = inner
                    .state()
                    .tables
                    .of(family)
                    .sparse_targets(&mut rand::rng());
                for target in sparse {
                    lookup::run(inner, family, target, None, Vec::new()).await;
                }
            }
        })
        .await;
        let mut tick = tokio::time::interval(MAINTENANCE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = Instant::now();
            {
                let mut st = inner.state();
                st.server.peers.expire(now);
                st.server.limiter.forget_idle(now);
            }
            let empty = each_family(&inner, |family| {
                let inner = &inner;
                async move {
                    let (targets, questionable, empty) = {
                        let mut st = inner.state();
                        let table = st.tables.of_mut(family);
                        let targets = table.refresh_targets(now, &mut rand::rng());
                        (
                            targets,
                            table.questionable(now),
                            table.nodes().next().is_none(),
                        )
                    };
                    for node in questionable {
                        spawn_ping(inner, node.addr);
                    }
                    for target in targets {
                        lookup::run(inner, family, target, None, Vec::new()).await;
                    }
                    empty
                }
            })
            .await;
            if empty.iter().any(|e| *e) {
                debug!("a DHT routing table is empty: bootstrapping again");
                let seeds = resolve_seeds(&inner, &config).await;
                bootstrap(&inner, &seeds).await;
            }
        }
    };
    tokio::select! {
        _ = inner.wait_shutdown() => {}
        _ = work => {}
    }
    // A lookup waiting for bootstrap must not wait forever.
    inner.set_ready();
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
        self.0.shut_down();
    }
}

impl std::fmt::Debug for Dht {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dht")
            .field("local_addrs", &self.inner.local_addrs().ok())
            .finish_non_exhaustive()
    }
}

impl Dht {
    /// Starts the node on a socket of its own (either family): the receive task, then
    /// bootstrap and upkeep in the background. Call within a tokio runtime.
    pub fn bind(socket: UdpSocket, config: DhtConfig) -> Result<Dht, DhtError> {
        Dht::start(UdpPort::new(socket).channel(Protocol::Dht), config)
    }

    /// Starts the node on the DHT's channel of a shared UDP port, as `bind` does.
    pub fn start(socket: Channel, config: DhtConfig) -> Result<Dht, DhtError> {
        Dht::start_all([socket], config)
    }

    /// Starts the node on the DHT's channels of shared UDP ports, the first of each family: in
    /// both DHTs (BEP 32) with IPv4 and IPv6 ones. Call within a tokio runtime.
    pub fn start_all(
        sockets: impl IntoIterator<Item = Channel>,
        config: DhtConfig,
    ) -> Result<Dht, DhtError> {
        let mut by_family: [Option<Channel>; 2] = [None, None];
        for socket in sockets {
            let local = socket.local_addr()?;
            let slot = &mut by_family[Family::of(&local).index()];
            if slot.is_none() {
                debug!(%local, "DHT node on it");
                *slot = Some(socket);
            }
        }
        if by_family.iter().all(Option::is_none) {
            return Err(DhtError::NoSocket);
        }
        let id = config.id.unwrap_or_else(rand::random);
        let inner = Inner::start(by_family, id, config.read_only);
        tokio::spawn(maintain(inner.clone(), config));
        Ok(Dht {
            _last_handle: Arc::new(ShutdownOnDrop(inner.clone())),
            inner,
        })
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The address of its first socket (IPv4 if it has one).
    pub fn local_addr(&self) -> Result<SocketAddr, DhtError> {
        let addrs = self.inner.local_addrs()?;
        addrs.first().copied().ok_or(DhtError::NoSocket)
    }

    /// The address of each socket, IPv4 first.
    pub fn local_addrs(&self) -> Result<Vec<SocketAddr>, DhtError> {
        Ok(self.inner.local_addrs()?)
    }

    /// Good nodes in both routing tables (the status line's "DHT: N nodes").
    pub fn node_count(&self) -> usize {
        Family::ALL.iter().map(|f| self.node_count_of(*f)).sum()
    }

    /// Good nodes in the routing table of `family`.
    pub fn node_count_of(&self, family: Family) -> usize {
        let st = self.inner.state();
        st.tables.of(family).good_count(Instant::now())
    }

    /// Addresses of the tables' nodes that are not bad (IPv4 first), to save for the next
    /// start.
    pub fn routing_nodes(&self) -> Vec<SocketAddr> {
        let now = Instant::now();
        let st = self.inner.state();
        (Family::ALL.iter())
            .flat_map(|f| st.tables.of(*f).closest(&self.inner.id, usize::MAX, now))
            .map(|n| n.addr)
            .collect()
    }

    /// Pings a node learnt elsewhere (a peer's BEP 5 `port` message); it joins the table of
    /// its family if it answers. A node of a family we have no socket of is left alone.
    pub fn add_node(&self, addr: SocketAddr) {
        spawn_ping(&self.inner, addr);
    }

    /// Runs one `get_peers` lookup for `info_hash` in each family's DHT at once (after the
    /// first bootstrap), sending peers in batches as responses bring them; with a port, then
    /// announces it to the closest nodes of each that gave tokens. The channel closes when all
    /// that is done.
    pub fn get_peers(
        &self,
        info_hash: NodeId,
        announce_port: Option<u16>,
    ) -> mpsc::Receiver<Vec<SocketAddr>> {
        let (tx, rx) = mpsc::channel(PEER_BATCHES);
        let inner = self.inner.clone();
        // In the caller's span (a session's: its lines name the torrent).
        let lookups = async move {
            let work = async {
                inner.wait_ready().await;
                each_family(&inner, |family| {
                    let (inner, tx) = (&inner, &tx);
                    async move {
                        let look = lookup::run(inner, family, info_hash, Some(tx), Vec::new());
                        let look = look.await;
                        if let Some(port) = announce_port {
                            lookup::announce(inner, info_hash, port, &look).await;
                        }
                    }
                })
                .await;
            };
            tokio::select! {
                _ = inner.wait_shutdown() => {}
                _ = work => {}
            }
        };
        tokio::spawn(lookups.in_current_span());
        rx
    }

    /// Stops every task of this node; lookups in progress end and close their channels.
    pub fn shutdown(&self) {
        self.inner.shut_down();
    }
}
