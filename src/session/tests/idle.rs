//! Idle torrents sleep (`Config::idle_after`, `idle.rs`): against a fake seeder, a session
//! with no read for that long drops its peer and dials nobody; the next read wakes it, dials
//! the peer it knew again and returns the right bytes.

use std::net::SocketAddr;
use std::time::Duration;

use super::fake_peer::{Behavior, FakePeer};
use super::{BIG_CACHE, KIB, check_read, content, eventually, host_for, ip, stop};
use crate::session::{Background, Config, PeerSource, Session};

/// A session that falls asleep after a second with no read, knowing `peers`, with nothing
/// fetched but what reads ask for.
fn sleepy(peers: Vec<SocketAddr>) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        peers,
        cache_bytes: BIG_CACHE,
        background: Background::Off,
        readahead_bytes: 128 * KIB,
        idle_after: Some(Duration::from_secs(1)),
        ..Config::default()
    }
}

#[tokio::test]
async fn an_idle_torrent_sleeps_and_a_read_wakes_it_with_right_bytes() {
    let c = content(61, 32 * 1024, &[2048 * KIB]);
    let peer = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    let config = sleepy(vec![peer.addr]);
    let host = host_for(&config).await;
    let session = Session::start(c.torrent.clone(), config, &host)
        .await
        .expect("session starts");
    let h = session.open_reader(0);
    check_read(&session, &c, h, 0, 0, 64 * 1024).await;
    let awake = session.stats();
    assert!(!awake.asleep && awake.peers == 1, "{awake:?}");

    let asleep = eventually(&session, "asleep, no peers", |s| s.asleep && s.peers == 0).await;
    assert_eq!(asleep.known_peers, 1, "the peer's address is kept");
    peer.wait_for("the session hung up", |c| c.closed >= 1)
        .await;
    let dialled = peer.counters().connections;
    // Asleep through several idle ticks: nobody is dialled.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(session.stats().asleep);
    assert_eq!(peer.counters().connections, dialled, "dialled while asleep");

    // A read far from what was fetched wakes it: the known peer is dialled, the bytes right.
    check_read(&session, &c, h, 0, 1024 * KIB, 64 * 1024).await;
    let woken = session.stats();
    assert!(!woken.asleep, "{woken:?}");
    peer.wait_for("the known peer dialled again", |c| c.connections > dialled)
        .await;
    session.close_reader(h);
    // Its periodic tasks waited through the sleep without ticking and run again: with no
    // read for a while it falls asleep once more.
    eventually(&session, "asleep again", |s| s.asleep && s.peers == 0).await;
    stop(session).await;
}

/// A seeder that found us (it connected in, from a port where nobody listens) and named its
/// listening port in its extended handshake is dialled there when a read wakes the torrent:
/// the only way back to it, since nothing else told us its address.
#[tokio::test]
async fn a_peer_that_connected_in_is_dialled_at_its_port_after_sleep() {
    let c = content(62, 32 * 1024, &[2048 * KIB]);
    let peer = FakePeer::start(ip(3), c.clone(), Behavior::Honest).await;
    let config = sleepy(Vec::new());
    let host = host_for(&config).await;
    let session = Session::start(c.torrent.clone(), config, &host)
        .await
        .expect("session starts");
    peer.connect_in(SocketAddr::from(([127, 0, 0, 1], session.listen_port())))
        .await;
    let h = session.open_reader(0);
    check_read(&session, &c, h, 0, 0, 64 * 1024).await;
    assert_eq!(peer.counters().connections, 1, "only the one it made");

    eventually(&session, "asleep, no peers", |s| s.asleep && s.peers == 0).await;
    check_read(&session, &c, h, 0, 1024 * KIB, 64 * 1024).await;
    peer.wait_for("dialled at its listening port", |c| c.connections >= 2)
        .await;
    eventually(&session, "connected, credited to its handshake", |s| {
        let by = s
            .by_source
            .iter()
            .find(|c| c.source == PeerSource::Handshake);
        by.is_some_and(|c| c.known == 1 && c.connected == 1)
    })
    .await;
    session.close_reader(h);
    stop(session).await;
}
