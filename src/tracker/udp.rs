//! UDP tracker announces (BEP 15): connect for a connection id, then announce with it.
//!
//! Every reply is checked for its transaction id (packets carrying another one are strays and
//! ignored) and its action; an error action becomes [`TrackerError::Failure`].
//!
//! A tracker answers with peers of the family it is reached over (6-byte IPv4 entries, or
//! 18-byte IPv6 ones over IPv6), and learns our address of that family only. So a tracker
//! whose host name has addresses of both families is announced to over each, at once, and
//! the peers of both answers are merged; one family failing (a machine without IPv6) leaves
//! the other's answer.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout_at};
use url::{Host, Url};

use super::clients::Clients;
use super::reply::compact_peers;
use super::types::{AnnounceRequest, AnnounceResponse, Event, TrackerError, clamp_interval};

const PROTOCOL_ID: u64 = 0x0417_2710_1980;
const ACTION_CONNECT: u32 = 0;
const ACTION_ANNOUNCE: u32 = 1;
const ACTION_ERROR: u32 = 3;

/// How long to wait for a reply before each (re)transmission. BEP 15 says 15 * 2^n seconds
/// with n up to 8 (over an hour); a streaming client needs peers now, and other trackers and
/// the DHT are tried meanwhile, so we wait 2, 4, 8, 16 s (30 s in all) and then give up with
/// `Timeout`; the announcer's backoff schedules the next try.
const RETRANSMIT_WAITS: [Duration; 4] = [
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(16),
];

/// The system resolver may retry for long; an announce should not wait on it for longer.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Large enough for any sane peer list (a 1500-byte MTU holds ~240 IPv4 peers).
const RECV_BUF: usize = 64 * 1024;

/// Once one family's tracker address answered, how long the other's answer is waited for
/// (it is not worth holding up the peers of the first for longer).
const OTHER_FAMILY_WAIT: Duration = Duration::from_secs(3);

pub(super) async fn announce(
    url: &Url,
    req: &AnnounceRequest,
    clients: &Clients,
) -> Result<AnnounceResponse, TrackerError> {
    match resolve(url).await?[..] {
        [addr] => announce_to(addr, req, clients).await,
        [v4, v6] => announce_both(v4, v6, req, clients).await,
        _ => Err(TrackerError::Resolve(url.to_string())),
    }
}

/// Announces over IPv4 to `v4` and over IPv6 to `v6` at once: the merged answers of both, or
/// one's answer if the other failed or did not come within [`OTHER_FAMILY_WAIT`] of it; if
/// both failed, the IPv4 failure.
async fn announce_both(
    v4: SocketAddr,
    v6: SocketAddr,
    req: &AnnounceRequest,
    clients: &Clients,
) -> Result<AnnounceResponse, TrackerError> {
    let (over4, over6) = (announce_to(v4, req, clients), announce_to(v6, req, clients));
    let (mut over4, mut over6) = (std::pin::pin!(over4), std::pin::pin!(over6));
    let (first, first_is_v4) = tokio::select! {
        r = &mut over4 => (r, true),
        r = &mut over6 => (r, false),
    };
    let other = match first_is_v4 {
        true => over6,
        false => over4,
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

/// One announce to `addr`, over its family.
async fn announce_to(
    addr: SocketAddr,
    req: &AnnounceRequest,
    clients: &Clients,
) -> Result<AnnounceResponse, TrackerError> {
    let bind: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    // A connected socket only receives datagrams from the tracker's address.
    sock.connect(addr).await?;
    let mut buf = vec![0u8; RECV_BUF];
    // One transaction id per request kept across retransmissions, so a late reply to an
    // earlier transmission still counts.
    let connect_tid: u32 = rand::random();
    let announce_tid: u32 = rand::random();

    for wait in RETRANSMIT_WAITS {
        let conn_id = match clients.udp_connection(addr) {
            Some(id) => id,
            None => {
                sock.send(&connect_request(connect_tid)).await?;
                let Some(n) =
                    recv_reply(&sock, &mut buf, connect_tid, ACTION_CONNECT, wait).await?
                else {
                    continue;
                };
                let id = parse_connect(&buf[..n])?;
                clients.set_udp_connection(addr, Some(id));
                id
            }
        };
        sock.send(&announce_request(conn_id, announce_tid, req))
            .await?;
        match recv_reply(&sock, &mut buf, announce_tid, ACTION_ANNOUNCE, wait).await {
            Ok(Some(n)) => return parse_announce(&buf[..n], addr.is_ipv6()),
            Ok(None) => continue,
            Err(e) => {
                // The tracker may have forgotten our connection id (restart): get a new one
                // next time.
                clients.set_udp_connection(addr, None);
                return Err(e);
            }
        }
    }
    Err(TrackerError::Timeout)
}

/// The tracker's address: the one of an IP URL, or of a host name the first of each family
/// (IPv4 first).
async fn resolve(url: &Url) -> Result<Vec<SocketAddr>, TrackerError> {
    let port = url
        .port()
        .ok_or_else(|| TrackerError::InvalidUrl(format!("{url}: UDP tracker URL has no port")))?;
    match url.host() {
        Some(Host::Ipv4(ip)) => Ok(vec![(ip, port).into()]),
        Some(Host::Ipv6(ip)) => Ok(vec![(ip, port).into()]),
        Some(Host::Domain(host)) => {
            let lookup =
                tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)));
            let addrs: Vec<SocketAddr> = lookup
                .await
                .map_err(|_| TrackerError::Resolve(format!("{host}: timed out")))?
                .map_err(|e| TrackerError::Resolve(format!("{host}: {e}")))?
                .collect();
            let v4 = addrs.iter().find(|a| a.is_ipv4());
            let v6 = addrs.iter().find(|a| a.is_ipv6());
            let both: Vec<SocketAddr> = v4.into_iter().chain(v6).copied().collect();
            match both.is_empty() {
                true => Err(TrackerError::Resolve(host.to_string())),
                false => Ok(both),
            }
        }
        None => Err(TrackerError::InvalidUrl(format!("{url}: no host"))),
    }
}

/// Waits until `wait` has passed for the reply to transaction `tid`; returns its length in
/// `buf`, or `None` on timeout. Packets of other transactions are skipped.
async fn recv_reply(
    sock: &UdpSocket,
    buf: &mut [u8],
    tid: u32,
    action: u32,
    wait: Duration,
) -> Result<Option<usize>, TrackerError> {
    let deadline = Instant::now() + wait;
    loop {
        let Ok(received) = timeout_at(deadline, sock.recv(buf)).await else {
            return Ok(None);
        };
        let n = received?;
        if is_reply_to(&buf[..n], tid, action)? {
            return Ok(Some(n));
        }
    }
}

/// `Ok(false)` for a stray packet (too short to carry a transaction id, or another one);
/// `Ok(true)` for our reply with the expected action and at least the fixed-size header.
fn is_reply_to(pkt: &[u8], tid: u32, action: u32) -> Result<bool, TrackerError> {
    if pkt.len() < 8 || be_u32(pkt, 4) != tid {
        return Ok(false);
    }
    let got = be_u32(pkt, 0);
    if got == ACTION_ERROR {
        let msg = String::from_utf8_lossy(&pkt[8..]);
        return Err(TrackerError::Failure(
            msg.trim_end_matches('\0').to_string(),
        ));
    }
    if got != action {
        return Err(TrackerError::Malformed(format!(
            "UDP reply has action {got}, expected {action}"
        )));
    }
    let need = if action == ACTION_CONNECT { 16 } else { 20 };
    if pkt.len() < need {
        return Err(TrackerError::Malformed(format!(
            "UDP reply of {} bytes, expected at least {need}",
            pkt.len()
        )));
    }
    Ok(true)
}

/// Reads a big-endian u32; callers checked the length.
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn connect_request(tid: u32) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&PROTOCOL_ID.to_be_bytes());
    p[8..12].copy_from_slice(&ACTION_CONNECT.to_be_bytes());
    p[12..].copy_from_slice(&tid.to_be_bytes());
    p
}

/// The connection id of a connect reply already checked by `is_reply_to`.
fn parse_connect(pkt: &[u8]) -> Result<u64, TrackerError> {
    let id = pkt
        .get(8..16)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .ok_or_else(|| TrackerError::Malformed("short UDP connect reply".into()))?;
    Ok(u64::from_be_bytes(id))
}

fn announce_request(conn_id: u64, tid: u32, req: &AnnounceRequest) -> [u8; 98] {
    let event: u32 = match req.event {
        Event::None => 0,
        Event::Completed => 1,
        Event::Started => 2,
        Event::Stopped => 3,
    };
    // -1 asks for the tracker's default.
    let num_want = i32::try_from(req.num_want).unwrap_or(-1);
    let mut p = [0u8; 98];
    p[..8].copy_from_slice(&conn_id.to_be_bytes());
    p[8..12].copy_from_slice(&ACTION_ANNOUNCE.to_be_bytes());
    p[12..16].copy_from_slice(&tid.to_be_bytes());
    p[16..36].copy_from_slice(&req.info_hash);
    p[36..56].copy_from_slice(&req.peer_id);
    p[56..64].copy_from_slice(&req.downloaded.to_be_bytes());
    p[64..72].copy_from_slice(&req.left.to_be_bytes());
    p[72..80].copy_from_slice(&req.uploaded.to_be_bytes());
    p[80..84].copy_from_slice(&event.to_be_bytes());
    // 84..88: IP address 0 = "use the sender's".
    p[88..92].copy_from_slice(&req.key.to_be_bytes());
    p[92..96].copy_from_slice(&num_want.to_be_bytes());
    p[96..98].copy_from_slice(&req.port.to_be_bytes());
    p
}

/// An announce reply already checked by `is_reply_to`. BEP 15: peers are IPv6 (18 bytes
/// each) exactly when the tracker was reached over IPv6.
fn parse_announce(pkt: &[u8], ipv6: bool) -> Result<AnnounceResponse, TrackerError> {
    let header = pkt
        .get(..20)
        .ok_or_else(|| TrackerError::Malformed("short UDP announce reply".into()))?;
    let peers = compact_peers(&pkt[20..], if ipv6 { 18 } else { 6 })?;
    Ok(AnnounceResponse {
        interval: clamp_interval(u64::from(be_u32(header, 8))),
        min_interval: None,
        peers,
        leechers: Some(be_u32(header, 12)),
        seeders: Some(be_u32(header, 16)),
        warning: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::tests::{Freeze, within};
    use std::sync::Arc;

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
        tokio::spawn(async move { super::super::announce(&url, &request(), &clients).await })
    }

    #[tokio::test(start_paused = true)]
    async fn retransmits_ignores_strays_and_reuses_connection_ids() {
        let _freeze = Freeze::new().await;
        let tracker = FakeTracker::new().await;
        let clients = Arc::new(Clients::new().unwrap());

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
        let clients = Arc::new(Clients::new().unwrap());

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
        let clients = Arc::new(Clients::new().unwrap());
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
        let clients = Arc::new(Clients::new().unwrap());
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
        let clients = Clients::new().unwrap();
        let url = format!("udp://127.0.0.1:{port}/announce");
        let e = within(super::super::announce(&url, &request(), &clients))
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
        let clients = Arc::new(Clients::new().unwrap());
        let task = spawn_announce(&tracker.url, &clients);
        let mut peers = vec![0x20, 0x01, 0x0d, 0xb8];
        peers.extend_from_slice(&[0; 11]);
        peers.extend_from_slice(&[1, 0x1a, 0xe1]);
        tracker.serve(3, &peers).await;
        let r = within(task).await.unwrap().unwrap();
        assert_eq!(r.peers, vec!["[2001:db8::1]:6881".parse().unwrap()]);
    }

    /// A host name with addresses of both families: announced over each, the answers merged;
    /// a family that fails leaves the other's answer.
    #[tokio::test]
    async fn both_families_of_a_tracker_are_announced_to_and_their_peers_merged() {
        let v4 = FakeTracker::on("127.0.0.1:0").await;
        let v6 = FakeTracker::on("[::1]:0").await;
        let clients = Clients::new().unwrap();
        let (a4, a6) = (v4.sock.local_addr().unwrap(), v6.sock.local_addr().unwrap());
        let req = request();
        let both = announce_both(a4, a6, &req, &clients);
        let mut peer6 = vec![0x20, 0x01, 0x0d, 0xb8];
        peer6.extend_from_slice(&[0; 11]);
        peer6.extend_from_slice(&[2, 0, 80]);
        let serve = async {
            tokio::join!(
                v4.serve(4, b"\x01\x02\x03\x04\x1a\xe1"),
                v6.serve(6, &peer6)
            )
        };
        let (r, _) = within(async { tokio::join!(both, serve) }).await;
        let mut peers = r.unwrap().peers;
        peers.sort();
        let want: Vec<SocketAddr> = vec![
            "1.2.3.4:6881".parse().unwrap(),
            "[2001:db8::2]:80".parse().unwrap(),
        ];
        assert_eq!(peers, want);

        // IPv6 unreachable (nobody on that port: refused at once): IPv4's answer alone.
        let closed6 = {
            let s = tokio::net::UdpSocket::bind("[::1]:0").await.unwrap();
            s.local_addr().unwrap()
        };
        let clients = Clients::new().unwrap();
        let both = announce_both(a4, closed6, &req, &clients);
        let serve = v4.serve(5, b"\x01\x02\x03\x05\x1a\xe1");
        let (r, ()) = within(async { tokio::join!(both, serve) }).await;
        assert_eq!(r.unwrap().peers, vec!["1.2.3.5:6881".parse().unwrap()]);
    }

    #[tokio::test]
    async fn url_without_port_fails_cleanly() {
        let clients = Clients::new().unwrap();
        let e = super::super::announce("udp://127.0.0.1/announce", &request(), &clients)
            .await
            .unwrap_err();
        assert!(matches!(e, TrackerError::InvalidUrl(_)), "{e}");
    }
}
