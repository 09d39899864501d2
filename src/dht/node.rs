//! The DHT node: bootstrap, the periodic upkeep of the routing table, and the [`Dht`] handle
//! the session holds. Queries go out through [`super::rpc`]; lookups through [`super::lookup`].

use std::collections::HashSet;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::debug;

use super::krpc::{NodeId, Query};
use super::lookup;
use super::rpc::{Inner, query, spawn_ping};
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
/// Seeds queried at bootstrap (a saved table holds at most 160 x 8 nodes).
const MAX_SEEDS: usize = 256;
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
        inner.set_ready();
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
            .field("local_addr", &self.inner.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Dht {
    /// Starts the node on a socket of its own (IPv4): the receive task, then bootstrap and
    /// upkeep in the background. Call within a tokio runtime.
    pub fn bind(socket: UdpSocket, config: DhtConfig) -> Result<Dht, DhtError> {
        Dht::start(UdpPort::new(socket).channel(Protocol::Dht), config)
    }

    /// Starts the node on the DHT's channel of a shared UDP port (IPv4), as `bind` does.
    pub fn start(socket: Channel, config: DhtConfig) -> Result<Dht, DhtError> {
        let local = socket.local_addr()?;
        if !local.is_ipv4() {
            return Err(DhtError::NotIpv4(local));
        }
        let id = config.id.unwrap_or_else(rand::random);
        let inner = Inner::start(socket, id, config.read_only);
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
        Ok(self.inner.local_addr()?)
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
        self.inner.shut_down();
    }
}
