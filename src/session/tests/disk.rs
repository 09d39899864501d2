//! The disk cache in a running session: a second session on the same `--cache-dir` reads
//! without peers; a corrupted cache file is never served; a broken cache directory costs only
//! the caching.

use std::path::Path;
use std::sync::Arc;

use super::fake_peer::{Behavior, Content, FakePeer};
use super::{
    BIG_CACHE, check_read, eventually, ip, read_everything, start, stop, two_files, within,
};
use crate::session::{Config, DiskCacheConfig, Session};

async fn start_cached(content: &Content, peers: &[&FakePeer], dir: &Path) -> Session {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: peers.iter().map(|p| p.addr).collect(),
        cache_bytes: BIG_CACHE,
        disk_cache: Some(DiskCacheConfig::new(dir.to_owned(), BIG_CACHE)),
        ..Config::default()
    };
    let host = super::host_for(&config).await;
    Session::start(content.torrent.clone(), config, &host)
        .await
        .expect("session starts")
}

/// The directory of `content`'s torrent inside the cache dir.
fn torrent_dir(dir: &Path, content: &Content) -> std::path::PathBuf {
    dir.join(
        content
            .torrent
            .info_hash
            .0
            .map(|b| format!("{b:02x}"))
            .concat(),
    )
}

/// A session reads the whole torrent from `seeder` and exits, leaving it all on disk.
async fn fill_cache(c: &Arc<Content>, seeder: &FakePeer, dir: &Path) {
    let session = start_cached(c, &[seeder], dir).await;
    read_everything(&session, c, 50_000).await;
    let total = c.data.len() as u64;
    eventually(&session, "every piece on disk", |s| {
        s.disk.is_some_and(|d| d.used == total)
    })
    .await;
    stop(session).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_session_reads_everything_from_disk_without_peers() {
    let c = two_files();
    let tmp = tempfile::tempdir().expect("tempdir");
    let seeder = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    fill_cache(&c, &seeder, tmp.path()).await;
    drop(seeder);

    let session = start_cached(&c, &[], tmp.path()).await;
    let total = c.torrent.info.geometry.piece_count();
    let stats = session.stats();
    assert_eq!(stats.verified_pieces, total, "disk pieces count as held");
    read_everything(&session, &c, 40_000).await;
    let stats = session.stats();
    assert_eq!(stats.downloaded, 0);
    assert_eq!(stats.peers, 0);
    let disk = stats.disk.expect("disk stats");
    assert_eq!(disk.used, c.data.len() as u64);
    assert_eq!(disk.budget, BIG_CACHE);
    assert_eq!((disk.errors, disk.bad_pieces), (0, 0));
    stop(session).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_cache_file_is_never_served_and_comes_from_a_peer() {
    let c = two_files();
    let tmp = tempfile::tempdir().expect("tempdir");
    let seeder = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    fill_cache(&c, &seeder, tmp.path()).await;

    // Same size, one byte changed: only the hash can tell.
    let file = torrent_dir(tmp.path(), &c).join("3-32768.piece");
    let mut bytes = std::fs::read(&file).expect("piece 3 is on disk");
    bytes[100] ^= 0xff;
    std::fs::write(&file, &bytes).expect("corrupt");

    let session = start_cached(&c, &[&seeder], tmp.path()).await;
    let h = session.open_reader(0);
    // Piece 3 is bytes 98304..131072 of file 0.
    check_read(&session, &c, h, 0, 98_000, 40_000).await;
    let stats = session.stats();
    let disk = stats.disk.expect("disk stats");
    assert_eq!(disk.bad_pieces, 1);
    assert!(
        stats.downloaded >= 32 * 1024,
        "piece 3 came from the seeder"
    );
    // The good copy replaces the bad one on disk.
    eventually(&session, "piece 3 cached again", |s| {
        s.disk.is_some_and(|d| d.used == c.data.len() as u64)
    })
    .await;
    stop(session).await;
    let again = std::fs::read(&file).expect("piece 3 rewritten");
    assert_eq!(&again[..], &c.data[3 * 32 * 1024..4 * 32 * 1024]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_dir_that_vanishes_costs_only_the_caching() {
    let c = two_files();
    let tmp = tempfile::tempdir().expect("tempdir");
    let seeder = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    let session = start_cached(&c, &[&seeder], tmp.path()).await;
    std::fs::remove_dir_all(torrent_dir(tmp.path(), &c)).expect("remove the cache dir");
    read_everything(&session, &c, 50_000).await;
    let stats = eventually(&session, "write errors counted", |s| {
        s.disk.is_some_and(|d| d.errors > 0)
    })
    .await;
    assert_eq!(stats.disk.map(|d| d.used), Some(0));
    within("second pass", read_everything(&session, &c, 64_000)).await;
    stop(session).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_piece_only_on_disk_is_uploaded_to_a_peer() {
    let c = two_files();
    let tmp = tempfile::tempdir().expect("tempdir");
    let seeder = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    fill_cache(&c, &seeder, tmp.path()).await;
    drop(seeder);

    // Memory is empty: the leecher's request for piece 0 is answered from disk.
    let leecher = FakePeer::start(ip(3), c.clone(), Behavior::Hoarder(1)).await;
    let session = start_cached(&c, &[&leecher], tmp.path()).await;
    assert_eq!(session.stats().cache_used, 0);
    leecher
        .wait_for("its request sent", |n| n.requests >= 1)
        .await;
    let stats = eventually(&session, "a block uploaded", |s| s.uploaded >= 16 * 1024).await;
    assert_eq!(stats.downloaded, 0);
    assert_eq!(stats.disk.map(|d| d.bad_pieces), Some(0));
    stop(session).await;
}

/// A leecher without Fast cannot be told "no" later, so it is told only of pieces the disk
/// holds, and every request it makes is answered. Without a disk cache it is told of nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_peer_without_fast_is_told_only_what_the_disk_holds() {
    let c = two_files();
    let seeder = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    let plain = FakePeer::start(ip(3), c.clone(), Behavior::Leecher).await;
    let session = start(&c, &[&seeder, &plain], BIG_CACHE).await;
    read_everything(&session, &c, 64 * 1024).await;
    plain.wait_for("a connection", |n| n.connections >= 1).await;
    // Reading everything took a while; nothing it holds only in memory was announced.
    assert_eq!(plain.counters().announced, 0, "{:?}", plain.counters());
    stop(session).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let plain = FakePeer::start(ip(4), c.clone(), Behavior::Leecher).await;
    let session = start_cached(&c, &[&seeder, &plain], dir.path()).await;
    read_everything(&session, &c, 64 * 1024).await;
    let n = c.torrent.info.geometry.piece_count() as usize;
    plain
        .wait_for("every piece announced once on disk", |k| k.announced == n)
        .await;
    plain
        .wait_for("every request answered", |k| {
            k.requests == n && k.blocks_received == n
        })
        .await;
    stop(session).await;
}
