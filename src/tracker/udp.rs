//! UDP tracker announces (BEP 15): connect for a connection id, then announce with it.
//!
//! Every reply is checked for its transaction id (packets carrying another one are strays and
//! ignored) and its action; an error action becomes [`TrackerError::Failure`].
//!
//! A tracker answers with peers of the family it is reached over (6-byte IPv4 entries, or
//! 18-byte IPv6 ones over IPv6): one with addresses of both families is announced to over
//! each we listen on (`families.rs`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout_at};
use url::{Host, Url};

use super::clients::Clients;
use super::families::{self, announce_both};
use super::reply::compact_peers;
use super::types::{AnnounceRequest, AnnounceResponse, Event, TrackerError, clamp_interval};

pub(super) const PROTOCOL_ID: u64 = 0x0417_2710_1980;
pub(super) const ACTION_CONNECT: u32 = 0;
pub(super) const ACTION_ANNOUNCE: u32 = 1;
pub(super) const ACTION_ERROR: u32 = 3;

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

/// Large enough for any sane peer list (a 1500-byte MTU holds ~240 IPv4 peers).
const RECV_BUF: usize = 64 * 1024;

pub(super) async fn announce(
    url: &Url,
    req: &AnnounceRequest,
    clients: &Clients,
) -> Result<AnnounceResponse, TrackerError> {
    let port = url
        .port()
        .ok_or_else(|| TrackerError::InvalidUrl(format!("{url}: UDP tracker URL has no port")))?;
    let addrs = match url.host() {
        Some(Host::Ipv4(ip)) => vec![(ip, port).into()],
        Some(Host::Ipv6(ip)) => vec![(ip, port).into()],
        Some(Host::Domain(host)) => families::resolve(clients, host, port).await?,
        None => return Err(TrackerError::InvalidUrl(format!("{url}: no host"))),
    };
    match req.families.pick(&addrs)[..] {
        [addr] => announce_to(addr, req, clients).await,
        [v4, v6] => {
            announce_both(announce_to(v4, req, clients), announce_to(v6, req, clients)).await
        }
        _ => Err(TrackerError::Resolve(url.to_string())),
    }
}

/// One announce to `addr`, over its family.
pub(super) async fn announce_to(
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
pub(super) fn is_reply_to(pkt: &[u8], tid: u32, action: u32) -> Result<bool, TrackerError> {
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
pub(super) fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(super) fn connect_request(tid: u32) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&PROTOCOL_ID.to_be_bytes());
    p[8..12].copy_from_slice(&ACTION_CONNECT.to_be_bytes());
    p[12..].copy_from_slice(&tid.to_be_bytes());
    p
}

/// The connection id of a connect reply already checked by `is_reply_to`.
pub(super) fn parse_connect(pkt: &[u8]) -> Result<u64, TrackerError> {
    let id = pkt
        .get(8..16)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .ok_or_else(|| TrackerError::Malformed("short UDP connect reply".into()))?;
    Ok(u64::from_be_bytes(id))
}

pub(super) fn announce_request(conn_id: u64, tid: u32, req: &AnnounceRequest) -> [u8; 98] {
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
pub(super) fn parse_announce(pkt: &[u8], ipv6: bool) -> Result<AnnounceResponse, TrackerError> {
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
