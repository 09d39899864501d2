//! The transports a host dials peers with, and how they race: with nothing known of the
//! address, uTP and TCP start at once, and the connection kept is the first to get through the
//! BitTorrent handshake (a transport-level connect proves little: libtorrent with TCP off
//! accepts TCP connections and resets them); the other is dropped. A peer that speaks only TCP
//! ignores a uTP SYN, so a uTP head start would delay every TCP-only peer by it. Once an address
//! is known to work over one transport (the connector's address book remembers it), that one
//! is dialled alone first, and the others join after a head start or at once when it fails, so
//! a peer that speaks both is not dialled twice. What runs over each connection (encryption,
//! the handshake) is the caller's (`dial.rs`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use super::stream::{PeerStream, Transport};
use crate::net::utp::Utp;

/// How long one transport may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A uTP SYN is not resent by the crate: one unanswered this long is sent again, within
/// `CONNECT_TIMEOUT`.
const UTP_SYN_WAIT: Duration = Duration::from_millis(2500);
/// How long a remembered transport has to itself before the others start too.
const HEAD_START: Duration = Duration::from_millis(500);

/// The transports sessions dial with; cheap to clone.
#[derive(Clone)]
pub(crate) struct Dialer {
    tcp: bool,
    utp: Option<Utp>,
}

impl Dialer {
    pub(crate) fn new(tcp: bool, utp: Option<Utp>) -> Self {
        Self { tcp, utp }
    }

    pub(crate) fn utp(&self) -> Option<Utp> {
        self.utp.clone()
    }

    /// The transports to try, in order: `first` if we speak it, then uTP, then TCP.
    fn order(&self, first: Option<Transport>) -> Vec<Transport> {
        let speaks = |t: &Transport| match t {
            Transport::Tcp => self.tcp,
            Transport::Utp => self.utp.is_some(),
        };
        let mut order: Vec<Transport> = first.into_iter().filter(speaks).collect();
        for t in [Transport::Utp, Transport::Tcp] {
            if speaks(&t) && !order.contains(&t) {
                order.push(t);
            }
        }
        order
    }

    /// Runs `establish` over each transport as the module doc says (`first`: the one that
    /// worked before); returns what the first to succeed yielded, with its transport, or every
    /// failure (none: no transport to dial with).
    pub(crate) async fn race<T, E, F, Fut>(
        &self,
        first: Option<Transport>,
        establish: F,
    ) -> Result<(T, Transport), Vec<E>>
    where
        F: Fn(Transport) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let attempt = |t| {
            let run = establish(t);
            Box::pin(async move { run.await.map(|v| (v, t)) })
        };
        let mut waiting = self.order(first).into_iter();
        let mut running = Vec::new();
        if first.is_none() {
            running.extend(waiting.by_ref().map(attempt));
        }
        let mut failures = Vec::new();
        let mut next_start = Instant::now() + HEAD_START;
        loop {
            if running.is_empty() {
                match waiting.next() {
                    Some(t) => running.push(attempt(t)),
                    None => return Err(failures),
                }
                next_start = Instant::now() + HEAD_START;
            }
            let more = waiting.len() > 0;
            let mut head_start = pin!(tokio::time::sleep_until(next_start));
            let event = std::future::poll_fn(|cx| {
                for (i, a) in running.iter_mut().enumerate() {
                    if let Poll::Ready(r) = a.as_mut().poll(cx) {
                        return Poll::Ready(Some((i, r)));
                    }
                }
                if more && head_start.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await;
            match event {
                Some((_, Ok(won))) => return Ok(won),
                Some((i, Err(e))) => {
                    drop(running.remove(i));
                    failures.push(e);
                }
                None => {
                    if let Some(t) = waiting.next() {
                        running.push(attempt(t));
                    }
                    next_start = Instant::now() + HEAD_START;
                }
            }
        }
    }

    /// A connection to `addr` over `t`, bounded by `CONNECT_TIMEOUT`.
    pub(crate) async fn connect(&self, t: Transport, addr: SocketAddr) -> io::Result<PeerStream> {
        let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
        match (t, &self.utp) {
            (Transport::Tcp, _) => {
                tokio::time::timeout(CONNECT_TIMEOUT, PeerStream::connect_tcp(addr))
                    .await
                    .map_err(|_| timed_out())?
            }
            (Transport::Utp, None) => Err(io::Error::other("uTP is off")),
            (Transport::Utp, Some(utp)) => {
                let deadline = Instant::now() + CONNECT_TIMEOUT;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(timed_out());
                    }
                    let syn = tokio::time::timeout(left.min(UTP_SYN_WAIT), utp.connect(addr));
                    if let Ok(r) = syn.await {
                        return r.map(PeerStream::utp);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::udp::UdpPort;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Our side of a toy handshake: say "hi", expect "ok".
    async fn hello(mut s: PeerStream) -> io::Result<PeerStream> {
        s.write_all(b"hi").await?;
        let mut got = [0u8; 2];
        s.read_exact(&mut got).await?;
        match &got {
            b"ok" => Ok(s),
            _ => Err(io::Error::other("bad answer")),
        }
    }

    /// A peer on one port number: TCP connections are accepted and dropped unanswered (as
    /// libtorrent with TCP off does); uTP ones answer the toy handshake.
    async fn utp_only_peer() -> SocketAddr {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = tcp.local_addr().unwrap();
        let port = UdpPort::bind(at).await.unwrap();
        let utp = Utp::start(&port).unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = tcp.accept().await {
                drop(s);
            }
        });
        tokio::spawn(async move {
            let _port = port;
            while let Ok((mut s, _)) = utp.accept().await {
                tokio::spawn(async move {
                    let mut got = [0u8; 2];
                    if s.read_exact(&mut got).await.is_ok() && &got == b"hi" {
                        let _ = s.write_all(b"ok").await;
                        let mut rest = Vec::new();
                        let _ = s.read_to_end(&mut rest).await;
                    }
                });
            }
        });
        at
    }

    /// Connects over `t` and runs the toy handshake.
    async fn establish(d: &Dialer, t: Transport, addr: SocketAddr) -> io::Result<PeerStream> {
        hello(d.connect(t, addr).await?).await
    }

    async fn dialer() -> (Dialer, UdpPort) {
        let port = UdpPort::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        (Dialer::new(true, Some(Utp::start(&port).unwrap())), port)
    }

    #[tokio::test]
    async fn the_transport_kept_is_the_one_that_gets_through_the_handshake() {
        let peer = utp_only_peer().await;
        let (dialer, _port) = dialer().await;
        for first in [None, Some(Transport::Tcp), Some(Transport::Utp)] {
            let race = dialer.race(first, |t| establish(&dialer, t, peer));
            let (stream, transport) = tokio::time::timeout(Duration::from_secs(20), race)
                .await
                .expect("hang")
                .unwrap_or_else(|e| panic!("first {first:?}: {e:?}"));
            assert_eq!(transport, Transport::Utp, "first {first:?}");
            assert_eq!(stream.transport(), Transport::Utp);
        }
    }

    #[tokio::test]
    async fn without_utp_a_utp_only_peer_fails_with_the_tcp_failure_alone() {
        let peer = utp_only_peer().await;
        let tcp_only = Dialer::new(true, None);
        let race = tcp_only.race(Some(Transport::Utp), |t| establish(&tcp_only, t, peer));
        let failures = tokio::time::timeout(Duration::from_secs(20), race)
            .await
            .expect("hang")
            .err()
            .expect("no transport gets through");
        assert_eq!(failures.len(), 1, "TCP alone was tried: {failures:?}");
    }

    #[tokio::test]
    async fn the_remembered_transport_goes_first_then_utp_then_tcp() {
        use Transport::{Tcp, Utp};
        let (both, _port) = dialer().await;
        assert_eq!(both.order(None), vec![Utp, Tcp]);
        assert_eq!(both.order(Some(Tcp)), vec![Tcp, Utp]);
        assert_eq!(both.order(Some(Utp)), vec![Utp, Tcp]);
        assert_eq!(Dialer::new(true, None).order(Some(Utp)), vec![Tcp]);
        assert_eq!(
            Dialer::new(false, both.utp.clone()).order(Some(Tcp)),
            vec![Utp]
        );
    }
}
