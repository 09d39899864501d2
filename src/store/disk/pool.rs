//! One disk cache for every torrent of a process: `--cache-dir DIR` with `--disk-cache-size`
//! a total for DIR, least recently used across torrents (the books: `books.rs`); a
//! [`DiskStore`] is one torrent's member of it.
//!
//! # Directories of torrents not mounted now
//! At open every info-hash directory under DIR is counted; those no torrent of this process
//! has mounted are stale, and their pieces are the first to go, oldest first, so DIR stays
//! within the budget whatever earlier mounts left there (a smaller budget than last time
//! empties the oldest as the first torrent joins). A torrent that joins takes its directory
//! over (its files found again and checked against its piece length); one that leaves
//! (removed from a library) leaves its pieces behind, stale. Directories are never removed,
//! only emptied.
//!
//! # Other processes
//! Two mounts may share DIR. Each lists the directories it mounts (`claims.rs`), and a
//! directory another process lists is left alone: not counted at open, and forgotten (not
//! deleted from) when it turns out to be listed as its pieces are about to go; its pieces are
//! that process's to count. Advisory locks (`flock`) on a directory, held only for a moment,
//! close the gap between a look at the lists and a deletion: a join holds a shared lock while
//! it lists the directory as its own, an eviction of stale pieces an exclusive one (taken
//! without waiting) while it reads the lists and deletes. Two processes mounting the same
//! torrent share its directory, each counting it in its own budget. On a filesystem without
//! `flock` every directory is taken as this process's.
//!
//! # Locks
//! - `io`: held across the file operations that add or delete pieces (a put, a removal, a
//!   join, the open), on the blocking pool only and never under a session's state lock. Puts
//!   of all torrents go one at a time, so the room made for a piece is never taken by another
//!   before it is written, and the bytes on disk stay within what the books count. Loads do
//!   not take it: a piece being read is pinned instead.
//! - `books`: a leaf held for accounting only (no I/O), taken under `io` and under a session's
//!   state lock (a reader's floor, evictions taken).

use std::fs::{self, File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::Notify;

use super::books::{Books, Found, Victim};
use super::claims::Claims;
use super::refusals::{RefusalNote, Say};
use super::{
    DiskStore, DiskStoreError, Result, file_name, hex, io_err, parse_hex, parse_name,
    remove_if_present,
};

/// The disk cache of a process, shared by its torrents' stores; cheap to clone.
#[derive(Clone)]
pub struct DiskPool {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    books: Mutex<Books>,
    io: Mutex<()>,
    /// Our list of the directories we mount, for other processes; written under `io`.
    claims: Claims,
    /// Whether refused writes were said, for the whole pool; a leaf lock, taken alone.
    refusals: Mutex<RefusalNote>,
}

impl std::fmt::Debug for DiskPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.books();
        f.debug_struct("DiskPool")
            .field("root", &self.inner.root)
            .field("budget", &b.budget())
            .field("used", &b.used())
            .finish()
    }
}

impl DiskPool {
    /// Opens (creating it if needed) DIR as one cache of `budget` bytes: counts every
    /// info-hash directory no other process mounts, dropping leftover temp files and piece
    /// files whose size does not match their name. What is over the budget goes when the
    /// first torrent joins (only then is a piece too long for its torrent known bad, and
    /// dropped rather than counted). Blocking.
    pub fn open(root: &Path, budget: u64) -> Result<DiskPool> {
        fs::create_dir_all(root).map_err(|source| DiskStoreError::Create {
            path: root.to_owned(),
            source,
        })?;
        let claims = Claims::open(root).map_err(io_err(root))?;
        let claimed = claims.others();
        let pool = DiskPool {
            inner: Arc::new(Inner {
                root: root.to_owned(),
                books: Mutex::new(Books::new(budget)),
                io: Mutex::new(()),
                claims,
                refusals: Mutex::new(RefusalNote::default()),
            }),
        };
        let io = pool.io();
        let listing = fs::read_dir(root).map_err(io_err(root))?;
        let mut dirs = 0;
        for item in listing {
            let item = item.map_err(io_err(root))?;
            let Some(hash) = item.file_name().to_str().and_then(parse_hex) else {
                continue;
            };
            let path = item.path();
            if !item.file_type().is_ok_and(|t| t.is_dir()) || claimed.contains(&hash) {
                continue;
            }
            // Held: another process is joining it now.
            let found = match lock_now(&path) {
                Ok(Some(lock)) => scan(&path, None, true).map(|f| Some((f, lock))),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            match found {
                Ok(Some((files, _lock))) => {
                    pool.books().index_stale(hash, files);
                    dirs += 1;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("disk cache: leaving {} alone: {e}", path.display()),
            }
        }
        let used = pool.books().used();
        tracing::debug!(dirs, used, budget, "disk cache counted");
        drop(io);
        Ok(pool)
    }

    /// A store for the torrent `info_hash` in its directory (created if needed): the files
    /// there that fit `piece_length` are its pieces, counted at once; what no longer fits the
    /// budget goes, stale pieces first, then the least recently used (its own too). `wake` is
    /// notified when another store's put evicts its pieces. Blocking.
    pub fn join(
        &self,
        info_hash: [u8; 20],
        piece_length: u32,
        wake: Arc<Notify>,
    ) -> Result<DiskStore> {
        let dir = self.inner.root.join(hex(&info_hash));
        fs::create_dir_all(&dir).map_err(|source| DiskStoreError::Create {
            path: dir.clone(),
            source,
        })?;
        let _io = self.io();
        // Held while we list the directory as ours: no other process empties it meanwhile.
        let lock = File::open(&dir).map_err(io_err(&dir))?;
        if let Err(e) = lock.lock_shared() {
            tracing::debug!(dir = %dir.display(), error = %e, "cannot lock; taken as ours");
        }
        // Alone in it: leftover temp files are nobody's. Otherwise another mount of the same
        // torrent may be writing one.
        let alone = !self.inner.claims.others().contains(&info_hash);
        let files = scan(&dir, Some(piece_length), alone)?;
        let (ticket, gauge) = self.books().join(info_hash, files, wake);
        let published = self.publish_join(&info_hash);
        drop(lock);
        published?;
        let evicted = (self.books().make_room(Some(ticket), 0, true)).unwrap_or_default();
        self.delete(&evicted.victims)?;
        Ok(DiskStore::new(
            self.clone(),
            ticket,
            dir,
            piece_length,
            gauge,
        ))
    }

    /// The budget, for every torrent of the pool together.
    pub fn budget(&self) -> u64 {
        self.books().budget()
    }

    /// Bytes of every piece counted: the members' and those of torrents not mounted now.
    pub fn used(&self) -> u64 {
        self.books().used()
    }

    /// `used`, readable without the books: always the latest value.
    pub fn used_gauge(&self) -> Arc<AtomicU64> {
        self.books().total_gauge()
    }

    /// DIR.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub(super) fn books(&self) -> MutexGuard<'_, Books> {
        crate::sync::lock(&self.inner.books)
    }

    /// A member's write was refused or stored: what to tell the user, for the whole pool.
    pub(super) fn note_refusal(&self, refused: bool) -> Option<Say> {
        crate::sync::lock(&self.inner.refusals).observe(refused, std::time::Instant::now())
    }

    pub(super) fn io(&self) -> MutexGuard<'_, ()> {
        crate::sync::lock(&self.inner.io)
    }

    /// Lists `dir`, a member now, as ours for other processes: one line appended, or the
    /// whole list if a member left since it was last written (or the append failed: the list
    /// was removed behind our back). Call with `io` held.
    fn publish_join(&self, dir: &[u8; 20]) -> Result<()> {
        if self.books().take_left() {
            return self.publish(false);
        }
        match self.inner.claims.add(dir) {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, "disk cache: appending to our mounts list failed");
                self.publish(false)
            }
        }
    }

    /// Bytes written to our list of directories so far.
    #[cfg(test)]
    pub(super) fn claims_written(&self) -> u64 {
        self.inner.claims.written()
    }

    /// Lists the members' directories as ours for other processes (`claims.rs`); with
    /// `if_left`, only if a member left since the last time. Call with `io` held.
    pub(super) fn publish(&self, if_left: bool) -> Result<()> {
        let (dirs, left) = self.books().members();
        if if_left && !left {
            return Ok(());
        }
        let claims = &self.inner.claims;
        claims.publish(&dirs).map_err(io_err(&self.inner.root))
    }

    /// Deletes the files of `victims`, already out of the books (call with `io` held). A
    /// stale directory is emptied only under its exclusive lock, and unless another process
    /// lists it: one it lists (or is joining now) is forgotten instead. Returns the first
    /// error, after trying every file.
    pub(super) fn delete(&self, victims: &[Victim]) -> Result<()> {
        let mut victims = victims.to_vec();
        victims.sort_by_key(|v| v.dir);
        let mut first = None;
        for batch in victims.chunk_by(|a, b| a.dir == b.dir) {
            let dir = batch[0].dir;
            let path = self.inner.root.join(hex(&dir));
            let lock = match batch[0].stale {
                false => None,
                true => match lock_now(&path) {
                    Ok(Some(lock)) if !self.inner.claims.others().contains(&dir) => Some(lock),
                    _ => {
                        tracing::debug!(dir = %path.display(), "another process's now, or gone: no longer counted");
                        self.books().drop_stale_dir(dir);
                        continue;
                    }
                },
            };
            for v in batch {
                let file = path.join(file_name(v.piece, v.len));
                if let Err(e) = remove_if_present(&file) {
                    tracing::warn!("disk cache: {e}");
                    first.get_or_insert(e);
                }
            }
            drop(lock);
        }
        first.map_or(Ok(()), Err)
    }
}

/// An exclusive lock on `dir`, taken without waiting: `None` if another holds it. A
/// filesystem without locks counts as unlocked.
fn lock_now(dir: &Path) -> Result<Option<File>> {
    let file = File::open(dir).map_err(io_err(dir))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => {
            tracing::debug!(dir = %dir.display(), error = %e, "cannot lock; taken as ours");
            Ok(Some(file))
        }
    }
}

/// The piece files of `dir`: files whose size does not match their name (or longer than
/// `piece_length`, when known) are deleted, and of two lengths of one piece the older; with
/// `clean`, so are leftover temp files. Files that are not ours are left alone.
fn scan(dir: &Path, piece_length: Option<u32>, clean: bool) -> Result<Vec<Found>> {
    let mut found: std::collections::HashMap<u32, (u32, SystemTime)> = Default::default();
    for item in fs::read_dir(dir).map_err(io_err(dir))? {
        let item = item.map_err(io_err(dir))?;
        let path = item.path();
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            if clean {
                tracing::debug!(path = %path.display(), "removing leftover temp file");
                remove_if_present(&path)?;
            }
            continue;
        }
        let Some((piece, len)) = parse_name(name) else {
            continue;
        };
        let meta = match item.metadata() {
            Ok(m) => m,
            // Deleted meanwhile (another mount of the same torrent).
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(DiskStoreError::Io { path, source }),
        };
        let too_long = piece_length.is_some_and(|max| len > max);
        if !meta.is_file() || len == 0 || too_long || meta.len() != u64::from(len) {
            tracing::warn!(path = %path.display(), size = meta.len(), "dropping bad piece file");
            remove_if_present(&path)?;
            continue;
        }
        let stamp = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        match found.get(&piece).copied() {
            // Two lengths for one piece: keep the newer file.
            Some((old_len, old_stamp)) => {
                let drop_len = if old_stamp >= stamp { len } else { old_len };
                remove_if_present(&dir.join(file_name(piece, drop_len)))?;
                if old_stamp < stamp {
                    found.insert(piece, (len, stamp));
                }
            }
            None => {
                found.insert(piece, (len, stamp));
            }
        }
    }
    Ok((found.into_iter())
        .map(|(piece, (len, stamp))| (piece, len, stamp))
        .collect())
}
