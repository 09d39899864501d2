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
use tokio::sync::{mpsc, watch};

use super::SessionError;
use super::dial::Dialer;
use super::stream::PeerStream;
use crate::net::udp::UdpPort;
use crate::net::utp::Utp;
use crate::sync::lock;
use crate::wire::{Handshake, read_handshake};

/// Tries at a port number free for both TCP and UDP when any will do (port 0).
const PORT_TRIES: usize = 20;

/// Incoming connections queued for their session; more wait in their routing tasks.
const BACKLOG: usize = 64;

/// A connection whose handshake named a registered torrent; ours is not sent yet.
pub(crate) struct Incoming {
    pub(crate) stream: PeerStream,
    pub(crate) addr: SocketAddr,
    pub(crate) theirs: Handshake,
}

type Routes = Arc<Mutex<HashMap<[u8; 20], mpsc::Sender<Incoming>>>>;

/// What a [`Host`] listens on and dials with.
#[derive(Clone, Copy, Debug)]
pub struct HostOptions {
    /// A connection that does not send a whole handshake within this is closed.
    pub handshake: Duration,
    /// TCP in and out.
    pub tcp: bool,
    /// uTP in and out.
    pub utp: bool,
    /// Bind the UDP port even without uTP: the DHT runs on it.
    pub udp: bool,
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
    /// the DHT); see [`Host::bind_with`].
    pub async fn bind(addr: SocketAddr, handshake: Duration) -> Result<Host, SessionError> {
        let opts = HostOptions {
            handshake,
            tcp: true,
            utp: false,
            udp: false,
        };
        Host::bind_with(addr, opts).await
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
        if let Some(l) = listener {
            let stopped = stopped.clone();
            tokio::spawn(accept_loop(l, routes.clone(), opts.handshake, stopped));
        }
        if let Some(u) = &utp {
            let u = u.clone();
            tokio::spawn(accept_utp(u, routes.clone(), opts.handshake, stopped));
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

    /// The port bound (the one asked for, or the one picked for port 0).
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// Our peer id, the same for every torrent of this process.
    pub fn peer_id(&self) -> [u8; 20] {
        self.inner.peer_id
    }

    /// Routes incoming peers for `info_hash` to the returned receiver, replacing an earlier
    /// registration; they stop coming once it is dropped.
    pub(crate) fn register(&self, info_hash: [u8; 20]) -> mpsc::Receiver<Incoming> {
        let (tx, rx) = mpsc::channel(BACKLOG);
        lock(&self.inner.routes).insert(info_hash, tx);
        rx
    }
}

async fn accept_loop(
    listener: TcpListener,
    routes: Routes,
    handshake: Duration,
    mut stopped: watch::Receiver<()>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let stream = PeerStream::tcp(stream);
                    tokio::spawn(route(stream, addr, routes.clone(), handshake));
                }
                Err(e) => {
                    tracing::warn!("accepting a peer failed: {e}");
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

/// Takes uTP connections as `accept_loop` takes TCP ones.
async fn accept_utp(
    utp: Utp,
    routes: Routes,
    handshake: Duration,
    mut stopped: watch::Receiver<()>,
) {
    loop {
        tokio::select! {
            accepted = utp.accept() => match accepted {
                Ok((stream, addr)) => {
                    let stream = PeerStream::utp(stream);
                    tokio::spawn(route(stream, addr, routes.clone(), handshake));
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

/// Reads the peer's handshake and hands the connection to its torrent's session.
async fn route(mut stream: PeerStream, addr: SocketAddr, routes: Routes, within: Duration) {
    let theirs = match tokio::time::timeout(within, read_handshake(&mut stream)).await {
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
            Some(tx) if tx.is_closed() => {
                routes.remove(&theirs.info_hash);
                None
            }
            other => other.cloned(),
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
        let mut ours = host.register([1; 20]);

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
    async fn a_utp_handshake_is_routed_like_a_tcp_one() {
        let opts = HostOptions {
            handshake: Duration::from_secs(5),
            tcp: true,
            utp: true,
            udp: true,
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
        let mut ours = host.register([1; 20]);

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
