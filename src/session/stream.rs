//! A peer connection's bytes, whatever carries them. The peer task reads and writes through
//! two boxed halves, so a transport (TCP, uTP) or a layer over it (protocol encryption) plugs
//! in without the peer code knowing which. An encrypted stream is the halves of the stream
//! beneath, each wrapped in its direction's cipher.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::net::utp::{UtpStream, WakeThreshold};
use crate::wire::WantHint;
use crate::wire::mse::{Method, MseStream};

pub(crate) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// What carries a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Tcp,
    /// uTP (BEP 29) over the shared UDP port.
    Utp,
}

/// A connected byte stream to a peer, readable and writable as one (for the handshake) and
/// then split for the peer task's reader and writer.
pub(crate) struct PeerStream {
    read: ReadHalf,
    write: WriteHalf,
    transport: Transport,
    /// RC4 runs over it (protocol encryption); not after an MSE handshake that chose plaintext.
    encrypted: bool,
    /// uTP's: how much to queue before waking the reader (see [`PeerStream::want_hint`]).
    wake: Option<WakeThreshold>,
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
            encrypted: false,
            wake: None,
        }
    }

    /// A uTP connection: a plain byte stream like TCP, so layers over it (encryption) compose
    /// alike.
    pub(crate) fn utp(stream: UtpStream) -> Self {
        let (read, write) = stream.split();
        let wake = Some(read.wake_threshold());
        Self {
            read: Box::new(read),
            write: Box::new(write),
            transport: Transport::Utp,
            encrypted: false,
            wake,
        }
    }

    /// The stream after an MSE handshake over it, whatever carries it.
    pub(crate) fn encrypted(mse: MseStream<PeerStream>) -> Self {
        let encrypted = mse.method() == Method::Rc4;
        let transport = mse.get_ref().transport;
        // RC4 keeps lengths, so the bytes a frame lacks are the bytes the stream beneath owes.
        let wake = mse.get_ref().wake.clone();
        let (read, write) = mse.split_with(|s| (s.read, s.write));
        Self {
            read: Box::new(read),
            write: Box::new(write),
            transport,
            encrypted,
            wake,
        }
    }

    /// Dials `addr` over TCP.
    pub(crate) async fn connect_tcp(addr: SocketAddr) -> io::Result<Self> {
        TcpStream::connect(addr).await.map(Self::tcp)
    }

    /// One end of an in-memory pipe, for tests.
    #[cfg(test)]
    pub(crate) fn from_duplex(stream: tokio::io::DuplexStream) -> Self {
        let (read, write) = tokio::io::split(stream);
        Self {
            read: Box::new(read),
            write: Box::new(write),
            transport: Transport::Tcp,
            encrypted: false,
            wake: None,
        }
    }

    pub(crate) fn transport(&self) -> Transport {
        self.transport
    }

    pub(crate) fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    /// For the message reader of a uTP stream: the reader is woken once the frame it waits
    /// on can be whole, not for every few datagrams of it (a uTP packet carries about 1.4 kB,
    /// a block's message 16 kB), which at high rates saves most of the reader's wakeups. TCP's
    /// kernel already hands over large segments.
    pub(crate) fn want_hint(&self) -> Option<WantHint> {
        let wake = self.wake.clone()?;
        Some(WantHint::new(move |bytes| wake.set(bytes)))
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
