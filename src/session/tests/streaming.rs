//! Streaming when the swarm is the bottleneck: what a reader needs goes ahead of background
//! work already queued at a peer, and readers share by deadline.

use super::fake_peer::{Behavior, Content, FakePeer};
use super::*;
use crate::session::Background;

/// A peer serves requests in order. The background work queued at it is cancelled when a read
/// needs the peer, so the read's blocks are not served after all of it; every byte is right.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_cancels_background_requests_queued_ahead_of_it() {
    // 4 MiB in 32 KiB pieces, from one peer answering a block every few milliseconds.
    let c = content(21, 32 * 1024, &[4 * 1024 * 1024]);
    let peer = FakePeer::start(ip(2), c.clone(), Behavior::Queue(250)).await;
    let session = start(&c, &[&peer], BIG_CACHE).await;
    let h = session.open_reader(0);
    // The first read starts background fetching; the peer's queue fills with it.
    check_read(&session, &c, h, 0, 0, 1024).await;
    peer.wait_for("background requests", |n| n.requests >= 24)
        .await;
    // A seek far ahead: its pieces are no background work queued yet.
    check_read(&session, &c, h, 0, 3 * 1024 * 1024 + 4000, 100_000).await;
    let seen = peer.counters();
    assert!(
        seen.cancels >= 1,
        "no background request was cancelled: {seen:?}"
    );
    stop(session).await;
}

/// Four files of 2 MiB in 64 KiB pieces (32 pieces each, none shared between files).
fn four_files() -> Arc<Content> {
    content(23, 64 * 1024, &[2 << 20, 2 << 20, 2 << 20, 2 << 20])
}

async fn start_policy(c: &Content, peer: &FakePeer, background: Background) -> Session {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: vec![peer.addr],
        cache_bytes: BIG_CACHE,
        background,
        ..Config::default()
    };
    let host = host_for(&config).await;
    Session::start(c.torrent.clone(), config, &host)
        .await
        .expect("session starts")
}

/// The pieces the peer was asked for, as the files they belong to.
fn files_fetched(peer: &FakePeer) -> std::collections::BTreeSet<u32> {
    let per_file = 32;
    (peer.counters().sent_by_piece.keys())
        .map(|p| p / per_file)
        .collect()
}

/// A probe (head and tail of a file, as a thumbnailer or `file` reads) fetches what it reads
/// and its readahead, nothing more: background fetching never starts for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_probe_never_turns_into_a_download() {
    let c = four_files();
    let peer = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    let session = start_policy(&c, &peer, Background::OpenFiles).await;
    let h = session.open_reader(0);
    check_read(&session, &c, h, 0, 0, 4096).await;
    check_read(&session, &c, h, 0, (2 << 20) - 4096, 4096).await;
    session.close_reader(h);
    {
        let mut st = session.shared.lock();
        st.refresh_background(tokio::time::Instant::now());
        assert!(
            !st.picker.background_enabled(),
            "background started for a probe"
        );
    }
    assert_eq!(files_fetched(&peer), [0].into(), "other files were fetched");
    stop(session).await;
}

/// A file read for real (half of it here) is fetched to its end in the background, then the
/// file next to it; files further away never are.
#[tokio::test(flavor = "multi_thread")]
async fn the_rest_of_a_watched_file_then_its_neighbour() {
    let c = four_files();
    let peer = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    let session = start_policy(&c, &peer, Background::OpenFiles).await;
    let h = session.open_reader(0);
    let mut offset = 0;
    while offset < 1 << 20 {
        check_read(&session, &c, h, 0, offset, 64 * 1024).await;
        offset += 64 * 1024;
    }
    eventually(&session, "files 0 and 1 fetched", |s| {
        s.verified_pieces >= 64
    })
    .await;
    let fetched = files_fetched(&peer);
    assert_eq!(
        fetched,
        [0, 1].into(),
        "fetched pieces of files {fetched:?}"
    );
    stop(session).await;
}

/// `off`: only what is read, even of a file read whole.
#[tokio::test(flavor = "multi_thread")]
async fn background_off_fetches_only_what_is_read() {
    let c = four_files();
    let peer = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    let session = start_policy(&c, &peer, Background::Off).await;
    let h = session.open_reader(1);
    let mut offset = 0;
    while offset < 2 << 20 {
        check_read(&session, &c, h, 1, offset, 256 * 1024).await;
        offset += 256 * 1024;
    }
    {
        let mut st = session.shared.lock();
        st.refresh_background(tokio::time::Instant::now());
        assert!(!st.picker.background_enabled());
    }
    assert_eq!(files_fetched(&peer), [1].into());
    stop(session).await;
}

/// The kernel sends its readahead as reads right behind the one a reader waits on: every
/// waiting read is urgent, the one the reader waits on first (the lowest, or a seek newer than
/// it), the others by their distance from it. A stall is a read the reader waited on.
#[tokio::test(start_paused = true)]
async fn the_read_a_reader_waits_on_comes_first() {
    let c = content(29, 64 * 1024, &[32 << 20]);
    let session = start(&c, &[], BIG_CACHE).await;
    let h = session.open_reader(0);
    let g = c.torrent.info.geometry.clone();
    let read = |piece: u64| {
        let session = session.clone();
        tokio::spawn(async move { session.read(h, 0, piece * 64 * 1024, 64 * 1024).await })
    };
    let waiting = |n: usize| {
        let session = session.clone();
        within("reads wait", async move {
            loop {
                let now = {
                    let mut st = session.shared.lock();
                    st.readers.get_mut(h).map_or(0, |r| r.waiting.len())
                };
                if now >= n {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    // What a peer with every piece would be asked for first, a piece's blocks at a time.
    let next_pieces = |n: usize| {
        let mut st = session.shared.lock();
        let all = crate::bitfield::Bitfield::full(g.piece_count());
        let blocks = st.picker.pick(crate::picker::PeerId(999), &all, 4 * n);
        let mut pieces: Vec<u32> = blocks.iter().map(|b| b.piece.get()).collect();
        pieces.dedup();
        pieces
    };
    // The read waited on (piece 10), then the kernel's readahead behind it (11): one stall.
    let demand = read(10);
    waiting(1).await;
    let ahead = read(11);
    waiting(2).await;
    assert_eq!(session.stats().readers[0].stalls, 1);
    // A seek far ahead while they wait: the reader waits on it, then on what is nearest it.
    let seek = read(300);
    waiting(3).await;
    assert_eq!(next_pieces(3), vec![300, 11, 10]);
    assert_eq!(session.stats().readers[0].stalls, 2);
    for t in [ahead, demand, seek] {
        t.abort();
        let _ = t.await;
    }
    session.close_reader(h);
    stop(session).await;
}
