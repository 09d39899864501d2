//! Tracker tests: the dispatch by URL scheme, interval bounds and UDP connection ids; the
//! helpers for tests that drive real loopback sockets under paused time. Topic files hold the
//! rest.

mod announcer;
mod http;
mod opentracker;
mod props;
mod udp;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use super::types::clamp_interval;
use super::{AnnounceRequest, Clients, Event, MAX_INTERVAL, MIN_INTERVAL, TrackerError, announce};

/// Holds paused time still until dropped: a running `spawn_blocking` task inhibits
/// auto-advance (documented under `tokio::time::pause`), so waiting for real socket I/O
/// cannot make pending timers fire; time moves only by `tokio::time::advance`.
pub(super) struct Freeze(#[allow(dead_code)] std::sync::mpsc::Sender<()>);

impl Freeze {
    pub(super) async fn new() -> Self {
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
pub(super) async fn within<T>(fut: impl Future<Output = T>) -> T {
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
        families: crate::tracker::Families::BOTH,
    }
}

#[tokio::test]
async fn dispatch_refuses_unknown_schemes_and_bad_urls() {
    let clients = Clients::new();
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
    let clients = Clients::new();
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    clients.set_udp_connection(addr, Some(42));
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(clients.udp_connection(addr), Some(42));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(clients.udp_connection(addr), None);
}
