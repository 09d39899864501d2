//! Magnet links (BEP 9): `magnet:?xt=urn:btih:<hash>&dn=<name>&tr=<tracker>&x.pe=<peer>&ws=<url>`.
//!
//! A magnet link carries only the info-hash and hints for finding peers; the info dictionary
//! itself comes from peers afterwards (see `crate::magnet::metadata`). The link is user input pasted from
//! anywhere, so parsing is lenient where a hint is unusable (an unknown tracker scheme, a peer
//! given by host name, a bad `%` escape are skipped or kept literally, as browsers do) and strict
//! only about the info-hash, without which nothing can start.
//!
//! Parameters may carry a numeric suffix (`tr.1`, `xt.2`), which some generators write; it is
//! ignored. A hybrid link (`urn:btih:` and `urn:btmh:`) is read by its v1 hash.

use std::collections::HashSet;
use std::net::SocketAddr;

use thiserror::Error;

use crate::metainfo::InfoHash;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MagnetError {
    #[error("not a magnet link: it should start with 'magnet:?'")]
    NotMagnet,
    #[error("magnet link has no info-hash: it needs an 'xt=urn:btih:<hash>' parameter")]
    NoExactTopic,
    #[error("v2-only magnet links are not supported (the link has urn:btmh: but no urn:btih:)")]
    V2Only,
    #[error("magnet link's xt {0:?} is not a BitTorrent info-hash (expected urn:btih:<hash>)")]
    UnsupportedTopic(String),
    #[error("magnet info-hash has {0} characters; expected 40 hex or 32 base32 characters")]
    HashLength(usize),
    #[error("magnet info-hash {0:?} has characters other than hex digits")]
    HashNotHex(String),
    #[error("magnet info-hash {0:?} has characters other than base32 (A-Z, 2-7)")]
    HashNotBase32(String),
    #[error("magnet link names two different info-hashes, {0} and {1}: keep only one")]
    ConflictingHashes(InfoHash, InfoHash),
}

/// What a magnet link says: the info-hash and where to look for peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Magnet {
    pub info_hash: InfoHash,
    /// `dn`: a display name until the metadata arrives; untrusted text, never a path.
    pub name: Option<String>,
    /// Every `tr`, decoded: only http, https and udp, each URL once, in link order.
    pub trackers: Vec<String>,
    /// `x.pe`: peers given as `ip:port` or `[ipv6]:port`; host names are skipped (resolving
    /// them needs I/O, which this parser does not do).
    pub peers: Vec<SocketAddr>,
    /// `ws`: web seeds (BEP 19), http and https only.
    pub web_seeds: Vec<String>,
}

impl Magnet {
    pub fn parse(link: &str) -> Result<Magnet, MagnetError> {
        let link = link.trim();
        let prefix = "magnet:?";
        let query = link
            .get(..prefix.len())
            .filter(|p| p.eq_ignore_ascii_case(prefix))
            .map(|_| &link[prefix.len()..])
            .ok_or(MagnetError::NotMagnet)?;

        let mut info_hash: Option<InfoHash> = None;
        let mut other_topic: Option<String> = None;
        let mut v2 = false;
        let mut name = None;
        let mut trackers = Vec::new();
        let mut peers = Vec::new();
        let mut web_seeds = Vec::new();
        for param in query.split('&') {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            match base_key(key) {
                "xt" => {
                    let topic = percent_decode_lossy(value, false);
                    if let Some(hash) = strip_prefix_ignore_case(&topic, "urn:btih:") {
                        let hash = parse_hash(hash)?;
                        match info_hash {
                            Some(first) if first != hash => {
                                return Err(MagnetError::ConflictingHashes(first, hash));
                            }
                            _ => info_hash = Some(hash),
                        }
                    } else if strip_prefix_ignore_case(&topic, "urn:btmh:").is_some() {
                        v2 = true;
                    } else {
                        other_topic.get_or_insert(topic);
                    }
                }
                "dn" if name.is_none() => {
                    let dn = percent_decode_lossy(value, true);
                    name = (!dn.is_empty()).then_some(dn);
                }
                "tr" => trackers.extend(url(value, &["http://", "https://", "udp://"])),
                "ws" => web_seeds.extend(url(value, &["http://", "https://"])),
                "x.pe" => {
                    let peer = percent_decode_lossy(value, false);
                    peers.extend(
                        peer.trim()
                            .parse::<SocketAddr>()
                            .ok()
                            .filter(|a| a.port() != 0),
                    );
                }
                _ => {}
            }
        }
        let info_hash = match (info_hash, v2, other_topic) {
            (Some(h), _, _) => h,
            (None, true, _) => return Err(MagnetError::V2Only),
            (None, false, Some(topic)) => return Err(MagnetError::UnsupportedTopic(topic)),
            (None, false, None) => return Err(MagnetError::NoExactTopic),
        };
        Ok(Magnet {
            info_hash,
            name,
            trackers: dedup(trackers),
            peers: dedup(peers),
            web_seeds: dedup(web_seeds),
        })
    }
}

/// `tr.1` -> `tr`; `x.pe` stays, its suffix not being a number.
fn base_key(key: &str) -> &str {
    match key.rsplit_once('.') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => key,
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    s.get(..prefix.len())
        .filter(|p| p.eq_ignore_ascii_case(prefix))
        .map(|_| &s[prefix.len()..])
}

/// 40 hex digits or 32 base32 characters (RFC 4648 alphabet), either case.
fn parse_hash(s: &str) -> Result<InfoHash, MagnetError> {
    match s.len() {
        40 => InfoHash::from_hex(s).ok_or_else(|| MagnetError::HashNotHex(s.to_owned())),
        32 => base32(s).ok_or_else(|| MagnetError::HashNotBase32(s.to_owned())),
        _ => Err(MagnetError::HashLength(s.chars().count())),
    }
}

/// Decodes 32 base32 characters (160 bits, no padding) into 20 bytes.
fn base32(s: &str) -> Option<InfoHash> {
    let mut out = [0u8; 20];
    let mut acc: u64 = 0;
    let mut bits = 0;
    let mut i = 0;
    for c in s.bytes() {
        let v = match c.to_ascii_uppercase() {
            c @ b'A'..=b'Z' => c - b'A',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        acc = (acc << 5) | u64::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(i)? = (acc >> bits) as u8;
            i += 1;
        }
    }
    (i == out.len()).then_some(InfoHash(out))
}

/// A decoded URL when it has one of `schemes` (any case) and something after it.
fn url(value: &str, schemes: &[&str]) -> Option<String> {
    let url = percent_decode_lossy(value, false);
    let url = url.trim();
    schemes
        .iter()
        .any(|s| url.len() > s.len() && strip_prefix_ignore_case(url, s).is_some())
        .then(|| url.to_owned())
}

/// Decodes `%XY` escapes (and `+` as a space when `plus` is set, as forms encode names).
/// A `%` not followed by two hex digits stays as it is, as browsers leave it; bytes that are
/// not UTF-8 after decoding become U+FFFD.
fn percent_decode_lossy(s: &str, plus: bool) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let escaped = (b == b'%')
            .then(|| Some((hex(*bytes.get(i + 1)?)?, hex(*bytes.get(i + 2)?)?)))
            .flatten();
        match (b, escaped) {
            (_, Some((hi, lo))) => {
                out.push((hi << 4) | lo);
                i += 3;
                continue;
            }
            (b'+', _) if plus => out.push(b' '),
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn dedup<T: Clone + Eq + std::hash::Hash>(items: Vec<T>) -> Vec<T> {
    let mut seen = HashSet::new();
    items
        .into_iter()
        .filter(|x| seen.insert(x.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "c9e15763f722f23e98a29decdfae341b98d53056";
    /// The same 20 bytes in base32. Checked by hand on the first two characters: 0xc9 0xe1 is
    /// 11001001 11100001, whose first 5-bit groups are 11001 = 25 = 'Z' and 00111 = 7 = 'H'.
    const B32: &str = "ZHQVOY7XELZD5GFCTXWN7LRUDOMNKMCW";

    fn hash() -> InfoHash {
        InfoHash::from_hex(HEX).unwrap()
    }

    #[test]
    fn hex_and_base32_hashes_name_the_same_torrent() {
        let hex = Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}")).unwrap();
        let upper = Magnet::parse(&format!("magnet:?xt=urn:btih:{}", HEX.to_uppercase())).unwrap();
        let b32 = Magnet::parse(&format!("magnet:?xt=urn:btih:{B32}")).unwrap();
        let lower = Magnet::parse(&format!("MAGNET:?xt=URN:BTIH:{}", B32.to_lowercase())).unwrap();
        assert_eq!(hex.info_hash, hash());
        assert_eq!(upper.info_hash, hash());
        assert_eq!(b32.info_hash, hash());
        assert_eq!(lower.info_hash, hash());
        assert_eq!(hash().0[..2], [0xc9, 0xe1]);
        assert_eq!(hex.name, None);
        assert!(hex.trackers.is_empty() && hex.peers.is_empty() && hex.web_seeds.is_empty());
    }

    #[test]
    fn base32_of_all_zero_and_all_one_bits() {
        assert_eq!(base32(&"A".repeat(32)), Some(InfoHash([0; 20])));
        assert_eq!(base32(&"7".repeat(32)), Some(InfoHash([0xff; 20])));
    }

    #[test]
    fn reads_every_tracker_decoded_and_keeps_only_usable_schemes() {
        let link = format!(
            "magnet:?xt=urn:btih:{HEX}\
             &tr=udp%3A%2F%2Ftracker.example.org%3A6969%2Fannounce\
             &tr=http%3A%2F%2Ft2.example.com%2Fannounce%3Fk%3Da%2Bb\
             &tr.1=https://t3.example.net/announce\
             &tr=wss%3A%2F%2Fweb.example%2F\
             &tr=udp%3A%2F%2Ftracker.example.org%3A6969%2Fannounce\
             &tr=http%3A%2F%2F"
        );
        let m = Magnet::parse(&link).unwrap();
        assert_eq!(
            m.trackers,
            [
                "udp://tracker.example.org:6969/announce",
                "http://t2.example.com/announce?k=a+b",
                "https://t3.example.net/announce",
            ]
        );
    }

    #[test]
    fn display_name_is_percent_and_plus_decoded() {
        let link = format!("magnet:?dn=Big+Buck%20Bunny%20%E2%80%93%20100%25%zz&xt=urn:btih:{B32}");
        let m = Magnet::parse(&link).unwrap();
        assert_eq!(m.name.as_deref(), Some("Big Buck Bunny – 100%%zz"));
        assert_eq!(m.info_hash, hash());
    }

    #[test]
    fn reads_peers_and_web_seeds() {
        let link = format!(
            "magnet:?xt=urn:btih:{HEX}&x.pe=10.0.0.1:6881&x.pe=%5B2001%3Adb8%3A%3A1%5D%3A51413\
             &x.pe=peer.example.org:6881&x.pe=10.0.0.2:0&x.pe=10.0.0.1:6881\
             &ws=http%3A%2F%2Fseed.example%2Ffile&ws=ftp%3A%2F%2Fold.example%2F"
        );
        let m = Magnet::parse(&link).unwrap();
        let peers: Vec<SocketAddr> = vec![
            "10.0.0.1:6881".parse().unwrap(),
            "[2001:db8::1]:51413".parse().unwrap(),
        ];
        assert_eq!(m.peers, peers);
        assert_eq!(m.web_seeds, ["http://seed.example/file"]);
    }

    #[test]
    fn hybrid_link_uses_the_v1_hash() {
        let link = format!(
            "magnet:?xt=urn:btmh:1220{}&xt=urn:btih:{HEX}&dn=x",
            "ab".repeat(32)
        );
        assert_eq!(Magnet::parse(&link).unwrap().info_hash, hash());
        let same_twice = format!("magnet:?xt=urn:btih:{HEX}&xt.2=urn:btih:{B32}");
        assert_eq!(Magnet::parse(&same_twice).unwrap().info_hash, hash());
    }

    #[test]
    fn bad_links_say_what_is_wrong() {
        let v2 = format!("magnet:?xt=urn:btmh:1220{}", "ab".repeat(32));
        let two = format!("magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{}", "0".repeat(40));
        let cases: Vec<(String, MagnetError)> = vec![
            (String::new(), MagnetError::NotMagnet),
            (
                format!("http://x/?xt=urn:btih:{HEX}"),
                MagnetError::NotMagnet,
            ),
            (format!("magnet:xt=urn:btih:{HEX}"), MagnetError::NotMagnet),
            (
                "magnet:?dn=name&tr=udp://t:1".into(),
                MagnetError::NoExactTopic,
            ),
            ("magnet:?".into(), MagnetError::NoExactTopic),
            (v2, MagnetError::V2Only),
            (
                "magnet:?xt=urn:ed2k:31d6cfe0d16ae931".into(),
                MagnetError::UnsupportedTopic("urn:ed2k:31d6cfe0d16ae931".into()),
            ),
            (
                "magnet:?xt=urn:btih:abcd".into(),
                MagnetError::HashLength(4),
            ),
            (
                format!("magnet:?xt=urn:btih:{HEX}00"),
                MagnetError::HashLength(42),
            ),
            (
                format!("magnet:?xt=urn:btih:{}", "g".repeat(40)),
                MagnetError::HashNotHex("g".repeat(40)),
            ),
            (
                format!("magnet:?xt=urn:btih:{}", "1".repeat(32)),
                MagnetError::HashNotBase32("1".repeat(32)),
            ),
            (
                format!("magnet:?xt=urn:btih:{}é", "a".repeat(38)),
                MagnetError::HashNotHex(format!("{}é", "a".repeat(38))),
            ),
            (
                two,
                MagnetError::ConflictingHashes(hash(), InfoHash([0; 20])),
            ),
        ];
        for (link, err) in cases {
            assert_eq!(Magnet::parse(&link), Err(err), "{link}");
        }
    }

    #[test]
    fn errors_are_one_line() {
        for e in [
            MagnetError::NotMagnet,
            MagnetError::V2Only,
            MagnetError::UnsupportedTopic("a\nb".into()),
        ] {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        assert_eq!(
            MagnetError::V2Only.to_string(),
            "v2-only magnet links are not supported (the link has urn:btmh: but no urn:btih:)"
        );
    }
}
