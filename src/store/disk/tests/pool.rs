//! Several torrents in one disk pool, on real files: one budget for the directory, pieces of
//! torrents not mounted first out, each torrent's floor, and another process's directory left
//! alone (a second pool stands for the other process: its list of directories is as live as
//! another process's, `flock` locks of two open files conflicting within one process too).

use std::fs;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::store::disk::claims::Claims;
use crate::store::disk::{DiskPool, DiskStore, Put};

const PIECE: usize = 100;

fn piece(fill: u8) -> Vec<u8> {
    vec![fill; PIECE]
}

fn join(pool: &DiskPool, i: u8) -> DiskStore {
    join_woken(pool, i, Arc::new(Notify::new()))
}

fn join_woken(pool: &DiskPool, i: u8, wake: Arc<Notify>) -> DiskStore {
    pool.join([i; 20], PIECE as u32, wake).expect("join")
}

/// Bytes of every piece file under `root`: what the budget is about.
fn bytes_under(root: &Path) -> u64 {
    let mut total = 0;
    for dir in fs::read_dir(root).expect("read root") {
        let dir = dir.expect("entry").path();
        if !dir.is_dir() {
            continue;
        }
        for f in fs::read_dir(&dir).expect("read dir") {
            let f = f.expect("entry").path();
            if f.extension().is_some_and(|e| e == "piece") {
                total += fs::metadata(&f).expect("stat").len();
            }
        }
    }
    total
}

fn stored() -> Put {
    Put {
        stored: true,
        refused: false,
        evicted: Vec::new(),
    }
}

#[tokio::test]
async fn one_budget_for_the_directory_and_the_other_torrent_is_told() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pool = DiskPool::open(tmp.path(), 3 * PIECE as u64).expect("open");
    let b_wake = Arc::new(Notify::new());
    let (a, b) = (join(&pool, 1), join_woken(&pool, 2, b_wake.clone()));
    assert_eq!(b.put(0, &piece(0)).expect("put"), stored());
    a.put(0, &piece(10)).expect("put");
    a.put(1, &piece(11)).expect("put");
    // b's piece is the oldest: it goes for a's, and b is told (and woken).
    assert_eq!(a.put(2, &piece(12)).expect("put"), stored());
    assert_eq!(bytes_under(tmp.path()), 3 * PIECE as u64);
    assert!(!b.dir().join("0-100.piece").exists());
    assert_eq!(b.get(0).expect("get"), None, "gone before b takes the news");
    let woken = tokio::time::timeout(std::time::Duration::ZERO, b_wake.notified()).await;
    assert!(woken.is_ok(), "b woken");
    assert_eq!(b.take_evicted(), [0]);
    assert_eq!((a.used_bytes(), b.used_bytes()), (300, 0));
    assert_eq!((pool.used(), a.budget()), (300, 300));
    // b's put takes a's least recently used.
    a.get(0).expect("get");
    assert_eq!(b.put(5, &piece(5)).expect("put"), stored());
    assert_eq!(a.take_evicted(), [1]);
    assert_eq!(a.get(0).expect("get"), Some(piece(10)));
}

#[test]
fn another_torrents_readers_window_is_its_floor() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pool = DiskPool::open(tmp.path(), 3 * PIECE as u64).expect("open");
    let (a, b) = (join(&pool, 1), join(&pool, 2));
    for p in 0..3 {
        b.put(p, &piece(p as u8)).expect("put");
    }
    // All of b's pieces are what its readers want: a's write is refused, nothing goes.
    b.floor().protect(std::iter::once(0..3).collect());
    let refused = Put {
        refused: true,
        ..Put::default()
    };
    assert_eq!(a.put(0, &piece(10)).expect("put"), refused);
    assert_eq!(b.pieces(), [0, 1, 2]);
    assert_eq!(bytes_under(tmp.path()), 3 * PIECE as u64);
    // b's reader moves on from piece 2: that one goes, though older ones are b's too.
    b.floor().protect(std::iter::once(0..2).collect());
    assert_eq!(a.put(0, &piece(10)).expect("put"), stored());
    assert_eq!(b.take_evicted(), [2]);
    // a's next write takes a's own piece, newer than b's.
    assert_eq!(a.put(1, &piece(11)).expect("put").evicted, [0]);
    assert!(b.take_evicted().is_empty());
    // b's own write is not held back by b's floor: its least recently used goes.
    assert_eq!(b.put(2, &piece(2)).expect("put").evicted, [0]);
    assert_eq!(bytes_under(tmp.path()), 3 * PIECE as u64);
}

#[test]
fn torrents_not_mounted_go_first_and_a_returning_one_takes_its_pieces_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    {
        // An earlier mount left 3 pieces of torrent 7.
        let old = DiskStore::open(tmp.path(), [7; 20], PIECE as u32, 1000).expect("open");
        for p in 0..3 {
            old.put(p, &piece(p as u8)).expect("put");
        }
    }
    // A budget of 4 pieces for the directory: a's pieces push 7's out, oldest first, before
    // any of a's own goes.
    let pool = DiskPool::open(tmp.path(), 4 * PIECE as u64).expect("open");
    assert_eq!(pool.used(), 3 * PIECE as u64, "counted at open");
    let a = join(&pool, 1);
    for p in 0..3 {
        a.put(p, &piece(10 + p as u8)).expect("put");
    }
    let seven = tmp.path().join("07".repeat(20));
    let left = |d: &Path| {
        let mut v: Vec<String> = (fs::read_dir(d)
            .expect("read")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()))
        .collect();
        v.sort();
        v
    };
    assert_eq!(left(&seven), ["2-100.piece"]);
    assert_eq!(bytes_under(tmp.path()), 4 * PIECE as u64);
    // 7 is mounted again: its piece 2 is its own now, no longer first to go.
    let seven_store = join(&pool, 7);
    assert_eq!(seven_store.pieces(), [2]);
    assert_eq!(seven_store.get(2).expect("get"), Some(piece(2)));
    assert_eq!(
        a.put(3, &piece(13)).expect("put").evicted,
        [0],
        "a's own oldest"
    );
    assert_eq!(a.pieces(), [1, 2, 3]);
    assert_eq!(seven_store.pieces(), [2]);
    // a leaves: it stores nothing more; its pieces stay on disk, the first to go for 7.
    a.leave().expect("leave");
    assert_eq!(a.put(4, &piece(14)).expect("put"), Put::default());
    assert_eq!(a.get(1).expect("get"), None);
    drop(a);
    seven_store.put(0, &piece(0)).expect("put");
    assert_eq!(seven_store.take_evicted(), [] as [u32; 0]);
    assert_eq!(bytes_under(tmp.path()), 4 * PIECE as u64);
    assert_eq!(left(&tmp.path().join("01".repeat(20))).len(), 2);
}

#[test]
fn a_smaller_budget_than_last_time_empties_torrents_not_mounted_first() {
    let tmp = tempfile::tempdir().expect("tempdir");
    {
        let pool = DiskPool::open(tmp.path(), 1000).expect("open");
        let (a, b) = (join(&pool, 1), join(&pool, 2));
        a.put(0, &piece(0)).expect("put");
        b.put(0, &piece(0)).expect("put");
        a.put(1, &piece(1)).expect("put");
        b.put(1, &piece(1)).expect("put");
        a.put(2, &piece(2)).expect("put");
    }
    let pool = DiskPool::open(tmp.path(), 2 * PIECE as u64).expect("open");
    assert_eq!(pool.used(), 5 * PIECE as u64, "counted");
    // a is mounted: b's pieces go first, then a's oldest.
    let a = join(&pool, 1);
    assert_eq!(pool.used(), 2 * PIECE as u64);
    assert_eq!(bytes_under(tmp.path()), 2 * PIECE as u64);
    assert_eq!(a.pieces(), [1, 2]);
    assert!(join(&pool, 2).pieces().is_empty());
}

#[test]
fn a_directory_another_process_mounts_is_left_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    {
        let old = DiskStore::open(tmp.path(), [7; 20], PIECE as u32, 1000).expect("open");
        let other = DiskStore::open(tmp.path(), [8; 20], PIECE as u32, 1000).expect("open");
        for p in 0..2 {
            old.put(p, &piece(p as u8)).expect("put");
            other.put(p, &piece(p as u8)).expect("put");
        }
    }
    // Another process mounts torrent 8 (its own pool holds 8's directory) before this pool
    // opens: 8 is not counted here, nor ever deleted from.
    let elsewhere = DiskPool::open(tmp.path(), 1000).expect("open");
    let held = join(&elsewhere, 8);
    let pool = DiskPool::open(tmp.path(), 2 * PIECE as u64).expect("open");
    assert_eq!(pool.used(), 2 * PIECE as u64, "7's pieces only");
    let a = join(&pool, 1);
    // Torrent 7 is mounted elsewhere after this pool counted it: found held when its pieces
    // are to go, it is forgotten, not deleted from.
    let seven = join(&elsewhere, 7);
    a.put(0, &piece(10)).expect("put");
    assert_eq!(seven.pieces(), [0, 1]);
    assert_eq!(seven.get(0).expect("get"), Some(piece(0)));
    assert_eq!(held.get(1).expect("get"), Some(piece(1)));
    assert_eq!(pool.used(), PIECE as u64, "only a's piece counted here");
    a.put(1, &piece(11)).expect("put");
    assert_eq!(a.pieces(), [0, 1]);
    // The other process unmounts 8: a new pool of this directory counts it again.
    held.leave().expect("leave");
    let after = DiskPool::open(tmp.path(), 10 * PIECE as u64).expect("open");
    assert_eq!(
        after.used(),
        2 * PIECE as u64,
        "8's; a's and 7's are mounted"
    );
    drop(seven);
}

#[test]
fn a_write_that_fails_after_making_room_still_tells_what_went() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pool = DiskPool::open(tmp.path(), 2 * PIECE as u64).expect("open");
    let a = join(&pool, 1);
    a.put(0, &piece(0)).expect("put");
    a.put(1, &piece(1)).expect("put");
    fs::remove_dir_all(a.dir()).expect("the directory goes");
    assert!(a.put(2, &piece(2)).is_err());
    // Piece 0 left the books for piece 2, which was never written.
    assert_eq!(a.take_evicted(), [0]);
    assert_eq!(a.pieces(), [1]);
    assert_eq!(pool.used(), PIECE as u64);
}

/// A thousand torrents joining at mount write a thousand lines to the list other processes
/// read, not a thousand lists; what they read stays right through leaves and joins again.
#[test]
fn each_join_adds_one_line_to_the_list_and_a_leave_takes_its_line_out() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pool = DiskPool::open(tmp.path(), 1 << 20).expect("open");
    let hash = |i: u16| {
        let mut h = [0; 20];
        h[..2].copy_from_slice(&i.to_be_bytes());
        h
    };
    let join_n = |i: u16| {
        let wake = Arc::new(Notify::new());
        pool.join(hash(i), PIECE as u32, wake).expect("join")
    };
    let mut stores: Vec<DiskStore> = (0..1000).map(join_n).collect();
    let line = 41;
    assert_eq!(pool.claims_written(), 1000 * line, "one line per join");
    let other = Claims::open(tmp.path()).expect("another process's claims");
    let seen = other.others();
    assert_eq!(seen.len(), 1000);
    assert!((0..1000).all(|i| seen.contains(&hash(i))));

    stores.swap_remove(7).leave().expect("leave");
    let seen = other.others();
    assert_eq!(seen.len(), 999);
    assert!(!seen.contains(&hash(7)));
    stores.push(join_n(7));
    stores.push(join_n(1000));
    let seen = other.others();
    assert_eq!(seen.len(), 1001);
    assert!(seen.contains(&hash(7)) && seen.contains(&hash(1000)));

    // Our list removed behind our back: the next join writes it whole again.
    let lists: Vec<_> = (fs::read_dir(tmp.path().join(".btfs-mounts")).expect("read"))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "list"))
        .collect();
    for list in &lists {
        fs::remove_file(list).expect("remove");
    }
    stores.push(join_n(1001));
    assert_eq!(other.others().len(), 1002);
}

#[test]
fn refused_writes_are_said_once_for_the_pool_not_per_torrent() {
    use crate::store::disk::Say;
    let tmp = tempfile::tempdir().expect("tempdir");
    let pool = DiskPool::open(tmp.path(), PIECE as u64).expect("open");
    let (a, b) = (join(&pool, 1), join(&pool, 2));
    assert_eq!(a.note_refusal(true), Some(Say::Refusing));
    assert_eq!(b.note_refusal(true), None, "already said, by a's refusal");
    assert_eq!(b.note_refusal(false), Some(Say::StoringAgain));
    assert_eq!(a.note_refusal(false), None);
    // Another pool says its own.
    let other = tempfile::tempdir().expect("tempdir");
    let c = join(
        &DiskPool::open(other.path(), PIECE as u64).expect("open"),
        3,
    );
    assert_eq!(c.note_refusal(true), Some(Say::Refusing));
}
