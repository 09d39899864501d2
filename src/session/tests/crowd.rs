//! Crowds of peers with nothing we need: they connect first and would hold every slot, yet a
//! read still gets its bytes from a seeder found later (slots kept for dialling, and turnover
//! while a read starves).

use std::net::Ipv4Addr;

use super::fake_peer::{Behavior, FakePeer, connect_empty};
use super::*;

/// Tells the session about an address, as a tracker would.
fn discover(session: &Session, addr: std::net::SocketAddr) {
    session
        .shared
        .discovered
        .try_send((PeerSource::Tracker, vec![addr]))
        .expect("the connector takes addresses");
}

async fn start_max(content: &Content, peers: &[&FakePeer], max_peers: usize) -> Session {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: peers.iter().map(|p| p.addr).collect(),
        cache_bytes: BIG_CACHE,
        max_peers,
        ..Config::default()
    };
    let host = host_for(&config).await;
    Session::start(content.torrent.clone(), config, &host)
        .await
        .expect("session starts")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incoming_crowd_with_nothing_leaves_room_to_dial_a_seeder() {
    let c = two_files();
    let honest = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    let session = start_max(&c, &[], 8).await;
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], session.listen_port()));
    let mut crowd = Vec::new();
    for i in 0..12u8 {
        let from = Ipv4Addr::new(127, 0, 2, 10 + i);
        crowd.extend(connect_empty(listen, from, &c.torrent, u32::from(i)).await);
    }
    // Some of the twelve were refused: incoming peers get all but a slot or so.
    let s = eventually(&session, "the crowd connected", |s| s.peers >= 6).await;
    assert!(s.peers < 8, "{} incoming peers took every slot", s.peers);

    let reads = spawn_read_everything(&session, &c, 64 * 1024);
    discover(&session, honest.addr);
    within("reads", reads).await.expect("reads");
    assert!(honest.counters().connections >= 1);
    stop(session).await;
    for task in crowd {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crowd_holding_every_slot_is_turned_over_when_a_read_waits() {
    let c = two_files();
    let honest = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    let mut empties = Vec::new();
    for i in 0..12u8 {
        let at = Ipv4Addr::new(127, 0, 3, 10 + i);
        empties.push(FakePeer::start(at, c.clone(), Behavior::Empty).await);
    }
    let session = start_max(&c, &empties.iter().collect::<Vec<_>>(), 8).await;
    eventually(&session, "every slot taken", |s| s.peers == 8).await;

    let reads = spawn_read_everything(&session, &c, 64 * 1024);
    discover(&session, honest.addr);
    within("reads", reads).await.expect("reads");
    let dropped: usize = empties.iter().map(|e| e.counters().closed).sum();
    assert!(dropped >= 1, "no useless peer was turned over");
    assert!(honest.counters().connections >= 1);
    stop(session).await;
}
