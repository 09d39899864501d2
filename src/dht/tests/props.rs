//! Property tests of KRPC: any datagram decodes to a message or an error, never a panic, and
//! every message we can send decodes back to itself.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use proptest::prelude::*;

use crate::dht::krpc::{Body, Message, NodeId, NodeInfo, Query, Response, Want};

fn peer4() -> impl Strategy<Value = SocketAddr> {
    any::<([u8; 4], u16)>().prop_map(|(ip, port)| SocketAddrV4::new(ip.into(), port).into())
}

fn peer6() -> impl Strategy<Value = SocketAddr> {
    any::<([u8; 16], u16)>().prop_map(|(ip, port)| SocketAddrV6::new(ip.into(), port, 0, 0).into())
}

fn want() -> impl Strategy<Value = Want> {
    any::<(bool, bool)>().prop_map(|(n4, n6)| Want { n4, n6 })
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn query() -> impl Strategy<Value = Query> {
    let id = any::<NodeId>;
    prop_oneof![
        id().prop_map(|id| Query::Ping { id }),
        (id(), id(), want()).prop_map(|(id, target, want)| Query::FindNode { id, target, want }),
        (id(), id(), want()).prop_map(|(id, info_hash, want)| Query::GetPeers {
            id,
            info_hash,
            want
        }),
        (id(), id(), any::<u16>(), any::<bool>(), bytes(20)).prop_map(
            |(id, info_hash, port, implied_port, token)| Query::AnnouncePeer {
                id,
                info_hash,
                // Without implied_port, port 0 is refused (nobody listens there).
                port: if implied_port { port } else { port.max(1) },
                implied_port,
                token,
            }
        ),
        (id(), bytes(16))
            .prop_filter("a method we serve", |(_, m)| {
                ![&b"ping"[..], b"find_node", b"get_peers", b"announce_peer"].contains(&&m[..])
            })
            .prop_map(|(id, method)| Query::Other { id, method }),
    ]
}

fn node(peer: impl Strategy<Value = SocketAddr>) -> impl Strategy<Value = NodeInfo> {
    (any::<NodeId>(), peer).prop_map(|(id, addr)| NodeInfo { id, addr })
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (query(), any::<bool>()).prop_map(|(query, read_only)| Body::Query { query, read_only }),
        (
            any::<NodeId>(),
            prop::collection::vec(node(peer4()), 0..8),
            prop::collection::vec(node(peer6()), 0..8),
            prop::collection::vec(prop_oneof![peer4(), peer6()], 0..8),
            prop::option::of(bytes(20)),
        )
            .prop_map(
                |(id, nodes, nodes6, values, token)| Body::Response(Response {
                    id,
                    nodes,
                    nodes6,
                    values,
                    token,
                })
            ),
        (any::<i64>(), any::<String>()).prop_map(|(code, message)| Body::Error { code, message }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (bytes(17), body()).prop_map(|(tid, body)| Message { tid, body })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn messages_round_trip(m in message()) {
        prop_assert_eq!(Message::decode(&m.encode()), Ok(m));
    }

    #[test]
    fn arbitrary_datagrams_decode_or_fail_cleanly(packet in bytes(300)) {
        if let Ok(m) = Message::decode(&packet) {
            prop_assert_eq!(Message::decode(&m.encode()), Ok(m));
        }
    }

    #[test]
    fn mutated_messages_decode_or_fail_cleanly(
        m in message(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut packet = m.encode();
        for (at, byte) in edits {
            let at = at.index(packet.len());
            packet[at] = byte;
        }
        if let Ok(m) = Message::decode(&packet) {
            prop_assert_eq!(Message::decode(&m.encode()), Ok(m));
        }
    }
}
