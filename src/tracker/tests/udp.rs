//! UDP announces (BEP 15) against a scripted tracker on loopback: packets byte for byte,
//! retransmission, strays, connection ids, errors, and IPv6 (a tracker reached over IPv6, and
//! one reached over both families).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::{Freeze, within};
use crate::tracker::udp::*;
use crate::tracker::{AnnounceRequest, AnnounceResponse, Clients, Event, Families, TrackerError};

fn request() -> AnnounceRequest {
    AnnounceRequest {
        info_hash: [0xaa; 20],
        peer_id: [0xbb; 20],
        port: 0x1ae1,
        uploaded: 3,
        downloaded: 2,
        left: 1,
        event: Event::Started,
        num_want: u32::MAX,
        key: 0x0102_0304,
        families: Families::BOTH,
    }
}

#[test]
fn encodes_connect_and_announce_packets() {
    assert_eq!(
        connect_request(0x1122_3344),
        *b"\x00\x00\x04\x17\x27\x10\x19\x80\x00\x00\x00\x00\x11\x22\x33\x44"
    );
    let p = announce_request(0x0102_0304_0506_0708, 9, &request());
    let mut want = Vec::new();
    want.extend_from_slice(b"\x01\x02\x03\x04\x05\x06\x07\x08\0\0\0\x01\0\0\0\x09");
    want.extend_from_slice(&[0xaa; 20]);
    want.extend_from_slice(&[0xbb; 20]);
    want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2]); // downloaded
    want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]); // left
    want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3]); // uploaded
    want.extend_from_slice(&[0, 0, 0, 2]); // started
    want.extend_from_slice(&[0, 0, 0, 0]); // ip
    want.extend_from_slice(&[1, 2, 3, 4]); // key
    want.extend_from_slice(&[0xff; 4]); // num_want -1
    want.extend_from_slice(&[0x1a, 0xe1]);
    assert_eq!(p.to_vec(), want);
    for (event, code) in [
        (Event::None, 0),
        (Event::Completed, 1),
        (Event::Started, 2),
        (Event::Stopped, 3),
    ] {
        let req = AnnounceRequest {
            event,
            num_want: 50,
            ..request()
        };
        let p = announce_request(1, 1, &req);
        assert_eq!(be_u32(&p, 80), code);
        assert_eq!(be_u32(&p, 92), 50);
    }
}

#[test]
fn decodes_replies() {
    let connect = b"\0\0\0\0\0\0\0\x07\x01\x02\x03\x04\x05\x06\x07\x08";
    assert!(is_reply_to(connect, 7, ACTION_CONNECT).unwrap());
    assert_eq!(parse_connect(connect).unwrap(), 0x0102_0304_0506_0708);

    let announce = b"\0\0\0\x01\0\0\0\x07\0\0\x07\x08\0\0\0\x02\0\0\0\x05\
                     \x01\x02\x03\x04\x1a\xe1\x0a\0\0\x01\0\x50";
    assert!(is_reply_to(announce, 7, ACTION_ANNOUNCE).unwrap());
    let r = parse_announce(announce, false).unwrap();
    assert_eq!(r.interval, Duration::from_secs(1800));
    assert_eq!((r.leechers, r.seeders), (Some(2), Some(5)));
    let want: Vec<SocketAddr> = vec![
        "1.2.3.4:6881".parse().unwrap(),
        "10.0.0.1:80".parse().unwrap(),
    ];
    assert_eq!(r.peers, want);
    // The same 12 peer bytes are not a whole IPv6 entry.
    assert!(matches!(
        parse_announce(announce, true),
        Err(TrackerError::Malformed(_))
    ));
}

#[test]
fn classifies_stray_error_and_short_replies() {
    // Too short to carry a transaction id, or another transaction's: ignored.
    assert!(!is_reply_to(b"\0\0\0\0\0\0\0", 7, ACTION_CONNECT).unwrap());
    assert!(!is_reply_to(b"\0\0\0\0\0\0\0\x08\0\0\0\0\0\0\0\0", 7, ACTION_CONNECT).unwrap());
    let err = is_reply_to(b"\0\0\0\x03\0\0\0\x07banned\0", 7, ACTION_ANNOUNCE).unwrap_err();
    assert!(
        matches!(&err, TrackerError::Failure(m) if m == "banned"),
        "{err}"
    );
    let short = [
        (&b"\0\0\0\0\0\0\0\x07\0\0\0"[..], ACTION_CONNECT),
        (
            &b"\0\0\0\x01\0\0\0\x07\0\0\x07\x08\0\0\0\x02\0\0\0"[..],
            ACTION_ANNOUNCE,
        ),
        (&b"\0\0\0\x01\0\0\0\x07\0\0\0\0\0\0\0\0"[..], ACTION_CONNECT), // wrong action
    ];
    for (pkt, action) in short {
        assert!(matches!(
            is_reply_to(pkt, 7, action),
            Err(TrackerError::Malformed(_))
        ));
    }
}

/// A scripted tracker: the test reads each datagram and decides what to send back.
/// While the `Freeze` guard lives, paused time does not auto-advance, so a real socket
/// can wait for I/O without the client's retransmit timers firing on their own.
struct FakeTracker {
    sock: tokio::net::UdpSocket,
    url: String,
}

impl FakeTracker {
    async fn new() -> Self {
        Self::on("127.0.0.1:0").await
    }

    async fn on(addr: &str) -> Self {
        let sock = tokio::net::UdpSocket::bind(addr).await.unwrap();
        let url = format!("udp://{}/announce", sock.local_addr().unwrap());
        Self { sock, url }
    }

    /// Answers one whole announce (connect, then announce) with `peers`.
    async fn serve(&self, conn_id: u64, peers: &[u8]) {
        self.accept_connect(conn_id).await;
        let (p, from) = self.recv_announce(conn_id).await;
        self.send(&announce_reply(be_u32(&p, 12), peers), from)
            .await;
    }

    async fn recv(&self) -> (Vec<u8>, SocketAddr) {
        let mut buf = [0u8; 2048];
        let (n, from) = within(self.sock.recv_from(&mut buf)).await.unwrap();
        (buf[..n].to_vec(), from)
    }

    /// Receives a connect request and answers it with `conn_id`; returns the tid.
    async fn accept_connect(&self, conn_id: u64) -> u32 {
        let (p, from) = self.recv().await;
        assert_eq!(p.len(), 16);
        assert_eq!(&p[..12], &connect_request(0)[..12], "not a connect request");
        let tid = be_u32(&p, 12);
        self.send(&connect_reply(tid, conn_id), from).await;
        tid
    }

    /// Receives an announce and checks its connection id; returns the packet.
    async fn recv_announce(&self, conn_id: u64) -> (Vec<u8>, SocketAddr) {
        let (p, from) = self.recv().await;
        assert_eq!(p.len(), 98, "not an announce: {p:?}");
        assert_eq!(p[..8], conn_id.to_be_bytes());
        assert_eq!(be_u32(&p, 8), ACTION_ANNOUNCE);
        (p, from)
    }

    async fn send(&self, pkt: &[u8], to: SocketAddr) {
        self.sock.send_to(pkt, to).await.unwrap();
    }
}

fn connect_reply(tid: u32, conn_id: u64) -> Vec<u8> {
    let mut r = vec![0, 0, 0, 0];
    r.extend_from_slice(&tid.to_be_bytes());
    r.extend_from_slice(&conn_id.to_be_bytes());
    r
}

fn announce_reply(tid: u32, peers: &[u8]) -> Vec<u8> {
    let mut r = vec![0, 0, 0, 1];
    r.extend_from_slice(&tid.to_be_bytes());
    r.extend_from_slice(&[0, 0, 0x07, 0x08, 0, 0, 0, 1, 0, 0, 0, 2]);
    r.extend_from_slice(peers);
    r
}

fn spawn_announce(
    url: &str,
    clients: &Arc<Clients>,
) -> tokio::task::JoinHandle<Result<AnnounceResponse, TrackerError>> {
    let (url, clients) = (url.to_string(), clients.clone());
    tokio::spawn(async move { crate::tracker::announce(&url, &request(), &clients).await })
}

#[tokio::test(start_paused = true)]
async fn retransmits_ignores_strays_and_reuses_connection_ids() {
    let _freeze = Freeze::new().await;
    let tracker = FakeTracker::new().await;
    let clients = Arc::new(Clients::new());

    let task = spawn_announce(&tracker.url, &clients);
    // The first connect request is lost: the client sends it again after 2 s.
    let (first, _) = tracker.recv().await;
    tokio::time::advance(Duration::from_secs(2)).await;
    let (again, from) = tracker.recv().await;
    assert_eq!(first, again, "a retransmission repeats the request");
    let tid = be_u32(&again, 12);
    // A reply to another transaction is ignored, the right one accepted.
    tracker.send(&connect_reply(tid ^ 1, 666), from).await;
    tracker.send(&connect_reply(tid, 77), from).await;
    let (p, from) = tracker.recv_announce(77).await;
    assert_eq!(p[16..98], announce_request(77, 0, &request())[16..98]);
    let tid = be_u32(&p, 12);
    tracker.send(&announce_reply(tid ^ 1, &[9; 6]), from).await;
    tracker
        .send(&announce_reply(tid, b"\x01\x02\x03\x04\x1a\xe1"), from)
        .await;
    let r = task.await.unwrap().unwrap();
    assert_eq!(r.peers, vec!["1.2.3.4:6881".parse::<SocketAddr>().unwrap()]);
    assert_eq!((r.leechers, r.seeders), (Some(1), Some(2)));

    // Within a minute the connection id is reused: the next packet is an announce.
    tokio::time::advance(Duration::from_secs(59)).await;
    let task = spawn_announce(&tracker.url, &clients);
    let (p, from) = tracker.recv_announce(77).await;
    tracker
        .send(&announce_reply(be_u32(&p, 12), &[]), from)
        .await;
    assert!(task.await.unwrap().unwrap().peers.is_empty());

    // After it the client connects again.
    tokio::time::advance(Duration::from_secs(1)).await;
    let task = spawn_announce(&tracker.url, &clients);
    tracker.accept_connect(78).await;
    let (p, from) = tracker.recv_announce(78).await;
    tracker
        .send(&announce_reply(be_u32(&p, 12), &[]), from)
        .await;
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn error_action_is_a_failure_and_forgets_the_connection() {
    let _freeze = Freeze::new().await;
    let tracker = FakeTracker::new().await;
    let clients = Arc::new(Clients::new());

    let task = spawn_announce(&tracker.url, &clients);
    tracker.accept_connect(5).await;
    let (p, from) = tracker.recv_announce(5).await;
    let mut err = vec![0, 0, 0, 3];
    err.extend_from_slice(&p[12..16]);
    err.extend_from_slice(b"torrent not registered");
    tracker.send(&err, from).await;
    let e = task.await.unwrap().unwrap_err();
    assert!(
        matches!(&e, TrackerError::Failure(m) if m == "torrent not registered"),
        "{e}"
    );

    // The next announce starts with a fresh connect.
    let task = spawn_announce(&tracker.url, &clients);
    tracker.accept_connect(6).await;
    let (p, from) = tracker.recv_announce(6).await;
    tracker
        .send(&announce_reply(be_u32(&p, 12), &[]), from)
        .await;
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_the_last_retransmission() {
    let _freeze = Freeze::new().await;
    let tracker = FakeTracker::new().await;
    let clients = Arc::new(Clients::new());
    let task = spawn_announce(&tracker.url, &clients);
    for wait in [2, 4, 8, 16] {
        let (p, _) = tracker.recv().await;
        assert_eq!(be_u32(&p, 8), ACTION_CONNECT);
        tokio::time::advance(Duration::from_secs(wait)).await;
    }
    assert!(matches!(
        within(task).await.unwrap(),
        Err(TrackerError::Timeout)
    ));
}

#[tokio::test]
async fn short_reply_to_our_transaction_is_malformed() {
    let tracker = FakeTracker::new().await;
    let clients = Arc::new(Clients::new());
    // Also resolves a host name (from /etc/hosts; its IPv6 address, if any, is nobody's).
    let port = tracker.sock.local_addr().unwrap().port();
    let task = spawn_announce(&format!("udp://localhost:{port}"), &clients);
    let (p, from) = tracker.recv().await;
    tracker
        .send(&connect_reply(be_u32(&p, 12), 1)[..12], from)
        .await;
    assert!(matches!(
        task.await.unwrap(),
        Err(TrackerError::Malformed(_))
    ));
}

#[tokio::test]
async fn closed_port_fails_at_once() {
    // The ICMP port-unreachable reaches the connected socket as an error: no need to
    // wait for the retransmissions.
    let port = {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.local_addr().unwrap().port()
    };
    let clients = Clients::new();
    let url = format!("udp://127.0.0.1:{port}/announce");
    let e = within(crate::tracker::announce(&url, &request(), &clients))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, TrackerError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused),
        "{e}"
    );
}

/// BEP 15 over IPv6: a tracker reached over IPv6 answers with 18-byte IPv6 peers.
#[tokio::test]
async fn a_tracker_reached_over_ipv6_answers_with_ipv6_peers() {
    let tracker = FakeTracker::on("[::1]:0").await;
    let clients = Arc::new(Clients::new());
    let task = spawn_announce(&tracker.url, &clients);
    let mut peers = vec![0x20, 0x01, 0x0d, 0xb8];
    peers.extend_from_slice(&[0; 11]);
    peers.extend_from_slice(&[1, 0x1a, 0xe1]);
    tracker.serve(3, &peers).await;
    let r = within(task).await.unwrap().unwrap();
    assert_eq!(r.peers, vec!["[2001:db8::1]:6881".parse().unwrap()]);
}

/// A host name with addresses of both families: announced to over each, the answers merged;
/// listening on IPv4 alone, over IPv4 alone; a family that fails leaves the other's answer.
#[tokio::test]
async fn both_families_of_a_tracker_are_announced_to_and_their_peers_merged() {
    let v4 = FakeTracker::on("127.0.0.1:0").await;
    let port = v4.sock.local_addr().unwrap().port();
    let v6 = FakeTracker::on(&format!("[::1]:{port}")).await;
    let hosts = HashMap::from([(
        "tracker.test".to_string(),
        vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(Ipv6Addr::LOCALHOST),
        ],
    )]);
    let url = format!("udp://tracker.test:{port}/announce");
    let announce = |req: AnnounceRequest| {
        let (url, clients) = (url.clone(), Clients::with_hosts(hosts.clone()));
        tokio::spawn(async move { crate::tracker::announce(&url, &req, &clients).await })
    };
    let mut peer6 = vec![0x20, 0x01, 0x0d, 0xb8];
    peer6.extend_from_slice(&[0; 11]);
    peer6.extend_from_slice(&[2, 0, 80]);

    let task = announce(request());
    tokio::join!(
        v4.serve(4, b"\x01\x02\x03\x04\x1a\xe1"),
        v6.serve(6, &peer6)
    );
    let mut peers = within(task).await.unwrap().unwrap().peers;
    peers.sort();
    let want: Vec<SocketAddr> = vec![
        "1.2.3.4:6881".parse().unwrap(),
        "[2001:db8::2]:80".parse().unwrap(),
    ];
    assert_eq!(peers, want);

    let v4_only = AnnounceRequest {
        families: Families {
            v4: true,
            v6: false,
        },
        ..request()
    };
    let task = announce(v4_only);
    v4.serve(5, b"\x01\x02\x03\x05\x1a\xe1").await;
    let r = within(task).await.unwrap().unwrap();
    assert_eq!(r.peers, vec!["1.2.3.5:6881".parse().unwrap()]);
    let mut buf = [0u8; 64];
    assert!(
        v6.sock.try_recv_from(&mut buf).is_err(),
        "nothing was sent over IPv6"
    );

    // Nobody on the IPv6 port (refused at once): IPv4's answer alone.
    drop(v6);
    let task = announce(request());
    v4.serve(7, b"\x01\x02\x03\x07\x1a\xe1").await;
    let r = within(task).await.unwrap().unwrap();
    assert_eq!(r.peers, vec!["1.2.3.7:6881".parse().unwrap()]);
}

#[tokio::test]
async fn url_without_port_fails_cleanly() {
    let clients = Clients::new();
    let e = crate::tracker::announce("udp://127.0.0.1/announce", &request(), &clients)
        .await
        .unwrap_err();
    assert!(matches!(e, TrackerError::InvalidUrl(_)), "{e}");
}

#[tokio::test]
async fn the_announcers_of_two_torrents_share_a_trackers_connection_id() {
    use crate::tracker::announcer::{self, AnnounceParams, Progress};
    let tracker = FakeTracker::new().await;
    let start = |hash: u8| {
        let (peers_tx, peers_rx) = tokio::sync::mpsc::channel(4);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (handle, _status) = announcer::spawn(
            vec![vec![tracker.url.clone()]],
            AnnounceParams::new([hash; 20], [0xbb; 20], 6881),
            Arc::new(Progress::default),
            peers_tx,
            Arc::default(),
            stop_rx,
        );
        (handle, peers_rx, stop)
    };
    let first = start(1);
    tracker.serve(77, b"\x01\x02\x03\x04\x1a\xe1").await;
    // Another torrent's announcer reuses the connection id the first one got: its first
    // packet is an announce, not a connect (one set of tracker clients per process).
    let second = start(2);
    let (p, from) = tracker.recv_announce(77).await;
    assert_eq!(p[16..36], [2; 20], "the second torrent's info-hash");
    tracker
        .send(&announce_reply(be_u32(&p, 12), &[]), from)
        .await;
    first.0.abort();
    second.0.abort();
}
