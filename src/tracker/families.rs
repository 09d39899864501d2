//! Trackers over both address families. A tracker answers with peers of the family it is
//! reached over (a UDP tracker's entries are 6 bytes over IPv4 and 18 over IPv6; an HTTP
//! tracker's `peers6` mostly comes over IPv6) and learns our address of that family only. So a
//! tracker with addresses of both is announced to over each family we listen on, at once, and
//! the answers are merged; one family failing (a machine without IPv6 routes) leaves the
//! other's answer. A tracker with no address of a family we listen on is announced to over
//! what it has: its peers are still worth dialling.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::clients::Clients;
use super::types::{AnnounceResponse, TrackerError};

/// The system resolver may retry for long; an announce should not wait on it for longer.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Once one family's announce answered, how long the other's answer is waited for (it is not
/// worth holding up the peers of the first for longer).
const OTHER_FAMILY_WAIT: Duration = Duration::from_secs(3);

/// The addresses of `host` (port `port`): the test overrides of `clients` if it has any, else
/// the system resolver's.
pub(super) async fn resolve(
    clients: &Clients,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, TrackerError> {
    if let Some(ips) = clients.hosts.get(host) {
        return Ok(ips
            .iter()
            .map(|ip: &IpAddr| SocketAddr::new(*ip, port))
            .collect());
    }
    let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)));
    let addrs: Vec<SocketAddr> = lookup
        .await
        .map_err(|_| TrackerError::Resolve(format!("{host}: timed out")))?
        .map_err(|e| TrackerError::Resolve(format!("{host}: {e}")))?
        .collect();
    match addrs.is_empty() {
        true => Err(TrackerError::Resolve(host.to_string())),
        false => Ok(addrs),
    }
}

/// Runs the announce over IPv4 and the one over IPv6 at once: the merged answers of both, or
/// one's answer if the other failed or did not come within [`OTHER_FAMILY_WAIT`] of it; if
/// both failed, the IPv4 failure.
pub(super) async fn announce_both(
    over4: impl Future<Output = Result<AnnounceResponse, TrackerError>>,
    over6: impl Future<Output = Result<AnnounceResponse, TrackerError>>,
) -> Result<AnnounceResponse, TrackerError> {
    let (mut over4, mut over6) = (std::pin::pin!(over4), std::pin::pin!(over6));
    let (first, first_is_v4) = tokio::select! {
        r = &mut over4 => (r, true),
        r = &mut over6 => (r, false),
    };
    let other = async {
        match first_is_v4 {
            true => over6.await,
            false => over4.await,
        }
    };
    match first {
        Ok(answer) => match tokio::time::timeout(OTHER_FAMILY_WAIT, other).await {
            Ok(Ok(second)) => Ok(merge(answer, second)),
            Ok(Err(e)) => {
                tracing::debug!("tracker: one family's announce failed: {e}");
                Ok(answer)
            }
            Err(_) => Ok(answer),
        },
        Err(e) => match other.await {
            Ok(answer) => {
                tracing::debug!("tracker: one family's announce failed: {e}");
                Ok(answer)
            }
            Err(other) => Err(if first_is_v4 { e } else { other }),
        },
    }
}

/// One answer from the answers of both families: the peers of both, the larger swarm counts
/// (a peer with both addresses is counted by each), the first's intervals.
fn merge(mut a: AnnounceResponse, b: AnnounceResponse) -> AnnounceResponse {
    for p in b.peers {
        if !a.peers.contains(&p) {
            a.peers.push(p);
        }
    }
    a.seeders = a.seeders.max(b.seeders);
    a.leechers = a.leechers.max(b.leechers);
    a.warning = a.warning.or(b.warning);
    a
}
