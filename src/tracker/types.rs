//! What one announce says and what comes back, over either protocol, and how it fails.

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

use crate::net::Family;

/// The `event` of an announce (BEP 3); `None` is a regular re-announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    None,
    Started,
    Completed,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceRequest {
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
    pub event: Event,
    /// Peers wanted; `u32::MAX` leaves it to the tracker (no `numwant`, or -1 over UDP).
    pub num_want: u32,
    pub key: u32,
    /// The families we listen on: a tracker is announced to over each of them it has an
    /// address of (see `families.rs`).
    pub families: Families,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceResponse {
    /// Already clamped to [`MIN_INTERVAL`, `MAX_INTERVAL`].
    pub interval: Duration,
    pub min_interval: Option<Duration>,
    pub peers: Vec<SocketAddr>,
    pub seeders: Option<u32>,
    pub leechers: Option<u32>,
    pub warning: Option<String>,
}

#[derive(Debug, Error)]
pub enum TrackerError {
    #[error("tracker answered HTTP status {0}")]
    Http(u16),
    #[error("tracker request failed: {0}")]
    Request(String),
    #[error("tracker refused the announce: {0}")]
    Failure(String),
    #[error("tracker sent a malformed reply: {0}")]
    Malformed(String),
    #[error("tracker did not answer in time")]
    Timeout,
    #[error("unsupported tracker URL scheme {0:?} (use http, https or udp)")]
    UnsupportedScheme(String),
    #[error("invalid tracker URL: {0}")]
    InvalidUrl(String),
    #[error("cannot resolve tracker host {0}")]
    Resolve(String),
    #[error("tracker network error: {0}")]
    Io(#[from] std::io::Error),
}

/// A tracker asking for less than this is ignored: a misconfigured tracker must not make us
/// hammer it (or it us).
pub const MIN_INTERVAL: Duration = Duration::from_secs(30);
/// A tracker asking for more than this is ignored, so a bogus value cannot starve us of peers.
pub const MAX_INTERVAL: Duration = Duration::from_secs(2 * 60 * 60);

/// Tracker-given seconds as a re-announce interval, clamped to something sane.
pub(super) fn clamp_interval(secs: u64) -> Duration {
    Duration::from_secs(secs).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

/// The families we listen on, so can be reached over; they pick which of a tracker's
/// addresses are announced to (`families.rs` does the announcing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Families {
    pub v4: bool,
    pub v6: bool,
}

impl Families {
    pub const BOTH: Families = Families { v4: true, v6: true };

    /// The families of the addresses listened on.
    pub fn of(listening: &[SocketAddr]) -> Families {
        Families {
            v4: listening.iter().any(|a| a.is_ipv4()),
            v6: listening.iter().any(|a| a.is_ipv6()),
        }
    }

    fn has(self, family: Family) -> bool {
        match family {
            Family::V4 => self.v4,
            Family::V6 => self.v6,
        }
    }

    /// Of a tracker's addresses, the first of each family we listen on (IPv4 first); if it
    /// has none of those, the first of each it has.
    pub(super) fn pick(self, addrs: &[SocketAddr]) -> Vec<SocketAddr> {
        let first = |f: Family| addrs.iter().copied().find(|a| Family::of(a) == f);
        let ours: Vec<SocketAddr> = (Family::ALL.into_iter())
            .filter(|f| self.has(*f))
            .filter_map(first)
            .collect();
        match ours.is_empty() {
            true => Family::ALL.into_iter().filter_map(first).collect(),
            false => ours,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tracker_is_reached_over_the_families_we_listen_on_else_over_what_it_has() {
        let a4: SocketAddr = "192.0.2.1:80".parse().unwrap();
        let b4: SocketAddr = "192.0.2.2:80".parse().unwrap();
        let a6: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
        let both = [a6, a4, b4];
        assert_eq!(
            Families::BOTH.pick(&both),
            [a4, a6],
            "first of each, IPv4 first"
        );
        let v4_only = Families::of(&["0.0.0.0:1".parse().unwrap()]);
        assert_eq!(
            v4_only,
            Families {
                v4: true,
                v6: false
            }
        );
        assert_eq!(v4_only.pick(&both), [a4]);
        let v6_only = Families::of(&["[::]:1".parse().unwrap()]);
        assert_eq!(v6_only.pick(&both), [a6]);
        assert_eq!(v6_only.pick(&[a4, b4]), [a4], "an IPv4-only tracker still");
        assert_eq!(Families::BOTH.pick(&[]), Vec::<SocketAddr>::new());
    }
}
