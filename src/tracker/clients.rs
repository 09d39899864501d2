//! What all announces of a process share: the HTTP client and the UDP connection ids.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::types::TrackerError;

/// How long a UDP connection id may be reused (BEP 15: one minute after receiving it).
const UDP_CONNECTION_TTL: Duration = Duration::from_secs(60);

/// State shared by all announces of a process: the HTTP client (connection pool, TLS setup)
/// and the UDP connection ids.
#[derive(Debug)]
pub struct Clients {
    pub(super) http: reqwest::Client,
    /// Guards each tracker's UDP connection id and when it came; never held across `.await`.
    udp_connections: Mutex<HashMap<SocketAddr, (u64, Instant)>>,
}

impl Clients {
    pub fn new() -> Result<Self, TrackerError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("btfs/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(20))
            // Announces are minutes apart and trackers (opentracker among them) close the
            // connection after each reply: a pooled connection would be stale, and reusing one
            // fails with "connection closed before message completed".
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| TrackerError::Request(format!("cannot set up HTTP client: {e}")))?;
        Ok(Self {
            http,
            udp_connections: Mutex::new(HashMap::new()),
        })
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
