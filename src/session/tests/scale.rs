//! The scale benchmark (not a test: `scripts/scale.sh` runs it with `--ignored`): CPU per
//! verified piece in a torrent of 1,000,000 pieces with 500 peers, all in this process (fake
//! peers serving zeros). Prints its numbers; asserts only that the bytes are right.
//! `BTFS_SCALE_EMPTY` adds peers that have nothing: each verified piece asks each of them
//! whether it has anything we need (with a scan of the piece set, that was the cost).

use std::time::Instant;

use super::fake_peer::{Behavior, Content, FakePeer};
use super::*;

const PIECE: u32 = 16 * 1024;
/// Bytes read from the start of the file, a MiB at a time.
const READ: u64 = 64 * 1024 * 1024;

/// `BTFS_SCALE_PIECES`, `BTFS_SCALE_PEERS` and `BTFS_SCALE_EMPTY` override the defaults
/// (1,000,000, 500 and 0).
fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A single file of zeros, `PIECES` pieces of `PIECE` bytes.
fn zeros(pieces_n: u32) -> Arc<Content> {
    let hash = <[u8; 20]>::from(Sha1::digest(vec![0u8; PIECE as usize]));
    let mut pieces = Vec::with_capacity(20 * pieces_n as usize);
    for _ in 0..pieces_n {
        pieces.extend_from_slice(&hash);
    }
    let length = u64::from(pieces_n) * u64::from(PIECE);
    Arc::new(Content {
        torrent: single_file_torrent("zeros", PIECE, length, &pieces),
        data: Vec::new(),
    })
}

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: scripts/scale.sh"]
async fn scale_cpu_per_verified_piece() {
    const PIECES_DEFAULT: usize = 1_000_000;
    let pieces_n = setting("BTFS_SCALE_PIECES", PIECES_DEFAULT) as u32;
    let peers_n = setting("BTFS_SCALE_PEERS", 500);
    let empty_n = setting("BTFS_SCALE_EMPTY", 0);
    let c = zeros(pieces_n);
    let mut peers = Vec::new();
    for i in 0..peers_n + empty_n {
        let at = std::net::Ipv4Addr::new(127, 10 + (i / 250) as u8, (i % 250) as u8, 1);
        let behavior = if i < peers_n {
            Behavior::Honest
        } else {
            Behavior::Empty
        };
        peers.push(FakePeer::start(at, c.clone(), behavior).await);
    }
    let peers_n = peers_n + empty_n;
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: peers.iter().map(|p| p.addr).collect(),
        cache_bytes: 256 * 1024 * 1024,
        max_peers: peers_n + 10,
        ..Config::default()
    };
    let host = host_for(&config).await;
    let session = Session::start(c.torrent.clone(), config, &host)
        .await
        .expect("session starts");
    eventually(&session, "every peer connected", |s| s.peers == peers_n).await;

    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    let h = session.open_reader(0);
    let mut offset = 0;
    while offset < READ {
        let got = within("a read", session.read(h, 0, offset, 1 << 20))
            .await
            .expect("read");
        assert!(got.iter().all(|&b| b == 0), "wrong bytes at {offset}");
        offset += got.len() as u64;
    }
    let (cpu, wall) = (cpu_seconds() - cpu0, wall0.elapsed());
    let verified = session.stats().verified_pieces;
    println!(
        "scale: {pieces_n} pieces, {peers_n} peers ({empty_n} with nothing): read {} MiB in {:.2} s; {verified} pieces \
         verified; CPU {:.2} s, {:.0} us per verified piece",
        READ >> 20,
        wall.as_secs_f64(),
        cpu,
        cpu * 1e6 / f64::from(verified.max(1)),
    );
    stop(session).await;
}
