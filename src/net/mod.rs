//! The process's UDP port and what runs on it: [`udp`] owns the socket and hands each
//! datagram to its protocol (the DHT or uTP); [`utp`] is uTP (BEP 29) on it. Below both the
//! DHT and the session, knowing neither. `rcvbuf`: the UDP port's kernel receive buffer, its
//! size and its drops. [`tls`]: the TLS context the HTTP clients share.
//!
//! IPv4 and IPv6 each have sockets of their own (an IPv6 socket is bound IPv6-only), so an
//! address's [`Family`] says which socket it is reached through.

mod rcvbuf;
mod recv_batch;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod udp;
pub mod utp;

use std::net::{IpAddr, SocketAddr};

/// An address family. The two live apart: their own sockets, their own DHT (BEP 32: two
/// routing tables), their own compact address formats (6 bytes and 18).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of the socket that reaches `ip`: an IPv4-mapped IPv6 address is IPv6 to a
    /// socket (canonicalise it first to reach it over IPv4).
    pub fn of_ip(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn of(addr: &SocketAddr) -> Family {
        Family::of_ip(addr.ip())
    }

    /// 0 for IPv4, 1 for IPv6: an index into per-family arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
