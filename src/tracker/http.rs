//! HTTP(S) tracker announces: BEP 3 request, compact (BEP 23) and dictionary peer lists,
//! IPv6 peers in `peers6` (BEP 7).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use url::Url;

use super::types::{
    AnnounceRequest, AnnounceResponse, Event, MAX_INTERVAL, TrackerError, clamp_interval,
};
use crate::bencode::{self, Value};

/// Tracker replies are a few kilobytes; anything this large is not a tracker reply.
pub(super) const MAX_REPLY: usize = 1 << 20;

pub(super) async fn announce(
    client: &reqwest::Client,
    base: &Url,
    req: &AnnounceRequest,
) -> Result<AnnounceResponse, TrackerError> {
    let url = announce_url(base, req);
    let mut resp = client.get(&url).send().await.map_err(request_error)?;
    let status = resp.status();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(request_error)? {
        if body.len() + chunk.len() > MAX_REPLY {
            return Err(TrackerError::Malformed(format!(
                "reply larger than {MAX_REPLY} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        // Some trackers explain a refusal with an error status; their reason helps the user
        // more than the bare number.
        return Err(match parse_reply(&body) {
            Err(TrackerError::Failure(reason)) => TrackerError::Failure(reason),
            _ => TrackerError::Http(status.as_u16()),
        });
    }
    parse_reply(&body)
}

fn request_error(e: reqwest::Error) -> TrackerError {
    if e.is_timeout() {
        return TrackerError::Timeout;
    }
    // reqwest's own message is generic ("error sending request"); the cause is in the chain.
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    TrackerError::Request(text)
}

/// The tracker URL with the announce parameters appended to its query (it may already carry
/// one, e.g. a passkey).
pub(super) fn announce_url(base: &Url, req: &AnnounceRequest) -> String {
    let mut base = base.clone();
    base.set_fragment(None);
    let mut url = base.to_string();
    match base.query() {
        None => url.push('?'),
        Some(q) if q.is_empty() || q.ends_with('&') => {}
        Some(_) => url.push('&'),
    }
    url.push_str("info_hash=");
    percent_encode(&req.info_hash, &mut url);
    url.push_str("&peer_id=");
    percent_encode(&req.peer_id, &mut url);
    url.push_str(&format!(
        "&port={}&uploaded={}&downloaded={}&left={}&compact=1",
        req.port, req.uploaded, req.downloaded, req.left
    ));
    if req.num_want != u32::MAX {
        url.push_str(&format!("&numwant={}", req.num_want));
    }
    url.push_str(&format!("&key={:08x}", req.key));
    let event = match req.event {
        Event::None => None,
        Event::Started => Some("started"),
        Event::Completed => Some("completed"),
        Event::Stopped => Some("stopped"),
    };
    if let Some(event) = event {
        url.push_str("&event=");
        url.push_str(event);
    }
    url
}

/// Percent-encodes every byte that is not an RFC 3986 unreserved character.
pub(super) fn percent_encode(bytes: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

fn malformed(what: impl Into<String>) -> TrackerError {
    TrackerError::Malformed(what.into())
}

/// Decodes a tracker reply body.
pub(super) fn parse_reply(body: &[u8]) -> Result<AnnounceResponse, TrackerError> {
    // Tolerate trailing bytes (some trackers end the body with a newline).
    let (value, _) =
        bencode::decode_prefix(body).map_err(|e| malformed(format!("not bencode ({e})")))?;
    let dict = value
        .as_dict()
        .ok_or_else(|| malformed("reply is not a dictionary"))?;
    if let Some(reason) = dict.get("failure reason") {
        let reason = reason
            .as_bytes()
            .ok_or_else(|| malformed("'failure reason' is not a string"))?;
        return Err(TrackerError::Failure(
            String::from_utf8_lossy(reason).into_owned(),
        ));
    }
    let interval = dict
        .get("interval")
        .ok_or_else(|| malformed("no 'interval'"))?
        .as_int()
        .and_then(|i| u64::try_from(i).ok())
        .ok_or_else(|| malformed("'interval' is not a non-negative integer"))?;
    let min_interval = dict
        .get("min interval")
        .and_then(Value::as_int)
        .and_then(|i| u64::try_from(i).ok())
        .map(|s| Duration::from_secs(s).min(MAX_INTERVAL));
    let count = |key| {
        dict.get(key)
            .and_then(Value::as_int)
            .and_then(|i| u32::try_from(i).ok())
    };
    let mut peers = match dict.get("peers") {
        None => Vec::new(),
        Some(Value::Bytes(b)) => compact_peers(b, 6)?,
        Some(Value::List(list)) => list.iter().filter_map(dict_peer).collect(),
        Some(_) => return Err(malformed("'peers' is neither a string nor a list")),
    };
    match dict.get("peers6") {
        None => {}
        Some(Value::Bytes(b)) => peers.extend(compact_peers(b, 18)?),
        Some(_) => return Err(malformed("'peers6' is not a string")),
    }
    Ok(AnnounceResponse {
        interval: clamp_interval(interval),
        min_interval,
        peers,
        seeders: count("complete"),
        leechers: count("incomplete"),
        warning: dict
            .get("warning message")
            .and_then(Value::as_bytes)
            .map(|w| String::from_utf8_lossy(w).into_owned()),
    })
}

/// Compact peers: 4-byte IPv4 (entry size 6) or 16-byte IPv6 (entry size 18) address, then
/// the port, big-endian. Port 0 entries are dropped: nobody listens there.
pub(super) fn compact_peers(bytes: &[u8], entry: usize) -> Result<Vec<SocketAddr>, TrackerError> {
    if !bytes.len().is_multiple_of(entry) {
        return Err(malformed(format!(
            "compact peer list of {} bytes is not a multiple of {entry}",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(entry)
        .filter_map(|c| {
            let (ip, port) = c.split_at(entry - 2);
            let port = u16::from_be_bytes([port[0], port[1]]);
            let addr = match <[u8; 4]>::try_from(ip) {
                Ok(v4) => SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(v4), port)),
                Err(_) => {
                    let v6 = <[u8; 16]>::try_from(ip).ok()?;
                    SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(v6), port, 0, 0))
                }
            };
            (port != 0).then_some(addr)
        })
        .collect())
}

/// One `{ip, port}` dictionary of a non-compact reply; `None` for anything unusable
/// (a host name, a bad address or port).
fn dict_peer(v: &Value<'_>) -> Option<SocketAddr> {
    let ip: IpAddr = v.get("ip")?.as_str()?.parse().ok()?;
    let port = u16::try_from(v.get("port")?.as_int()?).ok()?;
    (port != 0).then_some(SocketAddr::new(ip, port))
}
