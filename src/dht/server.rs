//! What we keep to answer other nodes (the "good citizen" half of the DHT): announce tokens,
//! the peers others announced to us, a per-IP reply rate limit, and the answer to each query.
//! Pure: the caller passes the `Instant`; the socket lives in `node.rs`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};

use super::krpc::{Body, ERROR_METHOD_UNKNOWN, ERROR_PROTOCOL, NodeId, Query, Response};
use super::routing::{K, RoutingTable};

/// The token secret changes this often; a token stays valid for one more period.
pub const TOKEN_ROTATE: Duration = Duration::from_secs(5 * 60);
const TOKEN_LEN: usize = 8;
/// An announced peer is forgotten this long after its last announce (BEP 5 leaves it open;
/// clients re-announce every 15 to 30 minutes).
pub const PEER_TTL: Duration = Duration::from_secs(30 * 60);
/// Bounds on the peer store, so announces cannot grow our memory without limit.
const MAX_TORRENTS: usize = 2000;
const MAX_PEERS_PER_TORRENT: usize = 200;
/// Peers in one `get_peers` reply: 50 x 8 bytes keeps the datagram well under 1,400 bytes.
const MAX_VALUES: usize = 50;
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

    pub fn make(&mut self, ip: Ipv4Addr, now: Instant) -> Vec<u8> {
        self.rotate(now);
        token(&self.current, ip)
    }

    /// True if `token` was made for `ip` under the current or the previous secret.
    pub fn check(&mut self, token: &[u8], ip: Ipv4Addr, now: Instant) -> bool {
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

fn token_of(secret: &[u8; 16], ip: Ipv4Addr) -> [u8; TOKEN_LEN] {
    let digest = Sha1::new()
        .chain_update(secret)
        .chain_update(ip.octets())
        .finalize();
    let mut out = [0; TOKEN_LEN];
    out.copy_from_slice(&digest[..TOKEN_LEN]);
    out
}

fn token(secret: &[u8; 16], ip: Ipv4Addr) -> Vec<u8> {
    token_of(secret, ip).to_vec()
}

/// Peers announced to us: info-hash -> (peer, expiry). Bounded in torrents and peers each.
#[derive(Debug, Default)]
pub struct PeerStore {
    torrents: HashMap<NodeId, Vec<(SocketAddrV4, Instant)>>,
}

impl PeerStore {
    /// Stores or refreshes a peer; false when the store is full of other torrents.
    pub fn announce(&mut self, info_hash: NodeId, peer: SocketAddrV4, now: Instant) -> bool {
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

    /// Up to `max` live peers for `info_hash`, a random selection when there are more.
    pub fn peers(&self, info_hash: &NodeId, max: usize, now: Instant) -> Vec<SocketAddrV4> {
        let mut live: Vec<SocketAddrV4> = self
            .torrents
            .get(info_hash)
            .into_iter()
            .flatten()
            .filter(|(_, expiry)| *expiry > now)
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

/// A token bucket per source IP, so a flood of (possibly spoofed) queries cannot turn us into
/// a reflector: past the rate, queries are dropped unanswered.
#[derive(Debug, Default)]
pub struct RateLimiter {
    ips: HashMap<Ipv4Addr, (f64, Instant)>,
}

impl RateLimiter {
    pub fn allow(&mut self, ip: Ipv4Addr, now: Instant) -> bool {
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
        table: &RoutingTable,
        query: &Query,
        src: SocketAddrV4,
        now: Instant,
    ) -> Option<Body> {
        if !self.limiter.allow(*src.ip(), now) {
            return None;
        }
        let id = table.own_id();
        let reply = |r: Response| Some(Body::Response(r));
        match query {
            Query::Ping { .. } => reply(Response {
                id,
                ..Response::default()
            }),
            Query::FindNode { target, .. } => reply(Response {
                id,
                nodes: table.closest(target, K, now),
                ..Response::default()
            }),
            // Nodes as well as values (as libtorrent does): the querier's lookup keeps
            // converging even when we know a few peers.
            Query::GetPeers { info_hash, .. } => reply(Response {
                id,
                nodes: table.closest(info_hash, K, now),
                values: self.peers.peers(info_hash, MAX_VALUES, now),
                token: Some(self.tokens.make(*src.ip(), now)),
            }),
            Query::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
                ..
            } => {
                if !self.tokens.check(token, *src.ip(), now) {
                    return Some(Body::Error {
                        code: ERROR_PROTOCOL,
                        message: "bad token".into(),
                    });
                }
                let port = if *implied_port { src.port() } else { *port };
                if port != 0 {
                    self.peers
                        .announce(*info_hash, SocketAddrV4::new(*src.ip(), port), now);
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

    const IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
    const OTHER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

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
        let a: SocketAddrV4 = "127.0.0.2:1000".parse().unwrap();
        let b: SocketAddrV4 = "127.0.0.3:1000".parse().unwrap();
        assert!(store.announce(ih, a, t0));
        assert!(store.announce(ih, b, t0 + Duration::from_secs(600)));
        assert_eq!(store.peers(&ih, 10, t0).len(), 2);
        assert_eq!(store.peers(&ih, 10, t0 + PEER_TTL), vec![b]);
        // Re-announcing refreshes the expiry.
        store.announce(ih, a, t0 + PEER_TTL);
        assert_eq!(store.peers(&ih, 10, t0 + PEER_TTL).len(), 2);
        store.expire(t0 + 3 * PEER_TTL);
        assert!(store.torrents.is_empty());

        for n in 0..(MAX_PEERS_PER_TORRENT as u16 + 10) {
            store.announce(ih, SocketAddrV4::new(IP, 1000 + n), t0);
        }
        assert_eq!(store.torrents[&ih].len(), MAX_PEERS_PER_TORRENT);
        assert_eq!(store.peers(&ih, MAX_VALUES, t0).len(), MAX_VALUES);
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

    fn table() -> RoutingTable {
        let now = Instant::now();
        let mut t = RoutingTable::new([0; 20], now);
        for n in 1..=20u8 {
            t.responded(
                NodeInfo {
                    id: [n; 20],
                    addr: SocketAddrV4::new(Ipv4Addr::new(127, 1, 0, n), 7000),
                },
                now,
            );
        }
        t
    }

    #[test]
    fn answers_get_peers_then_accepts_the_announce_with_its_token() {
        let now = Instant::now();
        let t = table();
        let mut s = Server::new(now);
        let src = SocketAddrV4::new(IP, 5555);
        let ih = [3; 20];
        let get = Query::GetPeers {
            id: [9; 20],
            info_hash: ih,
        };
        let Some(Body::Response(r)) = s.answer(&t, &get, src, now) else {
            panic!("no response");
        };
        assert_eq!(r.nodes.len(), K);
        assert_eq!(r.nodes[0].id, [3; 20]);
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
        let other = SocketAddrV4::new(OTHER_IP, 5555);
        assert!(matches!(
            s.answer(&t, &announce(token.clone(), false), other, now),
            Some(Body::Error {
                code: ERROR_PROTOCOL,
                ..
            })
        ));
        assert!(s.peers.peers(&ih, 10, now).is_empty());
        assert!(matches!(
            s.answer(&t, &announce(token.clone(), false), src, now),
            Some(Body::Response(_))
        ));
        s.answer(&t, &announce(token, true), src, now);
        let mut stored = s.peers.peers(&ih, 10, now);
        stored.sort();
        assert_eq!(
            stored,
            vec![SocketAddrV4::new(IP, 5555), SocketAddrV4::new(IP, 6881)]
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
}
