//! HTTP(S) tracker announces: the BEP 3 request URL, and the GET whose body `reply` decodes.

use std::net::SocketAddr;

use url::Url;

use super::clients::Clients;
use super::families::{self, announce_both};
use super::plain::{self, MAX_REPLY};
use super::reply::parse_reply;
use super::types::{AnnounceRequest, AnnounceResponse, Event, TrackerError};
use crate::net::Family;

/// Announces to the tracker at `base`: a host name over each family we listen on that it has
/// an address of (see `families.rs`), an IP address as it is.
pub(super) async fn announce_by_family(
    clients: &Clients,
    base: &Url,
    req: &AnnounceRequest,
) -> Result<AnnounceResponse, TrackerError> {
    let port = base.port_or_known_default().unwrap_or(80);
    let host = match base.host() {
        Some(url::Host::Domain(host)) => host,
        Some(url::Host::Ipv4(ip)) => {
            return announce(clients, vec![SocketAddr::from((ip, port))], None, base, req).await;
        }
        Some(url::Host::Ipv6(ip)) => {
            return announce(clients, vec![SocketAddr::from((ip, port))], None, base, req).await;
        }
        None => return Err(TrackerError::InvalidUrl(format!("{base}: no host"))),
    };
    let addrs = families::resolve(clients, host, port).await?;
    let over = |f: Family| {
        let of_f = addrs
            .iter()
            .filter(|a| Family::of(a) == f)
            .copied()
            .collect();
        announce(clients, of_f, Some(f), base, req)
    };
    match req.families.pick(&addrs)[..] {
        [a] => over(Family::of(&a)).await,
        [_, _] => announce_both(over(Family::V4), over(Family::V6)).await,
        _ => Err(TrackerError::Resolve(host.to_string())),
    }
}

/// One announce. http:// goes by a plain GET to `addrs` (the tracker's, of one family or as
/// given); https://, an http:// tracker that redirects, and every announce when the
/// environment names an HTTP proxy, by reqwest, which resolves the host itself, over
/// `family` only if one is given.
pub(super) async fn announce(
    clients: &Clients,
    addrs: Vec<SocketAddr>,
    family: Option<Family>,
    base: &Url,
    req: &AnnounceRequest,
) -> Result<AnnounceResponse, TrackerError> {
    let url = announce_url(base, req);
    if base.scheme() == "http" && !plain::proxied() {
        let parsed = Url::parse(&url).map_err(|e| TrackerError::InvalidUrl(format!("{e}")))?;
        match plain::get(&parsed, &addrs).await? {
            plain::Got::Reply(status, body) => return judge(status.as_u16(), &body),
            plain::Got::Redirect => tracing::debug!(tracker = %base, "redirected; following"),
        }
    }
    let client = clients.reqwest(family).await?;
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
    judge(status.as_u16(), &body)
}

/// The announce's answer from the reply's status and body.
fn judge(status: u16, body: &[u8]) -> Result<AnnounceResponse, TrackerError> {
    if !(200..300).contains(&status) {
        // Some trackers explain a refusal with an error status; their reason helps the user
        // more than the bare number.
        return Err(match parse_reply(body) {
            Err(TrackerError::Failure(reason)) => TrackerError::Failure(reason),
            _ => TrackerError::Http(status),
        });
    }
    parse_reply(body)
}

fn request_error(e: reqwest::Error) -> TrackerError {
    if e.is_timeout() {
        return TrackerError::Timeout;
    }
    TrackerError::Request(plain::with_causes(&e.without_url()))
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
