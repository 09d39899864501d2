//! The Kademlia routing table (BEP 5): k-buckets of nodes, near our own id in detail and far
//! from it in outline. Pure: no sockets and no clock; every call takes the `Instant` it
//! happens at, so the 15-minute rules are tested without waiting.
//!
//! Invariants:
//! - Bucket `i < last` holds the nodes whose id shares exactly `i` leading bits with ours; the
//!   last bucket holds every id sharing at least `last` bits. Only the last bucket (the one our
//!   own id falls in) splits, so the table has at most 160 buckets of [`K`] nodes.
//! - A node is in the table (`nodes`) only after it answered one of our queries; a node that
//!   only queried us is a stranger until it answers a ping (anyone can spoof a query).
//! - Each id appears at most once across all buckets and replacement caches, and so does each
//!   address.
//! - A table holds one address family's nodes: a node of both keeps two tables under one id
//!   ([`Tables`], BEP 32), where an id may appear once in each.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::krpc::{NodeId, NodeInfo};
use crate::net::Family;

/// Nodes per bucket (BEP 5's k); also how many closest nodes a lookup converges on.
pub const K: usize = 8;
/// A node that answered (or queried, once known) within this long is good; BEP 5's 15 minutes.
pub const GOOD_FOR: Duration = Duration::from_secs(15 * 60);
/// A bucket nothing happened in for this long gets a refresh lookup.
pub const REFRESH_AFTER: Duration = Duration::from_secs(15 * 60);
/// Consecutive failed queries that make a node bad; one makes it questionable.
const MAX_FAILS: u32 = 2;

/// The XOR metric: compare results as big-endian integers (`[u8; 20]` orders that way).
pub fn distance(a: &NodeId, b: &NodeId) -> NodeId {
    std::array::from_fn(|i| a[i] ^ b[i])
}

fn common_prefix_len(a: &NodeId, b: &NodeId) -> usize {
    let d = distance(a, b);
    d.iter()
        .position(|&x| x != 0)
        .map_or(160, |i| i * 8 + d[i].leading_zeros() as usize)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    /// Answered us within 15 minutes (or answered once and queried us within 15 minutes), and
    /// its last query to it did not fail.
    Good,
    /// Quiet for 15 minutes, or one query failed: still routed to, pinged before trusted.
    Questionable,
    /// Failed two queries in a row: replaced as soon as another node is waiting.
    Bad,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub info: NodeInfo,
    last_response: Instant,
    last_query: Option<Instant>,
    failures: u32,
}

impl Node {
    fn new(info: NodeInfo, now: Instant) -> Node {
        Node {
            info,
            last_response: now,
            last_query: None,
            failures: 0,
        }
    }

    pub fn status(&self, now: Instant) -> NodeStatus {
        let recent = |t: Instant| now.saturating_duration_since(t) < GOOD_FOR;
        if self.failures >= MAX_FAILS {
            NodeStatus::Bad
        } else if self.failures == 0
            && (recent(self.last_response) || self.last_query.is_some_and(recent))
        {
            NodeStatus::Good
        } else {
            NodeStatus::Questionable
        }
    }
}

/// What [`RoutingTable::responded`] did with a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Insert {
    /// The node is new in the table.
    Added,
    /// The node was known; it is fresh again.
    Updated,
    /// The bucket is full of good or questionable nodes: the node waits in the replacement
    /// cache, and the caller should ping these questionable nodes (BEP 5) so a failure frees
    /// a slot.
    Cached { ping: Vec<NodeInfo> },
    /// Our own id, or an id already known at another address (ids do not move).
    Ignored,
}

#[derive(Debug, Clone)]
struct Bucket {
    nodes: Vec<Node>,
    /// Nodes that answered while the bucket was full, oldest first; at most [`K`].
    replacements: VecDeque<Node>,
    last_changed: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Bucket {
        Bucket {
            nodes: Vec::with_capacity(K),
            replacements: VecDeque::new(),
            last_changed: now,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RoutingTable {
    own: NodeId,
    buckets: Vec<Bucket>,
}

impl RoutingTable {
    pub fn new(own: NodeId, now: Instant) -> RoutingTable {
        RoutingTable {
            own,
            buckets: vec![Bucket::new(now)],
        }
    }

    pub fn own_id(&self) -> NodeId {
        self.own
    }

    fn bucket_index(&self, id: &NodeId) -> usize {
        common_prefix_len(&self.own, id).min(self.buckets.len() - 1)
    }

    /// The node answered one of our queries: add or refresh it.
    pub fn responded(&mut self, info: NodeInfo, now: Instant) -> Insert {
        if info.id == self.own {
            return Insert::Ignored;
        }
        let b = self.bucket_index(&info.id);
        if let Some(n) = self.buckets[b]
            .nodes
            .iter_mut()
            .find(|n| n.info.id == info.id)
        {
            if n.info.addr != info.addr && n.status(now) != NodeStatus::Bad {
                return Insert::Ignored;
            }
            n.info.addr = info.addr;
            n.last_response = now;
            n.failures = 0;
            self.buckets[b].last_changed = now;
            return Insert::Updated;
        }
        // The address now answers with another id (a restarted node): forget the old entry.
        self.remove_where(|n| n.info.addr == info.addr || n.info.id == info.id);
        loop {
            let b = self.bucket_index(&info.id);
            let last = self.buckets.len() - 1;
            let bucket = &mut self.buckets[b];
            if bucket.nodes.len() < K {
                bucket.nodes.push(Node::new(info, now));
                bucket.last_changed = now;
                return Insert::Added;
            }
            if let Some(bad) = bucket
                .nodes
                .iter_mut()
                .find(|n| n.status(now) == NodeStatus::Bad)
            {
                *bad = Node::new(info, now);
                bucket.last_changed = now;
                return Insert::Added;
            }
            if b == last && last < 159 {
                self.split_last(now);
                continue;
            }
            if bucket.replacements.len() >= K {
                bucket.replacements.pop_front();
            }
            bucket.replacements.push_back(Node::new(info, now));
            let ping = bucket
                .nodes
                .iter()
                .filter(|n| n.status(now) == NodeStatus::Questionable)
                .map(|n| n.info)
                .collect();
            return Insert::Cached { ping };
        }
    }

    /// The node sent us a query. Refreshes a known node; for a stranger, says whether it could
    /// enter the table, i.e. whether pinging it (to verify it) is worth a packet.
    pub fn queried(&mut self, info: NodeInfo, now: Instant) -> bool {
        if info.id == self.own {
            return false;
        }
        let b = self.bucket_index(&info.id);
        let last = self.buckets.len() - 1;
        let bucket = &mut self.buckets[b];
        if let Some(n) = bucket.nodes.iter_mut().find(|n| n.info.id == info.id) {
            if n.info.addr == info.addr {
                n.last_query = Some(now);
            }
            return false;
        }
        bucket.nodes.len() < K
            || (b == last && last < 159)
            || bucket
                .nodes
                .iter()
                .any(|n| n.status(now) != NodeStatus::Good)
    }

    /// A query to `addr` went unanswered. A node that turns bad gives its slot to the most
    /// recently seen node of the replacement cache.
    pub fn failed(&mut self, addr: SocketAddr, now: Instant) {
        for bucket in &mut self.buckets {
            bucket.replacements.retain(|n| n.info.addr != addr);
            let Some(i) = bucket.nodes.iter().position(|n| n.info.addr == addr) else {
                continue;
            };
            bucket.nodes[i].failures += 1;
            if bucket.nodes[i].status(now) == NodeStatus::Bad
                && let Some(r) = bucket.replacements.pop_back()
            {
                bucket.nodes[i] = r;
                bucket.last_changed = now;
            }
            return;
        }
    }

    /// Up to `n` nodes that are not bad, closest to `target` first.
    pub fn closest(&self, target: &NodeId, n: usize, now: Instant) -> Vec<NodeInfo> {
        let mut all: Vec<NodeInfo> = self
            .buckets
            .iter()
            .flat_map(|b| &b.nodes)
            .filter(|node| node.status(now) != NodeStatus::Bad)
            .map(|node| node.info)
            .collect();
        all.sort_unstable_by_key(|info| distance(&info.id, target));
        all.truncate(n);
        all
    }

    /// Good nodes: what the status line shows as "DHT: N nodes".
    pub fn good_count(&self, now: Instant) -> usize {
        self.nodes()
            .filter(|n| n.status(now) == NodeStatus::Good)
            .count()
    }

    /// Every node in the table (not the replacement caches).
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.buckets.iter().flat_map(|b| &b.nodes)
    }

    /// Nodes quiet for 15 minutes (or with a failed query): ping them to learn if they live.
    pub fn questionable(&self, now: Instant) -> Vec<NodeInfo> {
        self.nodes()
            .filter(|n| n.status(now) == NodeStatus::Questionable)
            .map(|n| n.info)
            .collect()
    }

    /// A lookup for `target` is starting: its bucket counts as refreshed.
    pub fn touch(&mut self, target: &NodeId, now: Instant) {
        let b = self.bucket_index(target);
        self.buckets[b].last_changed = now;
    }

    /// A random id in each bucket untouched for [`REFRESH_AFTER`]; each such bucket counts as
    /// refreshed from now (the caller runs a `find_node` lookup for every id returned).
    pub fn refresh_targets(&mut self, now: Instant, rng: &mut impl rand::Rng) -> Vec<NodeId> {
        let last = self.buckets.len() - 1;
        let mut targets = Vec::new();
        for (i, bucket) in self.buckets.iter_mut().enumerate() {
            if now.saturating_duration_since(bucket.last_changed) < REFRESH_AFTER {
                continue;
            }
            bucket.last_changed = now;
            targets.push(random_id_in_bucket(&self.own, i, i == last, rng));
        }
        targets
    }

    /// A random id in each bucket but the last that has room: after bootstrap (which walks only
    /// towards our own id), lookups for these fill the far buckets.
    pub fn sparse_targets(&self, rng: &mut impl rand::Rng) -> Vec<NodeId> {
        let last = self.buckets.len() - 1;
        (0..last)
            .filter(|&i| self.buckets[i].nodes.len() < K)
            .map(|i| random_id_in_bucket(&self.own, i, false, rng))
            .collect()
    }

    fn split_last(&mut self, now: Instant) {
        let i = self.buckets.len() - 1;
        let own = self.own;
        let old = &mut self.buckets[i];
        let mut far = Bucket::new(old.last_changed);
        let mut near = Bucket::new(now);
        for n in old.nodes.drain(..) {
            if common_prefix_len(&own, &n.info.id) > i {
                near.nodes.push(n);
            } else {
                far.nodes.push(n);
            }
        }
        for n in old.replacements.drain(..) {
            if common_prefix_len(&own, &n.info.id) > i {
                near.replacements.push_back(n);
            } else {
                far.replacements.push_back(n);
            }
        }
        // A split may leave room in `far`: promote its waiting replacements.
        while far.nodes.len() < K {
            let Some(r) = far.replacements.pop_back() else {
                break;
            };
            far.nodes.push(r);
        }
        self.buckets[i] = far;
        self.buckets.push(near);
    }

    fn remove_where(&mut self, pred: impl Fn(&Node) -> bool) {
        for bucket in &mut self.buckets {
            bucket.nodes.retain(|n| !pred(n));
            bucket.replacements.retain(|n| !pred(n));
        }
    }
}

/// A routing table per address family under one id (BEP 32), picked by a node's address.
#[derive(Debug, Clone)]
pub struct Tables([RoutingTable; 2]);

impl Tables {
    pub fn new(own: NodeId, now: Instant) -> Tables {
        Tables([RoutingTable::new(own, now), RoutingTable::new(own, now)])
    }

    pub fn of(&self, family: Family) -> &RoutingTable {
        &self.0[family.index()]
    }

    pub fn of_mut(&mut self, family: Family) -> &mut RoutingTable {
        &mut self.0[family.index()]
    }

    /// The table `addr`'s node belongs in.
    pub fn for_addr(&mut self, addr: &SocketAddr) -> &mut RoutingTable {
        self.of_mut(Family::of(addr))
    }

    pub fn own_id(&self) -> NodeId {
        self.0[0].own_id()
    }
}

/// An id sharing exactly `prefix` leading bits with `own` (at least `prefix` for the last
/// bucket), random after that.
fn random_id_in_bucket(
    own: &NodeId,
    prefix: usize,
    last: bool,
    rng: &mut impl rand::Rng,
) -> NodeId {
    let mut id: NodeId = rng.random();
    for bit in 0..prefix.min(160) {
        let (byte, mask) = (bit / 8, 0x80u8 >> (bit % 8));
        id[byte] = (id[byte] & !mask) | (own[byte] & mask);
    }
    if !last && prefix < 160 {
        let (byte, mask) = (prefix / 8, 0x80u8 >> (prefix % 8));
        id[byte] = (id[byte] & !mask) | (!own[byte] & mask);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: NodeId = [0; 20];

    /// An id whose first byte is `first` (so its bucket is set by the leading zero bits) and
    /// whose last byte is `n`.
    fn id(first: u8, n: u8) -> NodeId {
        let mut id = [0; 20];
        id[0] = first;
        id[19] = n;
        id
    }

    fn info(first: u8, n: u8) -> NodeInfo {
        NodeInfo {
            id: id(first, n),
            addr: SocketAddr::from(([127, 0, first, n], 6881)),
        }
    }

    #[test]
    fn fills_then_splits_the_bucket_holding_our_id() {
        let now = Instant::now();
        let mut t = RoutingTable::new(OWN, now);
        // 8 far nodes (first bit 1) fill the only bucket.
        for n in 0..8 {
            assert_eq!(t.responded(info(0x80, n), now), Insert::Added);
        }
        assert_eq!(t.buckets.len(), 1);
        // A near node splits it: the far ones keep bucket 0, the near one opens bucket 1.
        assert_eq!(t.responded(info(0x40, 0), now), Insert::Added);
        assert_eq!(t.buckets.len(), 2);
        assert_eq!(t.buckets[0].nodes.len(), 8);
        assert_eq!(t.buckets[1].nodes.len(), 1);
        // Bucket 0 is full and no longer splits: a 9th far node waits as a replacement.
        let Insert::Cached { ping } = t.responded(info(0x80, 9), now) else {
            panic!("far bucket should be full");
        };
        assert!(ping.is_empty(), "all nodes are good, none to ping");
        assert_eq!(t.nodes().count(), 9);
        assert_eq!(t.good_count(now), 9);
        // Known nodes refresh; our own id and a moved id are ignored.
        assert_eq!(t.responded(info(0x80, 3), now), Insert::Updated);
        assert_eq!(
            t.responded(
                NodeInfo {
                    id: OWN,
                    addr: "1.2.3.4:1".parse().unwrap()
                },
                now
            ),
            Insert::Ignored
        );
        let moved = NodeInfo {
            id: id(0x80, 3),
            addr: "9.9.9.9:9".parse().unwrap(),
        };
        assert_eq!(t.responded(moved, now), Insert::Ignored);
    }

    #[test]
    fn deep_splits_keep_every_node_in_its_prefix_bucket() {
        let now = Instant::now();
        let mut t = RoutingTable::new(OWN, now);
        for first in [0x80, 0x40, 0x20, 0x10, 0x08, 0x04, 0x02, 0x01] {
            for n in 0..10 {
                t.responded(info(first, n), now);
            }
        }
        for (i, b) in t.buckets.iter().enumerate() {
            let last = i == t.buckets.len() - 1;
            assert!(b.nodes.len() <= K);
            for n in &b.nodes {
                let cpl = common_prefix_len(&OWN, &n.info.id);
                assert!(
                    if last { cpl >= i } else { cpl == i },
                    "bucket {i}: cpl {cpl}"
                );
            }
        }
        assert_eq!(t.buckets.len(), 9);
        assert_eq!(t.nodes().count(), 64);
    }

    #[test]
    fn bad_nodes_are_replaced_from_the_cache() {
        let t0 = Instant::now();
        let mut t = RoutingTable::new(OWN, t0);
        t.responded(info(0x40, 0), t0); // keeps bucket 1 around after the split
        for n in 0..8 {
            t.responded(info(0x80, n), t0);
        }
        let victim = info(0x80, 2);
        let waiting = info(0x80, 20);
        let t1 = t0 + Duration::from_secs(60);
        assert!(matches!(t.responded(waiting, t1), Insert::Cached { .. }));
        // One failure: questionable, still routed to, and offered for pinging.
        t.failed(victim.addr, t1);
        assert_eq!(t.good_count(t1), 8);
        let Insert::Cached { ping } = t.responded(info(0x80, 21), t1) else {
            panic!("bucket should still be full");
        };
        assert_eq!(ping, vec![victim]);
        // A second failure makes it bad: the most recent replacement takes its slot.
        t.failed(victim.addr, t1);
        let ids: Vec<NodeId> = t.nodes().map(|n| n.info.id).collect();
        assert!(!ids.contains(&victim.id));
        assert!(ids.contains(&info(0x80, 21).id));
        // The next one to turn bad takes the other waiting node.
        let other = info(0x80, 4);
        t.failed(other.addr, t1);
        t.failed(other.addr, t1);
        assert!(t.nodes().any(|n| n.info.id == waiting.id));
        // With the cache empty, a bad node stays but is never returned...
        let third = info(0x80, 5);
        t.failed(third.addr, t1);
        t.failed(third.addr, t1);
        assert!(t.nodes().any(|n| n.info.id == third.id));
        assert!(!t.closest(&third.id, 20, t1).contains(&third));
        // ...until it answers again (good again), or a newcomer takes its slot once it is bad.
        assert_eq!(t.responded(third, t1), Insert::Updated);
        assert_eq!(t.good_count(t1), 9);
        t.failed(third.addr, t1);
        t.failed(third.addr, t1);
        let newcomer = info(0x80, 30);
        assert_eq!(t.responded(newcomer, t1), Insert::Added);
        assert_eq!(t.closest(&newcomer.id, 1, t1), vec![newcomer]);
        assert!(!t.nodes().any(|n| n.info.id == third.id));
    }

    #[test]
    fn nodes_go_questionable_after_15_minutes_of_silence() {
        let t0 = Instant::now();
        let mut t = RoutingTable::new(OWN, t0);
        let a = info(0x80, 1);
        let b = info(0x80, 2);
        t.responded(a, t0);
        t.responded(b, t0);
        let later = t0 + GOOD_FOR;
        assert_eq!(t.good_count(later - Duration::from_secs(1)), 2);
        assert_eq!(t.good_count(later), 0);
        assert_eq!(t.questionable(later).len(), 2);
        // A query from a node that once answered keeps it good; an answer does too.
        assert!(!t.queried(a, later));
        t.responded(b, later);
        assert_eq!(t.good_count(later), 2);
        // Strangers that query us are not added, only reported as worth a ping.
        assert!(t.queried(info(0x80, 3), later));
        assert_eq!(t.nodes().count(), 2);
    }

    #[test]
    fn closest_orders_by_xor_distance() {
        let now = Instant::now();
        let mut t = RoutingTable::new(OWN, now);
        for first in [0x80, 0x40, 0x20, 0xc0, 0x10] {
            for n in 1..4 {
                t.responded(info(first, n), now);
            }
        }
        let target = id(0xc0, 2);
        let got = t.closest(&target, 4, now);
        let want: Vec<NodeId> = vec![id(0xc0, 2), id(0xc0, 3), id(0xc0, 1), id(0x80, 2)];
        assert_eq!(got.iter().map(|n| n.id).collect::<Vec<_>>(), want);
        assert_eq!(t.closest(&target, 100, now).len(), 15);
        let all = t.closest(&OWN, 100, now);
        assert!(all.windows(2).all(|w| w[0].id <= w[1].id));
    }

    #[test]
    fn stale_buckets_ask_for_refresh_with_ids_in_their_range() {
        let t0 = Instant::now();
        let mut t = RoutingTable::new(OWN, t0);
        for first in [0x80, 0x40] {
            for n in 0..8 {
                t.responded(info(first, n), t0);
            }
        }
        t.responded(info(0x20, 0), t0);
        let mut rng = rand::rng();
        assert!(t.refresh_targets(t0, &mut rng).is_empty());
        let t1 = t0 + REFRESH_AFTER;
        t.touch(&id(0x80, 99), t1);
        let targets = t.refresh_targets(t1, &mut rng);
        assert_eq!(targets.len(), t.buckets.len() - 1);
        for target in &targets {
            let b = t.bucket_index(target);
            assert_ne!(b, 0, "bucket 0 was touched");
        }
        assert!(t.refresh_targets(t1, &mut rng).is_empty(), "refreshed");
        // Buckets 0 and 1 are full; bucket 2 (one node) is the last and holds our id.
        assert!(t.sparse_targets(&mut rng).is_empty());
        // Nearer nodes split it: bucket 2 keeps its one node and is no longer the last.
        for n in 0..8 {
            t.responded(info(0x10, n), t1);
        }
        assert_eq!(t.buckets.len(), 4);
        let sparse = t.sparse_targets(&mut rng);
        assert_eq!(sparse.len(), 1);
        assert_eq!(t.bucket_index(&sparse[0]), 2);
        for i in 0..160 {
            let r = random_id_in_bucket(&OWN, i, false, &mut rng);
            assert_eq!(common_prefix_len(&OWN, &r), i);
        }
    }
}
