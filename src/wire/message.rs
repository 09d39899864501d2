//! Pure encode/decode of peer messages (BEP 3, BEP 6 Fast, BEP 10 framing); the handshake is
//! in [`super::handshake`].
//!
//! A message on the wire is `<u32 length, big endian><u8 id><payload>`; length 0 is a keep-alive.
//! [`Message::decode`] takes the frame body (everything after the length prefix) as [`Bytes`], so
//! a `Piece`'s data is a slice of the read buffer, not a copy.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::WireError;
pub use super::handshake::{Handshake, PROTOCOL};

const CHOKE: u8 = 0;
const UNCHOKE: u8 = 1;
const INTERESTED: u8 = 2;
const NOT_INTERESTED: u8 = 3;
const HAVE: u8 = 4;
const BITFIELD: u8 = 5;
const REQUEST: u8 = 6;
const PIECE: u8 = 7;
const CANCEL: u8 = 8;
const PORT: u8 = 9;
const SUGGEST: u8 = 0x0d;
const HAVE_ALL: u8 = 0x0e;
const HAVE_NONE: u8 = 0x0f;
const REJECT_REQUEST: u8 = 0x10;
const ALLOWED_FAST: u8 = 0x11;
const EXTENDED: u8 = 20;

/// Frame length of a `Piece` message without its data: id, index, begin.
const PIECE_HEADER: u32 = 9;

/// One block of a piece, as named in `Request` and `Cancel`. Raw and unchecked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockRef {
    pub index: u32,
    pub begin: u32,
    pub length: u32,
}

/// A peer message. Indices, offsets and payloads are exactly what the peer sent.
///
/// Ids we do not implement decode to [`Message::Unknown`] rather than an error: peers do send them, and clients ignore them.
/// The session decides whether an unknown id is worth dropping the peer for.
#[derive(Clone, PartialEq, Eq)]
pub enum Message {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(u32),
    /// Raw bitfield bytes; the session checks them against the piece count.
    Bitfield(Bytes),
    Request(BlockRef),
    Piece {
        index: u32,
        begin: u32,
        data: Bytes,
    },
    Cancel(BlockRef),
    /// The peer's DHT port (BEP 5).
    Port(u16),
    /// BEP 6: the peer suggests we download this piece.
    Suggest(u32),
    /// BEP 6: the peer has every piece (in place of a full bitfield).
    HaveAll,
    /// BEP 6: the peer has no piece (in place of an empty bitfield).
    HaveNone,
    /// BEP 6: the peer will not serve this request of ours.
    RejectRequest(BlockRef),
    /// BEP 6: the peer would serve this piece even while it chokes us.
    AllowedFast(u32),
    /// BEP 10: `id` 0 is the extension handshake, others are the ids we assigned in ours.
    Extended {
        id: u8,
        payload: Bytes,
    },
    /// Any other message id, payload kept so it can be logged or re-encoded.
    Unknown {
        id: u8,
        payload: Bytes,
    },
}

impl Message {
    /// The message id byte; `None` for a keep-alive, which has none.
    pub fn id(&self) -> Option<u8> {
        Some(match self {
            Message::KeepAlive => return None,
            Message::Choke => CHOKE,
            Message::Unchoke => UNCHOKE,
            Message::Interested => INTERESTED,
            Message::NotInterested => NOT_INTERESTED,
            Message::Have(_) => HAVE,
            Message::Bitfield(_) => BITFIELD,
            Message::Request(_) => REQUEST,
            Message::Piece { .. } => PIECE,
            Message::Cancel(_) => CANCEL,
            Message::Port(_) => PORT,
            Message::Suggest(_) => SUGGEST,
            Message::HaveAll => HAVE_ALL,
            Message::HaveNone => HAVE_NONE,
            Message::RejectRequest(_) => REJECT_REQUEST,
            Message::AllowedFast(_) => ALLOWED_FAST,
            Message::Extended { .. } => EXTENDED,
            Message::Unknown { id, .. } => *id,
        })
    }

    /// Bytes [`Message::encode`] writes, the 4-byte length prefix included.
    pub fn encoded_len(&self) -> usize {
        4 + self.body_len()
    }

    /// Length of the frame body: id byte plus payload (the value of the length prefix).
    fn body_len(&self) -> usize {
        match self {
            Message::KeepAlive => 0,
            Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested
            | Message::HaveAll
            | Message::HaveNone => 1,
            Message::Have(_) | Message::Suggest(_) | Message::AllowedFast(_) => 5,
            Message::Bitfield(bits) => 1 + bits.len(),
            Message::Request(_) | Message::Cancel(_) | Message::RejectRequest(_) => 13,
            Message::Piece { data, .. } => PIECE_HEADER as usize + data.len(),
            Message::Port(_) => 3,
            Message::Extended { payload, .. } => 2 + payload.len(),
            Message::Unknown { payload, .. } => 1 + payload.len(),
        }
    }

    /// Appends the length prefix, id and payload to `dst`.
    ///
    /// # Panics
    /// If the frame body exceeds `u32::MAX` bytes, which no message we build comes near.
    pub fn encode(&self, dst: &mut BytesMut) {
        let body = u32::try_from(self.body_len()).expect("peer message body over 4 GiB");
        dst.reserve(4 + body as usize);
        dst.put_u32(body);
        let Some(id) = self.id() else { return };
        dst.put_u8(id);
        match self {
            Message::KeepAlive
            | Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested
            | Message::HaveAll
            | Message::HaveNone => {}
            Message::Have(index) | Message::Suggest(index) | Message::AllowedFast(index) => {
                dst.put_u32(*index)
            }
            Message::Bitfield(bits) => dst.put_slice(bits),
            Message::Request(b) | Message::Cancel(b) | Message::RejectRequest(b) => {
                dst.put_u32(b.index);
                dst.put_u32(b.begin);
                dst.put_u32(b.length);
            }
            Message::Piece { index, begin, data } => {
                dst.put_u32(*index);
                dst.put_u32(*begin);
                dst.put_slice(data);
            }
            Message::Port(port) => dst.put_u16(*port),
            Message::Extended { id, payload } => {
                dst.put_u8(*id);
                dst.put_slice(payload);
            }
            Message::Unknown { payload, .. } => dst.put_slice(payload),
        }
    }

    /// The 13 bytes that precede a `Piece`'s data on the wire (length prefix, id, index, begin),
    /// so a writer can send the data from its own buffer without copying it.
    ///
    /// # Panics
    /// If `data_len` exceeds `u32::MAX - 9`.
    pub fn piece_header(index: u32, begin: u32, data_len: usize) -> [u8; 13] {
        let body = u32::try_from(data_len)
            .ok()
            .and_then(|n| n.checked_add(PIECE_HEADER))
            .expect("piece data over 4 GiB");
        let mut out = [0; 13];
        out[0..4].copy_from_slice(&body.to_be_bytes());
        out[4] = PIECE;
        out[5..9].copy_from_slice(&index.to_be_bytes());
        out[9..13].copy_from_slice(&begin.to_be_bytes());
        out
    }

    /// Decodes one frame body (the bytes after the length prefix; empty is a keep-alive).
    ///
    /// Fixed-size messages must have exactly their size and variable ones at least their header,
    /// else [`WireError::BadLength`] with the frame length. Payloads are slices of `frame`.
    pub fn decode(mut frame: Bytes) -> Result<Message, WireError> {
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        if frame.is_empty() {
            return Ok(Message::KeepAlive);
        }
        let id = frame.get_u8();
        let bad = Err(WireError::BadLength { id, len });
        let exact = |want: u32| len == want;
        let msg = match id {
            CHOKE if exact(1) => Message::Choke,
            UNCHOKE if exact(1) => Message::Unchoke,
            INTERESTED if exact(1) => Message::Interested,
            NOT_INTERESTED if exact(1) => Message::NotInterested,
            HAVE if exact(5) => Message::Have(frame.get_u32()),
            BITFIELD => Message::Bitfield(frame),
            REQUEST if exact(13) => Message::Request(block_ref(&mut frame)),
            CANCEL if exact(13) => Message::Cancel(block_ref(&mut frame)),
            PIECE if len >= PIECE_HEADER => Message::Piece {
                index: frame.get_u32(),
                begin: frame.get_u32(),
                data: frame,
            },
            PORT if exact(3) => Message::Port(frame.get_u16()),
            SUGGEST if exact(5) => Message::Suggest(frame.get_u32()),
            HAVE_ALL if exact(1) => Message::HaveAll,
            HAVE_NONE if exact(1) => Message::HaveNone,
            REJECT_REQUEST if exact(13) => Message::RejectRequest(block_ref(&mut frame)),
            ALLOWED_FAST if exact(5) => Message::AllowedFast(frame.get_u32()),
            EXTENDED if len >= 2 => Message::Extended {
                id: frame.get_u8(),
                payload: frame,
            },
            CHOKE..=PORT | SUGGEST..=ALLOWED_FAST | EXTENDED => return bad,
            _ => Message::Unknown { id, payload: frame },
        };
        Ok(msg)
    }
}

/// Reads index, begin, length; the caller has checked that 12 bytes remain.
fn block_ref(buf: &mut Bytes) -> BlockRef {
    BlockRef {
        index: buf.get_u32(),
        begin: buf.get_u32(),
        length: buf.get_u32(),
    }
}

/// Written by hand so logging a `Piece` or `Bitfield` prints its size, not kilobytes of data.
impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::KeepAlive => f.write_str("KeepAlive"),
            Message::Choke => f.write_str("Choke"),
            Message::Unchoke => f.write_str("Unchoke"),
            Message::Interested => f.write_str("Interested"),
            Message::NotInterested => f.write_str("NotInterested"),
            Message::Have(index) => f.debug_tuple("Have").field(index).finish(),
            Message::Bitfield(bits) => write!(f, "Bitfield({} bytes)", bits.len()),
            Message::Request(b) => f.debug_tuple("Request").field(b).finish(),
            Message::Piece { index, begin, data } => f
                .debug_struct("Piece")
                .field("index", index)
                .field("begin", begin)
                .field("len", &data.len())
                .finish(),
            Message::Cancel(b) => f.debug_tuple("Cancel").field(b).finish(),
            Message::Port(port) => f.debug_tuple("Port").field(port).finish(),
            Message::Suggest(index) => f.debug_tuple("Suggest").field(index).finish(),
            Message::HaveAll => f.write_str("HaveAll"),
            Message::HaveNone => f.write_str("HaveNone"),
            Message::RejectRequest(b) => f.debug_tuple("RejectRequest").field(b).finish(),
            Message::AllowedFast(index) => f.debug_tuple("AllowedFast").field(index).finish(),
            Message::Extended { id, payload } => f
                .debug_struct("Extended")
                .field("id", id)
                .field("len", &payload.len())
                .finish(),
            Message::Unknown { id, payload } => f
                .debug_struct("Unknown")
                .field("id", id)
                .field("len", &payload.len())
                .finish(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// A random message of any kind, with payloads up to a few hundred bytes.
    pub(crate) fn random_message(rng: &mut StdRng) -> Message {
        let bytes = |rng: &mut StdRng| {
            let n = if rng.random_bool(0.1) {
                rng.random_range(0..20_000)
            } else {
                rng.random_range(0..300)
            };
            let mut v = vec![0u8; n];
            rng.fill(&mut v[..]);
            Bytes::from(v)
        };
        let block = |rng: &mut StdRng| BlockRef {
            index: rng.random(),
            begin: rng.random(),
            length: rng.random(),
        };
        match rng.random_range(0..18) {
            0 => Message::KeepAlive,
            1 => Message::Choke,
            2 => Message::Unchoke,
            3 => Message::Interested,
            4 => Message::NotInterested,
            5 => Message::Have(rng.random()),
            6 => Message::Bitfield(bytes(rng)),
            7 => Message::Request(block(rng)),
            8 => Message::Piece {
                index: rng.random(),
                begin: rng.random(),
                data: bytes(rng),
            },
            9 => Message::Cancel(block(rng)),
            10 => Message::Port(rng.random()),
            11 => Message::Extended {
                id: rng.random(),
                payload: bytes(rng),
            },
            12 => Message::Suggest(rng.random()),
            13 => Message::HaveAll,
            14 => Message::HaveNone,
            15 => Message::RejectRequest(block(rng)),
            16 => Message::AllowedFast(rng.random()),
            _ => {
                // Any id outside the ones we implement.
                let id = loop {
                    let id: u8 = rng.random();
                    if (PORT + 1..SUGGEST).contains(&id) || (id > ALLOWED_FAST && id != EXTENDED) {
                        break id;
                    }
                };
                Message::Unknown {
                    id,
                    payload: bytes(rng),
                }
            }
        }
    }

    fn encoded(msg: &Message) -> Vec<u8> {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        buf.to_vec()
    }

    /// `msg` encodes to exactly `wire`, and `wire` (minus its length prefix) decodes to `msg`.
    fn check(msg: Message, wire: &[u8]) {
        assert_eq!(encoded(&msg), wire, "encode {msg:?}");
        assert_eq!(msg.encoded_len(), wire.len());
        let body = Bytes::copy_from_slice(&wire[4..]);
        assert_eq!(Message::decode(body).unwrap(), msg, "decode {wire:02x?}");
    }

    #[test]
    fn fixed_messages_match_bep3_bytes() {
        check(Message::KeepAlive, &[0, 0, 0, 0]);
        check(Message::Choke, &[0, 0, 0, 1, 0]);
        check(Message::Unchoke, &[0, 0, 0, 1, 1]);
        check(Message::Interested, &[0, 0, 0, 1, 2]);
        check(Message::NotInterested, &[0, 0, 0, 1, 3]);
        check(Message::Have(5), &[0, 0, 0, 5, 4, 0, 0, 0, 5]);
        check(Message::Have(0x0102_0304), &[0, 0, 0, 5, 4, 1, 2, 3, 4]);
        check(Message::Port(6881), &[0, 0, 0, 3, 9, 0x1a, 0xe1]);
    }

    #[test]
    fn block_messages_match_bep3_bytes() {
        let block = BlockRef {
            index: 1,
            begin: 0x4000,
            length: 0x4000,
        };
        let mut wire = vec![0, 0, 0, 13, 6, 0, 0, 0, 1, 0, 0, 0x40, 0, 0, 0, 0x40, 0];
        check(Message::Request(block), &wire);
        wire[4] = 8;
        check(Message::Cancel(block), &wire);
    }

    #[test]
    fn variable_messages_match_bep3_bytes() {
        check(
            Message::Bitfield(Bytes::from_static(&[0xff, 0x80])),
            &[0, 0, 0, 3, 5, 0xff, 0x80],
        );
        check(Message::Bitfield(Bytes::new()), &[0, 0, 0, 1, 5]);
        check(
            Message::Piece {
                index: 2,
                begin: 0x4000,
                data: Bytes::from_static(b"abc"),
            },
            &[0, 0, 0, 12, 7, 0, 0, 0, 2, 0, 0, 0x40, 0, b'a', b'b', b'c'],
        );
        check(
            Message::Piece {
                index: 7,
                begin: 0,
                data: Bytes::new(),
            },
            &[0, 0, 0, 9, 7, 0, 0, 0, 7, 0, 0, 0, 0],
        );
        let mut wire = vec![0, 0, 0, 20, 20, 0];
        wire.extend_from_slice(b"d1:md6:ut_pexi1eee");
        check(
            Message::Extended {
                id: 0,
                payload: Bytes::from_static(b"d1:md6:ut_pexi1eee"),
            },
            &wire,
        );
        check(
            Message::Extended {
                id: 3,
                payload: Bytes::new(),
            },
            &[0, 0, 0, 2, 20, 3],
        );
    }

    #[test]
    fn fast_messages_match_bep6_bytes() {
        check(Message::Suggest(7), &[0, 0, 0, 5, 0x0d, 0, 0, 0, 7]);
        check(Message::HaveAll, &[0, 0, 0, 1, 0x0e]);
        check(Message::HaveNone, &[0, 0, 0, 1, 0x0f]);
        check(
            Message::RejectRequest(BlockRef {
                index: 1,
                begin: 0x4000,
                length: 0x4000,
            }),
            &[0, 0, 0, 13, 0x10, 0, 0, 0, 1, 0, 0, 0x40, 0, 0, 0, 0x40, 0],
        );
        check(
            Message::AllowedFast(0x0102_0304),
            &[0, 0, 0, 5, 0x11, 1, 2, 3, 4],
        );
    }

    #[test]
    fn unknown_ids_decode_to_unknown() {
        // 0x0a (an old, unused id) with a payload, and 0x15 with none.
        check(
            Message::Unknown {
                id: 0x0a,
                payload: Bytes::from_static(&[0, 0, 0, 7]),
            },
            &[0, 0, 0, 5, 0x0a, 0, 0, 0, 7],
        );
        check(
            Message::Unknown {
                id: 0x15,
                payload: Bytes::new(),
            },
            &[0, 0, 0, 1, 0x15],
        );
    }

    #[test]
    fn piece_data_is_a_slice_of_the_frame() {
        let frame = Bytes::from_static(&[7, 0, 0, 0, 1, 0, 0, 0, 0, 9, 9, 9]);
        let range = frame.as_ptr_range();
        let Message::Piece { data, .. } = Message::decode(frame.clone()).unwrap() else {
            panic!("not a piece");
        };
        assert_eq!(&data[..], &[9, 9, 9]);
        assert!(range.contains(&data.as_ptr()), "piece data was copied");
    }

    #[test]
    fn piece_header_matches_encode() {
        let msg = Message::Piece {
            index: 3,
            begin: 0x8000,
            data: Bytes::from(vec![5u8; 100]),
        };
        let wire = encoded(&msg);
        assert_eq!(Message::piece_header(3, 0x8000, 100)[..], wire[..13]);
    }

    #[test]
    fn wrong_lengths_are_rejected() {
        let cases: &[(u8, &[u32])] = &[
            (CHOKE, &[2, 5]),
            (UNCHOKE, &[2]),
            (INTERESTED, &[2]),
            (NOT_INTERESTED, &[3]),
            (HAVE, &[1, 4, 6, 9]),
            (REQUEST, &[1, 12, 14, 17]),
            (CANCEL, &[1, 12, 14]),
            (PIECE, &[1, 5, 8]),
            (PORT, &[1, 2, 4]),
            (EXTENDED, &[1]),
            (SUGGEST, &[1, 4, 6]),
            (HAVE_ALL, &[2, 5]),
            (HAVE_NONE, &[2]),
            (REJECT_REQUEST, &[1, 12, 14]),
            (ALLOWED_FAST, &[1, 4, 9]),
        ];
        for &(id, lens) in cases {
            for &len in lens {
                let mut frame = vec![0u8; len as usize];
                frame[0] = id;
                match Message::decode(Bytes::from(frame)) {
                    Err(WireError::BadLength {
                        id: got_id,
                        len: got_len,
                    }) => {
                        assert_eq!((got_id, got_len), (id, len));
                    }
                    other => panic!("id {id} len {len}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn random_messages_round_trip() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let msgs: Vec<Message> = (0..5_000).map(|_| random_message(&mut rng)).collect();
        let mut buf = BytesMut::new();
        for m in &msgs {
            m.encode(&mut buf);
        }
        let mut wire = buf.freeze();
        for m in &msgs {
            let len = wire.get_u32() as usize;
            assert_eq!(len + 4, m.encoded_len());
            assert_eq!(&Message::decode(wire.split_to(len)).unwrap(), m);
        }
        assert!(wire.is_empty());
    }
}
