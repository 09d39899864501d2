//! Opening a video the way mpv and VLC read it: the head, then the index, then the frames. The
//! session fetches them in that order, and once the head says where an mp4's index (`moov`)
//! is, exactly that instead of a guess at the tail; on tokio's paused clock, against a fake
//! seeder that records the order it is asked for pieces in.

use std::sync::Arc;

use bytes::Bytes;

use super::fake_peer::{Behavior, Content, FakePeer};
use super::{check_read, host_for, ip, join, single_file, within};
use crate::session::{Background, Config, Session};

const KIB: u64 = 1024;
/// 256 KiB pieces, 32 of them: the head (2 MiB) is pieces 0..8, the last 1 MiB 28..32, of
/// which the tail fetched at open (256 KiB) is the last piece.
const PIECE: u32 = 256 * 1024;
const LEN: u64 = 8 * 1024 * KIB;
const TAIL: std::ops::Range<u32> = 28..32;
const GUESS: std::ops::Range<u32> = 31..32;

fn boxed(size: u64, kind: &[u8; 4]) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&u32::try_from(size).unwrap().to_be_bytes());
    b[4..].copy_from_slice(kind);
    b
}

/// `movie.mp4`, one file of `LEN` bytes: `ftyp`, then `boxes` (offset, size, type) over
/// filler bytes.
fn movie(boxes: &[(u64, u64, &[u8; 4])]) -> Arc<Content> {
    let mut data: Vec<u8> = (0..LEN).map(|i| (i * 7 + i / 4093) as u8).collect();
    data[..8].copy_from_slice(&boxed(24, b"ftyp"));
    data[8..24].copy_from_slice(b"isom\0\0\x02\0isomiso2");
    for &(at, size, kind) in boxes {
        data[at as usize..at as usize + 8].copy_from_slice(&boxed(size, kind));
    }
    single_file("movie.mp4", PIECE, data)
}

/// Written without faststart: `mdat` from 24, `moov` in the last 300 KiB (pieces 30 and 31).
const MOOV_AT: u64 = LEN - 300 * KIB;
fn moov_at_the_end() -> Arc<Content> {
    movie(&[
        (24, MOOV_AT - 24, b"mdat"),
        (MOOV_AT, LEN - MOOV_AT, b"moov"),
    ])
}

/// Faststart: `moov` right after `ftyp`, `mdat` to the end.
fn faststart() -> Arc<Content> {
    let mdat = 24 + 100 * KIB;
    movie(&[(24, 100 * KIB, b"moov"), (mdat, LEN - mdat, b"mdat")])
}

/// A session that knows no peer yet (tests `join` one when the wants are set), fetching only
/// what readers want, with a small readahead window.
async fn start(c: &Content) -> Session {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        cache_bytes: 64 * 1024 * KIB,
        readahead_bytes: 512 * KIB,
        max_readahead_bytes: 512 * KIB,
        background: Background::Off,
        ..Config::default()
    };
    let host = host_for(&config).await;
    Session::start(c.torrent.clone(), config, &host)
        .await
        .expect("session starts")
}

/// Piece 0 in memory, as if read before: the first read of the head returns at once.
fn hold_head(session: &Session, c: &Content) {
    let mut st = session.shared.lock();
    let g = &c.torrent.info.geometry;
    let p = g.piece(0).unwrap();
    st.piece_passed(p, Bytes::copy_from_slice(&c.data[..PIECE as usize]));
}

fn wanted(session: &Session, pieces: std::ops::Range<u32>) -> Vec<u32> {
    let st = session.shared.lock();
    let g = st.picker.geometry().clone();
    pieces
        .filter(|&i| st.picker.is_wanted_by_reader(g.piece(i).unwrap()))
        .collect()
}

/// Waits until the session holds every one of `pieces`.
async fn fetched(session: &Session, pieces: &[u32]) {
    within("pieces fetched", async {
        loop {
            let done = {
                let st = session.shared.lock();
                let g = st.picker.geometry();
                pieces.iter().all(|&i| st.picker.have(g.piece(i).unwrap()))
            };
            if done {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Before anything is read: the head's first piece, then the end of the file, then the rest
/// of the head.
#[tokio::test(start_paused = true)]
async fn open_fetches_the_first_piece_then_the_tail_then_the_head() {
    let c = moov_at_the_end();
    let peer = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    let session = start(&c).await;
    let h = session.open_reader(0);
    join(&session, &peer).await;
    let asked: Vec<u32> = (0..8).chain(GUESS).collect();
    peer.wait_for("the head and the tail requested", |c| {
        asked.iter().all(|p| c.first_requests.contains(p))
    })
    .await;
    let order = peer.counters().first_requests;
    let at = |p: u32| order.iter().position(|&q| q == p).unwrap();
    assert_eq!(order[0], 0, "piece 0 first: {order:?}");
    for t in GUESS {
        assert!(
            at(t) < at(1),
            "tail piece {t} after head piece 1: {order:?}"
        );
    }
    for i in 1..8 {
        assert!(at(i - 1) < at(i), "head out of order: {order:?}");
    }
    session.close_reader(h);
    session.shutdown().await;
}

/// The head says the index starts at `MOOV_AT`: from the first read on, the pieces from there
/// to the end are wanted (more than the guess at open), those before it not, never asked for.
#[tokio::test(start_paused = true)]
async fn the_head_narrows_the_tail_to_the_moov() {
    let c = moov_at_the_end();
    let peer = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    let session = start(&c).await;
    hold_head(&session, &c);
    let h = session.open_reader(0);
    assert_eq!(wanted(&session, TAIL), GUESS.collect::<Vec<_>>());
    check_read(&session, &c, h, 0, 0, 64 * 1024).await;
    let moov = (MOOV_AT / u64::from(PIECE)) as u32;
    assert_eq!(moov, 30);
    assert_eq!(wanted(&session, TAIL), (moov..32).collect::<Vec<_>>());
    join(&session, &peer).await;
    // The moov, and the window after the read (pieces 1 and 2).
    fetched(&session, &[1, 2, 30, 31]).await;
    let order = peer.counters().first_requests;
    assert!(
        !order.contains(&28) && !order.contains(&29),
        "a tail piece before the moov was fetched: {order:?}"
    );
    // The player's jump to the index finds it held.
    check_read(&session, &c, h, 0, MOOV_AT, 64 * 1024).await;
    session.close_reader(h);
    session.shutdown().await;
}

/// Faststart: the index came with the head, so nothing of the end is fetched.
#[tokio::test(start_paused = true)]
async fn a_faststart_file_drops_the_tail() {
    let c = faststart();
    let peer = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    let session = start(&c).await;
    hold_head(&session, &c);
    let h = session.open_reader(0);
    check_read(&session, &c, h, 0, 0, 64 * 1024).await;
    assert_eq!(wanted(&session, TAIL), Vec::<u32>::new());
    join(&session, &peer).await;
    fetched(&session, &[1, 2]).await;
    let order = peer.counters().first_requests;
    assert!(
        !order.iter().any(|p| TAIL.contains(p)),
        "the tail of a faststart file was fetched: {order:?}"
    );
    session.close_reader(h);
    session.shutdown().await;
}

/// mpv's way: the head, the index at the end, then back to the first frames in the head. The
/// head stays wanted while the window jumps to the index; the first read elsewhere (a seek
/// target) ends the opening, and neither the head nor the index is wanted ahead of it.
#[tokio::test(start_paused = true)]
async fn the_head_stays_wanted_across_the_jump_to_the_index_until_a_read_elsewhere() {
    let c = moov_at_the_end();
    let session = start(&c).await;
    hold_head(&session, &c);
    let h = session.open_reader(0);
    let rest_of_head: Vec<u32> = (1..8).collect();
    check_read(&session, &c, h, 0, 0, 64 * 1024).await;
    let peer = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    join(&session, &peer).await;
    fetched(&session, &[30, 31]).await;
    check_read(&session, &c, h, 0, MOOV_AT, 64 * 1024).await;
    assert_eq!(
        wanted(&session, 1..8),
        rest_of_head,
        "the head is let go at the jump to the index"
    );
    // A seek to the middle: the opening is over.
    check_read(&session, &c, h, 0, LEN / 2, 64 * 1024).await;
    assert_eq!(wanted(&session, 1..8), Vec::<u32>::new());
    assert_eq!(wanted(&session, 30..32), Vec::<u32>::new());
    session.close_reader(h);
    session.shutdown().await;
}
