//! One UDP socket for everything a process speaks over UDP on its port: the DHT (BEP 5) and
//! uTP (BEP 29) share the port number of the TCP listener, as peers and nodes expect.
//!
//! A [`UdpPort`] owns the socket and one receive task. Each datagram goes to the [`Channel`]
//! of its protocol, told apart by its first byte: a KRPC message is a bencoded dictionary
//! (`d`), a uTP packet starts with its type (0..=4) in the high nibble and version 1 in the
//! low one. Anything else is dropped, as is a datagram for a protocol nobody listens to or
//! whose channel is full (UDP may drop; both protocols retry). Every channel sends on the
//! socket directly.
//!
//! uTP's channel is made the socket's reader ([`UdpPort::reader`]): while it lives, the
//! receive task waits and uTP receives straight into its own buffers, many datagrams to a
//! system call ([`Channel::poll_recv_batch`]), passing the DHT's few datagrams on to the DHT's
//! queue. At uTP's rates (a datagram per 1.4 kB) a hop through a task and a queue per datagram,
//! or a system call per datagram, cost a good part of uTP's CPU.
//!
//! The socket stays open while the port or any of its channels is held; the receive task ends
//! with the last of them.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{Interest, ReadBuf};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use super::recv_batch::RecvBatch;
use crate::sync::lock;

/// Largest datagram read; KRPC stays under 1,500 bytes, uTP under the path MTU.
const MAX_DATAGRAM: usize = 64 * 1024;
/// A uTP header is 20 bytes; anything shorter is not uTP.
const UTP_HEADER: usize = 20;
/// Datagrams queued for a protocol before further ones are dropped. uTP at speed delivers
/// thousands a second in bursts; the DHT a few.
pub(super) const UTP_QUEUE: usize = 8192;
const DHT_QUEUE: usize = 1024;

/// The protocols that share the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Dht,
    Utp,
}

impl Protocol {
    fn slot(self) -> usize {
        match self {
            Protocol::Dht => 0,
            Protocol::Utp => 1,
        }
    }
}

/// Which protocol a datagram belongs to, by its first byte (see the module doc).
pub fn classify(packet: &[u8]) -> Option<Protocol> {
    let &first = packet.first()?;
    if first == b'd' {
        return Some(Protocol::Dht);
    }
    let (kind, version) = (first >> 4, first & 0x0f);
    (version == 1 && kind <= 4 && packet.len() >= UTP_HEADER).then_some(Protocol::Utp)
}

/// One received datagram.
#[derive(Debug)]
pub struct Datagram {
    pub data: Bytes,
    pub from: SocketAddr,
}

/// Each protocol's queue, with a number telling a channel from the one that replaced it.
type Routes = Arc<Mutex<[Option<(u64, mpsc::Sender<Datagram>)>; 2]>>;
/// Datagrams of other protocols a reader passes on within one poll before it lets other
/// tasks run.
const READER_BUDGET: usize = 64;

/// The shared socket and its receive task; cheap to clone.
#[derive(Clone)]
pub struct UdpPort {
    inner: Arc<Inner>,
}

struct Inner {
    socket: Arc<UdpSocket>,
    /// Locked briefly by the receive task and when a channel comes or goes; never while
    /// another lock is held, never across an `.await`.
    routes: Routes,
    next_channel: std::sync::atomic::AtomicU64,
    /// The channel that reads the socket itself, if any (its id): the receive task waits
    /// while there is one. Dropped with the last handle: the receive task sees it and ends.
    reader: watch::Sender<Option<u64>>,
    /// The reader's id as `reader` holds it ([`NO_READER`] for none), read without a lock on
    /// every datagram the reader takes.
    reader_id: AtomicU64,
}

/// Says once per process that the system caps the receive buffer below what uTP wants.
fn small_buffer(granted: usize) {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        tracing::info!(
            "the UDP receive buffer is {} KiB (net.core.rmem_max); uTP peers sending fast may \
             overflow it and slow down (status: udp_drops). To allow {} MiB: sysctl -w \
             net.core.rmem_max={}",
            granted / 1024,
            super::rcvbuf::WANTED >> 20,
            super::rcvbuf::WANTED
        );
    });
}

const NO_READER: u64 = u64::MAX;

impl UdpPort {
    /// Binds `addr` and starts receiving; an IPv6 address is bound IPv6-only, so that the
    /// IPv4 socket of the same port number can exist beside it. Call within a tokio runtime.
    pub async fn bind(addr: SocketAddr) -> io::Result<UdpPort> {
        Ok(UdpPort::new(bind_socket(addr)?))
    }

    /// Takes over a bound socket and starts receiving. Call within a tokio runtime.
    pub fn new(socket: UdpSocket) -> UdpPort {
        match super::rcvbuf::enlarge(&socket, super::rcvbuf::WANTED) {
            Ok(granted) if granted < super::rcvbuf::WANTED => small_buffer(granted),
            Ok(_) => {}
            Err(e) => tracing::debug!("cannot enlarge the UDP receive buffer: {e}"),
        }
        let socket = Arc::new(socket);
        let routes = Routes::default();
        let (reader, reader_rx) = watch::channel(None);
        tokio::spawn(receive(socket.clone(), routes.clone(), reader_rx));
        UdpPort {
            inner: Arc::new(Inner {
                socket,
                routes,
                next_channel: Default::default(),
                reader,
                reader_id: AtomicU64::new(NO_READER),
            }),
        }
    }

    /// Datagrams the kernel dropped on this port (its receive buffer was full); `None` where
    /// the kernel does not say. Each one a uTP peer sent slows that peer down.
    pub fn drops(&self) -> Option<u64> {
        super::rcvbuf::drops(&*self.inner.socket)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.socket.local_addr()
    }

    /// The datagrams of `protocol` from now on, and a way to send; replaces an earlier
    /// channel of the same protocol, which then receives nothing more.
    pub fn channel(&self, protocol: Protocol) -> Channel {
        let capacity = match protocol {
            Protocol::Dht => DHT_QUEUE,
            Protocol::Utp => UTP_QUEUE,
        };
        let (tx, rx) = mpsc::channel(capacity);
        let id = (self.inner.next_channel).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&self.inner.routes)[protocol.slot()] = Some((id, tx));
        Channel {
            port: self.clone(),
            protocol,
            id,
            rx: Mutex::new(rx),
            batch: Mutex::new(None),
        }
    }

    /// Like [`UdpPort::channel`], but the channel reads the socket itself while it lives
    /// (the module doc says why): only [`Channel::poll_recv_from`] receives from the socket,
    /// so its owner must keep polling that for the other protocols to receive. Replaces an
    /// earlier reader.
    pub fn reader(&self, protocol: Protocol) -> Channel {
        let channel = self.channel(protocol);
        self.inner.reader_id.store(channel.id, Ordering::Release);
        self.inner.reader.send_replace(Some(channel.id));
        channel
    }
}

impl std::fmt::Debug for UdpPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpPort")
            .field("local_addr", &self.local_addr().ok())
            .finish_non_exhaustive()
    }
}

/// One protocol's side of the port: its datagrams in, anything out.
pub struct Channel {
    port: UdpPort,
    protocol: Protocol,
    id: u64,
    /// Locked only within a poll, never across an `.await`; one reader at a time in practice.
    rx: Mutex<mpsc::Receiver<Datagram>>,
    /// A reader's slots for [`Channel::poll_recv_batch`], made on its first call; locked as
    /// `rx` is.
    batch: Mutex<Option<RecvBatch>>,
}

impl Channel {
    /// The next datagram of this protocol.
    pub async fn recv(&self) -> io::Result<Datagram> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<io::Result<Datagram>> {
        match ready!(lock(&self.rx).poll_recv(cx)) {
            Some(d) => Poll::Ready(Ok(d)),
            None => Poll::Ready(Err(io::Error::other("UDP port closed"))),
        }
    }

    /// The next datagram of this protocol, copied into `buf` (cut to its length); a reader
    /// ([`UdpPort::reader`]) takes it from the socket, passing on the others' datagrams.
    pub fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        if self.port.inner.reader_id.load(Ordering::Acquire) != self.id {
            return self.poll_queued(cx, buf);
        }
        let socket = &self.port.inner.socket;
        for _ in 0..READER_BUDGET {
            let mut read = ReadBuf::new(buf);
            let from = match socket.poll_recv_from(cx, &mut read) {
                // The queue is looked at once the socket is dry (it holds what the receive task
                // took before this reader, at most one datagram after), so that the queue's lock
                // is not taken per datagram.
                Poll::Pending => return self.poll_queued(cx, buf),
                Poll::Ready(Ok(from)) => from,
                // An ICMP error for an earlier send ("port unreachable" and the like): it is
                // reported once; the socket goes on.
                Poll::Ready(Err(e)) => {
                    tracing::trace!("UDP receive: {e}");
                    continue;
                }
            };
            let packet = read.filled();
            if classify(packet) == Some(self.protocol) {
                return Poll::Ready(Ok((packet.len(), from)));
            }
            route(&self.port.inner.routes, packet, from);
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Up to `max` (at least 1) datagrams of this protocol, each handed to `on`: ready with
    /// how many, or pending when none waits. A reader ([`UdpPort::reader`]) takes them from
    /// the socket several to a system call (`recvmmsg`), passing on the others' datagrams.
    pub fn poll_recv_batch(
        &self,
        cx: &mut Context<'_>,
        max: usize,
        on: &mut dyn FnMut(Bytes, SocketAddr),
    ) -> Poll<io::Result<usize>> {
        let max = max.max(1);
        if self.port.inner.reader_id.load(Ordering::Acquire) != self.id {
            return self.poll_queued_batch(cx, max, 0, on);
        }
        let socket = &self.port.inner.socket;
        let mut batch = lock(&self.batch);
        let batch = batch.get_or_insert_with(RecvBatch::new);
        let mut handed = 0;
        for _ in 0..READER_BUDGET {
            match socket.poll_recv_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // Dry: the queue's turn (see `poll_recv_from`).
                Poll::Pending => return self.poll_queued_batch(cx, max, handed, on),
            }
            // Once a call empties the socket, the next `poll_recv_ready` registers the waker
            // without a system call.
            let n = match batch.recv(socket, max - handed) {
                Ok(n) => n,
                // Readiness was cleared: the next `poll_recv_ready` registers the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // An ICMP error for an earlier send, as in `poll_recv_from`.
                Err(e) => {
                    tracing::trace!("UDP receive: {e}");
                    continue;
                }
            };
            for (packet, from) in (0..n).filter_map(|i| batch.take(i)) {
                if classify(&packet) == Some(self.protocol) {
                    on(packet, from);
                    handed += 1;
                } else {
                    route(&self.port.inner.routes, &packet, from);
                }
            }
            if handed == max {
                break;
            }
        }
        if handed > 0 {
            return Poll::Ready(Ok(handed));
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// What [`Channel::poll_recv_batch`] hands from the queue, `handed` already handed.
    fn poll_queued_batch(
        &self,
        cx: &mut Context<'_>,
        max: usize,
        mut handed: usize,
        on: &mut dyn FnMut(Bytes, SocketAddr),
    ) -> Poll<io::Result<usize>> {
        let mut rx = lock(&self.rx);
        while handed < max {
            match rx.poll_recv(cx) {
                Poll::Ready(Some(d)) => {
                    on(d.data, d.from);
                    handed += 1;
                }
                Poll::Ready(None) if handed == 0 => {
                    return Poll::Ready(Err(io::Error::other("UDP port closed")));
                }
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        if handed == 0 {
            Poll::Pending
        } else {
            Poll::Ready(Ok(handed))
        }
    }

    /// The next queued datagram of this protocol, copied into `buf` (cut to its length).
    fn poll_queued(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<(usize, SocketAddr)>> {
        self.poll_recv(cx).map(|r| {
            r.map(|d| {
                let n = d.data.len().min(buf.len());
                buf[..n].copy_from_slice(&d.data[..n]);
                (n, d.from)
            })
        })
    }

    /// Like `UdpSocket::recv_from`: the next datagram copied into `buf` (cut to its length).
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        poll_fn(|cx| self.poll_recv_from(cx, buf)).await
    }

    pub async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.port.inner.socket.send_to(buf, to).await
    }

    pub fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        to: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        self.port.inner.socket.poll_send_to(cx, buf, to)
    }

    /// Sends the slices as one datagram without copying them together.
    pub fn poll_send_to_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
        to: SocketAddr,
    ) -> Poll<io::Result<usize>> {
        let socket = &self.port.inner.socket;
        let to = socket2::SockAddr::from(to);
        loop {
            ready!(socket.poll_send_ready(cx))?;
            // `try_io` clears the readiness on `WouldBlock`, so the next poll really waits.
            match socket.try_io(Interest::WRITABLE, || {
                socket2::SockRef::from(&**socket).send_to_vectored(bufs, &to)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.port.local_addr()
    }

    /// The port this channel is on (to open another protocol's channel, say).
    pub fn port(&self) -> &UdpPort {
        &self.port
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        let mut routes = lock(&self.port.inner.routes);
        let slot = &mut routes[self.protocol.slot()];
        if slot.as_ref().is_some_and(|(id, _)| *id == self.id) {
            *slot = None;
        }
        drop(routes);
        (self.port.inner.reader).send_if_modified(|r| {
            let mine = *r == Some(self.id);
            if mine {
                *r = None;
                self.port
                    .inner
                    .reader_id
                    .store(NO_READER, Ordering::Release);
            }
            mine
        });
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("protocol", &self.protocol)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// A UDP socket on `addr`, IPv6-only if `addr` is IPv6.
fn bind_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// The receive task: each datagram to its protocol's queue, until the port is dropped; it
/// waits while a channel reads the socket itself.
async fn receive(socket: Arc<UdpSocket>, routes: Routes, mut reader: watch::Receiver<Option<u64>>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        if reader.borrow_and_update().is_some() {
            if reader.changed().await.is_err() {
                return;
            }
            continue;
        }
        let (len, from) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(got) => got,
                // An ICMP "port unreachable" for an earlier send: nothing to do.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => {
                    tracing::debug!("UDP receive failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            r = reader.changed() => match r {
                Ok(()) => continue,
                Err(_) => return,
            },
        };
        route(&routes, &buf[..len], from);
    }
}

/// Puts a datagram on its protocol's queue, if anyone listens and there is room.
fn route(routes: &Routes, packet: &[u8], from: SocketAddr) {
    let Some(protocol) = classify(packet) else {
        tracing::trace!(%from, len = packet.len(), "dropped a UDP datagram of no protocol we speak");
        return;
    };
    let tx = match &lock(routes)[protocol.slot()] {
        Some((_, tx)) => tx.clone(),
        None => return,
    };
    let datagram = Datagram {
        data: Bytes::copy_from_slice(packet),
        from,
    };
    if tx.try_send(datagram).is_err() {
        tracing::trace!(%from, ?protocol, "UDP queue full: datagram dropped");
    }
}
