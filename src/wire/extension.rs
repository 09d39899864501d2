//! Payloads of BEP 10 extension messages: the extended handshake, `ut_metadata` (BEP 9) and
//! `ut_pex` (BEP 11). Pure encode/decode of the bytes inside [`Message::Extended`]; the framing
//! (message id 20, then the extension id byte) is [`super::message`]'s.
//!
//! Extension ids are per direction: a peer sends us `ut_metadata` messages under the id *we*
//! chose in our handshake, and we send under the id from *its* handshake.
//!
//! Everything decoded here is hostile input: sizes and piece numbers are checked against the
//! BEP 9 limits, so what leaves this module can index a buffer without further checks.
//!
//! Two bencode libraries, one per direction. What we send is a struct named after its keys,
//! bencoded by serde_bencode, which sorts the keys as BEP 3 wants. What peers send is read with
//! our own [`crate::bencode`], which bounds nesting and refuses trailing bytes and non-canonical
//! integers where serde_bencode does not (16 MiB of `l` under an unknown key overflows its
//! stack). serde_bencode would also read a list as a struct, and fail a whole dictionary over one
//! key that is not UTF-8 or one value of the wrong type, where BEP 10 has us ignore unknown keys
//! and malformed advice. And a `ut_metadata` data message needs its dictionary's end offset.
//!
//! [`Message::Extended`]: super::Message::Extended

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use serde::{Serialize, Serializer};
use thiserror::Error;

use crate::bencode::{self, BencodeError, Dict, Value};

/// The extension id of the extended handshake itself.
pub const HANDSHAKE_ID: u8 = 0;
pub const UT_METADATA: &str = "ut_metadata";
pub const UT_PEX: &str = "ut_pex";

/// Our id for `ut_metadata`, in our extended handshake: peers send their requests, and the
/// pieces we ask for, under it.
pub const OUR_UT_METADATA: u8 = 1;
/// `v` in our extended handshake: client name and version.
pub const CLIENT: &str = concat!("btfs ", env!("CARGO_PKG_VERSION"));

/// BEP 9 moves metadata in pieces of 16 KiB; only the last one may be shorter.
pub const METADATA_PIECE_LEN: u32 = 16 * 1024;
/// Larger metadata is refused: a peer announcing more would make us buffer it all. An info
/// dictionary takes about 20 bytes per piece: 32 MiB is 1.6 million pieces, so every torrent
/// we mount from a file (1,000,000 pieces tested) can come by magnet too (libtorrent: 30 MiB).
pub const MAX_METADATA_SIZE: u32 = 32 * 1024 * 1024;
/// At most this many peers are read from each list of a PEX message (BEP 11 says senders put at
/// most 50), so one peer cannot flood the candidate list.
pub const MAX_PEX_PEERS: usize = 200;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ExtensionError {
    #[error("extension message is not valid bencode: {0}")]
    Bencode(#[from] BencodeError),
    #[error("extension message is not a bencoded dictionary")]
    NotADictionary,
    #[error("extension message has no '{0}'")]
    MissingKey(&'static str),
    #[error("'{key}' in extension message is not {expected}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
    },
    #[error("extension id {id} for '{name}' is out of range (0 to 255)")]
    ExtensionId { name: &'static str, id: i64 },
    #[error("metadata size {0} is out of range (1 byte to {MAX_METADATA_SIZE} bytes)")]
    MetadataSize(i64),
    #[error("metadata piece {0} is out of range")]
    MetadataPiece(i64),
    #[error("metadata piece {piece} is past the end of {total_size} bytes of metadata")]
    PiecePastEnd { piece: u32, total_size: u32 },
    #[error("metadata piece {piece} carries {len} bytes, expected {expected}")]
    DataLength {
        piece: u32,
        len: usize,
        expected: u32,
    },
    /// BEP 9 says to ignore an unknown `msg_type`, not to drop the peer for it.
    #[error("unknown ut_metadata msg_type {0}")]
    UnknownMsgType(i64),
    #[error("{0} bytes after a ut_metadata request or reject")]
    Trailing(usize),
    #[error("'{key}' in a PEX message has {len} bytes, not a multiple of {unit}")]
    PexLength {
        key: &'static str,
        len: usize,
        unit: usize,
    },
}

/// Pieces in `size` bytes of metadata.
pub fn metadata_piece_count(size: u32) -> u32 {
    size.div_ceil(METADATA_PIECE_LEN)
}

/// Length of metadata piece `piece` of `size` bytes; `None` past the end.
pub fn metadata_piece_len(size: u32, piece: u32) -> Option<u32> {
    (piece < metadata_piece_count(size))
        .then(|| (size - piece * METADATA_PIECE_LEN).min(METADATA_PIECE_LEN))
}

/// The extended handshake (extension id 0). Unknown keys are ignored; so are malformed
/// advisory values (`v`, `p`, `reqq`, `yourip`), which only inform. A malformed `m` entry we use
/// or a `metadata_size` out of range is an error: libtorrent drops such peers too.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtendedHandshake {
    /// The id to send `ut_metadata` messages under; `None` if absent or 0 (disabled).
    pub ut_metadata: Option<u8>,
    /// The id to send `ut_pex` messages under; `None` if absent or 0 (disabled).
    pub ut_pex: Option<u8>,
    /// Size of the info dictionary, from a peer that has it (BEP 9).
    pub metadata_size: Option<u32>,
    /// `v`: client name and version; untrusted text, escape it before printing.
    pub client: Option<String>,
    /// `p`: the port the peer listens on.
    pub port: Option<u16>,
    /// `reqq`: how many outstanding requests the peer queues.
    pub reqq: Option<u32>,
    /// `yourip`: our address as the peer sees it.
    pub yourip: Option<IpAddr>,
}

/// The extended handshake as sent, under its BEP 10 keys; `m` is there even when empty.
#[derive(Serialize)]
struct HandshakeDict<'a> {
    m: ExtensionIds,
    metadata_size: Option<u32>,
    p: Option<u16>,
    reqq: Option<u32>,
    v: Option<&'a str>,
    yourip: Option<ByteString>,
}

/// `m`: the extensions we speak, by name, with the ids to send them under.
#[derive(Serialize)]
struct ExtensionIds {
    ut_metadata: Option<u8>,
    ut_pex: Option<u8>,
}

impl ExtendedHandshake {
    /// The bencoded payload.
    pub fn encode(&self) -> Vec<u8> {
        to_bencode(&HandshakeDict {
            m: ExtensionIds {
                ut_metadata: self.ut_metadata,
                ut_pex: self.ut_pex,
            },
            metadata_size: self.metadata_size,
            p: self.port,
            reqq: self.reqq,
            v: self.client.as_deref(),
            yourip: self.yourip.map(|ip| {
                ByteString(match ip {
                    IpAddr::V4(ip) => ip.octets().to_vec(),
                    IpAddr::V6(ip) => ip.octets().to_vec(),
                })
            }),
        })
    }

    pub fn decode(payload: &[u8]) -> Result<ExtendedHandshake, ExtensionError> {
        let value = bencode::decode(payload)?;
        let d = value.as_dict().ok_or(ExtensionError::NotADictionary)?;
        let (ut_metadata, ut_pex) = match d.get("m") {
            None => (None, None),
            Some(m) => {
                let m = m.as_dict().ok_or(ExtensionError::WrongType {
                    key: "m",
                    expected: "a dictionary",
                })?;
                (extension_id(m, UT_METADATA)?, extension_id(m, UT_PEX)?)
            }
        };
        let metadata_size = match d.get("metadata_size") {
            None => None,
            Some(v) => Some(metadata_size(v.as_int().ok_or(
                ExtensionError::WrongType {
                    key: "metadata_size",
                    expected: "an integer",
                },
            )?)?),
        };
        let int = |key| d.get(key).and_then(Value::as_int);
        Ok(ExtendedHandshake {
            ut_metadata,
            ut_pex,
            metadata_size,
            client: d
                .get("v")
                .and_then(Value::as_bytes)
                .map(|b| String::from_utf8_lossy(b).into_owned()),
            port: int("p")
                .and_then(|p| u16::try_from(p).ok())
                .filter(|&p| p != 0),
            reqq: int("reqq")
                .and_then(|n| u32::try_from(n).ok())
                .filter(|&n| n != 0),
            yourip: d
                .get("yourip")
                .and_then(Value::as_bytes)
                .and_then(|b| match b.len() {
                    4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
                    _ => None,
                }),
        })
    }
}

/// An id from the `m` dictionary; 0 means the extension is disabled.
fn extension_id(m: &Dict<'_>, name: &'static str) -> Result<Option<u8>, ExtensionError> {
    let Some(v) = m.get(name) else {
        return Ok(None);
    };
    let id = v.as_int().ok_or(ExtensionError::WrongType {
        key: name,
        expected: "an integer",
    })?;
    let id = u8::try_from(id).map_err(|_| ExtensionError::ExtensionId { name, id })?;
    Ok((id != 0).then_some(id))
}

fn metadata_size(n: i64) -> Result<u32, ExtensionError> {
    u32::try_from(n)
        .ok()
        .filter(|&s| s > 0 && s <= MAX_METADATA_SIZE)
        .ok_or(ExtensionError::MetadataSize(n))
}

fn required_int(d: &Dict<'_>, key: &'static str) -> Result<i64, ExtensionError> {
    d.get(key)
        .ok_or(ExtensionError::MissingKey(key))?
        .as_int()
        .ok_or(ExtensionError::WrongType {
            key,
            expected: "an integer",
        })
}

const MSG_REQUEST: i64 = 0;
const MSG_DATA: i64 = 1;
const MSG_REJECT: i64 = 2;

/// A `ut_metadata` message (BEP 9). A decoded `Data` has been checked: `total_size` within
/// [`MAX_METADATA_SIZE`], `piece` inside it, and `data` exactly that piece's length.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum MetadataMsg<'a> {
    Request {
        piece: u32,
    },
    Data {
        piece: u32,
        total_size: u32,
        data: &'a [u8],
    },
    Reject {
        piece: u32,
    },
}

/// The dictionary that starts every `ut_metadata` message, as sent.
#[derive(Serialize)]
struct MetadataHeader {
    msg_type: i64,
    piece: u32,
    /// Only in a data message.
    total_size: Option<u32>,
}

impl<'a> MetadataMsg<'a> {
    /// The bencoded header, followed for `Data` by the raw piece bytes.
    pub fn encode(&self) -> Vec<u8> {
        let (msg_type, piece, total_size, data) = match *self {
            MetadataMsg::Request { piece } => (MSG_REQUEST, piece, None, &[][..]),
            MetadataMsg::Data {
                piece,
                total_size,
                data,
            } => (MSG_DATA, piece, Some(total_size), data),
            MetadataMsg::Reject { piece } => (MSG_REJECT, piece, None, &[][..]),
        };
        let mut out = to_bencode(&MetadataHeader {
            msg_type,
            piece,
            total_size,
        });
        out.extend_from_slice(data);
        out
    }

    /// Decodes a payload; [`ExtensionError::UnknownMsgType`] is for the caller to ignore.
    pub fn decode(payload: &'a [u8]) -> Result<MetadataMsg<'a>, ExtensionError> {
        let (value, used) = bencode::decode_prefix(payload)?;
        let d = value.as_dict().ok_or(ExtensionError::NotADictionary)?;
        let msg_type = required_int(d, "msg_type")?;
        if !(MSG_REQUEST..=MSG_REJECT).contains(&msg_type) {
            return Err(ExtensionError::UnknownMsgType(msg_type));
        }
        let raw_piece = required_int(d, "piece")?;
        let piece = u32::try_from(raw_piece)
            .ok()
            .filter(|&p| p < metadata_piece_count(MAX_METADATA_SIZE))
            .ok_or(ExtensionError::MetadataPiece(raw_piece))?;
        let rest = &payload[used..];
        if msg_type != MSG_DATA {
            if !rest.is_empty() {
                return Err(ExtensionError::Trailing(rest.len()));
            }
            return Ok(if msg_type == MSG_REQUEST {
                MetadataMsg::Request { piece }
            } else {
                MetadataMsg::Reject { piece }
            });
        }
        let total_size = metadata_size(required_int(d, "total_size")?)?;
        let expected = metadata_piece_len(total_size, piece)
            .ok_or(ExtensionError::PiecePastEnd { piece, total_size })?;
        if rest.len() != expected as usize {
            return Err(ExtensionError::DataLength {
                piece,
                len: rest.len(),
                expected,
            });
        }
        Ok(MetadataMsg::Data {
            piece,
            total_size,
            data: rest,
        })
    }
}

/// Written by hand so logging a `Data` prints its length, not 16 KiB of bytes.
impl fmt::Debug for MetadataMsg<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetadataMsg::Request { piece } => write!(f, "Request {{ piece: {piece} }}"),
            MetadataMsg::Data {
                piece,
                total_size,
                data,
            } => write!(
                f,
                "Data {{ piece: {piece}, total_size: {total_size}, len: {} }}",
                data.len()
            ),
            MetadataMsg::Reject { piece } => write!(f, "Reject {{ piece: {piece} }}"),
        }
    }
}

/// The per-peer flags byte of `added.f` (BEP 11).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PexFlags(pub u8);

impl PexFlags {
    pub const ENCRYPTION: PexFlags = PexFlags(0x01);
    /// A seed or partial seed: it uploads only.
    pub const SEED: PexFlags = PexFlags(0x02);
    pub const UTP: PexFlags = PexFlags(0x04);
    pub const HOLEPUNCH: PexFlags = PexFlags(0x08);
    /// The sender reached it by an outgoing connection, so it accepts connections.
    pub const REACHABLE: PexFlags = PexFlags(0x10);

    pub fn contains(self, other: PexFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// A `ut_pex` message: peers the sender connected to and dropped since its last one.
/// Decoding keeps addresses as sent (port 0 included): they are candidates, not trusted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pex {
    pub added: Vec<(SocketAddr, PexFlags)>,
    pub dropped: Vec<SocketAddr>,
}

/// A `ut_pex` message as sent: compact peer lists, one flags byte per added peer, and the
/// IPv6 lists only when they hold something.
#[derive(Default, Serialize)]
struct PexDict {
    added: ByteString,
    #[serde(rename = "added.f")]
    added_f: ByteString,
    #[serde(skip_serializing_if = "ByteString::is_empty")]
    added6: ByteString,
    #[serde(rename = "added6.f", skip_serializing_if = "ByteString::is_empty")]
    added6_f: ByteString,
    dropped: ByteString,
    #[serde(skip_serializing_if = "ByteString::is_empty")]
    dropped6: ByteString,
}

impl Pex {
    pub fn encode(&self) -> Vec<u8> {
        let mut d = PexDict::default();
        for (addr, flags) in &self.added {
            let (peers, f) = match addr {
                SocketAddr::V4(_) => (&mut d.added, &mut d.added_f),
                SocketAddr::V6(_) => (&mut d.added6, &mut d.added6_f),
            };
            compact(addr, &mut peers.0);
            f.0.push(flags.0);
        }
        for addr in &self.dropped {
            let peers = match addr {
                SocketAddr::V4(_) => &mut d.dropped,
                SocketAddr::V6(_) => &mut d.dropped6,
            };
            compact(addr, &mut peers.0);
        }
        to_bencode(&d)
    }

    /// Reads at most [`MAX_PEX_PEERS`] from each list. A flags string whose length does not
    /// match its list is ignored (flags then read as 0), as libtorrent does.
    pub fn decode(payload: &[u8]) -> Result<Pex, ExtensionError> {
        let value = bencode::decode(payload)?;
        let d = value.as_dict().ok_or(ExtensionError::NotADictionary)?;
        let mut pex = Pex::default();
        for (key, flags_key) in [("added", "added.f"), ("added6", "added6.f")] {
            let peers = peers(d, key)?;
            let flags = d
                .get(flags_key)
                .and_then(Value::as_bytes)
                .filter(|f| f.len() == peers.len());
            pex.added.extend(
                peers
                    .iter()
                    .enumerate()
                    .map(|(i, &addr)| (addr, PexFlags(flags.map_or(0, |f| f[i])))),
            );
        }
        pex.dropped = peers(d, "dropped")?;
        pex.dropped.extend(peers(d, "dropped6")?);
        Ok(pex)
    }
}

fn compact(addr: &SocketAddr, out: &mut Vec<u8>) {
    match addr {
        SocketAddr::V4(a) => out.extend_from_slice(&a.ip().octets()),
        SocketAddr::V6(a) => out.extend_from_slice(&a.ip().octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// A compact peer list (6 bytes per IPv4 peer, 18 per IPv6), `key` ending in `6` for IPv6.
fn peers(d: &Dict<'_>, key: &'static str) -> Result<Vec<SocketAddr>, ExtensionError> {
    let Some(v) = d.get(key) else {
        return Ok(Vec::new());
    };
    let bytes = v.as_bytes().ok_or(ExtensionError::WrongType {
        key,
        expected: "a byte string",
    })?;
    let unit = if key.ends_with('6') { 18 } else { 6 };
    if bytes.len() % unit != 0 {
        return Err(ExtensionError::PexLength {
            key,
            len: bytes.len(),
            unit,
        });
    }
    Ok(bytes
        .chunks_exact(unit)
        .take(MAX_PEX_PEERS)
        .map(|c| {
            let (ip, port) = c.split_at(unit - 2);
            let port = u16::from_be_bytes([port[0], port[1]]);
            match <[u8; 16]>::try_from(ip) {
                Ok(ip6) => SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip6), port, 0, 0)),
                Err(_) => SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]),
                    port,
                )),
            }
        })
        .collect())
}

/// Bencodes one of the dictionaries we send. serde_bencode sorts the keys and leaves out `None`
/// fields; it fails only on floating-point numbers, which these structs do not hold.
fn to_bencode(dict: &impl Serialize) -> Vec<u8> {
    serde_bencode::to_bytes(dict).expect("integers and byte strings always bencode")
}

/// A bencode byte string (serde writes a bare `Vec<u8>` as a list of integers).
#[derive(Default)]
struct ByteString(Vec<u8>);

impl ByteString {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for ByteString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}
