//! Two torrents sharing one disk budget (`store::disk`, one pool for every session started
//! from clones of one `DiskCacheConfig`), against fake seeders, with memory too small to hold
//! what the disk drops: a torrent being read takes disk space from an idle one, never a piece
//! of another's reader's window; the torrent that lost pieces stops announcing them and reads
//! right again; the two never hold more on disk together than the budget.

use std::sync::Arc;

use super::fake_peer::{Behavior, Content, FakePeer};
use super::{check_read, content, host_for, ip, stop, within};
use crate::session::{Background, Config, DiskCacheConfig, Host, Session};

const KIB: u64 = 1024;
const PIECE: u32 = 32 * 1024;
const DISK: u64 = 1024 * KIB;
const CHUNK: u32 = 64 * 1024;

async fn start_in(disk: &DiskCacheConfig, host: &Host, c: &Content, peer: &FakePeer) -> Session {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: vec![peer.addr],
        cache_bytes: 256 * KIB,
        disk_cache: Some(disk.clone()),
        readahead_bytes: 128 * KIB,
        max_readahead_bytes: 128 * KIB,
        background: Background::Off,
        ..Config::default()
    };
    Session::start(c.torrent.clone(), config, host)
        .await
        .expect("session starts")
}

/// Two torrents' contents, each with an honest fake seeder, and one disk budget for both.
struct Pair {
    _tmp: tempfile::TempDir,
    disk: DiskCacheConfig,
    host: Host,
    a: (Arc<Content>, FakePeer),
    b: (Arc<Content>, FakePeer),
}

/// `budget` bytes of disk, and contents of one file each, from `(seed, size)`.
async fn pair(budget: u64, [(sa, la), (sb, lb)]: [(u64, u64); 2]) -> Pair {
    let tmp = tempfile::tempdir().expect("tempdir");
    let disk = DiskCacheConfig::new(tmp.path().to_owned(), budget);
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    let host = host_for(&config).await;
    let (ca, cb) = (content(sa, PIECE, &[la]), content(sb, PIECE, &[lb]));
    let pa = FakePeer::start(ip(2), ca.clone(), Behavior::Honest).await;
    let pb = FakePeer::start(ip(3), cb.clone(), Behavior::Honest).await;
    Pair {
        _tmp: tmp,
        disk,
        host,
        a: (ca, pa),
        b: (cb, pb),
    }
}

/// The pieces of `s` its disk store holds now (the pool's view, not yet the session's).
fn on_disk(s: &Session) -> Vec<u32> {
    let disk = s.shared.disk.as_ref().expect("a disk cache");
    let store = disk.store();
    (s.shared.geometry.pieces())
        .map(|p| p.get())
        .filter(|&i| store.contains(i))
        .collect()
}

fn disk_used(s: &Session) -> u64 {
    s.stats().disk.expect("disk stats").used
}

/// Waits until what `s` announces (the picker's Have) is what memory or the disk holds.
async fn announces_what_it_holds(s: &Session) {
    within("the news taken", async {
        loop {
            let disk = on_disk(s);
            let same = {
                let st = s.shared.lock();
                (s.shared.geometry.pieces()).all(|p| {
                    let holds = st.residency.in_memory(p) || disk.contains(&p.get());
                    st.picker.have(p) == holds
                })
            };
            if same {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// B (512 KiB) is read whole, then a reader of B stays at its start; A (2 MiB, twice the disk
/// budget) is read whole. A's pieces push B's out of the disk, but never those of B's
/// reader's window; the sum on disk stays within the budget at every read; B stops announcing
/// what it lost and reads it right again from its seeder.
#[tokio::test(flavor = "multi_thread")]
async fn a_torrent_being_read_takes_disk_from_another_but_not_its_readers_window() {
    let Pair {
        _tmp,
        disk,
        host,
        a: (ca, pa),
        b: (cb, pb),
    } = pair(DISK, [(51, 2048 * KIB), (52, 512 * KIB)]).await;
    let sa = start_in(&disk, &host, &ca, &pa).await;
    let sb = start_in(&disk, &host, &cb, &pb).await;
    let pool = || sb.stats().disk.expect("disk stats");

    let hb = sb.open_reader(0);
    for off in (0..512 * KIB).step_by(CHUNK as usize) {
        check_read(&sb, &cb, hb, 0, off, CHUNK).await;
    }
    sb.close_reader(hb);
    within("B on disk", async {
        while disk_used(&sb) < 512 * KIB {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    // A reader back at B's start: its window is B's floor.
    let hb = sb.open_reader(0);
    check_read(&sb, &cb, hb, 0, 0, CHUNK).await;
    let window: Vec<u32> = {
        let st = sb.shared.lock();
        (sb.shared.geometry.pieces())
            .filter(|&p| st.picker.is_wanted_by_reader(p))
            .map(|p| p.get())
            .collect()
    };
    assert!(window.len() >= 2, "{window:?}");

    let ha = sa.open_reader(0);
    for off in (0..2048 * KIB).step_by(CHUNK as usize) {
        check_read(&sa, &ca, ha, 0, off, CHUNK).await;
        let p = pool();
        assert!(p.dir_used <= DISK, "{} on disk, over {DISK}", p.dir_used);
        assert!(disk_used(&sa) + disk_used(&sb) <= DISK);
        let b_disk = on_disk(&sb);
        for w in &window {
            assert!(b_disk.contains(w), "B's window piece {w} evicted at {off}");
        }
    }
    sa.close_reader(ha);
    // A's writes (behind its reads) go on until A holds what B's window leaves.
    within("A's writes", async {
        while disk_used(&sa) + disk_used(&sb) < DISK - u64::from(PIECE) {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    })
    .await;
    let b_disk = on_disk(&sb);
    assert!(b_disk.len() < 16, "B kept {b_disk:?} of its 16 pieces");
    assert!(pool().dir_used <= DISK);
    // B takes the news: it announces exactly what memory or the disk holds.
    announces_what_it_holds(&sb).await;
    let held = sb.stats().verified_pieces;
    assert!(held < 16, "B still announces {held} pieces");
    // And B reads right again, its lost pieces from its seeder.
    let fetched = sb.downloaded_bytes();
    for off in (0..512 * KIB).step_by(CHUNK as usize) {
        check_read(&sb, &cb, hb, 0, off, CHUNK).await;
    }
    assert!(sb.downloaded_bytes() > fetched, "B fetched nothing again");
    sb.close_reader(hb);
    stop(sa).await;
    stop(sb).await;
}

/// B's reader, in B's first piece, wants every piece of B, and B fills the whole disk budget:
/// A's writes find nothing they may evict. They are refused, counted in A's status, and B
/// keeps its pieces.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_refused_for_want_of_room_is_counted() {
    let Pair {
        _tmp,
        disk,
        host,
        a: (ca, pa),
        b: (cb, pb),
    } = pair(4 * u64::from(PIECE), [(53, 256 * KIB), (54, 256 * KIB)]).await;
    let sa = start_in(&disk, &host, &ca, &pa).await;
    let b_config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: vec![pb.addr],
        cache_bytes: 512 * KIB,
        disk_cache: Some(disk.clone()),
        readahead_bytes: 256 * KIB,
        max_readahead_bytes: 256 * KIB,
        background: Background::Off,
        ..Config::default()
    };
    let sb = Session::start(cb.torrent.clone(), b_config, &host)
        .await
        .expect("session starts");
    // B's reader stands in its first piece, so its window is all of B; B's own writes fill
    // the budget (wait for the last, whatever order B's pieces verified in).
    let hb = sb.open_reader(0);
    check_read(&sb, &cb, hb, 0, 0, PIECE / 2).await;
    let disk_b = sb.shared.disk.as_ref().expect("a disk cache");
    within("B's pieces fill the disk", async {
        while sb.stats().verified_pieces < 8
            || disk_b.queued() > 0
            || disk_used(&sb) < 4 * u64::from(PIECE)
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let b_disk = on_disk(&sb);
    assert_eq!(sa.stats().disk.expect("disk stats").refused, 0);

    let ha = sa.open_reader(0);
    check_read(&sa, &ca, ha, 0, 0, CHUNK).await;
    within("A's writes refused", async {
        while sa.stats().disk.expect("disk stats").refused == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(on_disk(&sb), b_disk, "B's wanted pieces stay");
    assert_eq!(disk_used(&sa), 0);
    assert_eq!(sb.stats().disk.expect("disk stats").refused, 0);
    sa.close_reader(ha);
    sb.close_reader(hb);
    stop(sa).await;
    stop(sb).await;
}
