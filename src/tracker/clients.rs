//! What all announces of a process share: the HTTP clients and the UDP connection ids.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use super::types::TrackerError;
use crate::net::Family;

/// How long a UDP connection id may be reused (BEP 15: one minute after receiving it).
const UDP_CONNECTION_TTL: Duration = Duration::from_secs(60);

/// State shared by all announces of a process: the HTTP clients (connection pool, TLS setup)
/// and the UDP connection ids.
#[derive(Debug)]
pub struct Clients {
    pub(super) http: reqwest::Client,
    /// The same, resolving host names to one family's addresses only (IPv4, IPv6): to reach
    /// a tracker over each family.
    http_over: [reqwest::Client; 2],
    /// Host names resolved to these addresses instead of by the system (tests).
    pub(super) hosts: HashMap<String, Vec<IpAddr>>,
    /// Guards each tracker's UDP connection id and when it came; never held across `.await`.
    udp_connections: Mutex<HashMap<SocketAddr, (u64, Instant)>>,
}

impl Clients {
    pub fn new() -> Result<Self, TrackerError> {
        Self::with_hosts(HashMap::new())
    }

    /// The process's one set, built at its first use and then shared by every announcer: each
    /// HTTP client holds a TLS context with the system's root certificates, too much to build
    /// per torrent (and again at each wake) in a library of a thousand; and a tracker's UDP
    /// connection id serves all torrents announced to it.
    pub fn shared() -> Result<Arc<Clients>, TrackerError> {
        static SHARED: OnceLock<Arc<Clients>> = OnceLock::new();
        if let Some(c) = SHARED.get() {
            return Ok(c.clone());
        }
        let built = Arc::new(Self::new()?);
        Ok(SHARED.get_or_init(|| built).clone())
    }

    /// [`Clients::new`] with `hosts` resolved to the addresses given.
    pub(super) fn with_hosts(hosts: HashMap<String, Vec<IpAddr>>) -> Result<Self, TrackerError> {
        let over = |family: Family| {
            let mut b = http_builder()?.dns_resolver(Arc::new(OneFamily(family)));
            for (name, ips) in &hosts {
                let addrs: Vec<SocketAddr> = (ips.iter())
                    .filter(|ip| Family::of_ip(**ip) == family)
                    .map(|ip| SocketAddr::new(*ip, 0))
                    .collect();
                b = b.resolve_to_addrs(name, &addrs);
            }
            build(b)
        };
        Ok(Self {
            http: build(http_builder()?)?,
            http_over: [over(Family::V4)?, over(Family::V6)?],
            hosts,
            udp_connections: Mutex::new(HashMap::new()),
        })
    }

    /// The HTTP client that reaches host names over `family` only.
    pub(super) fn http_over(&self, family: Family) -> &reqwest::Client {
        &self.http_over[family.index()]
    }

    /// The connection id for `addr` if it is still within its lifetime.
    pub(super) fn udp_connection(&self, addr: SocketAddr) -> Option<u64> {
        let map = crate::sync::lock(&self.udp_connections);
        map.get(&addr)
            .filter(|(_, at)| at.elapsed() < UDP_CONNECTION_TTL)
            .map(|(id, _)| *id)
    }

    pub(super) fn set_udp_connection(&self, addr: SocketAddr, id: Option<u64>) {
        let mut map = crate::sync::lock(&self.udp_connections);
        match id {
            Some(id) => map.insert(addr, (id, Instant::now())),
            None => map.remove(&addr),
        };
    }
}

/// How every tracker HTTP client is set up.
fn http_builder() -> Result<reqwest::ClientBuilder, TrackerError> {
    let b = crate::net::tls::client_builder().map_err(TrackerError::Request)?;
    Ok(b.user_agent(concat!("btfs/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(20))
        // Announces are minutes apart and trackers (opentracker among them) close the
        // connection after each reply: a pooled connection would be stale, and reusing one
        // fails with "connection closed before message completed".
        .pool_max_idle_per_host(0))
}

fn build(b: reqwest::ClientBuilder) -> Result<reqwest::Client, TrackerError> {
    b.build()
        .map_err(|e| TrackerError::Request(format!("cannot set up HTTP client: {e}")))
}

/// The system resolver, keeping one family's addresses.
struct OneFamily(Family);

impl reqwest::dns::Resolve for OneFamily {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (family, host) = (self.0, name.as_str().to_string());
        Box::pin(async move {
            let all = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let addrs: Vec<SocketAddr> = all.filter(|a| Family::of(a) == family).collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no {family} address").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}
