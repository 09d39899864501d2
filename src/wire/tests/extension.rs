//! The BEP 9, 10 and 11 payloads: the BEPs' examples, malformed and hostile input, and encoding.

use std::net::{IpAddr, SocketAddr};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::bencode::BencodeError;
use crate::wire::extension::{
    ExtendedHandshake, ExtensionError, MAX_METADATA_SIZE, MAX_PEX_PEERS, MetadataMsg, Pex,
    PexFlags, UT_METADATA, UT_PEX, metadata_piece_count, metadata_piece_len,
};

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

/// The inputs serde_bencode reads differently from us (see the module doc) keep their meaning:
/// nesting is bounded, trailing bytes and non-canonical integers are refused, a list is no
/// dictionary, and a key that is not UTF-8 is ignored like any unknown key.
#[test]
fn hostile_shapes_keep_their_meaning() {
    let all_fail_with = |input: &[u8], err: ExtensionError| {
        let got = [
            ExtendedHandshake::decode(input).err(),
            MetadataMsg::decode(input).err(),
            Pex::decode(input).err(),
        ];
        for (decoder, got) in ["handshake", "ut_metadata", "pex"].iter().zip(got) {
            assert_eq!(got.as_ref(), Some(&err), "{decoder}");
        }
    };
    let all_l = vec![b'l'; 16 << 20];
    all_fail_with(&all_l, ExtensionError::Bencode(BencodeError::TooDeep));
    let under_unknown_key = [&b"d1:x"[..], &all_l].concat();
    all_fail_with(
        &under_unknown_key,
        ExtensionError::Bencode(BencodeError::TooDeep),
    );
    all_fail_with(b"ld1:pi6881eee", ExtensionError::NotADictionary);

    let trailing = Some(ExtensionError::Bencode(BencodeError::Trailing(1)));
    assert_eq!(ExtendedHandshake::decode(b"d1:pi6881eeX").err(), trailing);
    assert_eq!(Pex::decode(b"deX").err(), trailing);
    for bad_int in [&b"d1:pi06881ee"[..], b"d1:pi-0ee", b"d1:pi+1ee"] {
        assert_eq!(
            ExtendedHandshake::decode(bad_int).err(),
            Some(ExtensionError::Bencode(BencodeError::BadInt(5))),
            "{}",
            String::from_utf8_lossy(bad_int)
        );
    }

    let h =
        ExtendedHandshake::decode(b"d1:md3:\xff\xfe\xfdi1e11:ut_metadatai3ee1:pi6881ee").unwrap();
    assert_eq!((h.ut_metadata, h.port), (Some(3), Some(6881)));
    assert_eq!(
        MetadataMsg::decode(b"d8:msg_typei0e5:piecei0e3:\xff\xfe\xfdi1ee"),
        Ok(MetadataMsg::Request { piece: 0 })
    );
    let pex = Pex::decode(b"d5:added6:\x01\x02\x03\x04\x00\x013:\xff\xfe\xfdi1ee").unwrap();
    assert_eq!(pex.added, [("1.2.3.4:1".parse().unwrap(), PexFlags(0))]);
}
