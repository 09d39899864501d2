//! Decoder and encoder cases by hand; `props` checks them on random input.

mod props;

use super::*;

#[test]
fn decodes_nested_values_and_keeps_dict_span() {
    let input = b"d4:infod6:lengthi5ee4:listl3:abci-7eee";
    let v = decode(input).unwrap();
    let info = v.get("info").unwrap().as_dict().unwrap();
    assert_eq!(info.raw, b"d6:lengthi5ee");
    assert_eq!(info.get("length").unwrap().as_int(), Some(5));
    let list = v.get("list").unwrap().as_list().unwrap();
    assert_eq!(list[0].as_str(), Some("abc"));
    assert_eq!(list[1].as_int(), Some(-7));
}

#[test]
fn rejects_malformed_input() {
    let cases: &[(&[u8], BencodeError)] = &[
        (b"", BencodeError::Eof(0)),
        (b"i01e", BencodeError::BadInt(1)),
        (b"i-0e", BencodeError::BadInt(1)),
        (b"ie", BencodeError::BadInt(1)),
        (b"i12", BencodeError::Eof(3)),
        (b"5:abc", BencodeError::Eof(5)),
        (b"-1:a", BencodeError::Unexpected { byte: b'-', pos: 0 }),
        (b"d1:ai1e1:ai2ee", BencodeError::DuplicateKey(0)),
        (b"d1:bi1e1:ai2e1:bi3ee", BencodeError::DuplicateKey(0)),
        (b"i1ei2e", BencodeError::Trailing(3)),
        (b"x", BencodeError::Unexpected { byte: b'x', pos: 0 }),
        (b"i99999999999999999999e", BencodeError::BadInt(1)),
        (b"99999999999999999999999:a", BencodeError::BadInt(0)),
    ];
    for (input, err) in cases {
        assert_eq!(
            decode(input).as_ref().err(),
            Some(err),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn accepts_unsorted_keys_as_old_tools_wrote_them() {
    let v = decode(b"d1:bi1e1:ai2ee").unwrap();
    assert_eq!(v.get("a").unwrap().as_int(), Some(2));
    assert_eq!(v.get("b").unwrap().as_int(), Some(1));
}

#[test]
fn refuses_deep_nesting_without_overflowing_the_stack() {
    let mut input = vec![b'l'; 100_000];
    input.extend(vec![b'e'; 100_000]);
    assert_eq!(decode(&input), Err(BencodeError::TooDeep));
}

#[test]
fn refuses_more_values_than_the_cap() {
    let list = |n: usize| [&b"l"[..], &b"0:".repeat(n), b"e"].concat();
    assert!(decode(&list(MAX_VALUES - 1)).is_ok());
    assert_eq!(decode(&list(MAX_VALUES)), Err(BencodeError::TooManyValues));
}

#[test]
fn prefix_decoding_reports_used_bytes() {
    let (v, used) = decode_prefix(b"d1:ai1eeRAW").unwrap();
    assert_eq!(v.get("a").unwrap().as_int(), Some(1));
    assert_eq!(used, 8);
}

#[test]
fn encoder_output_decodes_back() {
    let out = Encoder::new()
        .begin_dict()
        .str("a")
        .int(-3)
        .str("b")
        .begin_list()
        .bytes(b"\x00\xff")
        .end()
        .end()
        .finish();
    assert_eq!(out, b"d1:ai-3e1:bl2:\x00\xffee");
    let v = decode(&out).unwrap();
    assert_eq!(
        v.get("b").unwrap().as_list().unwrap()[0].as_bytes(),
        Some(&b"\x00\xff"[..])
    );
}
