//! HTTP announces: the request URL, the bencoded reply (compact and dictionary peers, failure,
//! malformed and hostile bodies), and whole announces against a one-shot local server.

use std::net::SocketAddr;
use std::time::Duration;

use url::Url;

use crate::bencode::Encoder;
use crate::tracker::http::{announce_by_family, announce_url, percent_encode};
use crate::tracker::plain::MAX_REPLY;
use crate::tracker::reply::parse_reply;
use crate::tracker::{AnnounceRequest, Clients, Event, MIN_INTERVAL, TrackerError};

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
        families: crate::tracker::Families::BOTH,
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
    assert_eq!(r.interval, MIN_INTERVAL);
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
        b"d8:intervali60e5:peersi3ee",                            // peers neither string nor list
        b"d8:intervali60e6:peers65:\x01\x02\x03\x04\x05e",        // 5 bytes of peers6
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

/// Hostile nesting is an error, not a stack overflow, in a key we read or one we ignore.
#[test]
fn deep_nesting_is_malformed() {
    for head in [
        &b"d8:intervali60e5:peers"[..],
        b"d1:x",
        b"d8:intervali60e1:z",
    ] {
        let mut body = head.to_vec();
        body.extend(std::iter::repeat_n(b'l', 100_000));
        body.extend(std::iter::repeat_n(b'e', 100_001));
        let err = parse_reply(&body).unwrap_err();
        assert!(matches!(err, TrackerError::Malformed(_)), "{err}");
    }
}

#[test]
fn unknown_keys_and_key_order_do_not_matter() {
    let mut e = Encoder::new();
    // Unsorted keys, a non-UTF-8 key and nested unknown values.
    e.begin_dict()
        .str("peers")
        .bytes(b"\x01\x02\x03\x04\x1a\xe1");
    e.str("interval").int(900);
    e.bytes(b"\xff\xfe").begin_list().begin_dict().end().end();
    e.str("tracker id").str("abc");
    let r = parse_reply(&e.end().finish()).unwrap();
    assert_eq!(r.interval, Duration::from_secs(900));
    assert_eq!(r.peers, vec!["1.2.3.4:6881".parse::<SocketAddr>().unwrap()]);
}

#[test]
fn optional_keys_of_the_wrong_type_or_range_are_ignored() {
    let body = b"d8:completei4294967296e10:incompletei-1e8:intervali60e\
                 12:min interval3:abc15:warning messagei1ee";
    let r = parse_reply(body).unwrap();
    assert_eq!((r.seeders, r.leechers, r.min_interval), (None, None, None));
    assert_eq!(r.warning, None);
    let r = parse_reply(b"d8:intervali60e12:min intervali-1ee").unwrap();
    assert_eq!(r.min_interval, None);
}

#[test]
fn list_shaped_peer_entries_and_non_utf8_ips_are_skipped() {
    let body = b"d8:intervali60e5:peersl\
                 l8:10.0.0.1i1000ee\
                 d2:ip3:\xff\xfe\xfd4:porti1000ee\
                 d2:ip8:10.0.0.24:porti1001eeee";
    let r = parse_reply(body).unwrap();
    assert_eq!(
        r.peers,
        vec!["10.0.0.2:1001".parse::<SocketAddr>().unwrap()]
    );
}

#[test]
fn failure_reason_wins_over_malformed_keys() {
    for body in [
        &b"d14:failure reason3:bad5:peersi3ee"[..],
        b"d14:failure reason3:bad8:interval1:x6:peers6i1ee",
    ] {
        let err = parse_reply(body).unwrap_err();
        assert!(
            matches!(&err, TrackerError::Failure(m) if m == "bad"),
            "{err}"
        );
    }
}

#[test]
fn non_canonical_integers_repeated_keys_and_garbage_after_are_judged_like_bencode() {
    for body in [
        &b"d8:intervali+60ee"[..],
        b"d8:intervali060ee",
        b"d8:intervali-0ee",
        b"d08:intervali60ee",
        b"d8:intervali60e8:intervali90ee",
    ] {
        let err = parse_reply(body).unwrap_err();
        assert!(
            matches!(err, TrackerError::Malformed(_)),
            "{:?} gave {err}",
            String::from_utf8_lossy(body)
        );
    }
    // After the one value, anything goes (a newline, or worse).
    let r = parse_reply(b"d8:intervali60eexyz").unwrap();
    assert_eq!(r.interval, Duration::from_secs(60));
}

/// Serves one raw HTTP response on 127.0.0.1; the task returns the request head.
async fn serve_once(response: Vec<u8>) -> (Url, tokio::task::JoinHandle<String>) {
    serve_once_on("127.0.0.1:0", response).await
}

/// [`serve_once`] on `addr`.
async fn serve_once_on(addr: &str, response: Vec<u8>) -> (Url, tokio::task::JoinHandle<String>) {
    let (url, task) = serve_on(addr, response, 1).await;
    (
        url,
        tokio::spawn(async move { task.await.unwrap().remove(0) }),
    )
}

/// Serves `response` to `times` connections in turn on `addr`; the task returns their
/// request heads.
async fn serve_on(
    addr: &str,
    response: Vec<u8>,
    times: usize,
) -> (Url, tokio::task::JoinHandle<Vec<String>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let url = Url::parse(&format!(
        "http://{}/ann?x=1",
        listener.local_addr().unwrap()
    ));
    let task = tokio::spawn(async move {
        let mut heads = Vec::new();
        for _ in 0..times {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(&response).await.unwrap();
            heads.push(String::from_utf8(head).unwrap());
        }
        heads
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
    let clients = Clients::new();
    let body = b"d8:intervali60e5:peers6:\x01\x02\x03\x04\x1a\xe1e";
    let (url, server) = serve_once(response("200 OK", body)).await;
    let r = announce_by_family(&clients, &url, &request(Event::Started))
        .await
        .unwrap();
    assert_eq!(r.peers, vec!["1.2.3.4:6881".parse::<SocketAddr>().unwrap()]);
    let head = server.await.unwrap();
    assert!(head.starts_with("GET /ann?x=1&info_hash=%00%01"), "{head}");
    let ua = format!("user-agent: btfs/{}\r\n", env!("CARGO_PKG_VERSION"));
    assert!(head.to_lowercase().contains(&ua), "{head}");
    let host = format!("host: {}\r\n", url.authority());
    assert!(head.to_lowercase().contains(&host), "{head}");
}

/// An http:// announce goes by a plain GET; a tracker that redirects is followed (by reqwest,
/// which could follow it to https too) and its answer taken.
#[tokio::test]
async fn a_redirecting_tracker_is_followed() {
    let clients = Clients::new();
    let body = b"d8:intervali60e5:peers6:\x01\x02\x03\x04\x1a\xe1e";
    let (target, second) = serve_once(response("200 OK", body)).await;
    let moved = format!(
        "HTTP/1.1 302 Found\r\nLocation: {target}&moved=1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    // Asked twice: by the plain GET, then by reqwest, which follows it.
    let (url, first) = serve_on("127.0.0.1:0", moved.into_bytes(), 2).await;
    let r = announce_by_family(&clients, &url, &request(Event::Started))
        .await
        .unwrap();
    assert_eq!(r.peers, vec!["1.2.3.4:6881".parse::<SocketAddr>().unwrap()]);
    assert_eq!(first.await.unwrap().len(), 2);
    let head = second.await.unwrap();
    assert!(head.starts_with("GET /ann?x=1&moved=1 HTTP/1.1"), "{head}");
}

#[tokio::test]
async fn error_statuses_keep_the_trackers_reason_when_it_gives_one() {
    let clients = Clients::new();
    let (url, _server) = serve_once(response("404 Not Found", b"<html>no</html>")).await;
    let e = announce_by_family(&clients, &url, &request(Event::None))
        .await
        .unwrap_err();
    assert!(matches!(e, TrackerError::Http(404)), "{e}");

    let body = b"d14:failure reason11:bad passkeye";
    let (url, _server) = serve_once(response("403 Forbidden", body)).await;
    let e = announce_by_family(&clients, &url, &request(Event::None))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, TrackerError::Failure(m) if m == "bad passkey"),
        "{e}"
    );

    let (url, _server) = serve_once(response("200 OK", &vec![b'x'; MAX_REPLY + 1])).await;
    let e = announce_by_family(&clients, &url, &request(Event::None))
        .await
        .unwrap_err();
    assert!(matches!(e, TrackerError::Malformed(_)), "{e}");
}

/// A host name with addresses of both families is announced to over each (through a client
/// that resolves it to that family only); the peers of both answers (IPv4 `peers`, IPv6
/// `peers6`) are merged.
#[tokio::test]
async fn a_tracker_with_both_families_is_announced_to_over_each() {
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv6Addr};
    let (url4, server4) = serve_once(response(
        "200 OK",
        b"d8:intervali60e5:peers6:\x01\x02\x03\x04\x1a\xe1e",
    ))
    .await;
    let port = url4.port().unwrap();
    let mut body6 = b"d8:intervali60e5:peers0:6:peers618:".to_vec();
    body6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    body6.extend_from_slice(&[0; 11]);
    body6.extend_from_slice(&[1, 0x1a, 0xe1, b'e']);
    let (_, server6) = serve_once_on(&format!("[::1]:{port}"), response("200 OK", &body6)).await;
    let hosts = HashMap::from([(
        "tracker.test".to_string(),
        vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(Ipv6Addr::LOCALHOST),
        ],
    )]);
    let clients = Clients::with_hosts(hosts);
    let url = format!("http://tracker.test:{port}/ann?x=1");
    let r = crate::tracker::announce(&url, &request(Event::Started), &clients)
        .await
        .unwrap();
    let mut peers = r.peers;
    peers.sort();
    let want: Vec<SocketAddr> = vec![
        "1.2.3.4:6881".parse().unwrap(),
        "[2001:db8::1]:6881".parse().unwrap(),
    ];
    assert_eq!(peers, want);
    for server in [server4, server6] {
        let head = server.await.unwrap();
        assert!(head.starts_with("GET /ann?x=1&info_hash="), "{head}");
    }
}

#[tokio::test]
async fn refused_connection_names_the_cause() {
    let clients = Clients::new();
    let url = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Url::parse(&format!("http://{}/announce", l.local_addr().unwrap())).unwrap()
    };
    let e = announce_by_family(&clients, &url, &request(Event::None))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, TrackerError::Request(_)), "{text}");
    assert!(text.to_lowercase().contains("refused"), "{text}");
    assert!(!text.contains("info_hash"), "the URL is noise here: {text}");
}
