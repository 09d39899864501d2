//! What all announces of a process share: the reqwest clients and the UDP connection ids.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use super::types::TrackerError;
use crate::net::Family;

/// How long a UDP connection id may be reused (BEP 15: one minute after receiving it).
const UDP_CONNECTION_TTL: Duration = Duration::from_secs(60);

/// State shared by all announces of a process: the reqwest clients (connection pool, TLS
/// setup) and the UDP connection ids.
#[derive(Debug, Default)]
pub struct Clients {
    /// For https:// trackers and http:// ones that redirect (the rest go by `plain`), built
    /// at the first such announce: a TLS context costs tens of ms of CPU to build. Index 0
    /// resolves host names to any family, 1 to IPv4 only, 2 to IPv6 only (to reach a tracker
    /// over each family).
    reqwest: tokio::sync::OnceCell<[reqwest::Client; 3]>,
    /// Host names resolved to these addresses instead of by the system (tests).
    pub(super) hosts: HashMap<String, Vec<IpAddr>>,
    /// Guards each tracker's UDP connection id and when it came; never held across `.await`.
    udp_connections: Mutex<HashMap<SocketAddr, (u64, Instant)>>,
}

impl Clients {
    pub fn new() -> Self {
        Self::default()
    }

    /// The process's one set, shared by every announcer: a tracker's UDP connection id serves
    /// all torrents announced to it, and the reqwest clients, once built, serve them all.
    pub fn shared() -> Arc<Clients> {
        static SHARED: OnceLock<Arc<Clients>> = OnceLock::new();
        SHARED.get_or_init(|| Arc::new(Self::new())).clone()
    }

    /// [`Clients::new`] with `hosts` resolved to the addresses given.
    #[cfg(test)]
    pub(super) fn with_hosts(hosts: HashMap<String, Vec<IpAddr>>) -> Self {
        Self {
            reqwest: tokio::sync::OnceCell::new(),
            hosts,
            udp_connections: Mutex::new(HashMap::new()),
        }
    }

    /// The reqwest client that resolves host names to `family` only (any, if `None`); the
    /// set is built at the first call, on the blocking pool.
    pub(super) async fn reqwest(
        &self,
        family: Option<Family>,
    ) -> Result<&reqwest::Client, TrackerError> {
        let hosts = self.hosts.clone();
        let build = move || build_set(&hosts);
        let set = crate::net::tls::built_once(&self.reqwest, build, TrackerError::Request).await?;
        Ok(&set[family.map_or(0, |f| 1 + f.index())])
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

/// The three reqwest clients: any family, IPv4 only, IPv6 only; `hosts` overrides the
/// resolver in each.
fn build_set(hosts: &HashMap<String, Vec<IpAddr>>) -> Result<[reqwest::Client; 3], TrackerError> {
    let client = |family: Option<Family>| {
        let mut b = http_builder()?;
        if let Some(f) = family {
            b = b.dns_resolver(Arc::new(OneFamily(f)));
        }
        for (name, ips) in hosts {
            let addrs: Vec<SocketAddr> = (ips.iter())
                .filter(|ip| family.is_none_or(|f| Family::of_ip(**ip) == f))
                .map(|ip| SocketAddr::new(*ip, 0))
                .collect();
            b = b.resolve_to_addrs(name, &addrs);
        }
        build(b)
    };
    Ok([
        client(None)?,
        client(Some(Family::V4))?,
        client(Some(Family::V6))?,
    ])
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
