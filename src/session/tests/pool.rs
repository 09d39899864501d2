//! Two torrents sharing one memory budget (`store::pool`), against fake seeders: a torrent
//! being read takes memory from an idle one first, never from another's reader, and the sum
//! of what both hold never goes over the budget.

use std::sync::Arc;

use super::fake_peer::{Behavior, Content, FakePeer};
use super::{check_read, content, eventually, host_for, ip, stop};
use crate::session::{Background, Config, Host, Session};
use crate::store::MemoryPool;

const KIB: u64 = 1024;
const PIECE: u32 = 32 * 1024;
const BUDGET: u64 = 1024 * KIB;
const CHUNK: u32 = 64 * 1024;

/// A session of `c` in `pool`, its seeder `peer`; nothing fetched but what readers want.
async fn start_in(pool: &MemoryPool, host: &Host, c: &Content, peer: &FakePeer) -> Session {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: vec![peer.addr],
        cache_bytes: pool.budget(),
        memory: Some(pool.clone()),
        readahead_bytes: 128 * KIB,
        max_readahead_bytes: 256 * KIB,
        background: Background::Off,
        ..Config::default()
    };
    Session::start(c.torrent.clone(), config, host)
        .await
        .expect("session starts")
}

/// The pieces of `s` memory holds.
fn in_memory(s: &Session) -> Vec<u32> {
    let st = s.shared.lock();
    let g = &s.shared.geometry;
    (g.pieces())
        .filter(|&p| st.residency.in_memory(p))
        .map(|p| p.get())
        .collect()
}

/// What both hold, each as its own stats say, and the pool's own count: within the budget.
fn check_budget(pool: &MemoryPool, a: &Session, b: &Session) {
    let (ua, ub) = (a.stats().cache_used, b.stats().cache_used);
    assert!(ua + ub <= BUDGET, "{ua} + {ub} cached, over {BUDGET}");
    assert!(pool.used() <= BUDGET, "pool {} over {BUDGET}", pool.used());
}

struct Pair {
    pool: MemoryPool,
    a: (Arc<Content>, FakePeer, Session),
    b: (Arc<Content>, FakePeer, Session),
}

/// Torrent A of 4 MiB (four times the budget) and B of 1 MiB, one seeder each.
async fn pair() -> Pair {
    let pool = MemoryPool::new(BUDGET);
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    let host = host_for(&config).await;
    let ca = content(41, PIECE, &[4096 * KIB]);
    let cb = content(42, PIECE, &[1024 * KIB]);
    let pa = FakePeer::start(ip(2), ca.clone(), Behavior::Honest).await;
    let pb = FakePeer::start(ip(3), cb.clone(), Behavior::Honest).await;
    let sa = start_in(&pool, &host, &ca, &pa).await;
    let sb = start_in(&pool, &host, &cb, &pb).await;
    Pair {
        pool,
        a: (ca, pa, sa),
        b: (cb, pb, sb),
    }
}

/// B read its file earlier; A reads all of its own, four times the budget. A's
/// pieces push B's out before any of A's own goes (B's are older), and the sum stays within
/// the budget at every read.
#[tokio::test]
async fn a_torrent_being_read_takes_memory_from_an_idle_one_first() {
    let Pair { pool, a, b } = pair().await;
    let (ca, _pa, sa) = a;
    let (cb, _pb, sb) = b;
    // To its end: nothing of B is still on its way when A starts (a window's pieces arriving
    // later would be newer than A's first ones).
    let hb = sb.open_reader(0);
    for off in (0..1024 * KIB).step_by(CHUNK as usize) {
        check_read(&sb, &cb, hb, 0, off, CHUNK).await;
    }
    sb.close_reader(hb);
    let held_b = sb.stats().cache_used;
    assert!(held_b >= 512 * KIB, "B holds what it read: {held_b}");

    let ha = sa.open_reader(0);
    let mut b_emptied = false;
    for off in (0..4096 * KIB).step_by(CHUNK as usize) {
        check_read(&sa, &ca, ha, 0, off, CHUNK).await;
        check_budget(&pool, &sa, &sb);
        // A first, then B: B takes in nothing, so B empty at its check means it was at A's.
        let read_so_far = ((off + u64::from(CHUNK)) / u64::from(PIECE)) as u32;
        let held_a = in_memory(&sa);
        let a_lost = (0..read_so_far).any(|i| !held_a.contains(&i));
        let b_held = sb.stats().cache_used;
        if a_lost {
            assert_eq!(
                b_held, 0,
                "A lost a piece at {off} while B still held {b_held}"
            );
        }
        b_emptied |= b_held == 0;
    }
    assert!(b_emptied, "four budgets of A read, B's pieces never left");
    // B's pieces left memory and B knows it: the picker no longer has them.
    eventually(&sb, "B takes the news", |s| s.verified_pieces == 0).await;
    // And B reads right again, fetching what it lost.
    let hb = sb.open_reader(0);
    check_read(&sb, &cb, hb, 0, 0, CHUNK).await;
    sb.close_reader(hb);
    sa.close_reader(ha);
    check_budget(&pool, &sa, &sb);
    stop(sa).await;
    stop(sb).await;
    assert_eq!(pool.used(), 0, "stopped sessions' pieces leave the pool");
}

/// B's reader stays open at the start of its file: its window is its floor. A reads four
/// budgets' worth; nothing of B's window is evicted (B never fetches anything again) and the
/// sum stays within the budget.
#[tokio::test]
async fn a_readers_window_is_never_evicted_by_another_torrent() {
    let Pair { pool, a, b } = pair().await;
    let (ca, _pa, sa) = a;
    let (cb, _pb, sb) = b;
    let hb = sb.open_reader(0);
    check_read(&sb, &cb, hb, 0, 0, CHUNK).await;
    let window = eventually(&sb, "B's window fetched", |s| {
        let r = &s.readers[0];
        r.window > 0 && s.verified_bytes >= r.window_start + r.window
    })
    .await;
    // What B's reader protects (its window, and what it reads) and memory holds.
    let window_pieces: Vec<u32> = {
        let st = sb.shared.lock();
        (sb.shared.geometry.pieces())
            .filter(|&p| st.residency.in_memory(p) && st.picker.is_wanted_by_reader(p))
            .map(|p| p.get())
            .collect()
    };
    assert!(window_pieces.len() >= 4, "{window_pieces:?}");
    let fetched_b = sb.downloaded_bytes();
    assert!(
        window.readers[0].window >= 128 * KIB,
        "{:?}",
        window.readers
    );

    let ha = sa.open_reader(0);
    for off in (0..4096 * KIB).step_by(CHUNK as usize) {
        check_read(&sa, &ca, ha, 0, off, CHUNK).await;
        check_budget(&pool, &sa, &sb);
        let now = in_memory(&sb);
        for p in &window_pieces {
            assert!(now.contains(p), "B's window piece {p} evicted at {off}");
        }
    }
    assert_eq!(
        sb.downloaded_bytes(),
        fetched_b,
        "B fetched something again"
    );
    // B's reader reads on from memory, its bytes right.
    check_read(&sb, &cb, hb, 0, u64::from(CHUNK), CHUNK).await;
    sa.close_reader(ha);
    sb.close_reader(hb);
    stop(sa).await;
    stop(sb).await;
}
