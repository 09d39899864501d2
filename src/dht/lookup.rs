//! Iterative Kademlia lookups (`find_node` and `get_peers`), and the announce that follows a
//! `get_peers` lookup.
//!
//! [`LookupState`] is the pure part: the candidates by XOR distance to the target, which to
//! query next, and when the lookup has converged. The rule: look at the [`K`] closest
//! candidates that have not failed; query those not yet asked, at most [`ALPHA`] at a time; the
//! lookup is done when all of them have answered. A failure lets the next candidate in, and
//! an answer brings closer ones, so the window walks towards the target and stops there.
//!
//! A lookup walks one family's DHT (BEP 32): it starts from that family's table and follows
//! that family's nodes (`nodes` or `nodes6`) only; a node that speaks both runs one of each.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::debug;

use super::krpc::{NodeId, NodeInfo, Query, Response};
use super::routing::{K, distance};
use super::rpc::{Inner, QueryError, query};
use crate::net::Family;

/// Queries a lookup keeps in flight at once.
pub const ALPHA: usize = 4;
/// Candidates a lookup remembers; farther ones are dropped for closer ones.
const MAX_CANDIDATES: usize = 256;
/// Queries one lookup may send in all: a bound even when hostile nodes keep inventing closer
/// nodes that never answer.
const MAX_QUERIES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Waiting,
    InFlight,
    Responded,
    Failed,
}

#[derive(Debug)]
struct Candidate {
    info: NodeInfo,
    progress: Progress,
    token: Option<Vec<u8>>,
}

#[derive(Debug)]
pub struct LookupState {
    own: NodeId,
    target: NodeId,
    /// The DHT walked: nodes of the other family are not candidates.
    family: Family,
    /// Keyed by XOR distance to the target, so iteration runs closest first.
    candidates: BTreeMap<NodeId, Candidate>,
    addrs: HashSet<SocketAddr>,
    in_flight: usize,
    queried: usize,
}

impl LookupState {
    pub fn new(
        own: NodeId,
        target: NodeId,
        family: Family,
        start: impl IntoIterator<Item = NodeInfo>,
    ) -> Self {
        let mut state = LookupState {
            own,
            target,
            family,
            candidates: BTreeMap::new(),
            addrs: HashSet::new(),
            in_flight: 0,
            queried: 0,
        };
        for info in start {
            state.add(info);
        }
        state
    }

    /// A node heard of (from the table or a response). Ours, duplicates, the other family's
    /// and, when full, nodes farther than every waiting candidate are ignored.
    pub fn add(&mut self, info: NodeInfo) {
        let key = distance(&info.id, &self.target);
        if info.id == self.own
            || Family::of(&info.addr) != self.family
            || self.addrs.contains(&info.addr)
            || self.candidates.contains_key(&key)
            || info.addr.port() == 0
        {
            return;
        }
        if self.candidates.len() >= MAX_CANDIDATES {
            let farthest_waiting = self
                .candidates
                .iter()
                .rev()
                .find(|(_, c)| c.progress == Progress::Waiting)
                .map(|(k, _)| *k);
            match farthest_waiting {
                Some(far) if far > key => {
                    if let Some(c) = self.candidates.remove(&far) {
                        self.addrs.remove(&c.info.addr);
                    }
                }
                _ => return,
            }
        }
        self.addrs.insert(info.addr);
        self.candidates.insert(
            key,
            Candidate {
                info,
                progress: Progress::Waiting,
                token: None,
            },
        );
    }

    /// The `K` closest candidates that have not failed.
    fn window(&self) -> impl Iterator<Item = &Candidate> {
        self.candidates
            .values()
            .filter(|c| c.progress != Progress::Failed)
            .take(K)
    }

    /// The next node to query now, if any: marks it in flight.
    pub fn next(&mut self) -> Option<NodeInfo> {
        if self.in_flight >= ALPHA || self.queried >= MAX_QUERIES {
            return None;
        }
        let key = self
            .candidates
            .iter()
            .filter(|(_, c)| c.progress != Progress::Failed)
            .take(K)
            .find(|(_, c)| c.progress == Progress::Waiting)
            .map(|(k, _)| *k)?;
        let c = self.candidates.get_mut(&key)?;
        c.progress = Progress::InFlight;
        self.in_flight += 1;
        self.queried += 1;
        Some(c.info)
    }

    pub fn responded(&mut self, asked: NodeInfo, response: &Response) {
        self.settle(asked, Progress::Responded, response.token.clone());
        for node in response.nodes_of(self.family) {
            self.add(*node);
        }
    }

    pub fn failed(&mut self, asked: NodeInfo) {
        self.settle(asked, Progress::Failed, None);
    }

    fn settle(&mut self, asked: NodeInfo, progress: Progress, token: Option<Vec<u8>>) {
        let key = distance(&asked.id, &self.target);
        if let Some(c) = self.candidates.get_mut(&key)
            && c.progress == Progress::InFlight
        {
            self.in_flight -= 1;
            c.progress = progress;
            c.token = token;
        }
    }

    /// Converged (the window has all answered) or out of queries, and nothing in flight.
    pub fn is_done(&self) -> bool {
        self.in_flight == 0
            && (self.queried >= MAX_QUERIES
                || self.window().all(|c| c.progress == Progress::Responded))
    }

    /// The closest nodes that answered, with the token each gave (if any).
    pub fn closest_responded(&self) -> Vec<(NodeInfo, Option<&[u8]>)> {
        self.candidates
            .values()
            .filter(|c| c.progress == Progress::Responded)
            .take(K)
            .map(|c| (c.info, c.token.as_deref()))
            .collect()
    }
}

/// Runs one iterative lookup for `target` in `family`'s DHT, from its table's closest nodes
/// plus `extra` (those of that family). With `peers`, it is a `get_peers` lookup and sends
/// each response's new peers there as they come (a closed channel only stops the sending).
pub(super) async fn run(
    inner: &Arc<Inner>,
    family: Family,
    target: NodeId,
    mut peers: Option<&mpsc::Sender<Vec<SocketAddr>>>,
    extra: Vec<NodeInfo>,
) -> LookupState {
    let start = inner.lookup_start(family, &target);
    let mut look = LookupState::new(inner.id, target, family, start.into_iter().chain(extra));
    let get_peers = peers.is_some();
    let mut seen_peers = HashSet::new();
    if let Some(tx) = peers {
        // Peers others announced to us count as much as those the lookup finds.
        let stored: Vec<SocketAddr> = inner
            .stored_peers(family, &target)
            .into_iter()
            .filter(|p| seen_peers.insert(*p))
            .collect();
        if !stored.is_empty() && tx.send(stored).await.is_err() {
            peers = None;
        }
    }
    let mut set = JoinSet::new();
    loop {
        while let Some(node) = look.next() {
            let want = inner.want(family);
            let q = if get_peers {
                Query::GetPeers {
                    id: inner.id,
                    info_hash: target,
                    want,
                }
            } else {
                Query::FindNode {
                    id: inner.id,
                    target,
                    want,
                }
            };
            let inner = inner.clone();
            set.spawn(async move { (node, query(&inner, node.addr, q).await) });
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        let Ok((node, result)) = joined else {
            continue;
        };
        match result {
            Ok(r) => {
                look.responded(node, &r);
                let fresh: Vec<SocketAddr> = r
                    .values
                    .iter()
                    .filter(|p| usable_peer(p) && seen_peers.insert(**p))
                    .copied()
                    .collect();
                if let Some(tx) = peers.filter(|_| !fresh.is_empty())
                    && tx.send(fresh).await.is_err()
                {
                    peers = None;
                }
            }
            Err(QueryError::Shutdown) => break,
            Err(_) => look.failed(node),
        }
    }
    debug!(
        target = %hex(&target),
        %family,
        queried = look.queried,
        peers = seen_peers.len(),
        done = look.is_done(),
        "DHT lookup finished"
    );
    look
}

fn usable_peer(p: &SocketAddr) -> bool {
    let ip = p.ip();
    let broadcast = match ip {
        std::net::IpAddr::V4(v4) => v4.is_broadcast(),
        std::net::IpAddr::V6(_) => false,
    };
    p.port() != 0 && !ip.is_unspecified() && !broadcast && !ip.is_multicast()
}

/// Announces `port` for `info_hash` to the closest nodes of a finished `get_peers` lookup
/// that gave a token. Returns how many accepted.
pub(super) async fn announce(
    inner: &Arc<Inner>,
    info_hash: NodeId,
    port: u16,
    look: &LookupState,
) -> usize {
    let mut set = JoinSet::new();
    for (node, token) in look.closest_responded() {
        let Some(token) = token else {
            continue;
        };
        let q = Query::AnnouncePeer {
            id: inner.id,
            info_hash,
            port,
            implied_port: false,
            token: token.to_vec(),
        };
        let inner = inner.clone();
        set.spawn(async move { query(&inner, node.addr, q).await });
    }
    let mut accepted = 0;
    while let Some(joined) = set.join_next().await {
        if let Ok(Ok(_)) = joined {
            accepted += 1;
        }
    }
    debug!(info_hash = %hex(&info_hash), family = %look.family, port, accepted, "DHT announce done");
    accepted
}

fn hex(id: &NodeId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    const TARGET: NodeId = [0; 20];

    fn node(first: u8) -> NodeInfo {
        let mut id = [0; 20];
        id[0] = first;
        NodeInfo {
            id,
            addr: SocketAddrV4::new(Ipv4Addr::new(127, 0, 1, first), 7000).into(),
        }
    }

    fn reply(nodes: Vec<NodeInfo>, token: &[u8]) -> Response {
        Response {
            id: [0xee; 20],
            nodes,
            token: Some(token.to_vec()),
            ..Response::default()
        }
    }

    fn drain(look: &mut LookupState) -> Vec<NodeInfo> {
        std::iter::from_fn(|| look.next()).collect()
    }

    #[test]
    fn queries_alpha_at_a_time_closest_first() {
        let mut look = LookupState::new(
            [0xff; 20],
            TARGET,
            Family::V4,
            (1..=10).map(|i| node(i * 10)),
        );
        let first = drain(&mut look);
        assert_eq!(first, vec![node(10), node(20), node(30), node(40)]);
        assert!(!look.is_done());
        look.responded(node(10), &reply(vec![], b"t"));
        assert_eq!(drain(&mut look), vec![node(50)]);
    }

    #[test]
    fn converges_on_the_k_closest_that_answer() {
        let mut look = LookupState::new([0xff; 20], TARGET, Family::V4, (100..=110).map(node));
        // The first answer reveals 8 much closer nodes; the far ones then never get asked.
        let close: Vec<NodeInfo> = (1..=8).map(node).collect();
        let asked = drain(&mut look);
        look.responded(asked[0], &reply(close.clone(), b"far"));
        for n in &asked[1..] {
            look.failed(*n);
        }
        let mut answered = Vec::new();
        while !look.is_done() {
            let batch = drain(&mut look);
            assert!(!batch.is_empty(), "stalled with nothing in flight");
            for n in batch {
                assert!(n.id[0] <= 8, "asked {n:?} though 8 closer nodes are known");
                // Node 3 never answers: its slot in the window goes to node 100, which
                // already answered, so no far node is asked.
                if n == node(3) {
                    look.failed(n);
                } else {
                    look.responded(n, &reply(vec![], &[n.id[0]]));
                    answered.push(n);
                }
            }
        }
        let result = look.closest_responded();
        assert_eq!(result.len(), K);
        assert_eq!(result[0], (node(1), Some(&[1u8][..])));
        assert!(!result.iter().any(|(n, _)| *n == node(3)));
        assert_eq!(answered.len(), 7);
    }

    #[test]
    fn ignores_our_id_duplicates_and_stops_at_the_query_cap() {
        let own = node(5);
        let mut look = LookupState::new(own.id, TARGET, Family::V4, [own, node(1), node(1)]);
        let mut batch = drain(&mut look);
        assert_eq!(batch, vec![node(1)]);
        // Hostile nodes keep inventing ever closer nodes: the lookup still ends.
        let mut n = 0u32;
        while !batch.is_empty() {
            for asked in batch {
                n += 1;
                let invented: Vec<NodeInfo> = (0..4)
                    .map(|i| NodeInfo {
                        id: {
                            let mut id = [0u8; 20];
                            id[16..].copy_from_slice(&(u32::MAX - n * 4 - i).to_be_bytes());
                            id
                        },
                        addr: SocketAddrV4::new(Ipv4Addr::from(0x0a00_0000 + n * 4 + i), 1000)
                            .into(),
                    })
                    .collect();
                look.responded(asked, &reply(invented, b""));
            }
            batch = drain(&mut look);
        }
        assert!(look.is_done());
        assert_eq!(look.queried, MAX_QUERIES);
        assert!(look.candidates.len() <= MAX_CANDIDATES);
    }
}
