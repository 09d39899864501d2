//! Verified pieces kept on disk between mounts (`--cache-dir`), least recently used first out
//! within a byte budget (`--disk-cache-size`).
//!
//! Layout: `DIR/<40 hex digits of the info-hash>/<piece>-<len>.piece`. The length in the name
//! lets `open` drop a truncated file without knowing the torrent's total length (the last
//! piece is shorter). A piece is written to `<piece>.tmp` and renamed into place, so a crash
//! never leaves a half piece under a real name; `open` deletes leftover `.tmp` files. There is
//! no fsync: a power cut may still leave a short or garbled file, which the size check or
//! the hash check below catches.
//!
//! Trust: the bytes on disk are NOT trusted. Whoever else can write to DIR, or a disk fault,
//! can change them, so the session must re-verify each piece (SHA1) on its first `get` after
//! `open` and call [`DiskStore::remove`] for one that fails.
//!
//! Recency survives restarts as each file's mtime: set on `put` and on every `get`, read back
//! by `open`. Stamps within a run are strictly increasing; on a filesystem with coarse
//! timestamps ties across runs fall back to piece order.
//!
//! The budget applies to one info-hash directory, not to DIR as a whole: two torrents mounted
//! with the same DIR and `--disk-cache-size` may use up to twice that between them.
//!
//! All I/O is blocking `std::fs`: call it from `spawn_blocking`, never on an async worker.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum DiskStoreError {
    #[error("cannot use {} as the disk cache: {reason}", path.display())]
    Unusable { path: PathBuf, reason: String },
    #[error("cannot create cache directory {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("disk cache I/O failed on {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("piece {piece} ({len} bytes) does not fit in a disk cache of {budget} bytes")]
    Full { piece: u32, len: u64, budget: u64 },
    #[error("piece {piece} has {len} bytes; pieces have 1 to {piece_length} bytes")]
    WrongLength {
        piece: u32,
        len: u64,
        piece_length: u32,
    },
}

type Result<T> = std::result::Result<T, DiskStoreError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DiskStoreError + '_ {
    move |source| DiskStoreError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    len: u32,
    /// Last use; also the file's mtime. Key into `lru` together with the piece.
    stamp: SystemTime,
}

/// The on-disk piece cache of one torrent. See the module doc for layout and trust.
#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
    piece_length: u32,
    budget: u64,
    used: u64,
    /// `used`, published as it changes (under the owner's lock): a reader without the lock
    /// never sees an older value after a newer one.
    gauge: Arc<AtomicU64>,
    entries: HashMap<u32, Entry>,
    /// Oldest first; ties (coarse mtimes at open) broken by piece index.
    lru: BTreeSet<(SystemTime, u32)>,
    last_stamp: SystemTime,
}

impl DiskStore {
    /// Open (creating it if needed) the cache of `info_hash` under `dir`. Leftover temp files,
    /// and piece files whose size does not match their name or that are longer than
    /// `piece_length`, are deleted; then least recently used pieces go until `budget` holds.
    pub fn open(
        dir: &Path,
        info_hash: [u8; 20],
        piece_length: u32,
        budget: u64,
    ) -> Result<DiskStore> {
        let hex: String = info_hash.iter().map(|b| format!("{b:02x}")).collect();
        let dir = dir.join(hex);
        fs::create_dir_all(&dir).map_err(|source| DiskStoreError::Create {
            path: dir.clone(),
            source,
        })?;
        let mut store = DiskStore {
            dir,
            piece_length,
            budget,
            used: 0,
            gauge: Arc::new(AtomicU64::new(0)),
            entries: HashMap::new(),
            lru: BTreeSet::new(),
            last_stamp: SystemTime::UNIX_EPOCH,
        };
        let listing = fs::read_dir(&store.dir).map_err(io_err(&store.dir))?;
        for item in listing {
            let item = item.map_err(io_err(&store.dir))?;
            let path = item.path();
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                tracing::debug!(path = %path.display(), "removing leftover temp file");
                remove_if_present(&path)?;
                continue;
            }
            let Some((piece, len)) = parse_name(name) else {
                continue;
            };
            let meta = item.metadata().map_err(io_err(&path))?;
            if !meta.is_file() || len == 0 || len > piece_length || meta.len() != u64::from(len) {
                tracing::warn!(path = %path.display(), size = meta.len(), "dropping bad piece file");
                remove_if_present(&path)?;
                continue;
            }
            let stamp = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if let Some(old) = store.entries.get(&piece).copied() {
                // Two lengths for one piece: keep the newer file.
                let (drop_len, keep) = if old.stamp >= stamp {
                    (len, None)
                } else {
                    (old.len, Some(len))
                };
                remove_if_present(&store.dir.join(file_name(piece, drop_len)))?;
                let Some(len) = keep else { continue };
                store.forget(piece);
                store.insert(piece, Entry { len, stamp });
            } else {
                store.insert(piece, Entry { len, stamp });
            }
        }
        store.last_stamp = store.lru.last().map_or(SystemTime::UNIX_EPOCH, |&(s, _)| s);
        let evicted = store.evict_to(budget)?;
        if !evicted.is_empty() {
            tracing::debug!(count = evicted.len(), "disk cache over budget at open");
        }
        Ok(store)
    }

    /// Store a verified piece, evicting least recently used pieces to make room. Returns the
    /// evicted pieces, oldest first.
    pub fn put(&mut self, piece: u32, data: &[u8]) -> Result<Vec<u32>> {
        let len = data.len() as u64;
        if len == 0 || len > u64::from(self.piece_length) {
            return Err(DiskStoreError::WrongLength {
                piece,
                len,
                piece_length: self.piece_length,
            });
        }
        if len > self.budget {
            return Err(DiskStoreError::Full {
                piece,
                len,
                budget: self.budget,
            });
        }
        self.remove(piece)?;
        let evicted = self.evict_to(self.budget - len)?;

        let tmp = self.dir.join(format!("{piece}.tmp"));
        let path = self.dir.join(file_name(piece, len as u32));
        let stamp = self.next_stamp();
        let written = File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(data)?;
                f.set_modified(stamp)
            })
            .and_then(|()| fs::rename(&tmp, &path));
        if let Err(source) = written {
            let _ = fs::remove_file(&tmp);
            return Err(DiskStoreError::Io { path, source });
        }
        self.insert(
            piece,
            Entry {
                len: len as u32,
                stamp,
            },
        );
        Ok(evicted)
    }

    /// The piece's bytes, marked as just used; `None` if it is not here (any more). Bytes
    /// from a previous run are unverified: see the module doc.
    pub fn get(&mut self, piece: u32) -> Result<Option<Vec<u8>>> {
        let Some(entry) = self.entries.get(&piece).copied() else {
            return Ok(None);
        };
        let path = self.dir.join(file_name(piece, entry.len));
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(piece);
                return Ok(None);
            }
            Err(source) => return Err(DiskStoreError::Io { path, source }),
        };
        let mut data = Vec::with_capacity(entry.len as usize);
        file.read_to_end(&mut data).map_err(io_err(&path))?;
        if data.len() != entry.len as usize {
            tracing::warn!(path = %path.display(), size = data.len(), "piece file changed size");
            self.remove(piece)?;
            return Ok(None);
        }
        let stamp = self.next_stamp();
        if let Err(e) = file.set_modified(stamp) {
            // Only the order after a restart suffers.
            tracing::debug!(path = %path.display(), error = %e, "cannot touch piece file");
        }
        self.forget(piece);
        self.insert(piece, Entry { stamp, ..entry });
        Ok(Some(data))
    }

    /// Delete a piece (e.g. one that failed its hash check). Returns whether it was here.
    pub fn remove(&mut self, piece: u32) -> Result<bool> {
        let Some(entry) = self.forget(piece) else {
            return Ok(false);
        };
        remove_if_present(&self.dir.join(file_name(piece, entry.len)))?;
        Ok(true)
    }

    pub fn contains(&self, piece: u32) -> bool {
        self.entries.contains_key(&piece)
    }

    /// The pieces held, ascending: after `open`, what a previous run left.
    pub fn pieces(&self) -> Vec<u32> {
        let mut pieces: Vec<u32> = self.entries.keys().copied().collect();
        pieces.sort_unstable();
        pieces
    }

    /// Bytes of piece data held (file sizes; directory overhead not counted).
    pub fn used_bytes(&self) -> u64 {
        self.used
    }

    /// `used_bytes`, readable without the store: always the latest value.
    pub fn used_gauge(&self) -> Arc<AtomicU64> {
        self.gauge.clone()
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// `DIR/<hex info-hash>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn insert(&mut self, piece: u32, entry: Entry) {
        self.used += u64::from(entry.len);
        self.gauge.store(self.used, Ordering::Relaxed);
        self.lru.insert((entry.stamp, piece));
        self.entries.insert(piece, entry);
    }

    /// Drop a piece from the index only.
    fn forget(&mut self, piece: u32) -> Option<Entry> {
        let entry = self.entries.remove(&piece)?;
        self.used -= u64::from(entry.len);
        self.gauge.store(self.used, Ordering::Relaxed);
        self.lru.remove(&(entry.stamp, piece));
        Some(entry)
    }

    /// Delete least recently used pieces until at most `limit` bytes are used.
    fn evict_to(&mut self, limit: u64) -> Result<Vec<u32>> {
        let mut evicted = Vec::new();
        while self.used > limit {
            let Some(&(_, piece)) = self.lru.first() else {
                break;
            };
            self.remove(piece)?;
            evicted.push(piece);
        }
        Ok(evicted)
    }

    /// Now, but strictly after the previous stamp, so order within a run never ties.
    fn next_stamp(&mut self) -> SystemTime {
        let now = SystemTime::now();
        self.last_stamp = if now > self.last_stamp {
            now
        } else {
            self.last_stamp + Duration::from_nanos(1)
        };
        self.last_stamp
    }
}

/// Checks, before any network work, that `dir` is (or can be made) a directory we can write
/// in, so a bad `--cache-dir` fails the mount at once with one clear line.
pub fn check_dir(dir: &Path) -> Result<()> {
    let unusable = |reason: String| DiskStoreError::Unusable {
        path: dir.to_owned(),
        reason,
    };
    match fs::metadata(dir) {
        Ok(m) if !m.is_dir() => return Err(unusable("not a directory".into())),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(|e| unusable(format!("cannot create it: {e}")))?;
        }
        Err(e) => return Err(unusable(e.to_string())),
    }
    let probe = dir.join(format!(".btfs-probe-{}.tmp", std::process::id()));
    File::create(&probe)
        .and_then(|_| fs::remove_file(&probe))
        .map_err(|e| unusable(format!("cannot write in it: {e}")))
}

fn file_name(piece: u32, len: u32) -> String {
    format!("{piece}-{len}.piece")
}

/// `<piece>-<len>.piece` to `(piece, len)`; anything else is not ours.
fn parse_name(name: &str) -> Option<(u32, u32)> {
    let (piece, len) = name.strip_suffix(".piece")?.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(piece) || !digits(len) {
        return None;
    }
    Some((piece.parse().ok()?, len.parse().ok()?))
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(DiskStoreError::Io {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
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
        let mut store = open(tmp.path(), 1000);
        assert_eq!(store.dir(), tmp.path().join("ab".repeat(20)));
        assert_eq!(
            store.put(3, &piece(7, 100)).expect("put"),
            Vec::<u32>::new()
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
        let mut store = open(tmp.path(), 50);
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
        let mut store = open(tmp.path(), 300);
        store.put(0, &piece(0, 100)).expect("put");
        store.put(1, &piece(1, 100)).expect("put");
        store.put(2, &piece(2, 50)).expect("put");
        store.put(3, &piece(3, 50)).expect("put");
        store.get(0).expect("get");
        // Oldest is now 1: freeing its 100 bytes is enough.
        assert_eq!(store.put(4, &piece(4, 100)).expect("put"), vec![1]);
        // Then 2 and 3, 50 bytes each, make room for one 100-byte piece.
        assert_eq!(store.put(5, &piece(5, 100)).expect("put"), vec![2, 3]);
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
            let mut store = open(tmp.path(), 300);
            for p in 0..3 {
                store.put(p, &piece(p as u8, 100)).expect("put");
            }
            store.get(0).expect("get");
        }
        let mut store = open(tmp.path(), 300);
        assert_eq!(store.pieces(), vec![0, 1, 2]);
        assert_eq!(store.used_bytes(), 300);
        assert_eq!(store.get(2).expect("get"), Some(piece(2, 100)));
        // Recency order is now 1, 0, 2.
        assert_eq!(store.put(3, &piece(3, 100)).expect("put"), vec![1]);
        drop(store);

        // A smaller budget at open evicts the oldest to fit.
        let store = open(tmp.path(), 200);
        assert_eq!(store.pieces(), vec![2, 3]);

        // Another torrent in the same DIR has its own directory.
        let other = DiskStore::open(tmp.path(), [1; 20], 100, 300).expect("open other");
        assert!(other.pieces().is_empty());
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
            let mut store = open(tmp.path(), 300);
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

        let mut store = open(tmp.path(), 300);
        assert_eq!(store.pieces(), vec![1]);
        assert_eq!(store.used_bytes(), 100);
        assert!(!truncated.exists() && !too_long.exists());
        assert_eq!(store.get(2).expect("get"), None);
        assert_eq!(store.get(1).expect("get"), Some(piece(1, 100)));
    }

    #[test]
    fn piece_changed_or_deleted_behind_our_back_is_gone() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut store = open(tmp.path(), 300);
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
}
