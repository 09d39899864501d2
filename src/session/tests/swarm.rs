//! The engine with honest peers: exact bytes across pieces and files, a tiny cache that
//! evicts and fetches again, and our own address met among the peers.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn honest_seeder_serves_exact_bytes_across_pieces_and_files() {
    let c = two_files();
    let seeder = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    let session = start(&c, &[&seeder], BIG_CACHE).await;

    let h0 = session.open_reader(0);
    let h1 = session.open_reader(1);
    for (handle, file, offset, len) in [
        (h0, 0, 0, 1000),
        (h0, 0, 32_000, 2_000),    // across the piece 0/1 boundary
        (h0, 0, 100_000, 100_000), // several pieces
        (h0, 0, 299_000, 4_000),   // past the end of file 0: 1000 bytes
        (h1, 1, 0, 100),           // same piece as the end of file 0
        (h1, 1, 123_457, 65_536),
        (h1, 1, 699_990, 4096), // the short last piece: 11 bytes
        (h0, 0, 5, 1),
    ] {
        check_read(&session, &c, handle, file, offset, len).await;
    }
    // Nothing to read at or past the end, or for no bytes; no such file is an error.
    assert!(session.read(h0, 0, 300_000, 10).await.unwrap().is_empty());
    assert!(session.read(h1, 1, 0, 0).await.unwrap().is_empty());
    assert_eq!(session.read(h0, 2, 0, 10).await, Err(ReadError::NoSuchFile));

    // Once reading started, the rest comes in the background (the cache holds it all).
    let total = c.torrent.info.geometry.piece_count();
    let stats = eventually(&session, "all pieces verified", |s| {
        s.verified_pieces == total
    })
    .await;
    assert_eq!(stats.total_pieces, total);
    assert_eq!(stats.hash_failures, 0);
    assert_eq!(stats.banned, 0);
    assert_eq!(stats.peers, 1);
    assert!(stats.downloaded >= c.data.len() as u64);
    assert_eq!(stats.cache_used, c.data.len() as u64);
    read_everything(&session, &c, 40_000).await;
    assert_eq!(seeder.counters().bad_requests, 0);
    stop(session).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tiny_cache_fetches_evicted_pieces_again() {
    let c = two_files();
    let piece = 32 * KIB;
    let seeder = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    let session = start(&c, &[&seeder], 2 * piece).await;

    // Forward through everything: far more than the cache holds.
    read_everything(&session, &c, 20_000).await;
    // Back to the start, then a read spanning three pieces (more than the whole cache), then
    // jumps between the files.
    let h0 = session.open_reader(0);
    let h1 = session.open_reader(1);
    for (handle, file, offset, len) in [
        (h0, 0, 0, 20_000),
        (h0, 0, 100_000, 3 * piece as u32),
        (h1, 1, 600_000, 50_000),
        (h0, 0, 10, 70_000),
        (h1, 1, 0, 5_000),
        (h0, 0, 299_999, 10),
        (h1, 1, 300_000, 1),
        (h0, 0, 0, 1),
    ] {
        check_read(&session, &c, handle, file, offset, len).await;
    }
    let stats = session.stats();
    assert!(
        stats.verified_pieces < stats.total_pieces,
        "the cache cannot hold everything: {stats:?}"
    );
    assert!(
        stats.downloaded > c.data.len() as u64,
        "evicted pieces were fetched again: {stats:?}"
    );
    assert_eq!(stats.hash_failures, 0);
    // Piece 0 was read three times, with the whole file read in between: fetched again.
    assert!(
        seeder.counters().sent_by_piece[&0] > 2,
        "{:?}",
        seeder.counters()
    );
    // Readers' windows may hold the store over budget; once they close, a read of one piece
    // (and its one piece of readahead) brings it back under.
    session.close_reader(h0);
    session.close_reader(h1);
    let h = session.open_reader(1);
    check_read(&session, &c, h, 1, 500_000, 1).await;
    let stats = session.stats();
    assert!(
        stats.cache_used <= stats.cache_budget,
        "cache back under budget: {stats:?}"
    );
    stop(session).await;
}

/// Once every piece is verified the session tells its peers it is not interested. A piece that
/// is needed again later (evicted, or failed its check as the last one in flight) must make it
/// interested again, or nothing is ever asked of anyone and the read waits forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_piece_needed_again_after_the_whole_torrent_was_held_is_fetched() {
    let c = two_files();
    let seeder = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    let session = start(&c, &[&seeder], BIG_CACHE).await;
    read_everything(&session, &c, 128 * 1024).await;
    let total = c.torrent.info.geometry.piece_count();
    eventually(&session, "all pieces verified", |s| {
        s.verified_pieces == total
    })
    .await;
    let sent = seeder.counters().blocks_sent;

    // Evict everything, as memory does under pressure.
    session.shared.lock().drop_memory();
    let h = session.open_reader(1);
    check_read(&session, &c, h, 1, 400_000, 50_000).await;
    assert!(seeder.counters().blocks_sent > sent, "fetched again");
    stop(session).await;
}

/// Trackers hand us our own address among the others: dialled once, it is recognised by its
/// peer id and forgotten, not counted as a known peer nor redialled.
#[tokio::test(flavor = "multi_thread")]
async fn our_own_address_is_forgotten_after_one_dial() {
    let c = two_files();
    let honest = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    let host = Host::bind("127.0.0.1:0".parse().unwrap(), Duration::from_secs(10))
        .await
        .expect("bind");
    let ourselves = std::net::SocketAddr::from(([127, 0, 0, 1], host.port()));
    let config = Config {
        listen: ourselves,
        peers: vec![honest.addr, ourselves],
        cache_bytes: BIG_CACHE,
        ..Config::default()
    };
    let session = Session::start(c.torrent.clone(), config, &host)
        .await
        .expect("session starts");
    let s = eventually(&session, "our address forgotten", |s| {
        s.peers == 1 && s.known_peers == 1
    })
    .await;
    assert_eq!(s.banned, 0);
    read_everything(&session, &c, 64 * 1024).await;
    stop(session).await;
}

/// A peer that queues only four requests (its `reqq`) never has more of ours in flight, and
/// our extended handshake tells it our own `reqq`, our version, its address and our port.
#[tokio::test(flavor = "multi_thread")]
async fn we_honour_the_peers_reqq_and_tell_it_ours() {
    let c = two_files();
    let peer = FakePeer::start(ip(2), c.clone(), Behavior::Queue(4)).await;
    let session = start(&c, &[&peer], BIG_CACHE).await;
    read_everything(&session, &c, 64 * 1024).await;
    let seen = peer.counters();
    assert!(
        (1..=4).contains(&seen.max_queued),
        "{} requests queued at once",
        seen.max_queued
    );
    let hs = seen.their_handshake.expect("an extended handshake");
    assert_eq!(hs.reqq, Some(250));
    assert!(hs.client.is_some_and(|v| v.starts_with("btfs ")));
    assert_eq!(hs.yourip, Some(std::net::IpAddr::V4(ip(2))));
    assert_eq!(hs.port, Some(session.listen_port()));
    stop(session).await;
}
