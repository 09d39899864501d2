//! The routing tables of a node that speaks both families (BEP 32), by their public face; the
//! k-bucket rules themselves are tested beside the table (`routing.rs`).

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Instant;

use crate::dht::krpc::{NodeId, NodeInfo};
use crate::dht::routing::{Insert, K, Tables};
use crate::net::Family;

const OWN: NodeId = [0; 20];

fn id(first: u8, n: u8) -> NodeId {
    let mut id = [0; 20];
    id[0] = first;
    id[19] = n;
    id
}

#[test]
fn each_family_has_a_table_of_its_own_under_one_id() {
    let now = Instant::now();
    let mut t = Tables::new(OWN, now);
    let v4 = NodeInfo {
        id: id(0x80, 1),
        addr: "127.0.0.1:6881".parse().unwrap(),
    };
    let v6 = NodeInfo {
        id: v4.id,
        addr: "[2001:db8::1]:6881".parse().unwrap(),
    };
    assert_eq!(t.own_id(), OWN);
    assert_eq!(t.for_addr(&v4.addr).responded(v4, now), Insert::Added);
    assert_eq!(
        t.for_addr(&v6.addr).responded(v6, now),
        Insert::Added,
        "one id, two DHTs: not a node that moved"
    );
    assert_eq!(t.of(Family::V4).closest(&v4.id, K, now), vec![v4]);
    assert_eq!(t.of(Family::V6).closest(&v4.id, K, now), vec![v6]);
    // The IPv6 table fills and splits as an IPv4 one does: three prefixes of 10 nodes each
    // give three full buckets, the rest waiting as replacements.
    for first in [0x80, 0x40, 0x20] {
        for n in 2..12u8 {
            let mut id = id(first, n);
            id[18] = 6;
            let ip = Ipv6Addr::new(0x2001, 0xdb8, first.into(), 0, 0, 0, 0, n.into());
            let addr = SocketAddr::new(ip.into(), 6881);
            t.for_addr(&addr).responded(NodeInfo { id, addr }, now);
        }
    }
    let v6_table = t.of(Family::V6);
    assert_eq!(v6_table.nodes().count(), 3 * K);
    assert!(v6_table.nodes().all(|n| n.info.addr.is_ipv6()));
    assert_eq!(v6_table.closest(&id(0x20, 0), 1, now)[0].id[0], 0x20);
    assert_eq!(t.of(Family::V4).nodes().count(), 1);
    // A node that fails over IPv6 goes bad there only, and a waiting node takes its place.
    for _ in 0..2 {
        t.for_addr(&v6.addr).failed(v6.addr, now);
    }
    assert!(!t.of(Family::V6).closest(&v6.id, 100, now).contains(&v6));
    assert_eq!(t.of(Family::V6).nodes().count(), 3 * K);
    assert_eq!(t.of(Family::V4).good_count(now), 1);
}
