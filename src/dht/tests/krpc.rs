//! KRPC by hand: the example packets of BEP 5, our encodings byte for byte, and malformed
//! packets; `props` checks the same on random input.

use crate::bencode::BencodeError;
use crate::dht::krpc::{
    Body, ERROR_GENERIC, KrpcError, Message, NodeId, NodeInfo, Query, Response, Want,
};

const ID_A: &NodeId = b"abcdefghij0123456789";
const ID_M: &NodeId = b"mnopqrstuvwxyz123456";

fn query(q: Query) -> Message {
    Message {
        tid: b"aa".to_vec(),
        body: Body::Query {
            query: q,
            read_only: false,
        },
    }
}

fn response(r: Response) -> Message {
    Message {
        tid: b"aa".to_vec(),
        body: Body::Response(r),
    }
}

/// The example packets of BEP 5, verbatim: each decodes to the message and encodes back.
#[test]
fn bep5_examples_round_trip() {
    let cases: Vec<(&[u8], Message)> = vec![
        (
            b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe",
            query(Query::Ping { id: *ID_A }),
        ),
        (
            b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re",
            response(Response {
                id: *ID_M,
                ..Response::default()
            }),
        ),
        (
            b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe",
            query(Query::FindNode {
                id: *ID_A,
                target: *ID_M,
                want: Want::OWN,
            }),
        ),
        (
            b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e1:q9:get_peers1:t2:aa1:y1:qe",
            query(Query::GetPeers {
                id: *ID_A,
                info_hash: *ID_M,
                want: Want::OWN,
            }),
        ),
        (
            b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re",
            response(Response {
                id: *ID_A,
                token: Some(b"aoeusnth".to_vec()),
                values: vec![
                    "97.120.106.101:11893".parse().unwrap(),
                    "105.100.104.116:28269".parse().unwrap(),
                ],
                ..Response::default()
            }),
        ),
        (
            b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe",
            query(Query::AnnouncePeer {
                id: *ID_A,
                info_hash: *ID_M,
                port: 6881,
                implied_port: true,
                token: b"aoeusnth".to_vec(),
            }),
        ),
        (
            b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee",
            Message {
                tid: b"aa".to_vec(),
                body: Body::Error {
                    code: ERROR_GENERIC,
                    message: "A Generic Error Ocurred".into(),
                },
            },
        ),
    ];
    for (bytes, msg) in cases {
        let text = String::from_utf8_lossy(bytes);
        assert_eq!(Message::decode(bytes).as_ref(), Ok(&msg), "{text}");
        assert_eq!(msg.encode(), bytes, "{text}");
    }
}

/// BEP 5's `nodes` example ("def456...") is 9 bytes, not a whole 26-byte entry: the response
/// still decodes, with no nodes.
#[test]
fn bep5_partial_nodes_examples_decode_without_nodes() {
    let find_node = b"d1:rd2:id20:0123456789abcdefghij5:nodes9:def456...e1:t2:aa1:y1:re";
    let get_peers =
        b"d1:rd2:id20:abcdefghij01234567895:nodes9:def456...5:token8:aoeusnthe1:t2:aa1:y1:re";
    let Body::Response(r) = Message::decode(find_node).unwrap().body else {
        panic!("not a response");
    };
    assert_eq!((&r.id, r.nodes.len()), (b"0123456789abcdefghij", 0));
    let Body::Response(r) = Message::decode(get_peers).unwrap().body else {
        panic!("not a response");
    };
    assert_eq!(r.token.as_deref(), Some(&b"aoeusnth"[..]));
    assert!(r.nodes.is_empty());
}

#[test]
fn compact_nodes_and_explicit_port_round_trip() {
    let nodes = vec![
        NodeInfo {
            id: [7; 20],
            addr: "127.0.0.2:6881".parse().unwrap(),
        },
        NodeInfo {
            id: [0xff; 20],
            addr: "10.1.2.3:65535".parse().unwrap(),
        },
    ];
    let msg = response(Response {
        id: *ID_A,
        nodes: nodes.clone(),
        token: Some(vec![1, 2]),
        ..Response::default()
    });
    let bytes = msg.encode();
    let mut expected = b"d1:rd2:id20:abcdefghij01234567895:nodes52:".to_vec();
    expected.extend_from_slice(&[7; 20]);
    expected.extend_from_slice(&[127, 0, 0, 2, 0x1a, 0xe1]);
    expected.extend_from_slice(&[0xff; 20]);
    expected.extend_from_slice(&[10, 1, 2, 3, 0xff, 0xff]);
    expected.extend_from_slice(b"5:token2:\x01\x02e1:t2:aa1:y1:re");
    assert_eq!(bytes, expected);
    assert_eq!(Message::decode(&bytes), Ok(msg));

    let announce = query(Query::AnnouncePeer {
        id: *ID_A,
        info_hash: *ID_M,
        port: 6881,
        implied_port: false,
        token: b"tok".to_vec(),
    });
    let bytes = announce.encode();
    assert_eq!(
        bytes,
        b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token3:toke1:q13:announce_peer1:t2:aa1:y1:qe"
    );
    assert_eq!(Message::decode(&bytes), Ok(announce));
}

#[test]
fn read_only_flag_and_unknown_methods() {
    let ro = Message {
        tid: vec![0, 1],
        body: Body::Query {
            query: Query::Ping { id: *ID_A },
            read_only: true,
        },
    };
    let bytes = ro.encode();
    assert_eq!(
        bytes,
        b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping2:roi1e1:t2:\x00\x011:y1:qe"
    );
    assert_eq!(Message::decode(&bytes), Ok(ro));
    let get =
        b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q3:get1:t2:aa1:y1:qe";
    assert_eq!(
        Message::decode(get).unwrap().body,
        Body::Query {
            query: Query::Other {
                id: *ID_A,
                method: b"get".to_vec()
            },
            read_only: false
        }
    );
}

#[test]
fn malformed_packets_are_typed_errors() {
    let cases: &[(&[u8], KrpcError)] = &[
        (b"", KrpcError::Bencode(BencodeError::Eof(0))),
        (b"le", KrpcError::NotADict),
        (b"d1:y1:qe", KrpcError::Missing("t")),
        (b"d1:ti1e1:y1:qe", KrpcError::Invalid("t")),
        (b"d1:t17:aaaaaaaaaaaaaaaaa1:y1:re", KrpcError::Invalid("t")),
        (b"d1:t2:aa1:y1:xe", KrpcError::UnknownType(b"x".to_vec())),
        (b"d1:q4:ping1:t2:aa1:y1:qe", KrpcError::Missing("a")),
        (b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe", KrpcError::Invalid("id")),
        (b"d1:ali1ee1:q4:ping1:t2:aa1:y1:qe", KrpcError::Invalid("a")),
        (
            b"d1:ad2:id20:abcdefghij0123456789e1:q9:find_node1:t2:aa1:y1:qe",
            KrpcError::Missing("target"),
        ),
        (
            b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti70000e5:token1:xe1:q13:announce_peer1:t2:aa1:y1:qe",
            KrpcError::Invalid("port"),
        ),
        (
            b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234565:token1:xe1:q13:announce_peer1:t2:aa1:y1:qe",
            KrpcError::Missing("port"),
        ),
        (b"d1:rd2:id20:abcdefghij01234567895:nodesi5ee1:t2:aa1:y1:re", KrpcError::Invalid("nodes")),
        (b"d1:rd2:id20:abcdefghij01234567896:values3:abce1:t2:aa1:y1:re", KrpcError::Invalid("values")),
        (b"d1:rde1:t2:aa1:y1:re", KrpcError::Missing("id")),
        (b"d1:e3:bad1:t2:aa1:y1:ee", KrpcError::Invalid("e")),
        (b"d1:rd2:id20:abcdefghij0123456789e1:t2:aa1:y1:rexx", KrpcError::Bencode(BencodeError::Trailing(2))),
    ];
    for (bytes, err) in cases {
        assert_eq!(
            Message::decode(bytes).as_ref().err(),
            Some(err),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn ipv6_peers_in_values_are_read_and_odd_ones_skipped() {
    let mut packet = b"d1:rd2:id20:abcdefghij01234567896:valuesl18:".to_vec();
    packet.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    packet.extend_from_slice(&[0; 11]);
    packet.extend_from_slice(&[1, 0x1a, 0xe1]);
    packet.extend_from_slice(b"6:");
    packet.extend_from_slice(&[127, 0, 0, 9, 0, 80]);
    packet.extend_from_slice(b"7:1234567i5eee1:t2:aa1:y1:re");
    let Body::Response(r) = Message::decode(&packet).unwrap().body else {
        panic!("not a response");
    };
    assert_eq!(
        r.values,
        vec![
            "[2001:db8::1]:6881".parse().unwrap(),
            "127.0.0.9:80".parse().unwrap()
        ]
    );
}

/// BEP 32: IPv6 nodes travel in `nodes6` (38 bytes each), IPv4 ones in `nodes`, both in one
/// response when both were wanted; `want` is a list of `n4`/`n6`, left out when the querier
/// wants its own family only.
#[test]
fn nodes6_and_want_encode_byte_for_byte() {
    let v4 = NodeInfo {
        id: [7; 20],
        addr: "127.0.0.2:6881".parse().unwrap(),
    };
    let v6 = NodeInfo {
        id: [8; 20],
        addr: "[::1]:6882".parse().unwrap(),
    };
    let msg = response(Response {
        id: *ID_A,
        nodes: vec![v4],
        nodes6: vec![v6],
        ..Response::default()
    });
    let bytes = msg.encode();
    let mut expected = b"d1:rd2:id20:abcdefghij01234567895:nodes26:".to_vec();
    expected.extend_from_slice(&[7; 20]);
    expected.extend_from_slice(&[127, 0, 0, 2, 0x1a, 0xe1]);
    expected.extend_from_slice(b"6:nodes638:");
    expected.extend_from_slice(&[8; 20]);
    expected.extend_from_slice(&[0; 15]);
    expected.extend_from_slice(&[1, 0x1a, 0xe2]);
    expected.extend_from_slice(b"e1:t2:aa1:y1:re");
    assert_eq!(bytes, expected);
    assert_eq!(Message::decode(&bytes), Ok(msg));

    // A node of the wrong family in either list is left out, not written in the wrong size.
    let mixed = response(Response {
        id: *ID_A,
        nodes: vec![v6],
        nodes6: vec![v4],
        ..Response::default()
    });
    assert_eq!(
        mixed.encode(),
        b"d1:rd2:id20:abcdefghij0123456789e1:t2:aa1:y1:re"
    );

    // A trailing partial entry of nodes6 is ignored, as one of nodes is.
    let mut partial = b"d1:rd2:id20:abcdefghij01234567896:nodes640:".to_vec();
    partial.extend_from_slice(&[8; 20]);
    partial.extend_from_slice(&[0; 15]);
    partial.extend_from_slice(&[1, 0x1a, 0xe2, 9, 9]);
    partial.extend_from_slice(b"e1:t2:aa1:y1:re");
    let Body::Response(r) = Message::decode(&partial).unwrap().body else {
        panic!("not a response");
    };
    assert_eq!(r.nodes6, vec![v6]);

    let cases: Vec<(&[u8], Query)> = vec![
        (
            b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz1234564:wantl2:n42:n6ee1:q9:find_node1:t2:aa1:y1:qe",
            Query::FindNode {
                id: *ID_A,
                target: *ID_M,
                want: Want::BOTH,
            },
        ),
        (
            b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:wantl2:n6ee1:q9:get_peers1:t2:aa1:y1:qe",
            Query::GetPeers {
                id: *ID_A,
                info_hash: *ID_M,
                want: Want {
                    n4: false,
                    n6: true,
                },
            },
        ),
    ];
    for (bytes, q) in cases {
        let text = String::from_utf8_lossy(bytes);
        assert_eq!(query(q.clone()).encode(), bytes, "{text}");
        assert_eq!(Message::decode(bytes), Ok(query(q)), "{text}");
    }
    // Entries we do not know, and a `want` that is no list, say nothing.
    for want in [&b"l2:n52:xxe"[..], b"2:n4", b"i4e"] {
        let mut q =
            b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz1234564:want".to_vec();
        q.extend_from_slice(want);
        q.extend_from_slice(b"e1:q9:find_node1:t2:aa1:y1:qe");
        let Body::Query { query, .. } = Message::decode(&q).unwrap().body else {
            panic!("not a query");
        };
        assert_eq!(
            query,
            Query::FindNode {
                id: *ID_A,
                target: *ID_M,
                want: Want::OWN
            },
            "{}",
            String::from_utf8_lossy(want)
        );
    }
}

#[test]
fn want_names_the_families_of_the_answer() {
    use crate::net::Family::{V4, V6};
    for over in [V4, V6] {
        assert!(Want::OWN.includes(over, over));
        assert!(Want::BOTH.includes(V4, over) && Want::BOTH.includes(V6, over));
    }
    assert!(!Want::OWN.includes(V6, V4));
    let n6 = Want {
        n4: false,
        n6: true,
    };
    assert!(n6.includes(V6, V4) && !n6.includes(V4, V4));
}

/// Every truncation and every single-byte corruption of valid packets decodes or fails
/// cleanly: no panic.
#[test]
fn mangled_packets_never_panic() {
    let good = response(Response {
        id: [3; 20],
        nodes: vec![NodeInfo {
            id: [4; 20],
            addr: "127.0.0.1:1".parse().unwrap(),
        }],
        nodes6: vec![NodeInfo {
            id: [5; 20],
            addr: "[::1]:1".parse().unwrap(),
        }],
        values: vec!["127.0.0.1:2".parse().unwrap(), "[::1]:2".parse().unwrap()],
        token: Some(vec![9; 8]),
    })
    .encode();
    let q = b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe";
    for packet in [&good[..], &q[..]] {
        for cut in 0..packet.len() {
            let _ = Message::decode(&packet[..cut]);
        }
        for i in 0..packet.len() {
            for byte in [0u8, b'e', b'd', b'l', b'i', b'0', b'9', b':', 0xff] {
                let mut p = packet.to_vec();
                p[i] = byte;
                let _ = Message::decode(&p);
            }
        }
    }
}

/// A whole datagram of nesting, at the top or under a key nobody reads, is refused at the
/// depth limit: no stack overflow.
#[test]
fn deep_nesting_is_refused() {
    for head in [&b""[..], b"d1:t2:aa1:y1:r1:z"] {
        let mut packet = head.to_vec();
        packet.resize(64 * 1024, b'l');
        assert_eq!(
            Message::decode(&packet),
            Err(KrpcError::Bencode(BencodeError::TooDeep))
        );
    }
}

#[test]
fn unknown_keys_are_ignored_and_key_order_does_not_matter() {
    // BEP 42's `ip`, a client version `v`, a non-UTF-8 key, keys out of order.
    let packet = b"d1:y1:r1:rd5:token2:tk2:id20:abcdefghij0123456789e\
                   2:ip6:\x7f\x00\x00\x01\x1a\xe11:v4:LT\x01\x002:\xff\xfeli1ee1:t2:aae";
    assert_eq!(
        Message::decode(packet),
        Ok(response(Response {
            id: *ID_A,
            token: Some(b"tk".to_vec()),
            ..Response::default()
        }))
    );
}

#[test]
fn odd_integers_and_repeated_keys() {
    let ping = |ro: &str| {
        format!("d1:ad2:id20:abcdefghij0123456789e1:q4:ping2:ro{ro}1:t2:aa1:y1:qe").into_bytes()
    };
    // Only `ro` = 1 is read-only; any other value (or type) is not.
    for ro in ["i2e", "i-1e", "1:1"] {
        let Body::Query { read_only, .. } = Message::decode(&ping(ro)).unwrap().body else {
            panic!("not a query");
        };
        assert!(!read_only, "ro {ro}");
    }
    let cases: &[(&[u8], KrpcError)] = &[
        // Past i64, and not canonical.
        (
            b"d1:eli9223372036854775808e1:xe1:t2:aa1:y1:ee",
            KrpcError::Bencode(BencodeError::BadInt(6)),
        ),
        (
            b"d1:eli+201e1:xe1:t2:aa1:y1:ee",
            KrpcError::Bencode(BencodeError::BadInt(6)),
        ),
        (
            b"d1:ad2:id20:abcdefghij012345678912:implied_port1:19:info_hash20:mnopqrstuvwxyz1234565:token1:xe1:q13:announce_peer1:t2:aa1:y1:qe",
            KrpcError::Invalid("implied_port"),
        ),
        (
            b"d1:t2:aa1:t2:bb1:y1:re",
            KrpcError::Bencode(BencodeError::DuplicateKey(0)),
        ),
    ];
    for (bytes, err) in cases {
        assert_eq!(
            Message::decode(bytes).as_ref().err(),
            Some(err),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
}
