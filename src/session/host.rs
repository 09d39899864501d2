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
//! The accept loops end when the last [`Host`] handle is dropped.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

use super::SessionError;
use super::encryption::{self, Encryption};
use super::stream::PeerStream;
use super::transport::Dialer;
use crate::net::udp::UdpPort;
use crate::net::utp::Utp;
use crate::sync::lock;
use crate::wire::Handshake;
use crate::wire::mse::{self, Serving};

/// Incoming connections queued for their session; more wait in their routing tasks.
const BACKLOG: usize = 64;
/// Connections accepted whose handshake has not come yet, at most (see [`Host::bind_limited`]).
pub const DEFAULT_PENDING: usize = 64;
/// Tries at a port number free for both TCP and UDP when any will do (port 0).
const PORT_TRIES: usize = 20;

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
    udp: Option<UdpPort>,
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

    /// Binds the TCP port and the UDP port of the same number, as `opts` asks, and starts
    /// accepting. Bound first, before any metadata fetch, so that trackers learn the real port
    /// and a port in use fails at once.
    pub async fn bind_with(addr: SocketAddr, opts: HostOptions) -> Result<Host, SessionError> {
        let (listener, udp) = bind_ports(addr, &opts).await?;
        let port = match (&listener, &udp) {
            (Some(l), _) => l.local_addr(),
            (None, Some(u)) => u.local_addr(),
            (None, None) => Ok(addr),
        }
        .map_err(|source| SessionError::Listen { addr, source })?
        .port();
        let utp = match (&udp, opts.utp) {
            (Some(u), true) => {
                Some(Utp::start(u).map_err(|source| SessionError::Listen { addr, source })?)
            }
            _ => None,
        };
        let routes = Routes::default();
        let (stop, stopped) = watch::channel(());
        let pending = Arc::new(Semaphore::new(opts.pending.max(1)));
        if let Some(l) = listener {
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
                udp,
                dialer: Dialer::new(opts.tcp, utp),
                routes,
                _stop: stop,
            }),
        })
    }

    /// The UDP port (the number of the TCP one) for the DHT to share; `None` if not bound.
    pub fn udp(&self) -> Option<&UdpPort> {
        self.inner.udp.as_ref()
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

/// Binds TCP and UDP on one port number; with port 0, the number TCP picked must be free for
/// UDP too, else another is tried.
async fn bind_ports(
    addr: SocketAddr,
    opts: &HostOptions,
) -> Result<(Option<TcpListener>, Option<UdpPort>), SessionError> {
    let fail = |at: SocketAddr, source: io::Error| match source.kind() {
        io::ErrorKind::AddrInUse => SessionError::PortInUse { port: at.port() },
        _ => SessionError::Listen { addr: at, source },
    };
    let want_udp = opts.utp || opts.udp;
    let tries = match addr.port() == 0 && opts.tcp && want_udp {
        true => PORT_TRIES,
        false => 1,
    };
    for _ in 0..tries {
        let listener = match opts.tcp {
            true => Some(TcpListener::bind(addr).await.map_err(|e| fail(addr, e))?),
            false => None,
        };
        if !want_udp {
            return Ok((listener, None));
        }
        let at = match &listener {
            Some(l) => l.local_addr().map_err(|e| fail(addr, e))?,
            None => addr,
        };
        match UdpPort::bind(at).await {
            Ok(udp) => return Ok((listener, Some(udp))),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries > 1 => continue,
            Err(e) => return Err(fail(at, e)),
        }
    }
    Err(SessionError::PortInUse { port: 0 })
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
            host.udp().unwrap().local_addr().unwrap(),
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
}
