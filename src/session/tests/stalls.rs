//! Peers that stall, idle, trickle or stop reading: their requests go to others, they are
//! dropped when useless, and buffers stay bounded; reads go on from honest peers.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn staller_does_not_hold_up_reads() {
    let c = two_files();
    let (honest, staller, session) = bad_peer_first(&c, Behavior::Staller).await;

    // The read waits on the staller's requests before the honest peer is even known.
    let reads = spawn_read_everything(&session, &c, 64 * 1024);
    staller.wait_for("a request", |n| n.requests >= 1).await;
    join(&session, &honest).await;
    within("reads", reads).await.expect("reads");
    let stats = session.stats();
    assert_eq!(stats.hash_failures, 0);
    assert_eq!(stats.banned, 0);
    // Slow, not banned (it is dropped only after stalling again and again; see
    // `a_peer_stalling_mid_piece_is_dropped_and_its_pieces_finished_by_others`).
    assert!(!banned(&session, staller.ip()));
    assert_eq!(staller.counters().blocks_sent, 0);
    assert_eq!(honest.counters().bad_requests, 0);
    stop(session).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_fails_a_read_waiting_on_a_staller() {
    let c = two_files();
    let staller = FakePeer::start(ip(3), c.clone(), Behavior::Staller).await;
    let session = start(&c, &[&staller], BIG_CACHE).await;

    let pending = {
        let session = session.clone();
        tokio::spawn(async move {
            let h = session.open_reader(1);
            session.read(h, 1, 50_000, 10_000).await
        })
    };
    staller.wait_for("a request", |n| n.requests >= 1).await;
    assert!(!pending.is_finished(), "nothing can have answered the read");
    session.stop();
    let result = within("the pending read after stop", pending)
        .await
        .expect("read task");
    assert_eq!(result, Err(ReadError::Shutdown));
    // Reads after stop fail at once too.
    let h = session.open_reader(0);
    assert_eq!(
        within("a read after stop", session.read(h, 0, 0, 10)).await,
        Err(ReadError::Shutdown)
    );
    stop(session.clone()).await;
    staller
        .wait_for("the session hang up", |n| n.closed >= 1)
        .await;
    eventually(&session, "no peers", |s| s.peers == 0).await;
}

/// A leecher that asks for many blocks and then never reads (its receive buffer is small): the
/// session's writer to it blocks.
/// Once the session shuts down, nothing of it may stay behind (a detached writer task would keep
/// the socket and the queued blocks for as long as the leecher keeps its end open).
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_leaves_no_task_behind_for_a_peer_that_stopped_reading() {
    let c = two_files();
    let seeder = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    let hoarder = FakePeer::start(ip(5), c.clone(), Behavior::Hoarder(4000)).await;
    let session = start(&c, &[&seeder, &hoarder], BIG_CACHE).await;
    let h = session.open_reader(0);
    check_read(&session, &c, h, 0, 0, 100).await;
    hoarder
        .wait_for("its requests sent", |n| n.requests >= 4000)
        .await;
    // A full upload queue: more than the hoarder's small buffers take, so the writer blocks.
    eventually(&session, "blocks queued for the hoarder", |s| {
        s.uploaded >= 256 * 1024
    })
    .await;
    stop(session).await;
    drop(seeder);
    // Left: the hoarder's listener and its one connection, which never reads.
    let metrics = tokio::runtime::Handle::current().metrics();
    within("the session's tasks to end", async {
        while metrics.num_alive_tasks() > 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(hoarder.counters().connections, 1);
}

/// Regression: a piece on parole (fetched from one peer after a failed check) once stayed with
/// a staller for good: when its requests timed out it released them and, in the same step,
/// claimed the piece again before any other peer could. An owner that fails to deliver now
/// loses the parole.
#[tokio::test(flavor = "multi_thread")]
async fn parole_piece_is_not_held_by_a_staller() {
    let c = two_files();
    let (honest, staller, session) = bad_peer_first(&c, Behavior::Staller).await;
    staller.wait_for("interested", |n| n.interested >= 1).await;
    // As `reject` leaves a piece whose check failed with blocks from two peers.
    let p = c.torrent.info.geometry.piece(5).expect("piece 5");
    session.shared.lock().picker.set_exclusive(p);
    let read = {
        let session = session.clone();
        tokio::spawn(async move {
            let h = session.open_reader(0);
            session.read(h, 0, 5 * 32 * 1024, 100).await
        })
    };
    staller.wait_for("a request", |n| n.requests >= 1).await;
    join(&session, &honest).await;
    let got = within("the read of the parole piece", read)
        .await
        .expect("read task");
    assert_eq!(
        got.as_deref().ok(),
        Some(expected(&c, 0, 5 * 32 * 1024, 100))
    );
    stop(session).await;
}

/// The peer sends the first block of every piece it is asked for and then nothing. Alone, it
/// keeps the read waiting until its requests have timed out again and again; then it is
/// dropped (not banned: nothing it sent was wrong), and the honest peer, found later,
/// finishes the pieces it left half done.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_stalling_mid_piece_is_dropped_and_its_pieces_finished_by_others() {
    let c = two_files();
    let honest = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    let staller = FakePeer::start(ip(6), c.clone(), Behavior::StallMidPiece).await;
    let session = start_quick(&c, &[&staller], 80).await;

    let reads = spawn_read_everything(&session, &c, 64 * 1024);
    staller
        .wait_for("the session hang up", |n| n.closed >= 1)
        .await;
    assert!(
        !reads.is_finished(),
        "the staller alone cannot serve the read"
    );
    join(&session, &honest).await;
    within("reads", reads).await.expect("reads");
    let stats = session.stats();
    assert_eq!(stats.hash_failures, 0);
    assert_eq!(stats.banned, 0);
    assert!(
        staller.counters().sent_by_piece.values().all(|&n| n == 1),
        "one block per piece: {:?}",
        staller.counters()
    );
    read_everything(&session, &c, 100_000).await;
    stop(session).await;
}

/// A peer that sends only keep-alives (no bitfield, no `have`, never an unchoke) is useless;
/// it is dropped once the idle limit passes, while reads go on from the honest peer.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_sending_only_keepalives_is_dropped() {
    let c = two_files();
    let honest = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    let idler = FakePeer::start(ip(7), c.clone(), Behavior::KeepAliveOnly).await;
    let session = start_quick(&c, &[&honest, &idler], 80).await;
    idler.wait_for("a connection", |n| n.connections >= 1).await;
    read_everything(&session, &c, 64 * 1024).await;
    idler
        .wait_for("the session hang up", |n| n.closed >= 1)
        .await;
    let stats = session.stats();
    assert_eq!(stats.hash_failures, 0);
    assert_eq!(stats.banned, 0);
    stop(session).await;
}

/// Per connection, a read buffer never holds more than this, whatever the peer sends: the
/// largest frame the session accepts (a block and its header, with slack) plus the growth
/// of the buffer that holds it.
const READ_BUFFER_BOUND: usize = 64 * 1024;

/// 200 connections that handshake and then start a frame of nearly the largest allowed length
/// and trickle it a byte at a time, and 200 more that never handshake at all: what the
/// session buffers for them stays under `READ_BUFFER_BOUND` each, the silent ones are closed
/// once the handshake time is up, and an honest peer still serves reads meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_trickling_connections_stay_bounded_and_reads_go_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const N: usize = 200;
    let c = two_files();
    let honest = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    // Only the handshake limit short: the tricklers must stay connected while measured.
    let timeouts = crate::session::PeerTimeouts {
        handshake: Duration::from_secs(1),
        ..crate::session::PeerTimeouts::default()
    };
    // Room for every trickler: incoming peers get all but a fifth of the slots.
    let session = start_timeouts(&c, &[&honest], (N + 10) * 5 / 4, timeouts).await;
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], session.listen_port()));
    let info_hash = c.torrent.info_hash.0;

    let mut tricklers = tokio::task::JoinSet::new();
    for i in 0..N {
        tricklers.spawn(async move {
            let mut s = tokio::net::TcpStream::connect(listen).await?;
            let mut id = *b"-TR0001-000000000000";
            id[8..12].copy_from_slice(&(i as u32).to_be_bytes());
            crate::wire::write_handshake(&mut s, &crate::wire::Handshake::new(info_hash, id))
                .await
                .map_err(std::io::Error::other)?;
            crate::wire::read_handshake(&mut s)
                .await
                .map_err(std::io::Error::other)?;
            // A `piece` frame of a block and a bit: the largest the session takes.
            s.write_all(&(16 * 1024 + 9 + 1000u32).to_be_bytes())
                .await?;
            s.write_all(&[7]).await?;
            loop {
                s.write_all(&[0]).await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            #[allow(unreachable_code)]
            Ok::<(), std::io::Error>(())
        });
    }
    eventually(&session, "every trickler connected", |s| s.peers == N + 1).await;
    // Then as many that never handshake: past the pending limit they are closed at once, the
    // others when their handshake time is up.
    let mut silent = Vec::new();
    for _ in 0..N {
        silent.push(
            tokio::net::TcpStream::connect(listen)
                .await
                .expect("connect"),
        );
    }

    // Reads from the honest peer, while the gauge is watched.
    let reads = spawn_read_everything(&session, &c, 64 * 1024);
    let mut peak = 0;
    while !reads.is_finished() {
        peak = peak.max(
            session
                .shared
                .read_buffers
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    within("reads", reads).await.expect("reads");
    let bound = (N + 1) * READ_BUFFER_BOUND;
    assert!(peak > 0, "the gauge counts the buffers");
    assert!(
        peak <= bound,
        "read buffers peaked at {peak} bytes, bound {bound}"
    );
    assert_eq!(
        session.stats().peers,
        N + 1,
        "the tricklers are still there"
    );

    // The silent ones are closed once the handshake time is up.
    for mut s in silent {
        let mut b = [0u8; 1];
        let n = within("a silent connection closed", s.read(&mut b))
            .await
            .unwrap_or(0);
        assert_eq!(n, 0, "the session sent nothing but the end of stream");
    }
    stop(session).await;
    tricklers.abort_all();
}

/// Our own download cap holds blocks back far longer than the request timeout: the peer is
/// not the slow one, so it is neither marked stalled nor dropped, and every byte arrives.
#[tokio::test(flavor = "multi_thread")]
async fn a_tight_download_cap_does_not_make_a_good_peer_look_stalled() {
    // Ten 16 KiB blocks at 32 KiB/s: each waits half a second for our cap.
    let c = content(11, 16 * 1024, &[160 * 1024]);
    let honest = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: vec![honest.addr],
        cache_bytes: BIG_CACHE,
        max_download_rate: Some(32 * 1024),
        peer_timeouts: crate::session::PeerTimeouts {
            request: Duration::from_millis(200),
            stalls: 1,
            ..quick_timeouts()
        },
        ..Config::default()
    };
    let host = host_for(&config).await;
    let session = Session::start(c.torrent.clone(), config, &host)
        .await
        .expect("session starts");
    read_everything(&session, &c, 64 * 1024).await;
    let seen = honest.counters();
    assert_eq!(seen.closed, 0, "the peer was dropped: {seen:?}");
    assert_eq!(seen.connections, 1, "{seen:?}");
    stop(session).await;
}
