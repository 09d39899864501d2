//! uTP (BEP 29) on the shared UDP port, by the `librqbit-utp` crate.
//!
//! Why that crate: it is the uTP of rqbit (a Rust client used on public swarms), tokio based,
//! released often, with tests of its state machine (retransmission, fast retransmit, selective
//! ACK, Nagle, MTU probing, flow control) and interop tests against libutp; it does selective
//! ACKs and path-MTU probing, and its `Transport` trait lets it run over our [`Channel`] rather
//! than a socket of its own, which is what puts it on the DHT's port. It comes with CUBIC only;
//! we carry it in `third_party/librqbit-utp` with a LEDBAT controller added (RFC 6817, as
//! BEP 29 asks), which we select: our uploads over uTP yield to other traffic by the queuing
//! delay the peer echoes. The alternatives: `libutp-rs2` binds BitTorrent Inc.'s C++
//! libutp (LEDBAT) behind one global lock and an `anyhow` API, a young wrapper made to test
//! against; ethereum's `utp-rs` is alpha, sends fixed 1 KiB packets and caps a stream at about
//! 1 MB; `utp`/`async-utp`/`tokio-utp` are unmaintained.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use librqbit_utp::{CongestionConfig, CongestionControllerKind, SocketOpts, Transport};
use tokio_util::sync::CancellationToken;

use super::Family;
use super::udp::{Channel, Protocol, UdpPort};

pub use librqbit_utp::{UtpStream, WakeThreshold};

/// A connection that asked for no answer for this long is dead. The crate's 10 s would end one
/// that merely waits on a slow peer; TCP would wait minutes. The peer task has its own timeouts.
const INACTIVITY: Duration = Duration::from_secs(60);
/// The receive window of each connection: about what TCP's autotuning reaches on a fast link.
const WINDOW: usize = 2 * 1024 * 1024;

/// uTP's side of the ports, as the crate wants its transport: one channel per address
/// family, so one uTP endpoint serves IPv4 and IPv6 peers alike (the crate keys connections
/// by the remote address, and sizes packets by the remote's family).
pub struct UtpTransport {
    /// At most one channel per family, IPv4 first.
    channels: Vec<(Family, Channel)>,
    local: SocketAddr,
    /// Where the next receive starts looking, so a busy family cannot starve the other.
    next: AtomicUsize,
}

impl UtpTransport {
    fn channel_to(&self, target: SocketAddr) -> io::Result<&Channel> {
        let family = Family::of(&target);
        (self.channels.iter())
            .find(|(f, _)| *f == family)
            .map(|(_, c)| c)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::AddrNotAvailable,
                    format!("no {family} UDP port for uTP"),
                )
            })
    }
}

impl librqbit_dualstack_sockets::PollSendToVectored for UtpTransport {
    fn poll_send_to_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        match self.channel_to(target) {
            Ok(c) => c.poll_send_to_vectored(cx, bufs, target),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl Transport for UtpTransport {
    /// The next datagram of any family, copied into `buf` (cut to its length).
    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        let n = self.channels.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let (mut closed, mut last_error) = (0, None);
        for i in 0..n {
            let (_, channel) = &self.channels[(start + i) % n];
            match channel.poll_recv_from(cx, buf) {
                Poll::Ready(Ok(got)) => return Poll::Ready(Ok(got)),
                Poll::Ready(Err(e)) => {
                    closed += 1;
                    last_error = Some(e);
                }
                Poll::Pending => {}
            }
        }
        // Over once every port is closed; until then, the others still receive.
        match last_error {
            Some(e) if closed == n => Poll::Ready(Err(e)),
            _ => Poll::Pending,
        }
    }

    /// The datagrams waiting on any family's port, many per system call (the crate's default
    /// would take them one `poll_recv_from` at a time).
    fn poll_recv_batch(
        &self,
        cx: &mut Context<'_>,
        _buf: &mut [u8],
        max: usize,
        on: &mut dyn FnMut(bytes::Bytes, SocketAddr),
    ) -> Poll<io::Result<usize>> {
        let n = self.channels.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let (mut handed, mut closed, mut last_error) = (0, 0, None);
        for i in 0..n {
            if handed == max {
                break;
            }
            let (_, channel) = &self.channels[(start + i) % n];
            match channel.poll_recv_batch(cx, max - handed, on) {
                Poll::Ready(Ok(got)) => handed += got,
                Poll::Ready(Err(e)) => {
                    closed += 1;
                    last_error = Some(e);
                }
                Poll::Pending => {}
            }
        }
        match last_error {
            _ if handed > 0 => Poll::Ready(Ok(handed)),
            Some(e) if closed == n => Poll::Ready(Err(e)),
            _ => Poll::Pending,
        }
    }

    fn send_to<'a>(
        &'a self,
        buf: &'a [u8],
        target: SocketAddr,
    ) -> impl Future<Output = io::Result<usize>> + Send + Sync + 'a {
        std::future::poll_fn(move |cx| self.poll_send_to(cx, buf, target))
    }

    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        match self.channel_to(target) {
            Ok(c) => c.poll_send_to(cx, buf, target),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn bind_addr(&self) -> SocketAddr {
        self.local
    }
}

/// The crate's clock and random source. Its type is public but not exported (only the UDP
/// socket type alias names it), so it is reached through that alias.
trait EnvOf {
    type Env;
}
impl<T, E> EnvOf for librqbit_utp::UtpSocket<T, E> {
    type Env = E;
}
type DefaultEnv = <librqbit_utp::UtpSocketUdp as EnvOf>::Env;

type Socket = librqbit_utp::UtpSocket<UtpTransport, DefaultEnv>;

/// Our uTP endpoint: accepts and dials connections over the port's uTP channel. Cheap to
/// clone; its tasks end when the last clone is dropped (connections already open end with
/// their streams).
#[derive(Clone)]
pub struct Utp {
    inner: Arc<Inner>,
}

struct Inner {
    socket: Arc<Socket>,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Utp {
    /// Starts uTP on `port`, taking its uTP datagrams from now on. Call within a tokio runtime.
    pub fn start(port: &UdpPort) -> io::Result<Utp> {
        Self::start_all(std::slice::from_ref(port))
    }

    /// Starts one uTP endpoint on `ports`: the first port of each family, whose uTP datagrams
    /// it takes from now on; it dials each peer from the port of the peer's family. Call
    /// within a tokio runtime.
    pub fn start_all(ports: &[UdpPort]) -> io::Result<Utp> {
        let mut channels: Vec<(Family, Channel)> = Vec::new();
        let mut local = None;
        for port in ports {
            let at = port.local_addr()?;
            let family = Family::of(&at);
            if channels.iter().any(|(f, _)| *f == family) {
                continue;
            }
            local.get_or_insert(at);
            channels.push((family, port.reader(Protocol::Utp)));
        }
        channels.sort_by_key(|(f, _)| *f);
        let Some(local) = local else {
            return Err(io::Error::other("uTP: no UDP port"));
        };
        let transport = UtpTransport {
            channels,
            local,
            next: AtomicUsize::new(0),
        };
        let stop = CancellationToken::new();
        let window = std::num::NonZeroUsize::new(WINDOW);
        let opts = SocketOpts {
            vsock_rx_bufsize_bytes: window,
            vsock_tx_bufsize_bytes_max: window,
            remote_inactivity_timeout: Some(INACTIVITY),
            congestion: CongestionConfig {
                kind: CongestionControllerKind::Ledbat,
                tracing: false,
            },
            cancellation_token: stop.clone(),
            ..Default::default()
        };
        let socket = Socket::new_with_opts(transport, DefaultEnv::default(), opts)
            .map_err(|e| io::Error::other(format!("uTP: {e}")))?;
        Ok(Utp {
            inner: Arc::new(Inner { socket, stop }),
        })
    }

    /// Dials `addr`; the caller bounds the wait (a SYN nobody answers is not retried).
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<UtpStream> {
        self.inner
            .socket
            .connect(addr)
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e.to_string()))
    }

    /// The next incoming connection, with its address.
    pub async fn accept(&self) -> io::Result<(UtpStream, SocketAddr)> {
        let stream =
            (self.inner.socket.accept().await).map_err(|e| io::Error::other(e.to_string()))?;
        let addr = stream.remote_addr();
        Ok((stream, addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_stream_crosses_between_two_ports_that_also_carry_dht_traffic() {
        let a = UdpPort::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let b = UdpPort::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let (ua, ub) = (Utp::start(&a).unwrap(), Utp::start(&b).unwrap());
        let (da, db) = (a.channel(Protocol::Dht), b.channel(Protocol::Dht));
        let b_at = b.local_addr().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();

        let sender = {
            let data = data.clone();
            let ua = ua.clone();
            tokio::spawn(async move {
                let mut s = ua.connect(b_at).await.unwrap();
                s.write_all(&data).await.unwrap();
                s.shutdown().await.unwrap();
                s
            })
        };
        let chatter = tokio::spawn(async move {
            for i in 0..200u32 {
                da.send_to(format!("d1:ni{i}ee").as_bytes(), b_at)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let work = async {
            let (mut s, from) = ub.accept().await.unwrap();
            assert_eq!(from, a.local_addr().unwrap());
            let mut got = vec![0u8; data.len()];
            s.read_exact(&mut got).await.unwrap();
            assert!(got == data, "the bytes arrive whole and in order");
            for i in 0..200u32 {
                let d = db.recv().await.unwrap();
                assert_eq!(&d.data[..], format!("d1:ni{i}ee").as_bytes());
            }
        };
        tokio::time::timeout(Duration::from_secs(30), work)
            .await
            .expect("hang");
        chatter.await.unwrap();
        drop(sender.await.unwrap());
    }

    /// One endpoint on an IPv4 and an IPv6 port: it accepts from and dials to both families,
    /// each from the port of its family.
    #[tokio::test]
    async fn one_endpoint_speaks_both_families() {
        let p4 = UdpPort::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let p6 = UdpPort::bind("[::1]:0".parse().unwrap()).await.unwrap();
        let dual = Utp::start_all(&[p4.clone(), p6.clone()]).unwrap();
        let q4 = UdpPort::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let q6 = UdpPort::bind("[::1]:0".parse().unwrap()).await.unwrap();
        let (u4, u6) = (Utp::start(&q4).unwrap(), Utp::start(&q6).unwrap());
        let work = async {
            for (peer, port, ours) in [(&u4, &q4, &p4), (&u6, &q6, &p6)] {
                // In: the peer dials our port of its family (an answer waits for an accept).
                let to = ours.local_addr().unwrap();
                let (s, (mut got, from)) =
                    tokio::join!(async { peer.connect(to).await.unwrap() }, async {
                        dual.accept().await.unwrap()
                    });
                assert_eq!(from, port.local_addr().unwrap());
                let mut s = s;
                s.write_all(b"in").await.unwrap();
                let mut buf = [0u8; 2];
                got.read_exact(&mut buf).await.unwrap();
                assert_eq!(&buf, b"in");
                // Out: we dial it, from the port of its family.
                let ((mut theirs, from), mut out) =
                    tokio::join!(async { peer.accept().await.unwrap() }, async {
                        dual.connect(port.local_addr().unwrap()).await.unwrap()
                    });
                assert_eq!(from, to);
                out.write_all(b"out").await.unwrap();
                let mut buf = [0u8; 3];
                theirs.read_exact(&mut buf).await.unwrap();
                assert_eq!(&buf, b"out");
            }
        };
        tokio::time::timeout(Duration::from_secs(30), work)
            .await
            .expect("hang");
        // A family without a port is refused at once.
        let v4_only = Utp::start(&p4).unwrap();
        let err = v4_only.connect(q6.local_addr().unwrap()).await;
        assert!(err.is_err());
    }
}
