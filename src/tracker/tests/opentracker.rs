//! Against the real thing: Debian's opentracker, which serves only whitelisted info-hashes.
//! Fails (does not skip) when /usr/bin/opentracker is missing.

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::tracker::{AnnounceRequest, Clients, Event, MIN_INTERVAL, TrackerError, announce};

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
        families: crate::tracker::Families::BOTH,
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
    let clients = Clients::new();
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
