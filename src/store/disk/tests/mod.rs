//! The disk cache's tests: one store in a pool of its own (as a single-torrent mount uses
//! it) here; several torrents in one pool (`pool.rs`); the books alone under a random walk
//! (`books.rs`).

mod books;
mod pool;

use super::*;

const HASH: [u8; 20] = [0xab; 20];

fn piece(fill: u8, len: usize) -> Vec<u8> {
    vec![fill; len]
}

fn open(dir: &Path, budget: u64) -> DiskStore {
    DiskStore::open(dir, HASH, 100, budget).expect("open disk store")
}

#[test]
fn put_get_round_trip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path(), 1000);
    assert_eq!(store.dir(), tmp.path().join("ab".repeat(20)));
    assert_eq!(
        store.put(3, &piece(7, 100)).expect("put"),
        Put {
            stored: true,
            refused: false,
            evicted: vec![]
        }
    );
    store.put(9, &piece(8, 42)).expect("put short last piece");
    assert_eq!(store.get(3).expect("get"), Some(piece(7, 100)));
    assert_eq!(store.get(9).expect("get"), Some(piece(8, 42)));
    assert_eq!(store.get(4).expect("get"), None);
    assert!(store.contains(3) && !store.contains(4));
    assert_eq!(store.pieces(), vec![3, 9]);
    assert_eq!(store.used_bytes(), 142);

    // Putting a piece again replaces it without counting it twice.
    store.put(3, &piece(1, 100)).expect("put again");
    assert_eq!(store.get(3).expect("get"), Some(piece(1, 100)));
    assert_eq!(store.used_bytes(), 142);

    assert!(store.remove(3).expect("remove"));
    assert!(!store.remove(3).expect("remove again"));
    assert_eq!(store.get(3).expect("get"), None);
    assert_eq!(store.used_bytes(), 42);
    // What stats read without the lock follows every change.
    let gauge = store.used_gauge();
    assert_eq!(gauge.load(std::sync::atomic::Ordering::Relaxed), 42);
    store.put(5, &piece(2, 100)).expect("put");
    assert_eq!(gauge.load(std::sync::atomic::Ordering::Relaxed), 142);
}

#[test]
fn rejects_pieces_that_cannot_fit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path(), 50);
    assert!(matches!(
        store.put(0, &piece(0, 100)),
        Err(DiskStoreError::Full {
            piece: 0,
            len: 100,
            budget: 50
        })
    ));
    assert!(matches!(
        store.put(0, &piece(0, 101)),
        Err(DiskStoreError::WrongLength { len: 101, .. })
    ));
    assert!(matches!(
        store.put(0, &[]),
        Err(DiskStoreError::WrongLength { len: 0, .. })
    ));
    assert!(store.pieces().is_empty());
}

#[test]
fn evicts_least_recently_used_by_bytes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path(), 300);
    store.put(0, &piece(0, 100)).expect("put");
    store.put(1, &piece(1, 100)).expect("put");
    store.put(2, &piece(2, 50)).expect("put");
    store.put(3, &piece(3, 50)).expect("put");
    store.get(0).expect("get");
    // Oldest is now 1: freeing its 100 bytes is enough.
    assert_eq!(store.put(4, &piece(4, 100)).expect("put").evicted, vec![1]);
    // Then 2 and 3, 50 bytes each, make room for one 100-byte piece.
    assert_eq!(
        store.put(5, &piece(5, 100)).expect("put").evicted,
        vec![2, 3]
    );
    assert_eq!(store.pieces(), vec![0, 4, 5]);
    assert_eq!(store.used_bytes(), 300);
    assert_eq!(store.get(1).expect("get"), None);
    let files = fs::read_dir(store.dir()).expect("read_dir").count();
    assert_eq!(files, 3, "evicted files are deleted");
}

#[test]
fn reopen_keeps_pieces_and_recency() {
    let tmp = tempfile::tempdir().expect("tempdir");
    {
        let store = open(tmp.path(), 300);
        for p in 0..3 {
            store.put(p, &piece(p as u8, 100)).expect("put");
        }
        store.get(0).expect("get");
    }
    let store = open(tmp.path(), 300);
    assert_eq!(store.pieces(), vec![0, 1, 2]);
    assert_eq!(store.used_bytes(), 300);
    assert_eq!(store.get(2).expect("get"), Some(piece(2, 100)));
    // Recency order is now 1, 0, 2.
    assert_eq!(store.put(3, &piece(3, 100)).expect("put").evicted, vec![1]);
    drop(store);

    // A smaller budget at open evicts the oldest to fit.
    let store = open(tmp.path(), 200);
    assert_eq!(store.pieces(), vec![2, 3]);

    // Another torrent in the same DIR has its own directory; a pool of another mount leaves
    // this one's alone, whatever its budget.
    let other = DiskStore::open(tmp.path(), [1; 20], 100, 100).expect("open other");
    assert!(other.pieces().is_empty());
    assert_eq!(other.pool().used(), 0);
    assert_eq!(store.pieces(), vec![2, 3]);
    assert_eq!(store.get(2).expect("get"), Some(piece(2, 100)));
}

#[test]
fn leftover_temp_file_is_removed_at_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = open(tmp.path(), 300).dir().to_owned();
    let leftover = dir.join("7.tmp");
    fs::write(&leftover, piece(7, 60)).expect("write temp");
    fs::write(dir.join("notes.txt"), b"not ours").expect("write other");
    let store = open(tmp.path(), 300);
    assert!(store.pieces().is_empty());
    assert_eq!(store.used_bytes(), 0);
    assert!(!leftover.exists());
    assert!(
        dir.join("notes.txt").exists(),
        "files that are not ours are left alone"
    );
}

#[test]
fn truncated_or_oversized_piece_file_is_dropped_at_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = {
        let store = open(tmp.path(), 300);
        store.put(1, &piece(1, 100)).expect("put");
        store.put(2, &piece(2, 100)).expect("put");
        store.dir().to_owned()
    };
    let truncated = dir.join("2-100.piece");
    File::options()
        .write(true)
        .open(&truncated)
        .and_then(|f| f.set_len(40))
        .expect("truncate");
    let too_long = dir.join("5-500.piece");
    fs::write(&too_long, piece(5, 500)).expect("write");

    let store = open(tmp.path(), 300);
    assert_eq!(store.pieces(), vec![1]);
    assert_eq!(store.used_bytes(), 100);
    assert!(!truncated.exists() && !too_long.exists());
    assert_eq!(store.get(2).expect("get"), None);
    assert_eq!(store.get(1).expect("get"), Some(piece(1, 100)));
}

#[test]
fn piece_changed_or_deleted_behind_our_back_is_gone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path(), 300);
    store.put(1, &piece(1, 100)).expect("put");
    store.put(2, &piece(2, 100)).expect("put");
    fs::remove_file(store.dir().join("1-100.piece")).expect("delete");
    fs::write(store.dir().join("2-100.piece"), b"short").expect("overwrite");
    assert_eq!(store.get(1).expect("get"), None);
    assert_eq!(store.get(2).expect("get"), None);
    assert!(store.pieces().is_empty());
    assert_eq!(store.used_bytes(), 0);
}

#[test]
fn check_dir_accepts_a_new_or_empty_dir_and_refuses_a_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fresh = tmp.path().join("a/b");
    check_dir(&fresh).expect("created");
    assert!(fresh.is_dir());
    assert_eq!(
        fs::read_dir(&fresh).expect("read_dir").count(),
        0,
        "no probe left"
    );
    let file = tmp.path().join("a-file");
    fs::write(&file, b"x").expect("write");
    let err = check_dir(&file).expect_err("a file is not a directory");
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn unwritable_cache_dir_is_a_create_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("a-file");
    fs::write(&file, b"x").expect("write");
    let err = DiskStore::open(&file, HASH, 100, 300).expect_err("a file is not a directory");
    assert!(matches!(err, DiskStoreError::Create { .. }), "{err}");
}
