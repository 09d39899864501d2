//! What we keep to answer other nodes (the "good citizen" half of the DHT): announce tokens,
//! the peers others announced to us, a per-IP reply rate limit, and the answer to each query.
//! Pure: the caller passes the `Instant`; the socket lives in `node.rs`.
//!
//! The two families' DHTs are apart (BEP 32): a peer announced over IPv6 is an IPv6 peer and
//! is given only to those who ask over IPv6; nodes are answered from the table of the family
//! the query came over, or of the families its `want` names.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};

use super::krpc::{Body, ERROR_METHOD_UNKNOWN, ERROR_PROTOCOL, NodeId, Query, Response, Want};
use super::routing::{K, Tables};
use crate::net::Family;

/// The token secret changes this often; a token stays valid for one more period.
pub const TOKEN_ROTATE: Duration = Duration::from_secs(5 * 60);
const TOKEN_LEN: usize = 8;
/// An announced peer is forgotten this long after its last announce (BEP 5 leaves it open;
/// clients re-announce every 15 to 30 minutes).
pub const PEER_TTL: Duration = Duration::from_secs(30 * 60);
/// Bounds on the peer store, so announces cannot grow our memory without limit.
const MAX_TORRENTS: usize = 2000;
const MAX_PEERS_PER_TORRENT: usize = 200;
/// Peers in one `get_peers` reply: 50 x 8 bytes keeps an IPv4 datagram well under 1,400
/// bytes; 25 x 20 keeps an IPv6 one, with 8 nodes of each family, within IPv6's minimum MTU
/// (1,280 bytes).
const MAX_VALUES: usize = 50;
const MAX_VALUES_V6: usize = 25;
/// Queries per second one IP may have answered, and the burst it may use at once.
const RATE_PER_SEC: f64 = 20.0;
const RATE_BURST: f64 = 60.0;
/// Source IPs tracked by the rate limiter; past this, idle ones are forgotten.
const MAX_TRACKED_IPS: usize = 10_000;

/// Announce tokens: SHA1(secret | requester IP), so only the IP a token was given to can use
/// it, and no per-requester state is kept.
#[derive(Debug)]
pub struct Tokens {
    current: [u8; 16],
    previous: [u8; 16],
    rotated: Instant,
}

impl Tokens {
    pub fn new(now: Instant) -> Tokens {
        Tokens {
            current: rand::random(),
            previous: rand::random(),
            rotated: now,
        }
    }

    pub fn make(&mut self, ip: IpAddr, now: Instant) -> Vec<u8> {
        self.rotate(now);
        token(&self.current, ip)
    }

    /// True if `token` was made for `ip` under the current or the previous secret.
    pub fn check(&mut self, token: &[u8], ip: IpAddr, now: Instant) -> bool {
        self.rotate(now);
        token == token_of(&self.current, ip) || token == token_of(&self.previous, ip)
    }

    fn rotate(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.rotated);
        if age < TOKEN_ROTATE {
            return;
        }
        self.previous = if age < 2 * TOKEN_ROTATE {
            self.current
        } else {
            rand::random()
        };
        self.current = rand::random();
        self.rotated = now;
    }
}

fn token_of(secret: &[u8; 16], ip: IpAddr) -> [u8; TOKEN_LEN] {
    let mut digest = Sha1::new().chain_update(secret);
    match ip {
        IpAddr::V4(v4) => digest.update(v4.octets()),
        IpAddr::V6(v6) => digest.update(v6.octets()),
    }
    let digest = digest.finalize();
    let mut out = [0; TOKEN_LEN];
    out.copy_from_slice(&digest[..TOKEN_LEN]);
    out
}

fn token(secret: &[u8; 16], ip: IpAddr) -> Vec<u8> {
    token_of(secret, ip).to_vec()
}

/// Peers announced to us: info-hash -> (peer, expiry), either family. Bounded in torrents and
/// peers each.
#[derive(Debug, Default)]
pub struct PeerStore {
    torrents: HashMap<NodeId, Vec<(SocketAddr, Instant)>>,
}

impl PeerStore {
    /// Stores or refreshes a peer; false when the store is full of other torrents.
    pub fn announce(&mut self, info_hash: NodeId, peer: SocketAddr, now: Instant) -> bool {
        if !self.torrents.contains_key(&info_hash) && self.torrents.len() >= MAX_TORRENTS {
            self.expire(now);
            if self.torrents.len() >= MAX_TORRENTS {
                return false;
            }
        }
        let peers = self.torrents.entry(info_hash).or_default();
        let expiry = now + PEER_TTL;
        if let Some(p) = peers.iter_mut().find(|(a, _)| *a == peer) {
            p.1 = expiry;
        } else if peers.len() < MAX_PEERS_PER_TORRENT {
            peers.push((peer, expiry));
        } else if let Some(oldest) = peers.iter_mut().min_by_key(|(_, e)| *e) {
            *oldest = (peer, expiry);
        }
        true
    }

    /// Up to `max` live peers of `family` for `info_hash`, a random selection when there are
    /// more.
    pub fn peers(
        &self,
        info_hash: &NodeId,
        family: Family,
        max: usize,
        now: Instant,
    ) -> Vec<SocketAddr> {
        let mut live: Vec<SocketAddr> = self
            .torrents
            .get(info_hash)
            .into_iter()
            .flatten()
            .filter(|(a, expiry)| *expiry > now && Family::of(a) == family)
            .map(|(a, _)| *a)
            .collect();
        if live.len() > max {
            rand::seq::SliceRandom::shuffle(&mut live[..], &mut rand::rng());
            live.truncate(max);
        }
        live
    }

    pub fn expire(&mut self, now: Instant) {
        self.torrents.retain(|_, peers| {
            peers.retain(|(_, expiry)| *expiry > now);
            !peers.is_empty()
        });
    }
}

/// A token bucket per source IP (per /64 for IPv6, the block one host is given), so a flood
/// of (possibly spoofed) queries cannot turn us into a reflector: past the rate, queries are
/// dropped unanswered.
#[derive(Debug, Default)]
pub struct RateLimiter {
    ips: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
            v4 => v4,
        };
        if !self.ips.contains_key(&ip) && self.ips.len() >= MAX_TRACKED_IPS {
            self.forget_idle(now);
            if self.ips.len() >= MAX_TRACKED_IPS {
                return false;
            }
        }
        let (tokens, last) = self.ips.entry(ip).or_insert((RATE_BURST, now));
        let refill = now.saturating_duration_since(*last).as_secs_f64() * RATE_PER_SEC;
        *tokens = (*tokens + refill).min(RATE_BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets IPs whose bucket has refilled: they are indistinguishable from new ones.
    pub fn forget_idle(&mut self, now: Instant) {
        let full = Duration::from_secs_f64(RATE_BURST / RATE_PER_SEC);
        self.ips
            .retain(|_, (_, last)| now.saturating_duration_since(*last) < full);
    }
}

#[derive(Debug)]
pub struct Server {
    pub tokens: Tokens,
    pub peers: PeerStore,
    pub limiter: RateLimiter,
}

impl Server {
    pub fn new(now: Instant) -> Server {
        Server {
            tokens: Tokens::new(now),
            peers: PeerStore::default(),
            limiter: RateLimiter::default(),
        }
    }

    /// The reply to `query` from `src`, or `None` when `src` is over its rate (no reply).
    pub fn answer(
        &mut self,
        tables: &Tables,
        query: &Query,
        src: SocketAddr,
        now: Instant,
    ) -> Option<Body> {
        if !self.limiter.allow(src.ip(), now) {
            return None;
        }
        let id = tables.own_id();
        let over = Family::of(&src);
        let reply = |r: Response| Some(Body::Response(r));
        // The closest nodes of each family the querier wants.
        let closest =
            |target: &NodeId, want: Want, family: Family| match want.includes(family, over) {
                true => tables.of(family).closest(target, K, now),
                false => Vec::new(),
            };
        match query {
            Query::Ping { .. } => reply(Response {
                id,
                ..Response::default()
            }),
            Query::FindNode { target, want, .. } => reply(Response {
                id,
                nodes: closest(target, *want, Family::V4),
                nodes6: closest(target, *want, Family::V6),
                ..Response::default()
            }),
            // Nodes as well as values (as libtorrent does): the querier's lookup keeps
            // converging even when we know a few peers.
            Query::GetPeers {
                info_hash, want, ..
            } => {
                let max = match over {
                    Family::V4 => MAX_VALUES,
                    Family::V6 => MAX_VALUES_V6,
                };
                reply(Response {
                    id,
                    nodes: closest(info_hash, *want, Family::V4),
                    nodes6: closest(info_hash, *want, Family::V6),
                    values: self.peers.peers(info_hash, over, max, now),
                    token: Some(self.tokens.make(src.ip(), now)),
                })
            }
            Query::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
                ..
            } => {
                if !self.tokens.check(token, src.ip(), now) {
                    return Some(Body::Error {
                        code: ERROR_PROTOCOL,
                        message: "bad token".into(),
                    });
                }
                let port = if *implied_port { src.port() } else { *port };
                if port != 0 {
                    let peer = SocketAddr::new(src.ip(), port);
                    self.peers.announce(*info_hash, peer, now);
                }
                reply(Response {
                    id,
                    ..Response::default()
                })
            }
            Query::Other { .. } => Some(Body::Error {
                code: ERROR_METHOD_UNKNOWN,
                message: "method unknown".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht::krpc::NodeInfo;
    use std::net::Ipv4Addr;

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5));
    const OTHER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6));
    const IP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 5));

    #[test]
    fn tokens_bind_to_the_ip_and_survive_one_rotation() {
        let t0 = Instant::now();
        let mut tokens = Tokens::new(t0);
        let tok = tokens.make(IP, t0);
        assert_eq!(tok.len(), TOKEN_LEN);
        assert!(tokens.check(&tok, IP, t0));
        assert!(!tokens.check(&tok, OTHER_IP, t0));
        assert!(!tokens.check(b"forged", IP, t0));
        // After one rotation the previous secret still counts; after two it does not.
        assert!(tokens.check(&tok, IP, t0 + TOKEN_ROTATE));
        assert_ne!(tokens.make(IP, t0 + TOKEN_ROTATE), tok);
        assert!(!tokens.check(&tok, IP, t0 + 2 * TOKEN_ROTATE));
        // A long idle gap (no rotation in between) also retires both secrets.
        let mut tokens = Tokens::new(t0);
        let tok = tokens.make(IP, t0);
        assert!(!tokens.check(&tok, IP, t0 + 2 * TOKEN_ROTATE));
    }

    #[test]
    fn peer_store_expires_and_stays_bounded() {
        let t0 = Instant::now();
        let mut store = PeerStore::default();
        let ih = [1; 20];
        let a: SocketAddr = "127.0.0.2:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.3:1000".parse().unwrap();
        assert!(store.announce(ih, a, t0));
        assert!(store.announce(ih, b, t0 + Duration::from_secs(600)));
        let v4 = Family::V4;
        assert_eq!(store.peers(&ih, v4, 10, t0).len(), 2);
        assert_eq!(store.peers(&ih, v4, 10, t0 + PEER_TTL), vec![b]);
        // Re-announcing refreshes the expiry.
        store.announce(ih, a, t0 + PEER_TTL);
        assert_eq!(store.peers(&ih, v4, 10, t0 + PEER_TTL).len(), 2);
        store.expire(t0 + 3 * PEER_TTL);
        assert!(store.torrents.is_empty());

        for n in 0..(MAX_PEERS_PER_TORRENT as u16 + 10) {
            store.announce(ih, SocketAddr::new(IP, 1000 + n), t0);
        }
        assert_eq!(store.torrents[&ih].len(), MAX_PEERS_PER_TORRENT);
        assert_eq!(store.peers(&ih, v4, MAX_VALUES, t0).len(), MAX_VALUES);
        for n in 0..MAX_TORRENTS as u32 {
            let mut other = [0; 20];
            other[..4].copy_from_slice(&n.to_be_bytes());
            other[19] = 9;
            store.announce(other, a, t0);
        }
        assert_eq!(store.torrents.len(), MAX_TORRENTS);
        assert!(!store.announce([7; 20], a, t0), "full of live torrents");
        assert!(
            store.announce([7; 20], a, t0 + PEER_TTL),
            "room after expiry"
        );
    }

    #[test]
    fn rate_limit_drops_a_flood_from_one_ip_only() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::default();
        let allowed = (0..1000).filter(|_| limiter.allow(IP, t0)).count();
        assert_eq!(allowed, RATE_BURST as usize);
        assert!(limiter.allow(OTHER_IP, t0));
        assert!(limiter.allow(IP, t0 + Duration::from_secs(1)));
    }

    /// 20 IPv4 nodes with ids [n; 20], and 20 IPv6 ones with ids [100 + n; 20].
    fn tables() -> Tables {
        let now = Instant::now();
        let mut t = Tables::new([0; 20], now);
        for n in 1..=20u8 {
            let v4 = NodeInfo {
                id: [n; 20],
                addr: SocketAddr::from(([127, 1, 0, n], 7000)),
            };
            let v6 = NodeInfo {
                id: [100 + n; 20],
                addr: SocketAddr::new(
                    Ipv6Addr::new(0xfd00, 0, 0, 2, 0, 0, 0, n.into()).into(),
                    7000,
                ),
            };
            for node in [v4, v6] {
                t.for_addr(&node.addr).responded(node, now);
            }
        }
        t
    }

    #[test]
    fn answers_get_peers_then_accepts_the_announce_with_its_token() {
        let now = Instant::now();
        let t = tables();
        let mut s = Server::new(now);
        let src = SocketAddr::new(IP, 5555);
        let ih = [3; 20];
        let get = Query::GetPeers {
            id: [9; 20],
            info_hash: ih,
            want: Want::OWN,
        };
        let Some(Body::Response(r)) = s.answer(&t, &get, src, now) else {
            panic!("no response");
        };
        assert_eq!(r.nodes.len(), K);
        assert_eq!(r.nodes[0].id, [3; 20]);
        assert!(r.nodes6.is_empty(), "no IPv6 nodes to an IPv4 querier");
        assert!(r.values.is_empty());
        let token = r.token.unwrap();

        let announce = |token: Vec<u8>, implied_port| Query::AnnouncePeer {
            id: [9; 20],
            info_hash: ih,
            port: 6881,
            implied_port,
            token,
        };
        // From another IP, the token is refused with a protocol error and nothing is stored.
        let other = SocketAddr::new(OTHER_IP, 5555);
        assert!(matches!(
            s.answer(&t, &announce(token.clone(), false), other, now),
            Some(Body::Error {
                code: ERROR_PROTOCOL,
                ..
            })
        ));
        assert!(s.peers.peers(&ih, Family::V4, 10, now).is_empty());
        assert!(matches!(
            s.answer(&t, &announce(token.clone(), false), src, now),
            Some(Body::Response(_))
        ));
        s.answer(&t, &announce(token, true), src, now);
        let mut stored = s.peers.peers(&ih, Family::V4, 10, now);
        stored.sort();
        assert_eq!(
            stored,
            vec![SocketAddr::new(IP, 5555), SocketAddr::new(IP, 6881)]
        );
        let Some(Body::Response(r)) = s.answer(&t, &get, other, now) else {
            panic!("no response");
        };
        assert_eq!(r.values.len(), 2);
        let unknown = Query::Other {
            id: [9; 20],
            method: b"sample_infohashes".to_vec(),
        };
        assert!(matches!(
            s.answer(&t, &unknown, src, now),
            Some(Body::Error {
                code: ERROR_METHOD_UNKNOWN,
                ..
            })
        ));
    }

    #[test]
    fn ipv6_queriers_get_ipv6_nodes_and_peers_unless_they_want_both() {
        let now = Instant::now();
        let t = tables();
        let mut s = Server::new(now);
        let ih = [103; 20];
        let src6 = SocketAddr::new(IP6, 5555);
        let get = |want| Query::GetPeers {
            id: [9; 20],
            info_hash: ih,
            want,
        };
        let Some(Body::Response(r)) = s.answer(&t, &get(Want::OWN), src6, now) else {
            panic!("no response");
        };
        assert!(r.nodes.is_empty(), "no IPv4 nodes to an IPv6 querier");
        assert_eq!(r.nodes6.len(), K);
        assert_eq!(r.nodes6[0].id, [103; 20], "closest first");
        assert!(r.nodes6.iter().all(|n| n.addr.is_ipv6()));
        // Its token works for its own address only, and the peer stored is IPv6.
        let announce = Query::AnnouncePeer {
            id: [9; 20],
            info_hash: ih,
            port: 6881,
            implied_port: false,
            token: r.token.unwrap(),
        };
        let other6 = SocketAddr::new("fd00::1:0:0:6".parse().unwrap(), 5555);
        assert!(matches!(
            s.answer(&t, &announce, other6, now),
            Some(Body::Error { .. })
        ));
        assert!(matches!(
            s.answer(&t, &announce, src6, now),
            Some(Body::Response(_))
        ));
        let v4 = SocketAddr::new(IP, 1);
        let Some(Body::Response(r)) = s.answer(&t, &get(Want::OWN), v4, now) else {
            panic!("no response");
        };
        assert!(r.values.is_empty(), "IPv6 peers are not given over IPv4");
        let Some(Body::Response(r)) = s.answer(&t, &get(Want::BOTH), other6, now) else {
            panic!("no response");
        };
        assert_eq!(
            (r.nodes.len(), r.nodes6.len()),
            (K, K),
            "both families asked"
        );
        assert_eq!(r.values, vec![SocketAddr::new(IP6, 6881)]);
        let find = Query::FindNode {
            id: [9; 20],
            target: [1; 20],
            want: Want {
                n4: true,
                n6: false,
            },
        };
        let Some(Body::Response(r)) = s.answer(&t, &find, other6, now) else {
            panic!("no response");
        };
        assert_eq!(
            (r.nodes.len(), r.nodes6.len()),
            (K, 0),
            "IPv4 only, as asked"
        );
        assert_eq!(r.nodes[0].id, [1; 20]);
    }

    #[test]
    fn an_ipv6_host_is_rate_limited_by_its_64() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::default();
        let host = |n: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, n, n, n, n));
        let allowed = (0..1000u16).filter(|n| limiter.allow(host(*n), t0)).count();
        assert_eq!(allowed, RATE_BURST as usize, "one /64, one bucket");
        let neighbour = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1));
        assert!(limiter.allow(neighbour, t0), "the next /64 is another host");
    }
}
