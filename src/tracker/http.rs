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
const MAX_REPLY: usize = 1 << 20;

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
fn percent_encode(bytes: &[u8], out: &mut String) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bencode::Encoder;

    fn request(event: Event) -> AnnounceRequest {
        AnnounceRequest {
            info_hash: *b"\x00\x01 ~-._%&=+\xff\x80abcZ09/",
            peer_id: *b"-BT0001-abcdefghijkl",
            port: 6881,
            uploaded: 1,
            downloaded: 2,
            left: 3,
            event,
            num_want: 50,
            key: 0xdead_beef,
        }
    }

    #[test]
    fn url_appends_parameters_and_keeps_existing_query() {
        let url = |base: &str, ev| announce_url(&Url::parse(base).unwrap(), &request(ev));
        let tail = "info_hash=%00%01%20~-._%25%26%3D%2B%FF%80abcZ09%2F\
                    &peer_id=-BT0001-abcdefghijkl&port=6881&uploaded=1&downloaded=2&left=3\
                    &compact=1&numwant=50&key=deadbeef";
        assert_eq!(
            url("http://t.example/announce", Event::Started),
            format!("http://t.example/announce?{tail}&event=started")
        );
        assert_eq!(
            url("https://t.example/a?passkey=x%2Fy", Event::None),
            format!("https://t.example/a?passkey=x%2Fy&{tail}")
        );
        assert_eq!(
            url("http://t.example/a?", Event::Stopped),
            format!("http://t.example/a?{tail}&event=stopped")
        );
        assert_eq!(
            url("http://t.example/a?k=v&#frag", Event::Completed),
            format!("http://t.example/a?k=v&{tail}&event=completed")
        );
        // u32::MAX leaves the number of peers to the tracker.
        let req = AnnounceRequest {
            num_want: u32::MAX,
            ..request(Event::None)
        };
        let u = announce_url(&Url::parse("http://t.example/a").unwrap(), &req);
        assert!(u.ends_with("&compact=1&key=deadbeef"), "{u}");
    }

    #[test]
    fn percent_encoding_covers_every_byte_and_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        let mut s = String::new();
        percent_encode(&all, &mut s);
        // 66 unreserved bytes stay as they are, the other 190 become %XX.
        assert_eq!(s.len(), 66 + 190 * 3);
        let mut decoded = Vec::new();
        let mut rest = s.as_bytes();
        while let Some((&c, tail)) = rest.split_first() {
            if c == b'%' {
                let hex = std::str::from_utf8(&tail[..2]).unwrap();
                assert_eq!(hex, hex.to_uppercase());
                decoded.push(u8::from_str_radix(hex, 16).unwrap());
                rest = &tail[2..];
            } else {
                assert!(c.is_ascii_alphanumeric() || b"-._~".contains(&c), "{c}");
                decoded.push(c);
                rest = tail;
            }
        }
        assert_eq!(decoded, all);
        // The url crate accepts it unchanged, so reqwest sends exactly these bytes.
        let full = announce_url(&Url::parse("http://t/a").unwrap(), &request(Event::None));
        assert_eq!(Url::parse(&full).unwrap().as_str(), full);
    }

    #[test]
    fn parses_compact_reply() {
        let body = b"d8:completei5e10:incompletei3e8:intervali1800e12:min intervali900e\
                     5:peers12:\x01\x02\x03\x04\x1a\xe1\x7f\x00\x00\x01\x00\x50\
                     6:peers618:\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x01\x1a\xe1\
                     15:warning message4:slowe";
        let r = parse_reply(body).unwrap();
        assert_eq!(r.interval, Duration::from_secs(1800));
        assert_eq!(r.min_interval, Some(Duration::from_secs(900)));
        assert_eq!((r.seeders, r.leechers), (Some(5), Some(3)));
        assert_eq!(r.warning.as_deref(), Some("slow"));
        let want: Vec<SocketAddr> = ["1.2.3.4:6881", "127.0.0.1:80", "[2001:db8::1]:6881"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(r.peers, want);
    }

    #[test]
    fn parses_dictionary_peers_skipping_bad_entries() {
        let mut e = Encoder::new();
        e.begin_dict()
            .str("interval")
            .int(10)
            .str("peers")
            .begin_list();
        for (ip, port) in [
            ("10.0.0.1", 1000),
            ("tracker.example", 1001),
            ("::1", 1002),
            ("10.0.0.2", 70000),
            ("10.0.0.3", 0),
        ] {
            e.begin_dict()
                .str("ip")
                .str(ip)
                .str("peer id")
                .bytes(&[0; 20])
                .str("port")
                .int(port)
                .end();
        }
        e.begin_dict().str("port").int(5).end(); // no ip
        e.int(3); // not a dictionary
        let body = e.end().end().finish();
        let r = parse_reply(&body).unwrap();
        let want: Vec<SocketAddr> = vec![
            "10.0.0.1:1000".parse().unwrap(),
            "[::1]:1002".parse().unwrap(),
        ];
        assert_eq!(r.peers, want);
        // Interval 10 s is below the floor.
        assert_eq!(r.interval, super::super::MIN_INTERVAL);
        assert_eq!((r.seeders, r.leechers, r.min_interval), (None, None, None));
    }

    #[test]
    fn failure_reason_wins_over_everything() {
        let err = parse_reply(b"d14:failure reason11:not allowed8:intervali5ee").unwrap_err();
        assert!(
            matches!(&err, TrackerError::Failure(m) if m == "not allowed"),
            "{err}"
        );
    }

    #[test]
    fn refuses_malformed_replies() {
        let cases: &[&[u8]] = &[
            b"",
            b"<html>busy</html>",
            b"le",
            b"d5:peers0:e",                                           // no interval
            b"d8:intervali-5e5:peers0:e",                             // negative interval
            b"d8:interval3:abc5:peers0:e",                            // interval not an integer
            b"d8:intervali60e5:peers7:\x01\x02\x03\x04\x05\x06\x07e", // 7 bytes
            b"d8:intervali60e5:peersi3ee", // peers neither string nor list
            b"d8:intervali60e6:peers65:\x01\x02\x03\x04\x05e", // 5 bytes of peers6
            b"d14:failure reasoni1ee",
        ];
        for body in cases {
            let err = parse_reply(body).unwrap_err();
            assert!(
                matches!(err, TrackerError::Malformed(_)),
                "{:?} gave {err}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn missing_peers_means_none_and_trailing_newline_is_fine() {
        let r = parse_reply(b"d8:intervali60ee\n").unwrap();
        assert!(r.peers.is_empty());
        assert_eq!(r.interval, Duration::from_secs(60));
    }

    /// Serves one raw HTTP response on 127.0.0.1; the task returns the request head.
    async fn serve_once(response: Vec<u8>) -> (Url, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!(
            "http://{}/ann?x=1",
            listener.local_addr().unwrap()
        ));
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(&response).await.unwrap();
            String::from_utf8(head).unwrap()
        });
        (url.unwrap(), task)
    }

    fn response(status: &str, body: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    #[tokio::test]
    async fn announces_over_http_with_our_user_agent() {
        let clients = super::super::Clients::new().unwrap();
        let body = b"d8:intervali60e5:peers6:\x01\x02\x03\x04\x1a\xe1e";
        let (url, server) = serve_once(response("200 OK", body)).await;
        let r = announce(&clients.http, &url, &request(Event::Started))
            .await
            .unwrap();
        assert_eq!(r.peers, vec!["1.2.3.4:6881".parse::<SocketAddr>().unwrap()]);
        let head = server.await.unwrap();
        assert!(head.starts_with("GET /ann?x=1&info_hash=%00%01"), "{head}");
        let ua = format!("user-agent: btfs/{}\r\n", env!("CARGO_PKG_VERSION"));
        assert!(head.to_lowercase().contains(&ua), "{head}");
    }

    #[tokio::test]
    async fn error_statuses_keep_the_trackers_reason_when_it_gives_one() {
        let clients = super::super::Clients::new().unwrap();
        let (url, _server) = serve_once(response("404 Not Found", b"<html>no</html>")).await;
        let e = announce(&clients.http, &url, &request(Event::None))
            .await
            .unwrap_err();
        assert!(matches!(e, TrackerError::Http(404)), "{e}");

        let body = b"d14:failure reason11:bad passkeye";
        let (url, _server) = serve_once(response("403 Forbidden", body)).await;
        let e = announce(&clients.http, &url, &request(Event::None))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, TrackerError::Failure(m) if m == "bad passkey"),
            "{e}"
        );

        let (url, _server) = serve_once(response("200 OK", &vec![b'x'; MAX_REPLY + 1])).await;
        let e = announce(&clients.http, &url, &request(Event::None))
            .await
            .unwrap_err();
        assert!(matches!(e, TrackerError::Malformed(_)), "{e}");
    }

    #[tokio::test]
    async fn refused_connection_names_the_cause() {
        let clients = super::super::Clients::new().unwrap();
        let url = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            Url::parse(&format!("http://{}/announce", l.local_addr().unwrap())).unwrap()
        };
        let e = announce(&clients.http, &url, &request(Event::None))
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, TrackerError::Request(_)), "{text}");
        assert!(text.to_lowercase().contains("refused"), "{text}");
        assert!(!text.contains("info_hash"), "the URL is noise here: {text}");
    }
}
