//! The bencoded reply of an HTTP tracker (BEP 3), with compact (BEP 23) or dictionary peers
//! and `peers6` (BEP 7), decoded into an [`AnnounceResponse`]. Pure: bytes in, typed out.
//!
//! serde_bencode reads the keys into [`Reply`], but only after `crate::bencode` has checked
//! the body, because on its own serde_bencode
//! - recurses once per nesting level without a limit: 100,000 nested lists overflow the stack
//!   and abort the process, even under a key nobody reads;
//! - ignores bytes after the value, and reads non-canonical integers (`i+5e`, `i05e`, `i-0e`)
//!   and lengths (`05:`);
//! - lets a derived struct be read from a list, field by field (see [`Dict`]);
//! - fails the whole struct on a non-UTF-8 key at the top, or on one value of a wrong type.
//!
//! `crate::bencode` bounds depth and value count and refuses non-canonical numbers and
//! repeated keys; [`Checked`] keeps a value of the wrong type from failing the rest.

use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor, value::MapAccessDeserializer};

use super::types::{AnnounceResponse, MAX_INTERVAL, TrackerError, clamp_interval};
use crate::bencode;

/// The keys of a reply that we read; any others are ignored. Each is [`Checked`], so a
/// `failure reason` counts whatever else the reply holds, and a botched optional key reads as
/// absent.
#[derive(Deserialize)]
struct Reply {
    #[serde(rename = "failure reason")]
    failure_reason: Option<Checked<Bytes>>,
    interval: Option<Checked<u64>>,
    #[serde(rename = "min interval")]
    min_interval: Option<Checked<u64>>,
    complete: Option<Checked<u32>>,
    incomplete: Option<Checked<u32>>,
    peers: Option<Checked<Peers>>,
    peers6: Option<Checked<Bytes>>,
    #[serde(rename = "warning message")]
    warning_message: Option<Checked<Bytes>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Peers {
    /// 6 bytes a peer (BEP 23).
    Compact(Bytes),
    /// `{ip, port, peer id}` dictionaries; unusable ones are skipped.
    Dicts(Vec<Checked<Dict<DictPeer>>>),
}

#[derive(Deserialize)]
struct DictPeer {
    ip: String,
    port: u16,
}

impl DictPeer {
    /// `None` for a host name or port 0.
    fn addr(&self) -> Option<SocketAddr> {
        let ip: IpAddr = self.ip.parse().ok()?;
        (self.port != 0).then_some(SocketAddr::new(ip, self.port))
    }
}

/// Decodes a tracker reply body. Bytes after the bencoded value are ignored: some trackers end
/// the body with a newline.
pub(super) fn parse_reply(body: &[u8]) -> Result<AnnounceResponse, TrackerError> {
    let (value, used) =
        bencode::decode_prefix(body).map_err(|e| malformed(format!("not bencode ({e})")))?;
    if value.as_dict().is_none() {
        return Err(malformed("reply is not a dictionary"));
    }
    // Read through `Checked` so the top-level keys are buffered as bytes: read directly, a
    // non-UTF-8 key would fail the reply (see the module doc).
    let reply: Checked<Reply> = serde_bencode::from_bytes(&body[..used])
        .map_err(|e| malformed(format!("not bencode ({e})")))?;
    let Checked::Valid(reply) = reply else {
        return Err(malformed("reply is not a dictionary"));
    };
    match reply.failure_reason {
        None => {}
        Some(Checked::Valid(Bytes(reason))) => {
            return Err(TrackerError::Failure(
                String::from_utf8_lossy(&reason).into_owned(),
            ));
        }
        Some(Checked::Invalid(_)) => return Err(malformed("'failure reason' is not a string")),
    }
    let interval = match reply.interval {
        Some(Checked::Valid(secs)) => secs,
        Some(Checked::Invalid(_)) => {
            return Err(malformed("'interval' is not a non-negative integer"));
        }
        None => return Err(malformed("no 'interval'")),
    };
    let mut peers = match reply.peers {
        None => Vec::new(),
        Some(Checked::Valid(Peers::Compact(Bytes(b)))) => compact_peers(&b, 6)?,
        Some(Checked::Valid(Peers::Dicts(list))) => list
            .into_iter()
            .filter_map(|p| p.valid()?.0.addr())
            .collect(),
        Some(Checked::Invalid(_)) => {
            return Err(malformed("'peers' is neither a string nor a list"));
        }
    };
    match reply.peers6 {
        None => {}
        Some(Checked::Valid(Bytes(b))) => peers.extend(compact_peers(&b, 18)?),
        Some(Checked::Invalid(_)) => return Err(malformed("'peers6' is not a string")),
    }
    Ok(AnnounceResponse {
        interval: clamp_interval(interval),
        min_interval: Checked::optional(reply.min_interval)
            .map(|s| Duration::from_secs(s).min(MAX_INTERVAL)),
        peers,
        seeders: Checked::optional(reply.complete),
        leechers: Checked::optional(reply.incomplete),
        warning: Checked::optional(reply.warning_message)
            .map(|Bytes(w)| String::from_utf8_lossy(&w).into_owned()),
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

fn malformed(what: impl Into<String>) -> TrackerError {
    TrackerError::Malformed(what.into())
}

/// A value read as `T` if it is one, else skipped whole and kept as `Invalid`, so one wrong
/// value does not fail its parent. serde buffers the value to try `T` on it.
#[derive(Deserialize)]
#[serde(untagged)]
enum Checked<T> {
    Valid(T),
    Invalid(IgnoredAny),
}

impl<T> Checked<T> {
    fn valid(self) -> Option<T> {
        match self {
            Checked::Valid(v) => Some(v),
            Checked::Invalid(_) => None,
        }
    }

    /// An optional key: absent or invalid are both `None`.
    fn optional(key: Option<Self>) -> Option<T> {
        key.and_then(Checked::valid)
    }
}

/// A byte string (not necessarily UTF-8). Without it a `Vec<u8>` would be read as a list.
struct Bytes(Vec<u8>);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl Visitor<'_> for BytesVisitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(BytesVisitor)
    }
}

/// A struct read only from a dictionary: a derived `Deserialize` also takes a list, one element
/// a field, which no BEP means.
struct Dict<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Dict<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DictVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for DictVisitor<T> {
            type Value = Dict<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a dictionary")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Dict<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(Dict)
            }
        }
        d.deserialize_map(DictVisitor(PhantomData))
    }
}
