//! Property tests of the pure decoders: any bytes give a message or an error, never a panic, and
//! every message we can send decodes back to itself.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use crate::wire::extension::{
    ExtendedHandshake, MAX_METADATA_SIZE, MetadataMsg, Pex, PexFlags, metadata_piece_count,
    metadata_piece_len,
};
use crate::wire::message::{BlockRef, Handshake, Message};

fn payload() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn block() -> impl Strategy<Value = BlockRef> {
    any::<(u32, u32, u32)>().prop_map(|(index, begin, length)| BlockRef {
        index,
        begin,
        length,
    })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        Just(Message::KeepAlive),
        Just(Message::Choke),
        Just(Message::Unchoke),
        Just(Message::Interested),
        Just(Message::NotInterested),
        any::<u32>().prop_map(Message::Have),
        payload().prop_map(Message::Bitfield),
        block().prop_map(Message::Request),
        block().prop_map(Message::Cancel),
        (any::<u32>(), any::<u32>(), payload()).prop_map(|(index, begin, data)| Message::Piece {
            index,
            begin,
            data
        }),
        any::<u16>().prop_map(Message::Port),
        (any::<u8>(), payload()).prop_map(|(id, payload)| Message::Extended { id, payload }),
        any::<u32>().prop_map(Message::Suggest),
        Just(Message::HaveAll),
        Just(Message::HaveNone),
        block().prop_map(Message::RejectRequest),
        any::<u32>().prop_map(Message::AllowedFast),
        // Ids we do not implement: 10..=12, 18..=19 and 21..=255.
        (prop_oneof![10u8..13, 18u8..20, 21u8..=255], payload())
            .prop_map(|(id, payload)| Message::Unknown { id, payload }),
    ]
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        any::<([u8; 4], u16)>().prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        any::<([u8; 16], u16)>().prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ]
}

fn metadata_msg() -> impl Strategy<Value = (u32, u32, u32)> {
    // (kind, piece, total_size): data messages carry a piece that exists in total_size.
    (0u32..3, 1..=MAX_METADATA_SIZE).prop_flat_map(|(kind, total)| {
        let pieces = if kind == 1 {
            metadata_piece_count(total)
        } else {
            metadata_piece_count(MAX_METADATA_SIZE)
        };
        (Just(kind), 0..pieces, Just(total))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn messages_round_trip(msg in message()) {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        prop_assert_eq!(buf.len(), msg.encoded_len());
        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(len, buf.len() - 4);
        prop_assert_eq!(Message::decode(buf.freeze().slice(4..)).ok(), Some(msg));
    }

    #[test]
    fn arbitrary_frames_decode_or_fail_cleanly(body in prop::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(msg) = Message::decode(Bytes::from(body.clone())) {
            let mut buf = BytesMut::new();
            msg.encode(&mut buf);
            prop_assert_eq!(&buf[4..], &body[..]);
        }
    }

    #[test]
    fn handshakes_round_trip(raw in prop::collection::vec(any::<u8>(), Handshake::LEN)) {
        let raw: [u8; Handshake::LEN] = raw.try_into().unwrap();
        if let Ok(h) = Handshake::decode(&raw) {
            prop_assert_eq!(h.encode(), raw);
        }
        let mut good = raw;
        good[..20].copy_from_slice(&Handshake::new([0; 20], [0; 20]).encode()[..20]);
        let h = Handshake::decode(&good).expect("valid protocol string");
        prop_assert_eq!(h.encode(), good);
    }

    #[test]
    fn extension_payloads_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = ExtendedHandshake::decode(&bytes);
        let _ = MetadataMsg::decode(&bytes);
        let _ = Pex::decode(&bytes);
    }

    #[test]
    fn extended_handshakes_round_trip(
        ut_metadata in prop::option::of(1u8..),
        ut_pex in prop::option::of(1u8..),
        metadata_size in prop::option::of(1..=MAX_METADATA_SIZE),
        yourip in prop::option::of(addr().prop_map(|a| a.ip())),
    ) {
        let h = ExtendedHandshake { ut_metadata, ut_pex, metadata_size, yourip, ..Default::default() };
        prop_assert_eq!(ExtendedHandshake::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn metadata_messages_round_trip((kind, piece, total_size) in metadata_msg(), fill: u8) {
        let data = vec![fill; metadata_piece_len(total_size, piece).unwrap_or(0) as usize];
        let msg = match kind {
            0 => MetadataMsg::Request { piece },
            1 => MetadataMsg::Data { piece, total_size, data: &data },
            _ => MetadataMsg::Reject { piece },
        };
        let bytes = msg.encode();
        prop_assert_eq!(MetadataMsg::decode(&bytes), Ok(msg));
        // The same bytes with the data cut short or lengthened are refused.
        if kind == 1 {
            prop_assert!(MetadataMsg::decode(&bytes[..bytes.len() - 1]).is_err());
            prop_assert!(MetadataMsg::decode(&[&bytes[..], b"x"].concat()).is_err());
        }
    }

    #[test]
    fn pex_round_trips(
        v4 in prop::collection::vec((any::<([u8; 4], u16)>(), any::<u8>()), 0..20),
        v6 in prop::collection::vec((any::<([u8; 16], u16)>(), any::<u8>()), 0..20),
        dropped in prop::collection::vec(addr(), 0..20),
    ) {
        // Encoding groups IPv4 before IPv6, so the expected value does too.
        let added: Vec<(SocketAddr, PexFlags)> = v4
            .into_iter()
            .map(|(a, f)| (SocketAddr::from(a), PexFlags(f)))
            .chain(v6.into_iter().map(|(a, f)| (SocketAddr::from(a), PexFlags(f))))
            .collect();
        let (mut d4, d6): (Vec<SocketAddr>, Vec<SocketAddr>) =
            dropped.into_iter().partition(SocketAddr::is_ipv4);
        d4.extend(d6);
        let pex = Pex { added, dropped: d4 };
        prop_assert_eq!(Pex::decode(&pex.encode()), Ok(pex));
    }
}
