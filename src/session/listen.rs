//! Binding what a host listens on: a TCP listener and a UDP port on each address, all with
//! one port number.
//!
//! IPv6 sockets are bound IPv6-only, so the IPv4 ones of the same number live beside them and
//! every connection keeps its family. With no address named, every IPv4 and every IPv6
//! address are bound, and IPv6 that cannot be (a machine without it, its port taken) is left
//! out with a warning: IPv4 alone still serves.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::TcpListener;

use super::SessionError;
use crate::net::udp::UdpPort;

/// Tries at a port number free for TCP and UDP on every address when any will do (port 0).
const PORT_TRIES: usize = 20;
/// Pending connections the kernel queues on each TCP listener (tokio's default).
const LISTEN_BACKLOG: i32 = 1024;
/// What a host listens on with no address given: every IPv4 address, and every IPv6 address
/// where the machine has IPv6.
const DEFAULT_LISTEN: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    IpAddr::V6(Ipv6Addr::UNSPECIFIED),
];

/// Binds a TCP listener (with `tcp`) and a UDP port (with `udp`) on each address of `ips` once
/// (none: [`DEFAULT_LISTEN`], IPv6 optional), all numbered `port` (0: one free everywhere).
/// What was bound, in the order asked.
pub(super) async fn bind_all(
    ips: &[IpAddr],
    port: u16,
    tcp: bool,
    udp: bool,
) -> Result<Vec<Bound>, SessionError> {
    let mut wanted: Vec<(IpAddr, bool)> = Vec::new();
    for ip in ips {
        if !wanted.iter().any(|(w, _)| w == ip) {
            wanted.push((*ip, false));
        }
    }
    if wanted.is_empty() {
        wanted = DEFAULT_LISTEN.map(|ip| (ip, ip.is_ipv6())).to_vec();
    }
    bind_ports(&wanted, port, tcp, udp).await
}

/// What one address got: its TCP listener and UDP port, as asked.
pub(super) struct Bound {
    /// With the port number bound.
    pub(super) addr: SocketAddr,
    pub(super) tcp: Option<TcpListener>,
    pub(super) udp: Option<UdpPort>,
}

/// Binds TCP and UDP on every address of `wanted` (each with whether it may be left out) on
/// one port number; with port 0, the number the first TCP listener picked must be free
/// everywhere else too, else another is tried.
async fn bind_ports(
    wanted: &[(IpAddr, bool)],
    port: u16,
    tcp: bool,
    want_udp: bool,
) -> Result<Vec<Bound>, SessionError> {
    let fail = |at: SocketAddr, source: io::Error| match source.kind() {
        io::ErrorKind::AddrInUse => SessionError::PortInUse { port: at.port() },
        _ => SessionError::Listen { addr: at, source },
    };
    let sockets = wanted.len() * (usize::from(tcp) + usize::from(want_udp));
    let tries = match port == 0 && sockets > 1 {
        true => PORT_TRIES,
        false => 1,
    };
    'tries: for _ in 0..tries {
        let mut bound: Vec<Bound> = Vec::new();
        let mut number = port;
        for &(ip, optional) in wanted {
            let at = SocketAddr::new(ip, number);
            match bind_one(at, tcp, want_udp).await {
                Ok(b) => {
                    number = b.addr.port();
                    bound.push(b);
                }
                // The number picked is taken here: start again with another.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries > 1 => continue 'tries,
                Err(e) if optional => {
                    tracing::warn!("not listening on {at}: {e}");
                }
                Err(e) => return Err(fail(at, e)),
            }
        }
        return Ok(bound);
    }
    Err(SessionError::PortInUse { port: 0 })
}

/// Binds TCP and UDP (as asked) on `at`, with one port number.
async fn bind_one(at: SocketAddr, tcp: bool, udp: bool) -> io::Result<Bound> {
    let listener = match tcp {
        true => Some(listen_tcp(at)?),
        false => None,
    };
    let at = match &listener {
        Some(l) => l.local_addr()?,
        None => at,
    };
    let udp = match udp {
        true => Some(UdpPort::bind(at).await?),
        false => None,
    };
    let addr = match (&listener, &udp) {
        (None, Some(u)) => u.local_addr()?,
        _ => at,
    };
    Ok(Bound {
        addr,
        tcp: listener,
        udp,
    })
}

/// A TCP listener on `at`, IPv6-only if `at` is IPv6 (so the IPv4 listener of the same number
/// can exist beside it), with the address reuse tokio's own `bind` sets.
fn listen_tcp(at: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(at),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if at.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&at.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(bound: &[Bound]) -> Vec<SocketAddr> {
        bound.iter().map(|b| b.addr).collect()
    }

    #[tokio::test]
    async fn by_default_every_address_of_both_families_on_one_number() {
        let bound = bind_all(&[], 0, true, true).await.unwrap();
        let port = bound[0].addr.port();
        assert_eq!(
            addrs(&bound),
            [
                SocketAddr::from(([0, 0, 0, 0], port)),
                SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)
            ]
        );
        for b in &bound {
            assert_eq!(b.tcp.as_ref().unwrap().local_addr().unwrap(), b.addr);
            assert_eq!(b.udp.as_ref().unwrap().local_addr().unwrap(), b.addr);
        }
    }

    #[tokio::test]
    async fn named_addresses_are_bound_each_once_and_one_in_use_fails() {
        let ips: Vec<IpAddr> = vec![
            "::1".parse().unwrap(),
            "127.0.0.1".parse().unwrap(),
            "::1".parse().unwrap(),
        ];
        let bound = bind_all(&ips, 0, true, true).await.unwrap();
        let port = bound[0].addr.port();
        assert_eq!(
            addrs(&bound),
            [
                SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
                SocketAddr::from(([127, 0, 0, 1], port))
            ]
        );
        // A named address is no optional default: a port taken there is an error.
        let again = bind_all(&ips[..1], port, true, false).await;
        assert!(
            matches!(again, Err(SessionError::PortInUse { port: p }) if p == port),
            "{:?}",
            again.err().map(|e| e.to_string())
        );
    }

    /// Where IPv6 cannot be bound (here: its port taken; on a machine without IPv6, the
    /// socket refused), the default listens on IPv4 alone rather than failing.
    #[tokio::test]
    async fn the_default_does_without_ipv6_that_cannot_be_bound() {
        let taken = listen_tcp("[::]:0".parse().unwrap()).unwrap();
        let port = taken.local_addr().unwrap().port();
        let bound = bind_all(&[], port, true, true).await.expect("IPv4 alone");
        assert_eq!(addrs(&bound), [SocketAddr::from(([0, 0, 0, 0], port))]);
    }
}
