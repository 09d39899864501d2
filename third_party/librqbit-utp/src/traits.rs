use std::{
    future::Future,
    net::SocketAddr,
    task::{Context, Poll},
    time::Instant,
};

use librqbit_dualstack_sockets::{PollSendToVectored, UdpSocket};

use crate::metrics::METRICS;

/// An abstraction for underlying transport. UDP is default, but can be swapped to a custom transport.
///
/// Tests use mock transport.
pub trait Transport: PollSendToVectored + Send + Sync + Unpin + 'static {
    /// The next datagram, copied into `buf` (cut to its length); when none is waiting, `cx`
    /// is woken once one is. The dispatcher takes every datagram waiting this way before it
    /// runs the streams that got them.
    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<(usize, SocketAddr)>>;

    /// Up to `max` (at least 1) of the datagrams waiting, each handed to `on` with its sender:
    /// `Ready(Ok(n))` with `n >= 1` handed, or pending once none waits (`cx` is woken once one
    /// does). A transport that can take several datagrams in one system call (`recvmmsg`)
    /// should; this default takes them one at a time with `poll_recv_from`, through `buf`,
    /// and copies each out. A packet's payload is a slice of the datagram handed over, so a
    /// transport that receives into shared buffers (and bounds what they may pin) spares the
    /// copy.
    fn poll_recv_batch(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
        max: usize,
        on: &mut dyn FnMut(bytes::Bytes, SocketAddr),
    ) -> Poll<std::io::Result<usize>> {
        let mut n = 0;
        while n < max {
            match self.poll_recv_from(cx, buf) {
                Poll::Ready(Ok((len, addr))) => {
                    on(bytes::Bytes::copy_from_slice(&buf[..len]), addr);
                    n += 1;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        if n == 0 {
            Poll::Pending
        } else {
            Poll::Ready(Ok(n))
        }
    }

    fn recv_from<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = std::io::Result<(usize, SocketAddr)>> + Send + Sync + 'a {
        std::future::poll_fn(move |cx| self.poll_recv_from(cx, buf))
    }

    fn send_to<'a>(
        &'a self,
        buf: &'a [u8],
        target: SocketAddr,
    ) -> impl Future<Output = std::io::Result<usize>> + Send + Sync + 'a;

    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<std::io::Result<usize>>;

    // The local address transport is bound to. Used only for logging.
    fn bind_addr(&self) -> SocketAddr;
}

impl Transport for UdpSocket {
    fn poll_recv_from(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<(usize, SocketAddr)>> {
        use librqbit_dualstack_sockets::addr::TryToV4;
        let mut buf = tokio::io::ReadBuf::new(buf);
        let addr = std::task::ready!(self.socket().poll_recv_from(cx, &mut buf))?;
        Poll::Ready(Ok((buf.filled().len(), addr.try_to_ipv4())))
    }

    fn send_to<'a>(
        &'a self,
        buf: &'a [u8],
        target: SocketAddr,
    ) -> impl Future<Output = std::io::Result<usize>> + Send + Sync + 'a {
        UdpSocket::send_to(self, buf, target)
    }

    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<std::io::Result<usize>> {
        let res = UdpSocket::poll_send_to(self, cx, buf, target);
        if res.is_pending() {
            METRICS.send_poll_pending.increment(1);
        }
        res
    }

    fn bind_addr(&self) -> SocketAddr {
        UdpSocket::bind_addr(self)
    }
}

// A trait for mocking stuff in tests.
pub trait UtpEnvironment: Send + Sync + Unpin + 'static {
    fn now(&self) -> Instant;
    fn copy(&self) -> Self;
    fn random_u16(&self) -> u16;
}

#[derive(Default, Clone, Copy)]
pub struct DefaultUtpEnvironment {}

impl UtpEnvironment for DefaultUtpEnvironment {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn copy(&self) -> Self {
        *self
    }

    fn random_u16(&self) -> u16 {
        rand::random()
    }
}
