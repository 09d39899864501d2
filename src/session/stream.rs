//! A peer connection's bytes, whatever carries them. The peer task reads and writes through
//! two boxed halves, so a transport (TCP, uTP) or a layer over it (protocol encryption) plugs
//! in without the peer code knowing which.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::net::utp::UtpStream;

pub(crate) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// What carries a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Tcp,
    /// uTP (BEP 29) over the shared UDP port.
    Utp,
}

impl Transport {
    fn slot(self) -> usize {
        match self {
            Transport::Tcp => 0,
            Transport::Utp => 1,
        }
    }
}

/// Connected peers by transport, for the status; each connection counts while its
/// [`Counted`] guard lives.
#[derive(Debug, Default)]
pub(crate) struct Connections([AtomicUsize; 2]);

impl Connections {
    pub(crate) fn count(&self, transport: Transport) -> Counted<'_> {
        self.0[transport.slot()].fetch_add(1, Ordering::Relaxed);
        Counted(&self.0[transport.slot()])
    }

    pub(crate) fn get(&self, transport: Transport) -> usize {
        self.0[transport.slot()].load(Ordering::Relaxed)
    }
}

pub(crate) struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connected byte stream to a peer, readable and writable as one (for the handshake) and
/// then split for the peer task's reader and writer.
pub(crate) struct PeerStream {
    read: ReadHalf,
    write: WriteHalf,
    transport: Transport,
}

impl PeerStream {
    /// A TCP connection: Nagle off (requests are small and latency matters), and split
    /// without a lock between the halves.
    pub(crate) fn tcp(stream: TcpStream) -> Self {
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        Self {
            read: Box::new(read),
            write: Box::new(write),
            transport: Transport::Tcp,
        }
    }

    /// Dials `addr` over TCP.
    pub(crate) async fn connect_tcp(addr: SocketAddr) -> io::Result<Self> {
        TcpStream::connect(addr).await.map(Self::tcp)
    }

    /// A uTP connection: a plain byte stream like TCP, so layers over it compose alike.
    pub(crate) fn utp(stream: UtpStream) -> Self {
        let (read, write) = stream.split();
        Self {
            read: Box::new(read),
            write: Box::new(write),
            transport: Transport::Utp,
        }
    }

    pub(crate) fn transport(&self) -> Transport {
        self.transport
    }

    pub(crate) fn into_halves(self) -> (ReadHalf, WriteHalf) {
        (self.read, self.write)
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_shutdown(cx)
    }
}
