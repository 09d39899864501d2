//! The sockets: one per address family, on port 6771 beside other clients' (address reuse:
//! libtorrent and Transmission bind it too), joined to the group on each interface we
//! announce on, and sending there one interface at a time.
//!
//! Which interfaces: those of the listen address. A specific address names one (the one
//! holding it); the unspecified address means every interface that is up and does multicast,
//! as libtorrent does, so that a machine on two networks is found on both.
//!
//! Announces go one hop only (TTL 1): a peer found by LSD must be reachable directly, and
//! the groups' scopes are wider than the local network.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use nix::ifaddrs::getifaddrs;
use nix::net::if_::{InterfaceFlags, if_nametoindex};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::UdpSocket;

use super::LsdError;
use super::message::{GROUP_V4, GROUP_V6, HOST_V4, HOST_V6};

/// Where a datagram leaves: an interface by its IPv4 address, or its IPv6 index.
#[derive(Clone, Copy, Debug)]
enum Via {
    V4(Ipv4Addr),
    V6(u32),
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Via::V4(a) => write!(f, "the interface of {a}"),
            Via::V6(index) => write!(f, "interface #{index}"),
        }
    }
}

/// A socket and the group it announces to.
pub(crate) struct Channel {
    pub(crate) socket: Arc<UdpSocket>,
    /// The `Host` header of announces sent here.
    pub(crate) host: &'static str,
    group: SocketAddr,
    /// The interfaces joined; empty: a plain destination (tests' stand-in for a group).
    via: Vec<Via>,
}

impl Channel {
    /// The IPv4 group on the interfaces of `listen`.
    pub(crate) fn v4(listen: Ipv4Addr) -> Result<Channel, LsdError> {
        let interfaces = if listen.is_unspecified() {
            up_interfaces(|a| match a {
                IpAddr::V4(v4) => Some(Via::V4(v4)),
                IpAddr::V6(_) => None,
            })?
        } else {
            vec![Via::V4(listen)]
        };
        let IpAddr::V4(group) = GROUP_V4.ip() else {
            unreachable!("GROUP_V4 is IPv4")
        };
        let socket = bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, GROUP_V4.port())))?;
        socket
            .set_multicast_loop_v4(true)
            .map_err(LsdError::Socket)?;
        socket.set_multicast_ttl_v4(1).map_err(LsdError::Socket)?;
        let via = join(&interfaces, |v| match v {
            Via::V4(a) => socket.join_multicast_v4(&group, &a),
            Via::V6(_) => Ok(()),
        })?;
        Channel::new(socket, HOST_V4, GROUP_V4, via)
    }

    /// The IPv6 group on the interfaces of `listen`.
    pub(crate) fn v6(listen: Ipv6Addr) -> Result<Channel, LsdError> {
        let interfaces = up_interfaces(|a| match a {
            IpAddr::V6(v6) if listen.is_unspecified() || v6 == listen => Some(Via::V6(0)),
            _ => None,
        })?;
        let IpAddr::V6(group) = GROUP_V6.ip() else {
            unreachable!("GROUP_V6 is IPv6")
        };
        let socket = bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, GROUP_V6.port())))?;
        socket
            .set_multicast_loop_v6(true)
            .map_err(LsdError::Socket)?;
        socket.set_multicast_hops_v6(1).map_err(LsdError::Socket)?;
        let via = join(&interfaces, |v| match v {
            Via::V6(index) => socket.join_multicast_v6(&group, index),
            Via::V4(_) => Ok(()),
        })?;
        Channel::new(socket, HOST_V6, GROUP_V6, via)
    }

    /// A socket on `bind` that sends to the unicast `to`: the group's stand-in in tests,
    /// where traffic must stay on loopback.
    #[cfg(test)]
    pub(crate) fn unicast(bind: SocketAddr, to: SocketAddr) -> io::Result<Channel> {
        let socket = std::net::UdpSocket::bind(bind)?;
        socket.set_nonblocking(true)?;
        Ok(Channel {
            socket: Arc::new(UdpSocket::from_std(socket)?),
            host: HOST_V4,
            group: to,
            via: Vec::new(),
        })
    }

    fn new(
        socket: Socket,
        host: &'static str,
        group: SocketAddr,
        via: Vec<Via>,
    ) -> Result<Channel, LsdError> {
        let socket = UdpSocket::from_std(socket.into()).map_err(LsdError::Socket)?;
        Ok(Channel {
            socket: Arc::new(socket),
            host,
            group,
            via,
        })
    }

    /// Sends `datagram` to the group on every interface joined; says how many took it.
    pub(crate) async fn send(&self, datagram: &[u8]) -> usize {
        if self.via.is_empty() {
            return usize::from(self.send_one(datagram).await);
        }
        let mut sent = 0;
        for &via in &self.via {
            let sock = SockRef::from(&*self.socket);
            let chosen = match via {
                Via::V4(a) => sock.set_multicast_if_v4(&a),
                Via::V6(index) => sock.set_multicast_if_v6(index),
            };
            if let Err(e) = chosen {
                tracing::debug!("LSD: cannot send on {via}: {e}");
                continue;
            }
            sent += usize::from(self.send_one(datagram).await);
        }
        sent
    }

    async fn send_one(&self, datagram: &[u8]) -> bool {
        match self.socket.send_to(datagram, self.group).await {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(group = %self.group, "LSD: announce not sent: {e}");
                false
            }
        }
    }
}

/// A UDP socket on `addr` that other processes may bind too.
fn bind(addr: SocketAddr) -> Result<Socket, LsdError> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(LsdError::Socket)?;
    let setup = || -> io::Result<()> {
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)
    };
    setup().map_err(LsdError::Socket)?;
    socket.bind(&addr.into()).map_err(|source| LsdError::Bind {
        port: addr.port(),
        source,
    })?;
    Ok(socket)
}

/// Joins on each interface; an interface that refuses is skipped, unless every one does.
fn join(
    interfaces: &[Via],
    mut join_one: impl FnMut(Via) -> io::Result<()>,
) -> Result<Vec<Via>, LsdError> {
    let mut joined = Vec::new();
    let mut last = None;
    for &via in interfaces {
        match join_one(via) {
            Ok(()) => joined.push(via),
            Err(e) => {
                tracing::debug!("LSD: cannot join the group on {via}: {e}");
                last = Some((via, e));
            }
        }
    }
    match (joined.is_empty(), last) {
        (true, Some((via, source))) => Err(LsdError::Join {
            interface: via.to_string(),
            source,
        }),
        (true, None) => Err(LsdError::NoInterface),
        (false, _) => Ok(joined),
    }
}

/// One [`Via`] per interface that is up, does multicast and has an address `pick` takes
/// (for IPv6 the interface's index is filled in here).
fn up_interfaces(pick: impl Fn(IpAddr) -> Option<Via>) -> Result<Vec<Via>, LsdError> {
    let wanted = InterfaceFlags::IFF_UP | InterfaceFlags::IFF_MULTICAST;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for ifa in getifaddrs().map_err(|e| LsdError::Interfaces(e.into()))? {
        if !ifa.flags.contains(wanted) {
            continue;
        }
        let Some(addr) = ifa.address.as_ref() else {
            continue;
        };
        let ip = match (addr.as_sockaddr_in(), addr.as_sockaddr_in6()) {
            (Some(v4), _) => IpAddr::V4(v4.ip()),
            (_, Some(v6)) => IpAddr::V6(v6.ip()),
            _ => continue,
        };
        let via = match pick(ip) {
            Some(Via::V6(_)) => match if_nametoindex(ifa.interface_name.as_str()) {
                Ok(index) => Via::V6(index),
                Err(_) => continue,
            },
            Some(v4) => v4,
            None => continue,
        };
        // One address per interface and family: joining twice on one fails.
        if seen.insert((ifa.interface_name.clone(), ip.is_ipv4())) {
            out.push(via);
        }
    }
    Ok(out)
}
