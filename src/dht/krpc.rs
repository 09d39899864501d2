//! KRPC (BEP 5): the bencoded queries, responses and errors of the Mainline DHT. Pure: bytes in,
//! typed messages out, and back.
//!
//! Every datagram is hostile input: anything that does not parse is a [`KrpcError`], never a
//! panic. Decoding is lenient where BEP 5 readers traditionally are (a `nodes` string with a
//! trailing partial entry, a `values` entry of neither length, a `want` entry we do not know,
//! unknown keys): those are skipped, not refused.
//!
//! Both families (BEP 32): `nodes` carries IPv4 nodes (26 bytes each), `nodes6` IPv6 ones
//! (38 bytes: id, 16-byte address, port); `values` mixes 6-byte IPv4 and 18-byte IPv6 peers;
//! a `find_node` or `get_peers` may say which families' nodes it wants (`want`: `n4`, `n6`).
//!
//! Decoding walks `crate::bencode` values by hand rather than using serde_bencode: every
//! datagram must pass that decoder's depth limit and strictness first anyway (serde_bencode
//! alone overflows the stack on a datagram of `l`s and ignores trailing bytes), and the
//! errors name the key that is missing or wrong, which serde's do not.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use thiserror::Error;

use crate::bencode::{self, BencodeError, Dict, Encoder, Value};
use crate::net::Family;

/// A node id or an info-hash: both live in the same 160-bit space.
pub type NodeId = [u8; 20];

/// Length of one compact node entry: 20-byte id, 4-byte IPv4, 2-byte port.
pub const COMPACT_NODE_LEN: usize = 26;
/// Length of one compact IPv6 node entry (BEP 32): 20-byte id, 16-byte IPv6, 2-byte port.
pub const COMPACT_NODE6_LEN: usize = 38;
/// Length of one compact peer entry: 4-byte IPv4, 2-byte port.
pub const COMPACT_PEER_LEN: usize = 6;
/// Length of one compact IPv6 peer entry: 16-byte IPv6, 2-byte port.
pub const COMPACT_PEER6_LEN: usize = 18;
/// Longest transaction id we echo back; ours are 2 bytes, some clients use 4 or 8.
const MAX_TID_LEN: usize = 16;

/// KRPC error codes (BEP 5).
pub const ERROR_GENERIC: i64 = 201;
pub const ERROR_SERVER: i64 = 202;
pub const ERROR_PROTOCOL: i64 = 203;
pub const ERROR_METHOD_UNKNOWN: i64 = 204;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum KrpcError {
    #[error("KRPC packet is not bencode: {0}")]
    Bencode(#[from] BencodeError),
    #[error("KRPC packet is not a dictionary")]
    NotADict,
    #[error("KRPC packet lacks `{0}`")]
    Missing(&'static str),
    #[error("KRPC field `{0}` has the wrong type, length or range")]
    Invalid(&'static str),
    #[error("KRPC message type {0:?} is unknown")]
    UnknownType(Vec<u8>),
}

/// A node's id and address, as carried in compact node info (`nodes` for IPv4, `nodes6` for
/// IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    pub id: NodeId,
    pub addr: SocketAddr,
}

/// BEP 32's `want`: the families whose nodes a `find_node` or `get_peers` answer should carry.
/// Neither (the key left out): the family the query came over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Want {
    pub n4: bool,
    pub n6: bool,
}

impl Want {
    /// The key left out: the querier's own family.
    pub const OWN: Want = Want {
        n4: false,
        n6: false,
    };
    pub const BOTH: Want = Want { n4: true, n6: true };

    /// Whether an answer to a query that came over `over` carries `family`'s nodes.
    pub fn includes(self, family: Family, over: Family) -> bool {
        match (self.n4, self.n6, family) {
            (false, false, f) => f == over,
            (n4, _, Family::V4) => n4,
            (_, n6, Family::V6) => n6,
        }
    }
}

/// One KRPC datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Transaction id: chosen by the querier, echoed by the responder.
    pub tid: Vec<u8>,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// `read_only` is BEP 43's `ro` flag: the sender answers no queries, so it is not routed to.
    Query {
        query: Query,
        read_only: bool,
    },
    Response(Response),
    Error {
        code: i64,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Ping {
        id: NodeId,
    },
    FindNode {
        id: NodeId,
        target: NodeId,
        want: Want,
    },
    GetPeers {
        id: NodeId,
        info_hash: NodeId,
        want: Want,
    },
    /// With `implied_port`, the peer's port is the UDP source port and `port` does not count
    /// (it is kept as sent, 0 when absent or out of range).
    AnnouncePeer {
        id: NodeId,
        info_hash: NodeId,
        port: u16,
        implied_port: bool,
        token: Vec<u8>,
    },
    /// A method we do not serve (BEP 44 `get`, BEP 51 `sample_infohashes`, ...): answered 204.
    Other {
        id: NodeId,
        method: Vec<u8>,
    },
}

impl Query {
    /// The querying node's id.
    pub fn id(&self) -> NodeId {
        match self {
            Query::Ping { id }
            | Query::FindNode { id, .. }
            | Query::GetPeers { id, .. }
            | Query::AnnouncePeer { id, .. }
            | Query::Other { id, .. } => *id,
        }
    }

    fn method(&self) -> &[u8] {
        match self {
            Query::Ping { .. } => b"ping",
            Query::FindNode { .. } => b"find_node",
            Query::GetPeers { .. } => b"get_peers",
            Query::AnnouncePeer { .. } => b"announce_peer",
            Query::Other { method, .. } => method,
        }
    }
}

/// A response. KRPC responses do not name their query, so this is the union of all of them:
/// `ping`/`announce_peer` fill only `id`, `find_node` adds `nodes` and/or `nodes6`, `get_peers`
/// adds `token` and nodes and/or `values`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    pub id: NodeId,
    /// IPv4 nodes (an IPv6 one here is left out when encoding).
    pub nodes: Vec<NodeInfo>,
    /// IPv6 nodes (BEP 32; an IPv4 one here is left out when encoding).
    pub nodes6: Vec<NodeInfo>,
    /// Peers of either family.
    pub values: Vec<SocketAddr>,
    pub token: Option<Vec<u8>>,
}

impl Response {
    /// The nodes of `family` it carries.
    pub fn nodes_of(&self, family: Family) -> &[NodeInfo] {
        match family {
            Family::V4 => &self.nodes,
            Family::V6 => &self.nodes6,
        }
    }
}

impl Message {
    /// Parses one datagram.
    pub fn decode(packet: &[u8]) -> Result<Message, KrpcError> {
        let root = bencode::decode(packet)?;
        let dict = root.as_dict().ok_or(KrpcError::NotADict)?;
        let tid = bytes(dict, "t")?;
        if tid.len() > MAX_TID_LEN {
            return Err(KrpcError::Invalid("t"));
        }
        let body = match bytes(dict, "y")? {
            b"q" => {
                let method = bytes(dict, "q")?;
                let args = dict
                    .get("a")
                    .ok_or(KrpcError::Missing("a"))?
                    .as_dict()
                    .ok_or(KrpcError::Invalid("a"))?;
                let read_only = matches!(dict.get("ro").and_then(Value::as_int), Some(1));
                Body::Query {
                    query: decode_query(method, args)?,
                    read_only,
                }
            }
            b"r" => {
                let r = dict
                    .get("r")
                    .ok_or(KrpcError::Missing("r"))?
                    .as_dict()
                    .ok_or(KrpcError::Invalid("r"))?;
                Body::Response(decode_response(r)?)
            }
            b"e" => {
                let list = dict
                    .get("e")
                    .ok_or(KrpcError::Missing("e"))?
                    .as_list()
                    .ok_or(KrpcError::Invalid("e"))?;
                let code = list
                    .first()
                    .and_then(Value::as_int)
                    .ok_or(KrpcError::Invalid("e"))?;
                let message = list
                    .get(1)
                    .and_then(Value::as_bytes)
                    .map(|m| String::from_utf8_lossy(m).into_owned())
                    .unwrap_or_default();
                Body::Error { code, message }
            }
            other => return Err(KrpcError::UnknownType(other.to_vec())),
        };
        Ok(Message {
            tid: tid.to_vec(),
            body,
        })
    }

    /// Encodes with keys in sorted order, as bencode requires.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.begin_dict();
        match &self.body {
            Body::Query { query, read_only } => {
                e.str("a");
                encode_args(&mut e, query);
                e.str("q").bytes(query.method());
                if *read_only {
                    e.str("ro").int(1);
                }
                e.str("t").bytes(&self.tid).str("y").str("q");
            }
            Body::Response(r) => {
                e.str("r");
                encode_response(&mut e, r);
                e.str("t").bytes(&self.tid).str("y").str("r");
            }
            Body::Error { code, message } => {
                e.str("e").begin_list().int(*code).str(message).end();
                e.str("t").bytes(&self.tid).str("y").str("e");
            }
        }
        e.end();
        e.finish()
    }
}

fn decode_query(method: &[u8], a: &Dict<'_>) -> Result<Query, KrpcError> {
    let id = id20(a, "id")?;
    Ok(match method {
        b"ping" => Query::Ping { id },
        b"find_node" => Query::FindNode {
            id,
            target: id20(a, "target")?,
            want: want(a),
        },
        b"get_peers" => Query::GetPeers {
            id,
            info_hash: id20(a, "info_hash")?,
            want: want(a),
        },
        b"announce_peer" => {
            let implied_port = match a.get("implied_port") {
                None => false,
                Some(v) => v.as_int().ok_or(KrpcError::Invalid("implied_port"))? != 0,
            };
            // With implied_port the port key does not count (libtorrent still sends it).
            let port = match a.get("port") {
                None if implied_port => 0,
                None => return Err(KrpcError::Missing("port")),
                Some(v) => match v.as_int().and_then(|p| u16::try_from(p).ok()) {
                    Some(p) if p != 0 || implied_port => p,
                    _ if implied_port => 0,
                    _ => return Err(KrpcError::Invalid("port")),
                },
            };
            Query::AnnouncePeer {
                id,
                info_hash: id20(a, "info_hash")?,
                port,
                implied_port,
                token: bytes(a, "token")?.to_vec(),
            }
        }
        other => Query::Other {
            id,
            method: other.to_vec(),
        },
    })
}

fn decode_response(r: &Dict<'_>) -> Result<Response, KrpcError> {
    let id = id20(r, "id")?;
    let nodes = match r.get("nodes") {
        None => Vec::new(),
        Some(v) => decode_nodes(v.as_bytes().ok_or(KrpcError::Invalid("nodes"))?),
    };
    let nodes6 = match r.get("nodes6") {
        None => Vec::new(),
        Some(v) => decode_nodes6(v.as_bytes().ok_or(KrpcError::Invalid("nodes6"))?),
    };
    let values = match r.get("values") {
        None => Vec::new(),
        Some(v) => v
            .as_list()
            .ok_or(KrpcError::Invalid("values"))?
            .iter()
            .filter_map(Value::as_bytes)
            .filter_map(decode_peer)
            .collect(),
    };
    let token = match r.get("token") {
        None => None,
        Some(v) => Some(v.as_bytes().ok_or(KrpcError::Invalid("token"))?.to_vec()),
    };
    Ok(Response {
        id,
        nodes,
        nodes6,
        values,
        token,
    })
}

/// `want`: a list of `n4`/`n6`; other entries, or a `want` that is not a list, say nothing.
fn want(a: &Dict<'_>) -> Want {
    let mut want = Want::OWN;
    for v in a.get("want").and_then(Value::as_list).unwrap_or_default() {
        match v.as_bytes() {
            Some(b"n4") => want.n4 = true,
            Some(b"n6") => want.n6 = true,
            _ => {}
        }
    }
    want
}

fn encode_args(e: &mut Encoder, q: &Query) {
    e.begin_dict().str("id").bytes(&q.id());
    match q {
        Query::Ping { .. } | Query::Other { .. } => {}
        Query::FindNode { target, want, .. } => {
            e.str("target").bytes(target);
            encode_want(e, *want);
        }
        Query::GetPeers {
            info_hash, want, ..
        } => {
            e.str("info_hash").bytes(info_hash);
            encode_want(e, *want);
        }
        Query::AnnouncePeer {
            info_hash,
            port,
            implied_port,
            token,
            ..
        } => {
            if *implied_port {
                e.str("implied_port").int(1);
            }
            e.str("info_hash").bytes(info_hash);
            e.str("port").int(i64::from(*port));
            e.str("token").bytes(token);
        }
    }
    e.end();
}

/// Only when it says something: a query without `want` is one of the querier's family.
fn encode_want(e: &mut Encoder, want: Want) {
    if want == Want::OWN {
        return;
    }
    e.str("want").begin_list();
    if want.n4 {
        e.str("n4");
    }
    if want.n6 {
        e.str("n6");
    }
    e.end();
}

fn encode_response(e: &mut Encoder, r: &Response) {
    e.begin_dict().str("id").bytes(&r.id);
    let nodes = encode_nodes(&r.nodes);
    if !nodes.is_empty() {
        e.str("nodes").bytes(&nodes);
    }
    let nodes6 = encode_nodes6(&r.nodes6);
    if !nodes6.is_empty() {
        e.str("nodes6").bytes(&nodes6);
    }
    if let Some(token) = &r.token {
        e.str("token").bytes(token);
    }
    if !r.values.is_empty() {
        e.str("values").begin_list();
        for peer in &r.values {
            e.bytes(&encode_peer(*peer));
        }
        e.end();
    }
    e.end();
}

/// Compact IPv4 node info: 26-byte entries. A trailing partial entry is ignored.
pub fn decode_nodes(b: &[u8]) -> Vec<NodeInfo> {
    decode_node_list(b, COMPACT_NODE_LEN)
}

/// Compact IPv6 node info (BEP 32 `nodes6`): 38-byte entries. A trailing partial entry is
/// ignored.
pub fn decode_nodes6(b: &[u8]) -> Vec<NodeInfo> {
    decode_node_list(b, COMPACT_NODE6_LEN)
}

fn decode_node_list(b: &[u8], entry: usize) -> Vec<NodeInfo> {
    b.chunks_exact(entry)
        .filter_map(|c| {
            let (id, peer) = c.split_at(20);
            Some(NodeInfo {
                id: id.try_into().ok()?,
                addr: decode_peer(peer)?,
            })
        })
        .collect()
}

/// The IPv4 nodes of `nodes` as `nodes` carries them; others are left out.
pub fn encode_nodes(nodes: &[NodeInfo]) -> Vec<u8> {
    encode_node_list(nodes, Family::V4)
}

/// The IPv6 nodes of `nodes` as `nodes6` carries them; others are left out.
pub fn encode_nodes6(nodes: &[NodeInfo]) -> Vec<u8> {
    encode_node_list(nodes, Family::V6)
}

fn encode_node_list(nodes: &[NodeInfo], family: Family) -> Vec<u8> {
    let mut out = Vec::new();
    for n in nodes.iter().filter(|n| Family::of(&n.addr) == family) {
        out.extend_from_slice(&n.id);
        out.extend_from_slice(&encode_peer(n.addr));
    }
    out
}

/// Compact peer info: a 4-byte IPv4 (6 bytes in all) or 16-byte IPv6 (18) address, then the
/// 2-byte port, big-endian. Other lengths are `None`.
pub fn decode_peer(b: &[u8]) -> Option<SocketAddr> {
    let (ip, port) = b.split_at_checked(b.len().checked_sub(2)?)?;
    let port = u16::from_be_bytes([port[0], port[1]]);
    match ip.len() + 2 {
        COMPACT_PEER_LEN => {
            let ip: [u8; 4] = ip.try_into().ok()?;
            Some(SocketAddrV4::new(Ipv4Addr::from(ip), port).into())
        }
        COMPACT_PEER6_LEN => {
            let ip: [u8; 16] = ip.try_into().ok()?;
            Some(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, 0).into())
        }
        _ => None,
    }
}

/// `addr` in compact peer info: 6 bytes for IPv4, 18 for IPv6.
pub fn encode_peer(addr: SocketAddr) -> Vec<u8> {
    let mut out = match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    out.extend_from_slice(&addr.port().to_be_bytes());
    out
}

fn bytes<'a>(d: &Dict<'a>, key: &'static str) -> Result<&'a [u8], KrpcError> {
    d.get(key)
        .ok_or(KrpcError::Missing(key))?
        .as_bytes()
        .ok_or(KrpcError::Invalid(key))
}

fn id20(d: &Dict<'_>, key: &'static str) -> Result<NodeId, KrpcError> {
    bytes(d, key)?
        .try_into()
        .map_err(|_| KrpcError::Invalid(key))
}
