//! The announcer against scripted HTTP trackers, under paused time: events, tiers, backoff,
//! status and shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Freeze, within};
use crate::sync::lock;
use crate::tracker::announcer::{
    AnnounceParams, EARLY_FLOOR, NUM_WANT, Progress, RETRY_MAX, STOP_TIMEOUT, TrackerStatus,
    retry_delay, spawn_inner,
};

/// A scripted HTTP tracker: the test reads each request and decides the answer.
struct FakeHttp {
    listener: TcpListener,
    url: String,
}

impl FakeHttp {
    async fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/announce", listener.local_addr().unwrap());
        Self { listener, url }
    }

    /// The next request's query parameters (still percent-encoded), and the stream to
    /// answer on.
    async fn next(&self) -> (HashMap<String, String>, TcpStream) {
        within(async {
            let (mut s, _) = self.listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "client closed before sending a request");
                head.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8(head).unwrap();
            let target = head.split(' ').nth(1).unwrap();
            let query = target.split_once('?').unwrap().1;
            let params = query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (params, s)
        })
        .await
    }
}

async fn reply(mut s: TcpStream, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
}

fn ok_body(interval: u32, min_interval: Option<u32>, peers: &[u8]) -> Vec<u8> {
    let mut e = crate::bencode::Encoder::new();
    e.begin_dict().str("interval").int(interval.into());
    if let Some(m) = min_interval {
        e.str("min interval").int(m.into());
    }
    e.str("peers").bytes(peers).end().finish()
}

fn params() -> AnnounceParams {
    AnnounceParams {
        info_hash: *b"info-hash-info-hash!",
        peer_id: *b"-BF0001-peeridpeerid",
        port: 6881,
        key: 0x1234_5678,
        families: crate::tracker::Families::BOTH,
        num_want: 50,
    }
}

struct Harness {
    progress: Arc<Mutex<Progress>>,
    /// The session's wish for more peers.
    more: Arc<tokio::sync::Notify>,
    peers_rx: mpsc::Receiver<Vec<SocketAddr>>,
    stop: watch::Sender<bool>,
    status: watch::Receiver<Vec<TrackerStatus>>,
    handle: JoinHandle<()>,
}

fn start(tiers: Vec<Vec<String>>, left: u64) -> Harness {
    let progress = Arc::new(Mutex::new(Progress {
        left,
        ..Progress::default()
    }));
    let (peers_tx, peers_rx) = mpsc::channel(4);
    let (stop, stop_rx) = watch::channel(false);
    let p = progress.clone();
    let more: Arc<tokio::sync::Notify> = Arc::default();
    let (handle, status) = spawn_inner(
        tiers,
        params(),
        Arc::new(move || *lock(&p)),
        peers_tx,
        more.clone(),
        stop_rx,
        false,
    );
    Harness {
        progress,
        more,
        peers_rx,
        stop,
        status,
        handle,
    }
}

impl Harness {
    fn status(&self) -> Vec<TrackerStatus> {
        self.status.borrow().clone()
    }

    async fn peers(&mut self) -> Vec<SocketAddr> {
        within(self.peers_rx.recv()).await.unwrap()
    }

    /// Yields until the status satisfies `f` (the announcer runs on this thread).
    async fn wait_status(&self, f: impl Fn(&[TrackerStatus]) -> bool) {
        within(async {
            while !f(&self.status()) {
                tokio::task::yield_now().await;
            }
        })
        .await
    }
}

fn at(t: Instant, secs: u64) -> Option<std::time::Instant> {
    Some((t + Duration::from_secs(secs)).into_std())
}

const PEER_A: &[u8] = b"\x01\x02\x03\x04\x1a\xe1";
const PEER_B: &[u8] = b"\x05\x06\x07\x08\x1a\xe2";

#[tokio::test(start_paused = true)]
async fn started_reannounce_completed_and_stopped() {
    let _freeze = Freeze::new().await;
    let tracker = FakeHttp::new().await;
    let mut h = start(vec![vec![tracker.url.clone()]], 1000);
    assert_eq!(
        h.status(),
        vec![TrackerStatus {
            url: tracker.url.clone(),
            tier: 0,
            last: None,
            next_announce: None
        }]
    );

    let (q, s) = tracker.next().await;
    assert_eq!(q["event"], "started");
    assert_eq!(q["info_hash"], "info-hash-info-hash%21");
    assert_eq!(q["peer_id"], "-BF0001-peeridpeerid");
    assert_eq!((q["port"].as_str(), q["left"].as_str()), ("6881", "1000"));
    assert_eq!(
        (q["numwant"].as_str(), q["key"].as_str()),
        ("50", "12345678")
    );
    let t0 = Instant::now();
    reply(s, &ok_body(1800, Some(900), PEER_A)).await;
    assert_eq!(h.peers().await, vec!["1.2.3.4:6881".parse().unwrap()]);
    let st = h.status();
    assert_eq!(st[0].last, Some(Ok(1)));
    assert_eq!(st[0].next_announce, at(t0, 1800));

    // Finished meanwhile: the re-announce after the interval says so, once.
    *lock(&h.progress) = Progress {
        uploaded: 7,
        downloaded: 1000,
        left: 0,
    };
    tokio::time::advance(Duration::from_secs(1800)).await;
    let (q, s) = tracker.next().await;
    assert_eq!(q["event"], "completed");
    let sent = (&q["uploaded"][..], &q["downloaded"][..], &q["left"][..]);
    assert_eq!(sent, ("7", "1000", "0"));
    // min interval above interval is honoured.
    let t1 = Instant::now();
    reply(s, &ok_body(60, Some(120), PEER_B)).await;
    assert_eq!(h.peers().await, vec!["5.6.7.8:6882".parse().unwrap()]);
    assert_eq!(h.status()[0].next_announce, at(t1, 120));

    tokio::time::advance(Duration::from_secs(120)).await;
    let (q, s) = tracker.next().await;
    assert!(!q.contains_key("event"), "{q:?}");
    reply(s, &ok_body(60, None, PEER_B)).await;
    h.peers().await;

    h.stop.send(true).unwrap();
    let (q, s) = tracker.next().await;
    assert_eq!(
        (q["event"].as_str(), q["numwant"].as_str()),
        ("stopped", "0")
    );
    reply(s, &ok_body(60, None, b"")).await;
    within(h.handle).await.unwrap();
    assert_eq!(h.status.borrow()[0].next_announce, None);
}

/// A session that needs peers brings the next announce forward, as far as the tracker's
/// `min interval` (or, without one, [`EARLY_FLOOR`]) allows, and no further.
#[tokio::test(start_paused = true)]
async fn a_wish_for_peers_announces_early_within_the_trackers_minimum() {
    let _freeze = Freeze::new().await;
    let tracker = FakeHttp::new().await;
    let mut h = start(vec![vec![tracker.url.clone()]], 1000);
    let (_, s) = tracker.next().await;
    let t0 = Instant::now();
    reply(s, &ok_body(1800, Some(300), PEER_A)).await;
    h.peers().await;
    h.wait_status(|st| st[0].next_announce == at(t0, 1800))
        .await;

    tokio::time::advance(Duration::from_secs(10)).await;
    h.more.notify_waiters();
    h.wait_status(|st| st[0].next_announce == at(t0, 300)).await;
    tokio::time::advance(Duration::from_secs(289)).await;
    tokio::task::yield_now().await;
    assert_eq!(
        h.status()[0].next_announce,
        at(t0, 300),
        "not before the minimum"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    let (q, s) = tracker.next().await;
    assert!(!q.contains_key("event"), "{q:?}");
    let t1 = Instant::now();
    // Without a minimum from the tracker: no sooner than the floor after its answer.
    reply(s, &ok_body(1800, None, PEER_B)).await;
    h.peers().await;
    h.more.notify_waiters();
    let floor = EARLY_FLOOR.as_secs();
    h.wait_status(|st| st[0].next_announce == at(t1, floor))
        .await;
    tokio::time::advance(EARLY_FLOOR).await;
    let (_, s) = tracker.next().await;
    reply(s, &ok_body(1800, None, b"")).await;

    h.stop.send(true).unwrap();
    let (q, s) = tracker.next().await;
    assert_eq!(q["event"], "stopped");
    reply(s, &ok_body(60, None, b"")).await;
    within(h.handle).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn tier_falls_back_and_promotes_the_tracker_that_answered() {
    let _freeze = Freeze::new().await;
    let refused = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}/announce", l.local_addr().unwrap())
    };
    let dropper = FakeHttp::new().await;
    let good = FakeHttp::new().await;
    let tier = vec![refused.clone(), dropper.url.clone(), good.url.clone()];
    let mut h = start(vec![tier], 5);

    // The refused one fails at once; this one closes without answering.
    drop(dropper.next().await);
    let (q, s) = good.next().await;
    assert_eq!(q["event"], "started");
    let t0 = Instant::now();
    reply(s, &ok_body(1800, None, PEER_A)).await;
    h.peers().await;
    let st = h.status();
    assert!(
        matches!(&st[0].last, Some(Err(e)) if e.contains("request failed")),
        "{st:?}"
    );
    assert!(matches!(&st[1].last, Some(Err(_))), "{st:?}");
    assert_eq!(st[2].last, Some(Ok(1)));
    let next: Vec<_> = st.iter().map(|s| s.next_announce).collect();
    assert_eq!(next, vec![None, None, at(t0, 1800)]);

    // The good one is now first: had `dropper` been asked first, the announcer would
    // still be waiting for its answer and `good` would see nothing.
    tokio::time::advance(Duration::from_secs(1800)).await;
    let (q, s) = good.next().await;
    assert!(!q.contains_key("event"), "{q:?}");
    reply(s, &ok_body(1800, None, PEER_A)).await;
    h.peers().await;

    h.stop.send(true).unwrap();
    let (q, s) = good.next().await;
    assert_eq!(q["event"], "stopped");
    reply(s, &ok_body(1800, None, b"")).await;
    within(h.handle).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_and_status_shows_the_reason() {
    let _freeze = Freeze::new().await;
    let tracker = FakeHttp::new().await;
    let h = start(vec![vec![tracker.url.clone()]], 5);
    let failure = b"d14:failure reason14:not registerede";

    let mut t = Instant::now();
    // The announcer's last `next_announce`: each round waits for the announcer to move it.
    let mut last_next = None;
    for delay in [10, 20, 40] {
        let (q, s) = tracker.next().await;
        // Nobody accepted `started` yet, so it is repeated.
        assert_eq!(q["event"], "started");
        reply(s, failure).await;
        h.wait_status(|st| st[0].next_announce != last_next).await;
        let st = h.status();
        let want = "tracker refused the announce: not registered".to_string();
        assert_eq!(st[0].last, Some(Err(want)));
        assert_eq!(st[0].next_announce, at(t, delay));
        last_next = st[0].next_announce;
        tokio::time::advance(Duration::from_secs(delay)).await;
        t = Instant::now();
    }
    // Success resets the backoff and the regular interval applies.
    let (_, s) = tracker.next().await;
    reply(s, &ok_body(300, None, b"")).await;
    h.wait_status(|st| st[0].next_announce != last_next).await;
    assert_eq!(h.status()[0].last, Some(Ok(0)));
    assert_eq!(h.status()[0].next_announce, at(t, 300));
    drop(h.stop);
    let (q, s) = tracker.next().await;
    assert_eq!(q["event"], "stopped");
    reply(s, b"").await;
    within(h.handle).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn tiers_run_concurrently_and_shutdown_never_hangs() {
    let _freeze = Freeze::new().await;
    let answers = FakeHttp::new().await;
    let silent = FakeHttp::new().await;
    let mut h = start(vec![vec![silent.url.clone()], vec![answers.url.clone()]], 5);
    let st = h.status();
    assert_eq!((st[0].tier, st[1].tier), (0, 1));

    // The silent tracker never answers `started`; the other tier is not held up.
    let (_, _silent_stream) = silent.next().await;
    // Nobody listens for peers any more: the announcer must not care.
    h.peers_rx.close();
    let (_, s) = answers.next().await;
    reply(s, &ok_body(1800, None, PEER_A)).await;
    h.wait_status(|st| st[1].last.is_some()).await;

    h.stop.send(true).unwrap();
    // Both hear `stopped` (the silent one may have counted our `started`); neither answers,
    // and the announcer gives up after the stop budget.
    let (q, _answers_stream) = answers.next().await;
    assert_eq!(q["event"], "stopped");
    let (q, _silent_stream) = silent.next().await;
    assert_eq!(q["event"], "stopped");
    tokio::time::advance(STOP_TIMEOUT).await;
    within(h.handle).await.unwrap();
}

/// Shutdown while a tracker has our `started` and not yet answered: the request is dropped,
/// but the tracker may have counted us, so it is told `stopped`. A tracker whose `started`
/// failed is not.
#[tokio::test(start_paused = true)]
async fn a_started_cut_short_by_shutdown_is_followed_by_stopped() {
    let _freeze = Freeze::new().await;
    let slow = FakeHttp::new().await;
    let refusing = FakeHttp::new().await;
    let h = start(vec![vec![slow.url.clone()], vec![refusing.url.clone()]], 5);
    let (q, _slow_stream) = slow.next().await;
    assert_eq!(q["event"], "started");
    let (q, s) = refusing.next().await;
    assert_eq!(q["event"], "started");
    reply(s, b"d14:failure reason4:nopee").await;
    h.wait_status(|st| st[1].last.is_some()).await;

    h.stop.send(true).unwrap();
    let (q, s) = slow.next().await;
    assert_eq!(q["event"], "stopped");
    assert_eq!(q["numwant"], "0");
    reply(s, b"").await;
    within(h.handle).await.unwrap();
    // The refusing tracker was never owed `stopped`: no connection after its failure.
    let refused_again = tokio::time::timeout(Duration::ZERO, refusing.listener.accept()).await;
    assert!(
        refused_again.is_err(),
        "stopped sent to a tracker that refused started"
    );
}

#[test]
fn retry_delay_doubles_up_to_the_cap() {
    let secs: Vec<u64> = (0..10).map(|f| retry_delay(f).as_secs()).collect();
    assert_eq!(secs, [10, 20, 40, 80, 160, 320, 640, 1280, 1800, 1800]);
    assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
}

#[test]
fn params_new_asks_for_num_want_peers() {
    let p = AnnounceParams::new([1; 20], [2; 20], 6881);
    assert_eq!(
        (p.info_hash, p.peer_id, p.port, p.num_want),
        ([1; 20], [2; 20], 6881, NUM_WANT)
    );
}
