//! The engine against scripted fake peers on loopback (`fake_peer`): honest seeders, liars,
//! stallers and protocol abusers, the cases a real client will not produce on demand. Each test
//! checks what a user would: the bytes a read returns and the session's `Stats`. Timeouts are
//! hang detectors only; no test depends on how fast anything is.

mod disk;
mod fake_peer;
mod fast;
mod late;
mod window;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sha1::{Digest, Sha1};

use super::{Config, Host, PeerSource, ReadError, ReadHandle, Session, Stats};
use crate::bencode::Encoder;
use crate::metainfo::Torrent;
use fake_peer::{Abuse, Behavior, Content, FakePeer, HANG};

const KIB: u64 = 1024;
const BIG_CACHE: u64 = 64 * 1024 * 1024;

/// A multi-file torrent of deterministic random bytes; file boundaries fall inside pieces.
fn content(seed: u64, piece_len: u32, files: &[u64]) -> Arc<Content> {
    content_with(seed, piece_len, files, false)
}

/// `content`, optionally private (BEP 27).
fn content_with(seed: u64, piece_len: u32, files: &[u64], private: bool) -> Arc<Content> {
    let total: u64 = files.iter().sum();
    let mut data = vec![0u8; total as usize];
    StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    let pieces: Vec<u8> = data
        .chunks(piece_len as usize)
        .flat_map(|c| <[u8; 20]>::from(Sha1::digest(c)))
        .collect();
    let mut e = Encoder::new();
    e.begin_dict()
        .str("info")
        .begin_dict()
        .str("files")
        .begin_list();
    for (i, len) in files.iter().enumerate() {
        e.begin_dict()
            .str("length")
            .int(*len as i64)
            .str("path")
            .begin_list()
            .str(&format!("file{i}.bin"))
            .end()
            .end();
    }
    e.end()
        .str("name")
        .str("fake")
        .str("piece length")
        .int(i64::from(piece_len))
        .str("pieces")
        .bytes(&pieces);
    if private {
        e.str("private").int(1);
    }
    e.end().end();
    let torrent = Torrent::from_bytes(&e.finish()).expect("test torrent parses");
    Arc::new(Content {
        torrent: Arc::new(torrent),
        data,
    })
}

/// 32 KiB pieces (2 blocks each), 31 of them; the file boundary is inside piece 9.
fn two_files() -> Arc<Content> {
    content(1, 32 * 1024, &[300_000, 700_001])
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

async fn start(content: &Content, peers: &[&FakePeer], cache_bytes: u64) -> Session {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: peers.iter().map(|p| p.addr).collect(),
        cache_bytes,
        ..Config::default()
    };
    let host = host_for(&config).await;
    Session::start(content.torrent.clone(), config, &host)
        .await
        .expect("session starts")
}

/// The host a test session takes its incoming peers from, with the config's handshake limit.
async fn host_for(config: &Config) -> Host {
    Host::bind(config.listen, config.peer_timeouts.handshake)
        .await
        .expect("bind")
}

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(HANG, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: still waiting after {HANG:?} (hang)"))
}

/// Polls the session's stats until `cond` holds.
async fn eventually(session: &Session, what: &str, cond: impl Fn(&Stats) -> bool) -> Stats {
    within(what, async {
        loop {
            let stats = session.stats();
            if cond(&stats) {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// The bytes a read of `file` at `offset` must return: fewer than `len` only at the file's end.
fn expected(content: &Content, file: usize, offset: u64, len: u32) -> &[u8] {
    let f = &content.torrent.info.files[file];
    let start = (f.offset + offset.min(f.length)) as usize;
    let end = (f.offset + (offset + u64::from(len)).min(f.length)) as usize;
    &content.data[start..end]
}

/// Reads and compares, with a short message on a mismatch instead of two huge dumps.
async fn check_read(
    session: &Session,
    content: &Content,
    handle: ReadHandle,
    file: usize,
    offset: u64,
    len: u32,
) {
    let what = format!("read file {file} at {offset}, {len} bytes");
    let got = within(&what, session.read(handle, file, offset, len))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let want = expected(content, file, offset, len);
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: wrong byte at {i} of {}", want.len());
    }
}

/// Reads every file from start to end in `chunk`-byte reads.
async fn read_everything(session: &Session, content: &Content, chunk: u32) {
    for (file, f) in content.torrent.info.files.iter().enumerate() {
        let handle = session.open_reader(file);
        let mut offset = 0;
        while offset < f.length {
            check_read(session, content, handle, file, offset, chunk).await;
            offset += u64::from(chunk);
        }
        session.close_reader(handle);
    }
}

async fn stop(session: Session) {
    within("shutdown", session.shutdown()).await;
    drop(session);
}

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

/// A session whose only peer is a bad one, and an honest seeder it does not know yet (see
/// `join`): a test lets the bad peer do its worst on a read first, so that the outcome does
/// not depend on which peer happens to be faster.
async fn bad_peer_first(c: &Arc<Content>, bad: Behavior) -> (FakePeer, FakePeer, Session) {
    let honest = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    let other = FakePeer::start(ip(3), c.clone(), bad).await;
    let session = start(c, &[&other], BIG_CACHE).await;
    (honest, other, session)
}

/// Hands `peer`'s address to the session, as a tracker would.
async fn join(session: &Session, peer: &FakePeer) {
    session
        .shared
        .discovered
        .send((PeerSource::Tracker, vec![peer.addr]))
        .await
        .expect("connector running");
}

/// Reads every file in a task of its own.
fn spawn_read_everything(
    session: &Session,
    c: &Arc<Content>,
    chunk: u32,
) -> tokio::task::JoinHandle<()> {
    let (session, c) = (session.clone(), c.clone());
    tokio::spawn(async move { read_everything(&session, &c, chunk).await })
}

fn banned(session: &Session, ip: IpAddr) -> bool {
    session.shared.lock().peers.is_banned(ip)
}

#[tokio::test(flavor = "multi_thread")]
async fn liar_is_banned_and_reads_stay_right() {
    let c = two_files();
    let (honest, liar, session) = bad_peer_first(&c, Behavior::Liar).await;

    let reads = spawn_read_everything(&session, &c, 64 * 1024);
    liar.wait_for("a block sent", |n| n.blocks_sent >= 1).await;
    join(&session, &honest).await;
    within("reads", reads).await.expect("reads");
    let stats = eventually(&session, "liar banned", |s| s.banned >= 1).await;
    assert!(banned(&session, liar.ip()), "the liar's IP is banned");
    assert!(!banned(&session, honest.ip()), "the honest IP is not");
    assert_eq!(stats.banned, 1);
    assert!(stats.hash_failures >= 1);
    liar.wait_for("the session hang up", |n| n.closed >= 1)
        .await;
    eventually(&session, "only the honest peer left", |s| s.peers == 1).await;
    // Re-reads after the ban (from the store) are still right.
    read_everything(&session, &c, 100_000).await;
    assert_eq!(
        honest.counters().bad_requests + liar.counters().bad_requests,
        0
    );
    stop(session).await;
}

/// The liar sends one corrupt block of each piece it is asked for and refuses the rest (see
/// `CorruptOnePerPiece`); the honest peer, joining once the liar's first block is in, sends the
/// rest. No failed piece has a single sender to blame, so the piece is fetched again from one
/// peer ("parole"), and when it verifies, the block hashes kept from the failure name the liar
/// ("smart ban"), the only way it can end up banned here.
#[tokio::test(flavor = "multi_thread")]
async fn one_corrupt_block_in_a_shared_piece_is_traced_to_the_liar() {
    // 64 KiB pieces of 4 blocks; the last piece has 3, so no piece is a single block.
    let c = content(3, 64 * 1024, &[1_000_000, 90_000]);
    let (honest, liar, session) = bad_peer_first(&c, Behavior::CorruptOnePerPiece).await;

    let reads = spawn_read_everything(&session, &c, 128 * 1024);
    liar.wait_for("a choke", |n| n.chokes >= 1).await;
    join(&session, &honest).await;
    within("reads", reads).await.expect("reads");
    let stats = eventually(&session, "liar banned", |s| s.banned >= 1).await;
    assert!(banned(&session, liar.ip()));
    assert!(!banned(&session, honest.ip()));
    assert!(stats.hash_failures >= 1);
    liar.wait_for("the session hang up", |n| n.closed >= 1)
        .await;
    let sent = liar.counters().sent_by_piece;
    assert!(
        sent.values().all(|&n| n == 1),
        "one block per piece: {sent:?}"
    );
    let total = c.torrent.info.geometry.piece_count();
    eventually(&session, "all pieces verified", |s| {
        s.verified_pieces == total
    })
    .await;
    read_everything(&session, &c, 50_000).await;
    stop(session).await;
}

/// One protocol violation from its own fake, next to an honest seeder.
async fn abuse_case(abuse: Abuse) {
    let c = two_files();
    let honest = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    let abuser = FakePeer::start(ip(4), c.clone(), Behavior::Abuse(abuse)).await;
    let session = start(&c, &[&honest, &abuser], BIG_CACHE).await;

    abuser
        .wait_for("the session hang up", |n| n.closed >= 1)
        .await;
    read_everything(&session, &c, 96 * 1024).await;
    // The abuser may be dialled again later (and dropped again); in between only the honest
    // peer is connected.
    let stats = eventually(&session, "only the honest peer connected", |s| s.peers == 1).await;
    assert_eq!(stats.hash_failures, 0, "{abuse:?}");
    assert_eq!(stats.banned, 0, "{abuse:?}");
    assert_eq!(honest.counters().bad_requests, 0);
    stop(session).await;
    abuser
        .wait_for("every connection closed", |n| n.closed == n.connections)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_frame_over_the_limit() {
    abuse_case(Abuse::HugeFrame).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_unrequested_piece_of_a_wrong_length() {
    abuse_case(Abuse::UnaskedPieceWrongLength).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_have_past_the_last_piece() {
    abuse_case(Abuse::HaveOutOfRange).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_bitfield_of_the_wrong_length() {
    abuse_case(Abuse::BitfieldWrongLength).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_truncated_message_then_eof() {
    abuse_case(Abuse::TruncatedThenEof).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_handshake_for_another_torrent() {
    abuse_case(Abuse::WrongInfoHash).await;
}

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

/// A leecher that asks for many blocks and then never reads: the session's writer to it blocks.
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
    // Far more than the socket buffers take while the hoarder reads nothing.
    eventually(&session, "blocks queued for the hoarder", |s| {
        s.uploaded >= 1024 * 1024
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

/// A peer sending 40 PEX messages of 50 new addresses each at once: the session takes no more
/// than one peer's budget (a burst of 100, then 50 a minute); a private torrent takes none and
/// does not offer PEX.
async fn pex_flood_case(private: bool) -> (usize, usize, Duration) {
    let c = content_with(5, 32 * 1024, &[100_000], private);
    let flooder = FakePeer::start(ip(60), c.clone(), Behavior::PexFlood(40)).await;
    let started = std::time::Instant::now();
    let session = start(&c, &[&flooder], BIG_CACHE).await;
    flooder
        .wait_for("the metadata answer after the flood", |c| {
            c.metadata_replies > 0
        })
        .await;
    let took = started.elapsed();
    // Every PEX message was handled; discovery is a channel away: wait for the burst (public)
    // or the configured peer (private) to reach the known set.
    let least = if private { 1 } else { 101 };
    let known = eventually(&session, "known peers", |s| s.known_peers >= least)
        .await
        .known_peers;
    let offered = flooder.counters().pex_offered;
    stop(session).await;
    (known, offered, took)
}

#[tokio::test]
async fn a_pex_flood_adds_a_bounded_number_of_peers() {
    let (known, offered, took) = pex_flood_case(false).await;
    assert_eq!(offered, 1, "a public torrent offers ut_pex");
    // The flooder itself, the burst, and what the bucket refilled meanwhile.
    let refill = (took.as_secs_f64() / 60.0 * 50.0).ceil() as usize + 1;
    assert!(
        (101..=1 + 100 + refill).contains(&known),
        "{known} known peers after 2000 addresses in {took:?}"
    );
}

#[tokio::test]
async fn a_private_torrent_neither_offers_nor_takes_pex() {
    let (known, offered, _) = pex_flood_case(true).await;
    assert_eq!(offered, 0);
    assert_eq!(known, 1, "only the configured peer");
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_blocks_nobody_asked_for() {
    abuse_case(Abuse::UnaskedBlocks).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_a_million_haves() {
    abuse_case(Abuse::HaveFlood).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_a_bitfield_that_takes_pieces_back() {
    abuse_case(Abuse::BitfieldContradicted).await;
}

/// Timeouts short enough for a test to see a peer dropped for stalling or idling.
fn quick_timeouts() -> super::PeerTimeouts {
    super::PeerTimeouts {
        handshake: Duration::from_secs(1),
        request: Duration::from_millis(500),
        stalls: 2,
        idle: Duration::from_secs(1),
    }
}

async fn start_quick(content: &Content, peers: &[&FakePeer], max_peers: usize) -> Session {
    start_timeouts(content, peers, max_peers, quick_timeouts()).await
}

async fn start_timeouts(
    content: &Content,
    peers: &[&FakePeer],
    max_peers: usize,
    peer_timeouts: super::PeerTimeouts,
) -> Session {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: peers.iter().map(|p| p.addr).collect(),
        cache_bytes: BIG_CACHE,
        max_peers,
        peer_timeouts,
        ..Config::default()
    };
    let host = host_for(&config).await;
    Session::start(content.torrent.clone(), config, &host)
        .await
        .expect("session starts")
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
    let timeouts = super::PeerTimeouts {
        handshake: Duration::from_secs(1),
        ..super::PeerTimeouts::default()
    };
    let session = start_timeouts(&c, &[&honest], N + 10, timeouts).await;
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
    let mut silent = Vec::new();
    for _ in 0..N {
        silent.push(
            tokio::net::TcpStream::connect(listen)
                .await
                .expect("connect"),
        );
    }
    eventually(&session, "every trickler connected", |s| s.peers == N + 1).await;

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
