//! The engine against scripted fake peers on loopback (`fake_peer`): honest seeders, liars,
//! stallers and protocol abusers, the cases a real client will not produce on demand. Each test
//! checks what a user would: the bytes a read returns and the session's `Stats`. Timeouts are
//! hang detectors only; no test depends on how fast anything is.

mod crowd;
mod disk;
mod disk_pool;
mod fake_peer;
mod fast;
mod idle;
mod late;
mod liars;
mod media;
mod pool;
mod scale;
mod stalls;
mod streaming;
mod swarm;
mod web_server;
mod webseed;
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

/// A single-file torrent `name` of `length` bytes in `piece_len` pieces with these SHA1s.
fn single_file_torrent(name: &str, piece_len: u32, length: u64, pieces: &[u8]) -> Arc<Torrent> {
    let mut e = Encoder::new();
    e.begin_dict()
        .str("info")
        .begin_dict()
        .str("length")
        .int(length as i64)
        .str("name")
        .str(name)
        .str("piece length")
        .int(i64::from(piece_len))
        .str("pieces")
        .bytes(pieces)
        .end()
        .end();
    Arc::new(Torrent::from_bytes(&e.finish()).expect("test torrent parses"))
}

/// A single-file torrent of `data`.
fn single_file(name: &str, piece_len: u32, data: Vec<u8>) -> Arc<Content> {
    let pieces: Vec<u8> = data
        .chunks(piece_len as usize)
        .flat_map(|c| <[u8; 20]>::from(Sha1::digest(c)))
        .collect();
    let torrent = single_file_torrent(name, piece_len, data.len() as u64, &pieces);
    Arc::new(Content { torrent, data })
}

/// 32 KiB pieces (2 blocks each), 31 of them; the file boundary is inside piece 9.
fn two_files() -> Arc<Content> {
    content(1, 32 * 1024, &[300_000, 700_001])
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// A session of `content` with these peers; background fetching torrent-wide once reading
/// starts (as these tests expect; `streaming.rs` tests the other policies).
async fn start(content: &Content, peers: &[&FakePeer], cache_bytes: u64) -> Session {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: peers.iter().map(|p| p.addr).collect(),
        cache_bytes,
        background: crate::session::Background::Torrent,
        ..Config::default()
    };
    let host = host_for(&config).await;
    Session::start(content.torrent.clone(), config, &host)
        .await
        .expect("session starts")
}

/// The host a test session takes its incoming peers from, with the config's handshake limit;
/// as many handshakes may be pending as peers may connect (tests connect in bursts).
async fn host_for(config: &Config) -> Host {
    let pending = config.max_peers.max(crate::session::host::DEFAULT_PENDING);
    Host::bind_limited(config.listen, config.peer_timeouts.handshake, pending)
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

/// Timeouts short enough for a test to see a peer dropped for stalling or idling.
fn quick_timeouts() -> crate::session::PeerTimeouts {
    crate::session::PeerTimeouts {
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
    peer_timeouts: crate::session::PeerTimeouts,
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
