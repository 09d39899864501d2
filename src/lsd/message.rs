//! The BEP 14 announce, pure: an HTTP-like request in one UDP datagram,
//!
//! ```text
//! BT-SEARCH * HTTP/1.1\r\n
//! Host: 239.192.152.143:6771\r\n
//! Port: 6881\r\n
//! Infohash: <40 hex digits>\r\n      (one or more)
//! cookie: <ours>\r\n                 (optional)
//! \r\n
//! \r\n
//! ```
//!
//! Anyone on the local network can send one, so parsing trusts nothing: a datagram past
//! [`MAX_RECEIVED`] bytes, not text, not a `BT-SEARCH`, with a header line that is no header,
//! or without one valid port is refused whole; an `Infohash` that is not 40 hex digits is
//! skipped (as libtorrent does), and a datagram left with none is refused.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use thiserror::Error;

use crate::metainfo::InfoHash;

/// The IPv4 group (organization-local scope).
pub const GROUP_V4: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(239, 192, 152, 143), 6771));
/// The IPv6 group (site-local scope).
pub const GROUP_V6: SocketAddr = SocketAddr::V6(SocketAddrV6::new(
    Ipv6Addr::new(0xff15, 0, 0, 0, 0, 0, 0xefc0, 0x988f),
    6771,
    0,
    0,
));
/// The `Host` header names the group the announce is sent to.
pub const HOST_V4: &str = "239.192.152.143:6771";
pub const HOST_V6: &str = "[ff15::efc0:988f]:6771";

/// BEP 14: an announce naming several torrents stays within this many bytes, so that it is
/// never fragmented.
pub const MAX_SENT: usize = 1400;
/// The largest datagram we read: an Ethernet frame's worth; a sender that stays within the
/// BEP's limit never comes near it.
pub const MAX_RECEIVED: usize = 1500;

/// An announce read from the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announce {
    /// The port the sender takes BitTorrent connections on.
    pub port: u16,
    /// The torrents it announces, in order, each once.
    pub info_hashes: Vec<InfoHash>,
    /// Its opaque cookie, so that a client can recognize its own announces.
    pub cookie: Option<String>,
}

impl Announce {
    /// Whether `ours` is this announce's cookie (then we sent it: multicast loops back).
    pub fn has_cookie(&self, ours: &str) -> bool {
        self.cookie
            .as_deref()
            .is_some_and(|c| c.eq_ignore_ascii_case(ours))
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("datagram of {0} bytes is too long for an announce")]
    TooLong(usize),
    #[error("not text")]
    NotText,
    #[error("not a BT-SEARCH request")]
    NotBtSearch,
    #[error("a header line without a colon")]
    BadHeader,
    #[error("no Port header")]
    NoPort,
    #[error("Port is not a port number: {0:?}")]
    BadPort(String),
    #[error("two different Port headers")]
    TwoPorts,
    #[error("no valid Infohash header")]
    NoInfoHash,
}

/// Reads one datagram.
pub fn parse(datagram: &[u8]) -> Result<Announce, ParseError> {
    if datagram.len() > MAX_RECEIVED {
        return Err(ParseError::TooLong(datagram.len()));
    }
    let text = std::str::from_utf8(datagram).map_err(|_| ParseError::NotText)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request = lines.next().unwrap_or_default();
    if !is_bt_search(request) {
        return Err(ParseError::NotBtSearch);
    }
    let mut port = None;
    let mut info_hashes = Vec::new();
    let mut cookie = None;
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(ParseError::BadHeader)?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("port") {
            let p = parse_port(value)?;
            if port.is_some_and(|seen| seen != p) {
                return Err(ParseError::TwoPorts);
            }
            port = Some(p);
        } else if name.eq_ignore_ascii_case("infohash") {
            match InfoHash::from_hex(value) {
                Some(h) if h.0 != [0; 20] && !info_hashes.contains(&h) => info_hashes.push(h),
                _ => {}
            }
        } else if name.eq_ignore_ascii_case("cookie") {
            cookie = Some(value.to_string());
        }
        // Host and any other header: ignored, as HTTP does with what it does not know.
    }
    let port = port.ok_or(ParseError::NoPort)?;
    if info_hashes.is_empty() {
        return Err(ParseError::NoInfoHash);
    }
    Ok(Announce {
        port,
        info_hashes,
        cookie,
    })
}

/// `BT-SEARCH * HTTP/1.x`, the method in any case.
fn is_bt_search(line: &str) -> bool {
    let mut words = line.split_ascii_whitespace();
    let method = words
        .next()
        .is_some_and(|m| m.eq_ignore_ascii_case("BT-SEARCH"));
    let target = words.next() == Some("*");
    let version = words.next().is_some_and(|v| v.starts_with("HTTP/1."));
    method && target && version && words.next().is_none()
}

/// A port in decimal, 1 to 65535: port 0 cannot be dialled.
fn parse_port(value: &str) -> Result<u16, ParseError> {
    let bad = || ParseError::BadPort(value.chars().take(16).collect());
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match value.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(bad()),
    }
}

/// Announces of `hashes` (none repeated), as few datagrams as [`MAX_SENT`] allows.
pub fn encode(host: &str, port: u16, cookie: &str, hashes: &[InfoHash]) -> Vec<Vec<u8>> {
    let head = format!("BT-SEARCH * HTTP/1.1\r\nHost: {host}\r\nPort: {port}\r\n");
    let tail = format!("cookie: {cookie}\r\n\r\n\r\n");
    let per_hash = "Infohash: \r\n".len() + 40;
    let fit = ((MAX_SENT - head.len() - tail.len()) / per_hash).max(1);
    hashes
        .chunks(fit)
        .map(|chunk| {
            let mut m = head.clone();
            for h in chunk {
                m.push_str(&format!("Infohash: {h:x}\r\n"));
            }
            m.push_str(&tail);
            m.into_bytes()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(byte: u8) -> InfoHash {
        InfoHash([byte; 20])
    }

    /// What libtorrent 2.0 sends (captured on loopback), cookie and trailing blank lines
    /// included.
    const LIBTORRENT: &[u8] = b"BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\n\
        Port: 7000\r\nInfohash: 96d23b4f428ff866de4e4b2f42caf70943a5eadb\r\n\
        cookie: 5b019da7\r\n\r\n\r\n";

    #[test]
    fn reads_what_libtorrent_sends() {
        let a = parse(LIBTORRENT).unwrap();
        assert_eq!(a.port, 7000);
        assert_eq!(
            a.info_hashes,
            [InfoHash::from_hex("96d23b4f428ff866de4e4b2f42caf70943a5eadb").unwrap()]
        );
        assert!(a.has_cookie("5B019DA7"));
        assert!(!a.has_cookie("5b019da8"));
    }

    #[test]
    fn reads_several_info_hashes_in_order_each_once() {
        let m = "BT-SEARCH * HTTP/1.1\r\nHost: [ff15::efc0:988f]:6771\r\nPort: 51413\r\n\
            Infohash: 0202020202020202020202020202020202020202\r\n\
            Infohash: 0101010101010101010101010101010101010101\r\n\
            infohash:0202020202020202020202020202020202020202\r\n\r\n";
        let a = parse(m.as_bytes()).unwrap();
        assert_eq!(a.port, 51413);
        assert_eq!(a.info_hashes, [h(2), h(1)]);
        assert_eq!(a.cookie, None);
    }

    #[test]
    fn a_bad_info_hash_is_skipped_and_none_valid_refuses_the_datagram() {
        let one_good = "BT-SEARCH * HTTP/1.1\r\nPort: 1\r\nInfohash: xyz\r\n\
            Infohash: 0000000000000000000000000000000000000000\r\n\
            Infohash: 0303030303030303030303030303030303030303\r\n\r\n";
        assert_eq!(parse(one_good.as_bytes()).unwrap().info_hashes, [h(3)]);
        let none = "BT-SEARCH * HTTP/1.1\r\nPort: 1\r\nInfohash: 03030303\r\n\r\n";
        assert_eq!(parse(none.as_bytes()), Err(ParseError::NoInfoHash));
        let missing = "BT-SEARCH * HTTP/1.1\r\nPort: 1\r\n\r\n";
        assert_eq!(parse(missing.as_bytes()), Err(ParseError::NoInfoHash));
    }

    #[test]
    fn a_wrong_or_missing_port_refuses_the_datagram() {
        let ih = "Infohash: 0101010101010101010101010101010101010101\r\n";
        for (port, want) in [
            ("0", ParseError::BadPort("0".into())),
            ("65536", ParseError::BadPort("65536".into())),
            ("-1", ParseError::BadPort("-1".into())),
            ("+80", ParseError::BadPort("+80".into())),
            ("80a", ParseError::BadPort("80a".into())),
            ("", ParseError::BadPort(String::new())),
        ] {
            let m = format!("BT-SEARCH * HTTP/1.1\r\nPort: {port}\r\n{ih}\r\n");
            assert_eq!(parse(m.as_bytes()), Err(want), "Port: {port}");
        }
        let none = format!("BT-SEARCH * HTTP/1.1\r\nHost: x\r\n{ih}\r\n");
        assert_eq!(parse(none.as_bytes()), Err(ParseError::NoPort));
        let two = format!("BT-SEARCH * HTTP/1.1\r\nPort: 1\r\nPort: 2\r\n{ih}\r\n");
        assert_eq!(parse(two.as_bytes()), Err(ParseError::TwoPorts));
    }

    #[test]
    fn garbage_is_refused() {
        let ih = "Infohash: 0101010101010101010101010101010101010101\r\n";
        let cases: [(&[u8], ParseError); 7] = [
            (b"", ParseError::NotBtSearch),
            (b"\x00\xff\xfe", ParseError::NotText),
            (
                b"d1:ad2:id20:aaaaaaaaaaaaaaaaaaaae1:q4:ping1:t2:aa1:y1:qe",
                ParseError::NotBtSearch,
            ),
            (
                b"M-SEARCH * HTTP/1.1\r\nPort: 1\r\n",
                ParseError::NotBtSearch,
            ),
            (
                b"BT-SEARCH / HTTP/1.1\r\nPort: 1\r\n",
                ParseError::NotBtSearch,
            ),
            (
                b"BT-SEARCH * HTTP/2\r\nPort: 1\r\n",
                ParseError::NotBtSearch,
            ),
            (b"BT-SEARCH * HTTP/1.1\r\nPort 1\r\n", ParseError::BadHeader),
        ];
        for (datagram, want) in cases {
            assert_eq!(parse(datagram), Err(want), "{datagram:?}");
        }
        // Lines after the blank line are a body, never headers.
        let body = format!("BT-SEARCH * HTTP/1.1\r\nPort: 1\r\n\r\n{ih}");
        assert_eq!(parse(body.as_bytes()), Err(ParseError::NoInfoHash));
    }

    #[test]
    fn an_oversized_datagram_is_refused_whole() {
        let mut m = b"BT-SEARCH * HTTP/1.1\r\nPort: 1\r\n\
            Infohash: 0101010101010101010101010101010101010101\r\nX-Pad: "
            .to_vec();
        m.resize(MAX_RECEIVED, b'a');
        m.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse(&m), Err(ParseError::TooLong(MAX_RECEIVED + 4)));
    }

    #[test]
    fn what_we_send_reads_back_with_our_cookie() {
        let sent = encode(HOST_V6, 6881, "0badc0de", &[h(1), h(2)]);
        assert_eq!(sent.len(), 1);
        let text = String::from_utf8(sent[0].clone()).unwrap();
        assert!(text.starts_with("BT-SEARCH * HTTP/1.1\r\nHost: [ff15::efc0:988f]:6771\r\n"));
        assert!(text.ends_with("\r\n\r\n\r\n"));
        let back = parse(&sent[0]).unwrap();
        assert_eq!(back.port, 6881);
        assert_eq!(back.info_hashes, [h(1), h(2)]);
        assert!(back.has_cookie("0badc0de"));
    }

    #[test]
    fn many_torrents_are_split_into_datagrams_within_the_limit() {
        let hashes: Vec<InfoHash> = (1..=100).map(h).collect();
        let sent = encode(HOST_V4, 65535, "ffffffff", &hashes);
        assert!(sent.len() > 1);
        assert!(sent.iter().all(|d| d.len() <= MAX_SENT));
        let back: Vec<InfoHash> = (sent.iter())
            .flat_map(|d| parse(d).unwrap().info_hashes)
            .collect();
        assert_eq!(back, hashes);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn keeps_promises(a: &Announce) -> Result<(), TestCaseError> {
            prop_assert!(a.port != 0, "{a:?}");
            prop_assert!(!a.info_hashes.is_empty(), "{a:?}");
            prop_assert!(a.info_hashes.iter().all(|h| h.0 != [0; 20]), "{a:?}");
            let mut unique = a.info_hashes.clone();
            unique.sort();
            unique.dedup();
            prop_assert_eq!(unique.len(), a.info_hashes.len());
            Ok(())
        }

        /// A valid announce with bytes overwritten and a stretch cut.
        fn mangled() -> impl Strategy<Value = Vec<u8>> {
            let valid = encode(HOST_V4, 6881, "c00c1e", &[h(1), h(2), h(3)]).remove(0);
            let len = valid.len();
            (
                prop::collection::vec((0..len, any::<u8>()), 1..8),
                0..len,
                0..len,
            )
                .prop_map(move |(edits, cut_at, cut_len)| {
                    let mut d = valid.clone();
                    for (at, byte) in edits {
                        d[at] = byte;
                    }
                    let end = (cut_at + cut_len / 8).min(d.len());
                    d.drain(cut_at.min(end)..end);
                    d
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn arbitrary_datagrams_parse_or_fail_cleanly(
                d in prop::collection::vec(any::<u8>(), 0..1600)
            ) {
                if let Ok(a) = parse(&d) {
                    keeps_promises(&a)?;
                }
            }

            #[test]
            fn mangled_announces_parse_or_fail_cleanly(d in mangled()) {
                if let Ok(a) = parse(&d) {
                    keeps_promises(&a)?;
                }
            }

            #[test]
            fn what_we_encode_parses_back(
                port in 1u16..,
                hashes in prop::collection::btree_set(any::<[u8; 20]>(), 1..80),
                cookie in "[0-9a-f]{1,8}",
            ) {
                let hashes: Vec<InfoHash> =
                    hashes.into_iter().filter(|h| *h != [0; 20]).map(InfoHash).collect();
                prop_assume!(!hashes.is_empty());
                let mut back = Vec::new();
                for d in encode(HOST_V6, port, &cookie, &hashes) {
                    prop_assert!(d.len() <= MAX_SENT);
                    let a = parse(&d).expect("our own announce parses");
                    prop_assert_eq!(a.port, port);
                    prop_assert!(a.has_cookie(&cookie));
                    back.extend(a.info_hashes);
                }
                prop_assert_eq!(back, hashes);
            }
        }
    }
}
