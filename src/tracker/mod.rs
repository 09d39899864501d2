//! Trackers: one announce to one tracker URL yields peer addresses (`announce`), and a
//! long-lived task per torrent keeps every tracker informed (`announcer`).
//!
//! `http` speaks BEP 3/23/7, `udp` speaks BEP 15; both decode into the same
//! [`AnnounceResponse`]. Info-hashes and peer ids are raw `[u8; 20]` so this module depends on
//! nothing above `bencode`.

pub mod announcer;
mod http;
mod udp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use thiserror::Error;
use tokio::time::Instant;

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
fn clamp_interval(secs: u64) -> Duration {
    Duration::from_secs(secs).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

/// How long a UDP connection id may be reused (BEP 15: one minute after receiving it).
const UDP_CONNECTION_TTL: Duration = Duration::from_secs(60);

/// State shared by all announces of a process: the HTTP client (connection pool, TLS setup)
/// and the UDP connection ids.
#[derive(Debug)]
pub struct Clients {
    http: reqwest::Client,
    /// Connection id and when it was received, by tracker address. Std mutex: only held to
    /// read or write one entry, never across an `.await`.
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
    fn udp_connection(&self, addr: SocketAddr) -> Option<u64> {
        let map = self
            .udp_connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(&addr)
            .filter(|(_, at)| at.elapsed() < UDP_CONNECTION_TTL)
            .map(|(id, _)| *id)
    }

    fn set_udp_connection(&self, addr: SocketAddr, id: Option<u64>) {
        let mut map = self
            .udp_connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match id {
            Some(id) => map.insert(addr, (id, Instant::now())),
            None => map.remove(&addr),
        };
    }
}

/// Announces to one tracker, choosing the protocol by the URL's scheme.
pub async fn announce(
    url: &str,
    req: &AnnounceRequest,
    clients: &Clients,
) -> Result<AnnounceResponse, TrackerError> {
    let parsed =
        url::Url::parse(url).map_err(|e| TrackerError::InvalidUrl(format!("{url}: {e}")))?;
    match parsed.scheme() {
        "http" | "https" => http::announce(&clients.http, &parsed, req).await,
        "udp" => udp::announce(&parsed, req, clients).await,
        other => Err(TrackerError::UnsupportedScheme(other.to_string())),
    }
}

/// Helpers for tests that drive real loopback sockets under paused time.
#[cfg(test)]
pub(crate) mod testing {
    use std::future::Future;
    use std::time::Duration;

    /// Holds paused time still until dropped: a running `spawn_blocking` task inhibits
    /// auto-advance (documented under `tokio::time::pause`), so waiting for real socket I/O
    /// cannot make pending timers fire; time moves only by `tokio::time::advance`.
    pub(crate) struct Freeze(#[allow(dead_code)] std::sync::mpsc::Sender<()>);

    impl Freeze {
        pub(crate) async fn new() -> Self {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            tokio::task::spawn_blocking(move || {
                // Returns when the sender is dropped.
                let _ = rx.recv();
            });
            Self(tx)
        }
    }

    /// Awaits `fut`, panicking after 10 s of real time, so a broken test fails instead of
    /// hanging (paused time cannot time out while frozen).
    pub(crate) async fn within<T>(fut: impl Future<Output = T>) -> T {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(10));
            let _ = tx.send(());
        });
        tokio::select! {
            v = fut => v,
            _ = rx => panic!("nothing happened within 10 s of real time"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> AnnounceRequest {
        AnnounceRequest {
            info_hash: [1; 20],
            peer_id: [2; 20],
            port: 6881,
            uploaded: 0,
            downloaded: 0,
            left: 0,
            event: Event::Started,
            num_want: 50,
            key: 7,
        }
    }

    #[tokio::test]
    async fn dispatch_refuses_unknown_schemes_and_bad_urls() {
        let clients = Clients::new().unwrap();
        let err = announce("wss://tracker.example/announce", &request(), &clients)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, TrackerError::UnsupportedScheme(s) if s == "wss"),
            "{err}"
        );
        let err = announce("not a url", &request(), &clients)
            .await
            .unwrap_err();
        assert!(matches!(err, TrackerError::InvalidUrl(_)), "{err}");
    }

    #[test]
    fn intervals_are_clamped() {
        assert_eq!(clamp_interval(0), MIN_INTERVAL);
        assert_eq!(clamp_interval(1800), Duration::from_secs(1800));
        assert_eq!(clamp_interval(u64::MAX), MAX_INTERVAL);
    }

    #[tokio::test(start_paused = true)]
    async fn udp_connection_ids_expire_after_a_minute() {
        let clients = Clients::new().unwrap();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        clients.set_udp_connection(addr, Some(42));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(clients.udp_connection(addr), Some(42));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(clients.udp_connection(addr), None);
    }
}

/// Against the real thing: Debian's opentracker, which serves only whitelisted info-hashes.
/// Fails (does not skip) when /usr/bin/opentracker is missing.
#[cfg(test)]
mod opentracker_tests {
    use super::*;
    use std::io::Read;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};

    const BIN: &str = "/usr/bin/opentracker";

    /// A running opentracker on a free 127.0.0.1 port (TCP and UDP), killed on drop.
    struct OpenTracker {
        child: Child,
        dir: tempfile::TempDir,
        port: u16,
    }

    impl OpenTracker {
        fn start(whitelist: &[[u8; 20]]) -> Self {
            use std::os::unix::fs::PermissionsExt;
            assert!(
                Path::new(BIN).exists(),
                "{BIN} is missing: apt-get install opentracker"
            );
            let dir = tempfile::tempdir().unwrap();
            let hex: String = whitelist
                .iter()
                .map(|h| h.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
                .collect();
            std::fs::write(dir.path().join("whitelist"), hex).unwrap();
            // Started as root, opentracker chroots into -d and becomes -u, which must then
            // be able to read the whitelist; as another user it only changes into -d. The
            // whitelist path is relative to -d either way.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let log = std::fs::File::create(dir.path().join("log")).unwrap();
            let port = free_port().to_string();
            let child = Command::new(BIN)
                .args([
                    "-i",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-P",
                    &port,
                    "-w",
                    "whitelist",
                ])
                .arg("-d")
                .arg(dir.path())
                .args(["-u", "nobody"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            let port = port.parse().unwrap();
            Self { child, dir, port }
        }

        fn url(&self, scheme: &str) -> String {
            format!("{scheme}://127.0.0.1:{}/announce", self.port)
        }

        fn log(&self) -> String {
            let mut s = String::new();
            if let Ok(mut f) = std::fs::File::open(self.dir.path().join("log")) {
                let _ = f.read_to_string(&mut s);
            }
            s
        }

        /// Waits until the tracker answers HTTP for `hash` (it loads the whitelist after
        /// it starts listening). The probe is a `stopped` announce, so it joins no swarm.
        async fn wait_ready(&mut self, clients: &Clients, hash: [u8; 20]) {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let probe = request(hash, *b"-PROBE-probe-probe-0", 1, Event::Stopped);
            loop {
                if let Ok(Some(code)) = self.child.try_wait() {
                    panic!("opentracker exited with {code}: {}", self.log());
                }
                match announce(&self.url("http"), &probe, clients).await {
                    Ok(_) => return,
                    Err(e) if std::time::Instant::now() > deadline => {
                        panic!("opentracker not ready: {e}; log: {}", self.log())
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
    }

    impl Drop for OpenTracker {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// A port free for both TCP and UDP on 127.0.0.1 (released again for opentracker).
    fn free_port() -> u16 {
        for _ in 0..50 {
            let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = tcp.local_addr().unwrap().port();
            if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
        panic!("no port free for both TCP and UDP");
    }

    fn request(hash: [u8; 20], peer_id: [u8; 20], port: u16, event: Event) -> AnnounceRequest {
        AnnounceRequest {
            info_hash: hash,
            peer_id,
            port,
            uploaded: 0,
            downloaded: 0,
            left: 1000,
            event,
            num_want: 50,
            key: u32::from(port),
        }
    }

    fn local(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Two peers join over `scheme`, each sees the other, and one leaving is seen too.
    async fn two_peers_meet(ot: &OpenTracker, clients: &Clients, scheme: &str, hash: [u8; 20]) {
        let url = ot.url(scheme);
        let (pa, pb) = (*b"-BF0001-aaaaaaaaaaaa", *b"-BF0001-bbbbbbbbbbbb");
        let (port_a, port_b) = (40001, 40002);
        let first = announce(&url, &request(hash, pa, port_a, Event::Started), clients)
            .await
            .unwrap_or_else(|e| panic!("{scheme}: {e}; log: {}", ot.log()));
        assert!(!first.peers.contains(&local(port_b)), "{scheme}: {first:?}");
        let b = announce(&url, &request(hash, pb, port_b, Event::Started), clients)
            .await
            .unwrap();
        assert!(b.peers.contains(&local(port_a)), "{scheme}: {b:?}");
        assert!(b.interval >= MIN_INTERVAL);
        assert_eq!(b.leechers, Some(2), "{scheme}: {b:?}");
        let a = announce(&url, &request(hash, pa, port_a, Event::None), clients)
            .await
            .unwrap();
        assert!(a.peers.contains(&local(port_b)), "{scheme}: {a:?}");

        announce(&url, &request(hash, pb, port_b, Event::Stopped), clients)
            .await
            .unwrap();
        let a = announce(&url, &request(hash, pa, port_a, Event::None), clients)
            .await
            .unwrap();
        assert!(!a.peers.contains(&local(port_b)), "{scheme}: {a:?}");
        assert_eq!(a.leechers, Some(1), "{scheme}: {a:?}");
    }

    #[tokio::test]
    async fn peers_meet_over_http_and_udp_and_unlisted_hashes_are_refused() {
        let (http_hash, udp_hash) = ([0x11; 20], [0x22; 20]);
        let mut ot = OpenTracker::start(&[http_hash, udp_hash]);
        let clients = Clients::new().unwrap();
        ot.wait_ready(&clients, http_hash).await;

        two_peers_meet(&ot, &clients, "http", http_hash).await;
        two_peers_meet(&ot, &clients, "udp", udp_hash).await;

        let unlisted = request([0x33; 20], [7; 20], 40003, Event::Started);
        let e = announce(&ot.url("http"), &unlisted, &clients)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, TrackerError::Failure(m) if m.contains("not authorized")),
            "{e}"
        );
    }
}
