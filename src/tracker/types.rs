//! What one announce says and what comes back, over either protocol, and how it fails.

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

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
