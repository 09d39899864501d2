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
//! [`Message::Extended`]: super::Message::Extended

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use thiserror::Error;

use crate::bencode::{self, BencodeError, Dict, Encoder, Value};

/// The extension id of the extended handshake itself.
pub const HANDSHAKE_ID: u8 = 0;
pub const UT_METADATA: &str = "ut_metadata";
pub const UT_PEX: &str = "ut_pex";

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

impl ExtendedHandshake {
    /// The bencoded payload, keys sorted as BEP 3 requires.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.begin_dict().str("m").begin_dict();
        if let Some(id) = self.ut_metadata {
            e.str(UT_METADATA).int(id.into());
        }
        if let Some(id) = self.ut_pex {
            e.str(UT_PEX).int(id.into());
        }
        e.end();
        if let Some(size) = self.metadata_size {
            e.str("metadata_size").int(size.into());
        }
        if let Some(port) = self.port {
            e.str("p").int(port.into());
        }
        if let Some(reqq) = self.reqq {
            e.str("reqq").int(reqq.into());
        }
        if let Some(client) = &self.client {
            e.str("v").str(client);
        }
        match self.yourip {
            Some(IpAddr::V4(ip)) => e.str("yourip").bytes(&ip.octets()),
            Some(IpAddr::V6(ip)) => e.str("yourip").bytes(&ip.octets()),
            None => &mut e,
        };
        e.end().finish()
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

impl<'a> MetadataMsg<'a> {
    /// The bencoded header, followed for `Data` by the raw piece bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        let (msg_type, piece) = match *self {
            MetadataMsg::Request { piece } => (MSG_REQUEST, piece),
            MetadataMsg::Data { piece, .. } => (MSG_DATA, piece),
            MetadataMsg::Reject { piece } => (MSG_REJECT, piece),
        };
        e.begin_dict()
            .str("msg_type")
            .int(msg_type)
            .str("piece")
            .int(piece.into());
        if let MetadataMsg::Data {
            total_size, data, ..
        } = *self
        {
            e.str("total_size").int(total_size.into()).end().raw(data);
        } else {
            e.end();
        }
        e.finish()
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

impl Pex {
    /// `added`, `added.f` and `dropped` always, `added6`, `added6.f` and `dropped6` when they
    /// hold something.
    pub fn encode(&self) -> Vec<u8> {
        let mut lists: [(Vec<u8>, Vec<u8>); 2] = Default::default();
        for (addr, flags) in &self.added {
            let (peers, f) = &mut lists[usize::from(addr.is_ipv6())];
            compact(addr, peers);
            f.push(flags.0);
        }
        let mut dropped: [Vec<u8>; 2] = Default::default();
        for addr in &self.dropped {
            compact(addr, &mut dropped[usize::from(addr.is_ipv6())]);
        }
        let [(added4, flags4), (added6, flags6)] = lists;
        let mut e = Encoder::new();
        e.begin_dict();
        e.str("added").bytes(&added4).str("added.f").bytes(&flags4);
        if !added6.is_empty() {
            e.str("added6")
                .bytes(&added6)
                .str("added6.f")
                .bytes(&flags6);
        }
        e.str("dropped").bytes(&dropped[0]);
        if !dropped[1].is_empty() {
            e.str("dropped6").bytes(&dropped[1]);
        }
        e.end().finish()
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// BEP 10's example handshake (an old `LT_metadata` entry we do not read, and µTorrent's `v`).
    const BEP10_HANDSHAKE: &[u8] =
        b"d1:md11:LT_metadatai1e6:ut_pexi2ee1:pi6881e1:v13:\xc2\xb5Torrent 1.2e";
    /// BEP 9's example handshake `{'m': {'ut_metadata': 3}, 'metadata_size': 31235}`.
    const BEP9_HANDSHAKE: &[u8] = b"d1:md11:ut_metadatai3ee13:metadata_sizei31235ee";

    fn data_msg(piece: u32, total: u32, len: usize) -> Vec<u8> {
        let mut out = format!("d8:msg_typei1e5:piecei{piece}e10:total_sizei{total}ee").into_bytes();
        out.extend((0..len).map(|i| i as u8));
        out
    }

    #[test]
    fn decodes_the_bep_handshake_examples() {
        let h = ExtendedHandshake::decode(BEP10_HANDSHAKE).unwrap();
        assert_eq!(h.ut_metadata, None);
        assert_eq!(h.ut_pex, Some(2));
        assert_eq!(h.port, Some(6881));
        assert_eq!(h.client.as_deref(), Some("µTorrent 1.2"));
        assert_eq!(h.metadata_size, None);
        let h = ExtendedHandshake::decode(BEP9_HANDSHAKE).unwrap();
        assert_eq!((h.ut_metadata, h.metadata_size), (Some(3), Some(31235)));
    }

    #[test]
    fn handshake_encodes_sorted_keys_and_round_trips() {
        let h = ExtendedHandshake {
            ut_metadata: Some(1),
            ut_pex: Some(2),
            metadata_size: Some(31235),
            client: Some("btfs".into()),
            port: Some(6881),
            reqq: Some(250),
            yourip: Some(IpAddr::from([127, 0, 0, 1])),
        };
        let bytes = h.encode();
        assert_eq!(
            bytes,
            b"d1:md11:ut_metadatai1e6:ut_pexi2ee13:metadata_sizei31235e1:pi6881e\
              4:reqqi250e1:v4:btfs6:yourip4:\x7f\x00\x00\x01e"
        );
        assert_eq!(ExtendedHandshake::decode(&bytes), Ok(h));
        let v6 = ExtendedHandshake {
            yourip: Some("2001:db8::1".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(v6.encode().len(), "d1:mde6:yourip16:e".len() + 16);
        assert_eq!(ExtendedHandshake::decode(&v6.encode()), Ok(v6));
        assert_eq!(ExtendedHandshake::default().encode(), b"d1:mdee");
    }

    #[test]
    fn handshake_ignores_bad_advice_but_refuses_bad_ids_and_sizes() {
        let h = ExtendedHandshake::decode(
            b"d1:md11:ut_metadatai0e6:ut_pexi0ee1:pi70000e4:reqqi-5e1:vi3e6:yourip3:abce",
        )
        .unwrap();
        assert_eq!(h, ExtendedHandshake::default());
        let cases: &[(&[u8], ExtensionError)] = &[
            (b"", ExtensionError::Bencode(BencodeError::Eof(0))),
            (b"le", ExtensionError::NotADictionary),
            (
                b"d1:mi1ee",
                ExtensionError::WrongType {
                    key: "m",
                    expected: "a dictionary",
                },
            ),
            (
                b"d1:md11:ut_metadatai256eee",
                ExtensionError::ExtensionId {
                    name: UT_METADATA,
                    id: 256,
                },
            ),
            (
                b"d1:md6:ut_pexi-1eee",
                ExtensionError::ExtensionId {
                    name: UT_PEX,
                    id: -1,
                },
            ),
            (
                b"d1:md11:ut_metadata1:xee",
                ExtensionError::WrongType {
                    key: UT_METADATA,
                    expected: "an integer",
                },
            ),
            (b"d13:metadata_sizei0ee", ExtensionError::MetadataSize(0)),
            (b"d13:metadata_sizei-1ee", ExtensionError::MetadataSize(-1)),
            (
                b"d13:metadata_sizei33554433ee",
                ExtensionError::MetadataSize(33_554_433),
            ),
            (
                b"d13:metadata_size1:1e",
                ExtensionError::WrongType {
                    key: "metadata_size",
                    expected: "an integer",
                },
            ),
        ];
        for (input, err) in cases {
            let got = ExtendedHandshake::decode(input);
            assert_eq!(
                got.as_ref().err(),
                Some(err),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        let max = format!("d13:metadata_sizei{MAX_METADATA_SIZE}ee");
        let h = ExtendedHandshake::decode(max.as_bytes()).unwrap();
        assert_eq!(h.metadata_size, Some(MAX_METADATA_SIZE));
    }

    #[test]
    fn decodes_the_bep9_messages() {
        let req = b"d8:msg_typei0e5:piecei0ee";
        let rej = b"d8:msg_typei2e5:piecei0ee";
        assert_eq!(
            MetadataMsg::decode(req),
            Ok(MetadataMsg::Request { piece: 0 })
        );
        assert_eq!(
            MetadataMsg::decode(rej),
            Ok(MetadataMsg::Reject { piece: 0 })
        );
        assert_eq!(MetadataMsg::Request { piece: 0 }.encode(), req);
        assert_eq!(MetadataMsg::Reject { piece: 0 }.encode(), rej);
        // BEP 9's data example: 34256 bytes of metadata, so pieces of 16384, 16384 and 1488.
        for (piece, len) in [(0, 16384), (1, 16384), (2, 1488)] {
            let bytes = data_msg(piece, 34256, len);
            let msg = MetadataMsg::decode(&bytes).unwrap();
            let MetadataMsg::Data {
                data, total_size, ..
            } = msg
            else {
                panic!("not data: {msg:?}");
            };
            assert_eq!((data.len(), total_size), (len, 34256));
            assert_eq!(data, &bytes[bytes.len() - len..]);
            assert_eq!(msg.encode(), bytes);
            assert_eq!(
                format!("{msg:?}"),
                format!("Data {{ piece: {piece}, total_size: 34256, len: {len} }}")
            );
        }
    }

    #[test]
    fn refuses_malformed_metadata_messages() {
        let cases: Vec<(Vec<u8>, ExtensionError)> = vec![
            (b"i3e".to_vec(), ExtensionError::NotADictionary),
            (
                b"d8:msg_typei0e".to_vec(),
                ExtensionError::Bencode(BencodeError::Eof(14)),
            ),
            (
                b"d8:msg_typei0ee".to_vec(),
                ExtensionError::MissingKey("piece"),
            ),
            (
                b"d5:piecei0ee".to_vec(),
                ExtensionError::MissingKey("msg_type"),
            ),
            (
                b"d8:msg_typei7e5:piecei0ee".to_vec(),
                ExtensionError::UnknownMsgType(7),
            ),
            (
                b"d8:msg_typei0e5:piecei-1ee".to_vec(),
                ExtensionError::MetadataPiece(-1),
            ),
            (
                b"d8:msg_typei2e5:piecei2048ee".to_vec(),
                ExtensionError::MetadataPiece(2048),
            ),
            (
                b"d8:msg_typei0e5:piece1:0e".to_vec(),
                ExtensionError::WrongType {
                    key: "piece",
                    expected: "an integer",
                },
            ),
            (
                b"d8:msg_typei0e5:piecei0eeX".to_vec(),
                ExtensionError::Trailing(1),
            ),
            (
                b"d8:msg_typei1e5:piecei0eeXX".to_vec(),
                ExtensionError::MissingKey("total_size"),
            ),
            (data_msg(0, 0, 0), ExtensionError::MetadataSize(0)),
            (
                data_msg(0, MAX_METADATA_SIZE + 1, 16384),
                ExtensionError::MetadataSize(33_554_433),
            ),
            (
                data_msg(3, 34256, 0),
                ExtensionError::PiecePastEnd {
                    piece: 3,
                    total_size: 34256,
                },
            ),
            (
                data_msg(0, 34256, 100),
                ExtensionError::DataLength {
                    piece: 0,
                    len: 100,
                    expected: 16384,
                },
            ),
            (
                data_msg(2, 34256, 16384),
                ExtensionError::DataLength {
                    piece: 2,
                    len: 16384,
                    expected: 1488,
                },
            ),
        ];
        for (input, err) in cases {
            assert_eq!(
                MetadataMsg::decode(&input).err(),
                Some(err),
                "{}",
                String::from_utf8_lossy(&input)
            );
        }
    }

    /// `added`: 1.2.3.4:6881 (flags: seed | reachable) and 10.0.0.1:80 (encryption);
    /// `added6`: [::1]:6881 (uTP); `dropped`: 5.6.7.8:1; `dropped6`: [::2]:2.
    fn pex_fixture() -> Vec<u8> {
        let mut v = b"d5:added12:\x01\x02\x03\x04\x1a\xe1\x0a\x00\x00\x01\x00\x50".to_vec();
        v.extend(b"7:added.f2:\x12\x01");
        v.extend(b"6:added618:");
        v.extend([0; 15]);
        v.extend(b"\x01\x1a\xe1");
        v.extend(b"8:added6.f1:\x04");
        v.extend(b"7:dropped6:\x05\x06\x07\x08\x00\x01");
        v.extend(b"8:dropped618:");
        v.extend([0; 15]);
        v.extend(b"\x02\x00\x02e");
        v
    }

    #[test]
    fn pex_decodes_and_encodes_the_fixture() {
        let pex = Pex::decode(&pex_fixture()).unwrap();
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            pex.added,
            [
                (addr("1.2.3.4:6881"), PexFlags(0x12)),
                (addr("10.0.0.1:80"), PexFlags::ENCRYPTION),
                (addr("[::1]:6881"), PexFlags::UTP),
            ]
        );
        assert!(pex.added[0].1.contains(PexFlags::SEED));
        assert!(pex.added[0].1.contains(PexFlags::REACHABLE));
        assert!(!pex.added[0].1.contains(PexFlags::ENCRYPTION));
        assert_eq!(pex.dropped, [addr("5.6.7.8:1"), addr("[::2]:2")]);
        assert_eq!(pex.encode(), pex_fixture());
        assert_eq!(
            Pex::default().encode(),
            b"d5:added0:7:added.f0:7:dropped0:e"
        );
        assert_eq!(Pex::decode(b"de"), Ok(Pex::default()));
    }

    #[test]
    fn pex_refuses_bad_lists_and_tolerates_bad_flags() {
        let cases: &[(&[u8], ExtensionError)] = &[
            (
                b"d5:added5:abcdee",
                ExtensionError::PexLength {
                    key: "added",
                    len: 5,
                    unit: 6,
                },
            ),
            (
                b"d6:added66:abcdefe",
                ExtensionError::PexLength {
                    key: "added6",
                    len: 6,
                    unit: 18,
                },
            ),
            (
                b"d7:dropped1:xe",
                ExtensionError::PexLength {
                    key: "dropped",
                    len: 1,
                    unit: 6,
                },
            ),
            (
                b"d5:addedi1ee",
                ExtensionError::WrongType {
                    key: "added",
                    expected: "a byte string",
                },
            ),
            (b"l5:addede", ExtensionError::NotADictionary),
        ];
        for (input, err) in cases {
            let got = Pex::decode(input);
            assert_eq!(
                got.as_ref().err(),
                Some(err),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        let pex = Pex::decode(b"d5:added6:\x01\x02\x03\x04\x00\x017:added.f3:abce").unwrap();
        assert_eq!(pex.added, [("1.2.3.4:1".parse().unwrap(), PexFlags(0))]);
        let mut many = format!("d5:added{}:", 6 * (MAX_PEX_PEERS + 5)).into_bytes();
        many.extend(vec![7; 6 * (MAX_PEX_PEERS + 5)]);
        many.push(b'e');
        assert_eq!(Pex::decode(&many).unwrap().added.len(), MAX_PEX_PEERS);
    }

    #[test]
    fn piece_arithmetic_at_the_edges() {
        assert_eq!(metadata_piece_count(1), 1);
        assert_eq!(metadata_piece_count(16384), 1);
        assert_eq!(metadata_piece_count(16385), 2);
        assert_eq!(metadata_piece_count(MAX_METADATA_SIZE), 2048);
        assert_eq!(metadata_piece_len(16385, 1), Some(1));
        assert_eq!(metadata_piece_len(16384, 0), Some(16384));
        assert_eq!(metadata_piece_len(16384, 1), None);
        assert_eq!(metadata_piece_len(0, 0), None);
    }

    /// Every prefix and thousands of mutations of valid messages decode or fail, never panic.
    #[test]
    fn hostile_bytes_never_panic() {
        let valid = [
            BEP10_HANDSHAKE.to_vec(),
            BEP9_HANDSHAKE.to_vec(),
            data_msg(2, 34256, 1488),
            pex_fixture(),
        ];
        let decode_all = |b: &[u8]| {
            let _ = ExtendedHandshake::decode(b);
            let _ = MetadataMsg::decode(b);
            let _ = Pex::decode(b);
        };
        let mut rng = StdRng::seed_from_u64(9);
        for msg in &valid {
            for end in 0..msg.len() {
                decode_all(&msg[..end]);
            }
            for _ in 0..2000 {
                let mut m = msg.clone();
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..m.len());
                    m[i] = rng.random();
                }
                decode_all(&m);
            }
        }
    }
}
