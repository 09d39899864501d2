//! Trackers: one announce to one tracker URL yields peer addresses ([`announce`]), and a
//! long-lived task per torrent keeps every tracker informed ([`announcer`]).
//!
//! # Files
//! Each depends only on those listed below it.
//! - `announcer`: the task of one torrent: every tier at once, BEP 12 order, backoff. It owns
//!   the trackers' status and publishes it on a `watch` channel that `btfs status` reads.
//! - `mod.rs`: [`announce`], which picks the protocol by the URL's scheme.
//! - `udp`: BEP 15 (connect, then announce), with the connection ids kept in [`Clients`].
//! - `http`: BEP 3 requests over HTTP(S). Both reach a tracker through `families`.
//! - `plain`: an http:// announce as one GET by hyper, with no TLS context to build.
//! - `reply`: the bencoded reply of an HTTP tracker, compact (BEP 23) or dictionary peers,
//!   `peers6` (BEP 7); read with serde_bencode after `crate::bencode` checked it.
//! - `families`: over IPv4 and IPv6: the tracker's addresses of the families we listen on
//!   ([`Families`]), both announced to at once, the answers merged.
//! - `clients`: [`Clients`], what all announces share: the reqwest clients (https, redirects;
//!   built at their first use), UDP connection ids.
//! - `types`: [`AnnounceRequest`], [`AnnounceResponse`], [`TrackerError`], interval bounds,
//!   [`Families`] (which of a tracker's addresses to reach).
//! - `tests/`: dispatch and shared helpers (`mod.rs`), the announcer against scripted
//!   trackers (`announcer.rs`), HTTP requests and replies (`http.rs`, `props.rs`), UDP
//!   against a scripted tracker, over IPv4 and IPv6 (`udp.rs`), both protocols against a
//!   real opentracker (`opentracker.rs`).
//!
//! Info-hashes and peer ids are raw `[u8; 20]` so this module depends on nothing above
//! `bencode`.

pub mod announcer;
mod clients;
mod families;
mod http;
mod plain;
mod reply;
#[cfg(test)]
mod tests;
mod types;
mod udp;

pub use clients::Clients;
pub use types::{
    AnnounceRequest, AnnounceResponse, Event, Families, MAX_INTERVAL, MIN_INTERVAL, TrackerError,
};

/// Announces to one tracker, choosing the protocol by the URL's scheme.
pub async fn announce(
    url: &str,
    req: &AnnounceRequest,
    clients: &Clients,
) -> Result<AnnounceResponse, TrackerError> {
    let parsed =
        url::Url::parse(url).map_err(|e| TrackerError::InvalidUrl(format!("{url}: {e}")))?;
    match parsed.scheme() {
        "http" | "https" => http::announce_by_family(clients, &parsed, req).await,
        "udp" => udp::announce(&parsed, req, clients).await,
        other => Err(TrackerError::UnsupportedScheme(other.to_string())),
    }
}
