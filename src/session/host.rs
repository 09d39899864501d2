//! What every torrent of one process shares: the port peers connect to and our peer id.
//!
//! The host accepts connections, reads each peer's handshake (bounded in time) and hands the
//! connection to the session registered for the handshake's info-hash; a connection for no
//! registered torrent is closed. A session never owns the listener, so a layer above sessions
//! can run many torrents on one port (and the DHT, which uses the same port number, beside it).
//!
//! Peers reach us over TCP and over uTP (BEP 29) on the UDP port of the same number, which the
//! DHT shares ([`Host::udp`]); either may be off. Connections from both are routed alike.
//!
//! A host listens on one or more addresses, all with one port number: by default every IPv4
//! and every IPv6 address, each family on sockets of its own (IPv6 ones IPv6-only), so a
//! machine without IPv6 still gets IPv4 (with a warning). One uTP endpoint serves every
//! family, dialling each peer from the port of the peer's family.
//!
//! The accept loops end when the last [`Host`] handle is dropped.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

use super::SessionError;
use super::encryption::{self, Encryption};
use super::listen;
use super::stream::PeerStream;
use super::transport::Dialer;
use crate::net::Family;
use crate::net::udp::UdpPort;
use crate::net::utp::Utp;
use crate::sync::lock;
use crate::wire::Handshake;
use crate::wire::mse::{self, Serving};

/// Incoming connections queued for their session; more wait in their routing tasks.
const BACKLOG: usize = 64;
/// Connections accepted whose handshake has not come yet, at most (see [`Host::bind_limited`]).
pub const DEFAULT_PENDING: usize = 64;

/// A connection whose handshake named a registered torrent; ours is not sent yet.
pub(crate) struct Incoming {
    pub(crate) stream: PeerStream,
    pub(crate) addr: SocketAddr,
    pub(crate) theirs: Handshake,
}

/// A registered torrent: its session's queue, and which connections it accepts.
struct Route {
    tx: mpsc::Sender<Incoming>,
    encryption: Encryption,
}

type Routes = Arc<Mutex<HashMap<[u8; 20], Route>>>;

/// What a [`Host`] listens on and dials with.
#[derive(Clone, Copy, Debug)]
pub struct HostOptions {
    /// A connection that does not send a whole handshake within this is closed.
    pub handshake: Duration,
    /// Connections (TCP and uTP together) waiting for their handshake, at most: past that, a
    /// new one is closed at once, so a flood that never handshakes holds a bounded number of
    /// sockets (and file descriptors).
    pub pending: usize,
    /// TCP in and out.
    pub tcp: bool,
    /// uTP in and out.
    pub utp: bool,
    /// Bind the UDP port even without uTP: the DHT runs on it.
    pub udp: bool,
}

impl HostOptions {
    /// TCP only, as [`Host::bind`] binds.
    pub fn tcp(handshake: Duration) -> Self {
        HostOptions {
            handshake,
            pending: DEFAULT_PENDING,
            tcp: true,
            utp: false,
            udp: false,
        }
    }
}

/// The listening side shared by the sessions of a process; cheap to clone.
#[derive(Clone)]
pub struct Host {
    inner: Arc<Inner>,
}

struct Inner {
    port: u16,
    peer_id: [u8; 20],
    /// The addresses bound, with the port number.
    addrs: Vec<SocketAddr>,
    /// One UDP port per address bound, unless UDP is off.
    udp: Vec<UdpPort>,
    dialer: Dialer,
    /// Locked briefly by the accept loop's handshake tasks and by `register`; never while
    /// another lock is held, never across an `.await`.
    routes: Routes,
    /// Dropped with the last handle: the accept loop sees it and ends, closing the port.
    _stop: watch::Sender<()>,
}

impl Host {
    /// Binds the TCP port peers connect to and starts accepting (no UDP: no uTP, no room for
    /// the DHT); a connection that does not send a whole handshake within `handshake` is
    /// closed. See [`Host::bind_with`].
    pub async fn bind(addr: SocketAddr, handshake: Duration) -> Result<Host, SessionError> {
        Self::bind_with(addr, HostOptions::tcp(handshake)).await
    }

    /// [`Host::bind`] with at most `pending` connections waiting for their handshake.
    pub async fn bind_limited(
        addr: SocketAddr,
        handshake: Duration,
        pending: usize,
    ) -> Result<Host, SessionError> {
        let opts = HostOptions {
            pending,
            ..HostOptions::tcp(handshake)
        };
        Self::bind_with(addr, opts).await
    }

    /// Binds the TCP port and the UDP port of the same number on `addr`, as `opts` asks, and
    /// starts accepting. See [`Host::bind_all`].
    pub async fn bind_with(addr: SocketAddr, opts: HostOptions) -> Result<Host, SessionError> {
        Self::bind_all(&[addr.ip()], addr.port(), opts).await
    }

    /// Binds the TCP port and the UDP port numbered `port` (0: one free on every address) on
    /// each address of `ips`, as `opts` asks, and starts accepting. With no address: every
    /// IPv4 and IPv6 address, where IPv6 that cannot be bound (a machine without it) is left
    /// out with a warning (see `listen.rs`). Bound first, before any metadata fetch, so that trackers learn the
    /// real port and a port in use fails at once.
    pub async fn bind_all(
        ips: &[IpAddr],
        port: u16,
        opts: HostOptions,
    ) -> Result<Host, SessionError> {
        let bound = listen::bind_all(ips, port, opts.tcp, opts.utp || opts.udp).await?;
        let port = bound.first().map_or(port, |b| b.addr.port());
        let udp: Vec<UdpPort> = bound.iter().filter_map(|b| b.udp.clone()).collect();
        let first = bound
            .first()
            .map_or(SocketAddr::from(([0, 0, 0, 0], port)), |b| b.addr);
        let utp = match (udp.is_empty(), opts.utp) {
            (false, true) => Some(Utp::start_all(&udp).map_err(|source| SessionError::Listen {
                addr: first,
                source,
            })?),
            _ => None,
        };
        let routes = Routes::default();
        let (stop, stopped) = watch::channel(());
        let pending = Arc::new(Semaphore::new(opts.pending.max(1)));
        let addrs = bound.iter().map(|b| b.addr).collect();
        for l in bound.into_iter().filter_map(|b| b.tcp) {
            let (routes, pending, stopped) = (routes.clone(), pending.clone(), stopped.clone());
            tokio::spawn(accept_loop(l, routes, opts.handshake, pending, stopped));
        }
        if let Some(u) = &utp {
            let (u, routes) = (u.clone(), routes.clone());
            tokio::spawn(accept_utp(u, routes, opts.handshake, pending, stopped));
        }
        Ok(Host {
            inner: Arc::new(Inner {
                port,
                peer_id: crate::wire::new_peer_id(),
                addrs,
                udp,
                dialer: Dialer::new(opts.tcp, utp),
                routes,
                _stop: stop,
            }),
        })
    }

    /// The first UDP port of `family` (the number of the TCP one), for the DHT to share;
    /// `None` if none is bound.
    pub fn udp(&self, family: Family) -> Option<&UdpPort> {
        (self.inner.udp.iter()).find(|p| p.local_addr().is_ok_and(|a| Family::of(&a) == family))
    }

    /// Datagrams the kernel dropped on our UDP ports, their receive buffers full (see
    /// `net::rcvbuf`); `None` without UDP or where the kernel does not say.
    pub fn udp_drops(&self) -> Option<u64> {
        (self.inner.udp.iter()).fold(None, |sum, p| match (sum, p.drops()) {
            (sum, None) => sum,
            (sum, Some(d)) => Some(sum.unwrap_or(0) + d),
        })
    }

    /// The addresses listened on, with the port number.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.inner.addrs
    }

    /// How sessions dial peers: the transports this host speaks.
    pub(crate) fn dialer(&self) -> Dialer {
        self.inner.dialer.clone()
    }

    /// Our uTP endpoint, for what dials before a session (a magnet's metadata); `None` without
    /// uTP.
    pub fn utp(&self) -> Option<Utp> {
        self.inner.dialer.utp()
    }

    /// The port bound (the one asked for, or the one picked for port 0).
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// Our peer id, the same for every torrent of this process.
    pub fn peer_id(&self) -> [u8; 20] {
        self.inner.peer_id
    }

    /// Routes incoming peers for `info_hash`, encrypted or not as `encryption` allows, to the
    /// returned receiver, replacing an earlier registration; they stop coming once it is
    /// dropped.
    pub(crate) fn register(
        &self,
        info_hash: [u8; 20],
        encryption: Encryption,
    ) -> mpsc::Receiver<Incoming> {
        let (tx, rx) = mpsc::channel(BACKLOG);
        lock(&self.inner.routes).insert(info_hash, Route { tx, encryption });
        rx
    }
}

async fn accept_loop(
    listener: TcpListener,
    routes: Routes,
    handshake: Duration,
    pending: Arc<Semaphore>,
    mut stopped: watch::Receiver<()>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let Ok(permit) = pending.clone().try_acquire_owned() else {
                        tracing::debug!(%addr, "too many handshakes pending; refused");
                        continue;
                    };
                    let stream = PeerStream::tcp(stream);
                    let routes = routes.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        route(stream, addr, routes, handshake).await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors, typically: wait for some to be freed.
                    tracing::debug!("accepting a peer failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = stopped.changed() => return,
        }
    }
}

/// Takes uTP connections as `accept_loop` takes TCP ones (the same bound on those pending).
async fn accept_utp(
    utp: Utp,
    routes: Routes,
    handshake: Duration,
    pending: Arc<Semaphore>,
    mut stopped: watch::Receiver<()>,
) {
    loop {
        tokio::select! {
            accepted = utp.accept() => match accepted {
                Ok((stream, addr)) => {
                    let Ok(permit) = pending.clone().try_acquire_owned() else {
                        tracing::debug!(%addr, "too many handshakes pending; refused");
                        continue;
                    };
                    let stream = PeerStream::utp(stream);
                    let routes = routes.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        route(stream, addr, routes, handshake).await;
                    });
                }
                Err(e) => {
                    tracing::debug!("uTP stopped accepting: {e}");
                    return;
                }
            },
            _ = stopped.changed() => return,
        }
    }
}

/// The torrent whose `HASH('req2', info-hash)` an encrypted connection sent, and what its
/// session accepts; `None` if no torrent accepts encryption at all.
fn encrypted_lookup(routes: &Routes) -> Option<impl FnOnce(&[u8; 20]) -> Option<Serving> + use<>> {
    let any = lock(routes)
        .values()
        .any(|r| r.encryption.selection().is_some());
    let routes = routes.clone();
    let lookup = move |req2: &[u8; 20]| {
        let routes = lock(&routes);
        let (hash, r) = routes.iter().find(|(h, _)| mse::req2(h) == *req2)?;
        let selection = r.encryption.selection()?;
        Some(Serving {
            skey: *hash,
            selection,
        })
    };
    any.then_some(lookup)
}

/// Reads the peer's handshake (through the encryption handshake first if it starts one)
/// and hands the connection to its torrent's session.
async fn route(stream: PeerStream, addr: SocketAddr, routes: Routes, within: Duration) {
    let lookup = encrypted_lookup(&routes);
    let read = encryption::read_incoming(stream, lookup, within);
    let (stream, theirs) = match tokio::time::timeout(within, read).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            tracing::debug!(%addr, "incoming handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%addr, "incoming handshake timed out");
            return;
        }
    };
    let session = {
        let mut routes = lock(&routes);
        match routes.get(&theirs.info_hash) {
            Some(r) if r.tx.is_closed() => {
                routes.remove(&theirs.info_hash);
                None
            }
            Some(r) if !stream.is_encrypted() && !r.encryption.accepts_plaintext() => {
                tracing::debug!(%addr, "plaintext peer refused: encryption is required");
                return;
            }
            other => other.map(|r| r.tx.clone()),
        }
    };
    let Some(session) = session else {
        tracing::debug!(%addr, "incoming peer for a torrent we do not serve");
        return;
    };
    let incoming = Incoming {
        stream,
        addr,
        theirs,
    };
    if session.send(incoming).await.is_err() {
        tracing::debug!(%addr, "incoming peer dropped: its session is gone");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::write_handshake;
    use std::net::Ipv6Addr;
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn a_handshake_reaches_the_session_of_its_torrent_only() {
        let host = Host::bind("127.0.0.1:0".parse().unwrap(), Duration::from_secs(5))
            .await
            .unwrap();
        let at = SocketAddr::from(([127, 0, 0, 1], host.port()));
        let mut ours = host.register([1; 20], Encryption::Allow);

        let mut other = TcpStream::connect(at).await.unwrap();
        write_handshake(&mut other, &Handshake::new([2; 20], [9; 20]))
            .await
            .unwrap();
        let mut buf = [0u8; 1];
        use tokio::io::AsyncReadExt;
        assert_eq!(other.read(&mut buf).await.unwrap(), 0, "closed unanswered");

        let mut peer = TcpStream::connect(at).await.unwrap();
        write_handshake(&mut peer, &Handshake::new([1; 20], [9; 20]))
            .await
            .unwrap();
        let got = ours.recv().await.unwrap();
        assert_eq!(got.theirs.peer_id, [9; 20]);
        assert_eq!(got.addr, peer.local_addr().unwrap());
    }

    #[tokio::test]
    async fn past_the_pending_limit_a_connection_is_closed_at_once() {
        use tokio::io::AsyncReadExt;
        let host = Host::bind_limited("127.0.0.1:0".parse().unwrap(), Duration::from_secs(60), 2)
            .await
            .unwrap();
        let at = SocketAddr::from(([127, 0, 0, 1], host.port()));
        let mut silent = Vec::new();
        for _ in 0..2 {
            silent.push(TcpStream::connect(at).await.unwrap());
        }
        // The third is closed unanswered while the first two wait for their handshake.
        let mut third = TcpStream::connect(at).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(30), third.read(&mut buf))
            .await
            .expect("closed, not left waiting");
        assert!(matches!(n, Ok(0) | Err(_)));
        drop(silent);
    }

    #[tokio::test]
    async fn a_utp_handshake_is_routed_like_a_tcp_one() {
        let opts = HostOptions {
            utp: true,
            udp: true,
            ..HostOptions::tcp(Duration::from_secs(5))
        };
        let host = Host::bind_with("127.0.0.1:0".parse().unwrap(), opts)
            .await
            .unwrap();
        let at = SocketAddr::from(([127, 0, 0, 1], host.port()));
        assert_eq!(
            host.udp(Family::V4).unwrap().local_addr().unwrap(),
            at,
            "one port number"
        );
        let mut ours = host.register([1; 20], Encryption::Allow);

        let port = UdpPort::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let peer = Utp::start(&port).unwrap();
        let mut stream = peer.connect(at).await.unwrap();
        write_handshake(&mut stream, &Handshake::new([1; 20], [9; 20]))
            .await
            .unwrap();
        let got = ours.recv().await.unwrap();
        assert_eq!(got.theirs.peer_id, [9; 20]);
        assert_eq!(got.addr, port.local_addr().unwrap());
        assert_eq!(got.stream.transport(), super::super::stream::Transport::Utp);
    }

    #[tokio::test]
    async fn the_port_closes_with_the_last_handle() {
        let host = Host::bind("127.0.0.1:0".parse().unwrap(), Duration::from_secs(5))
            .await
            .unwrap();
        let at = SocketAddr::from(([127, 0, 0, 1], host.port()));
        let second = host.clone();
        drop(host);
        assert!(TcpStream::connect(at).await.is_ok(), "a handle is left");
        drop(second);
        let closed = async {
            while TcpStream::connect(at).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), closed)
            .await
            .expect("the port closes");
    }

    #[tokio::test]
    async fn by_default_both_families_listen_on_one_port_number_and_route_alike() {
        let opts = HostOptions {
            utp: true,
            udp: true,
            ..HostOptions::tcp(Duration::from_secs(5))
        };
        let host = Host::bind_all(&[], 0, opts).await.unwrap();
        let port = host.port();
        let addrs = host.local_addrs();
        assert_eq!(
            addrs,
            &[
                SocketAddr::from(([0, 0, 0, 0], port)),
                SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)
            ]
        );
        for family in Family::ALL {
            let udp = host.udp(family).unwrap().local_addr().unwrap();
            assert_eq!((Family::of(&udp), udp.port()), (family, port));
        }
        let mut ours = host.register([1; 20], Encryption::Allow);

        let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        let mut peer = TcpStream::connect(v6).await.unwrap();
        write_handshake(&mut peer, &Handshake::new([1; 20], [6; 20]))
            .await
            .unwrap();
        let got = ours.recv().await.unwrap();
        assert_eq!(got.theirs.peer_id, [6; 20]);
        assert_eq!(got.addr, peer.local_addr().unwrap());

        let port6 = UdpPort::bind("[::1]:0".parse().unwrap()).await.unwrap();
        let utp = Utp::start(&port6).unwrap();
        let mut stream = utp.connect(v6).await.unwrap();
        write_handshake(&mut stream, &Handshake::new([1; 20], [7; 20]))
            .await
            .unwrap();
        let got = ours.recv().await.unwrap();
        assert_eq!(got.theirs.peer_id, [7; 20]);
        assert_eq!(got.addr, port6.local_addr().unwrap());
        assert_eq!(got.stream.transport(), super::super::stream::Transport::Utp);

        // And over IPv4, on the same number.
        let v4 = SocketAddr::from(([127, 0, 0, 1], port));
        let mut peer = TcpStream::connect(v4).await.unwrap();
        write_handshake(&mut peer, &Handshake::new([1; 20], [4; 20]))
            .await
            .unwrap();
        assert_eq!(ours.recv().await.unwrap().theirs.peer_id, [4; 20]);
    }
}
