//! Verified pieces kept on disk between mounts (`--cache-dir`), least recently used first out
//! within a byte budget (`--disk-cache-size`) for the whole directory: one [`DiskPool`] per
//! process, shared by its torrents (`pool.rs`, with what becomes of torrents not mounted now
//! and of other processes sharing the directory; the accounting in `books.rs`); a
//! [`DiskStore`] is one torrent's member of it.
//!
//! Layout: `DIR/<40 hex digits of the info-hash>/<piece>-<len>.piece`. The length in the name
//! lets a scan drop a truncated file without knowing the torrent's total length (the last
//! piece is shorter). A piece is written to `<piece>.tmp` and renamed into place, so a crash
//! never leaves a half piece under a real name; leftover `.tmp` files are deleted. There is
//! no fsync: a power cut may still leave a short or garbled file, which the size check or
//! the hash check below catches.
//!
//! Trust: the bytes on disk are NOT trusted. Whoever else can write to DIR, or a disk fault,
//! can change them, so the session must re-verify each piece (SHA1) on its first `get` after
//! `join` and call [`DiskStore::remove`] for one that fails.
//!
//! Recency survives restarts as each file's mtime: set on `put` and on every `get`, read back
//! when the pool counts the directory. Stamps within a run are strictly increasing; on a
//! filesystem with coarse timestamps ties across runs fall back to directory and piece order.
//!
//! All I/O is blocking `std::fs`: call it from `spawn_blocking`, never on an async worker.
//! What takes no I/O (a reader's floor, evictions taken) is marked so and may be called under
//! a session's state lock.

mod books;
mod claims;
mod pool;
mod refusals;
#[cfg(test)]
mod tests;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use tokio::sync::Notify;

use books::{Hash, Ticket};
pub use pool::DiskPool;
pub use refusals::Say;

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

/// What [`DiskStore::put`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Put {
    /// False: the piece would fit only by evicting what may not go (pieces being read, other
    /// torrents' readers' windows), so it was not written and nothing was evicted.
    pub stored: bool,
    /// Not stored for want of room: every piece that could have gone may not (the reason
    /// `stored` is false, but for a store that left its pool).
    pub refused: bool,
    /// This store's pieces evicted for it, least recently used first. (Other stores' pieces
    /// that went are theirs to take: [`DiskStore::take_evicted`].)
    pub evicted: Vec<u32>,
}

/// One torrent's on-disk piece cache, a member of a [`DiskPool`]. See the module doc for
/// layout and trust. It leaves the pool when dropped or told to ([`DiskStore::leave`]).
#[derive(Debug)]
pub struct DiskStore {
    pool: DiskPool,
    ticket: Ticket,
    dir: PathBuf,
    piece_length: u32,
    /// `used_bytes`, published under the pool's books as it changes: a reader without them
    /// never sees an older value after a newer one.
    gauge: Arc<AtomicU64>,
}

/// What a torrent's readers want, told to its disk pool so that no other torrent's put
/// evicts it (the floor); no I/O. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DiskFloor {
    pool: DiskPool,
    ticket: Ticket,
}

impl DiskFloor {
    /// Piece ranges this torrent's readers want now (replacing the last ones said).
    pub fn protect(&self, ranges: Vec<Range<u32>>) {
        self.pool.books().protect(self.ticket, ranges);
    }
}

impl DiskStore {
    /// Opens (creating it if needed) a pool of its own under `dir` with `budget` bytes (see
    /// [`DiskPool::open`]) and joins it for `info_hash`: one torrent, the whole budget.
    pub fn open(
        dir: &Path,
        info_hash: [u8; 20],
        piece_length: u32,
        budget: u64,
    ) -> Result<DiskStore> {
        DiskPool::open(dir, budget)?.join(info_hash, piece_length, Arc::new(Notify::new()))
    }

    fn new(
        pool: DiskPool,
        ticket: Ticket,
        dir: PathBuf,
        piece_length: u32,
        gauge: Arc<AtomicU64>,
    ) -> DiskStore {
        DiskStore {
            pool,
            ticket,
            dir,
            piece_length,
            gauge,
        }
    }

    /// A write of this store was refused (`true`) or stored: whether to say so now, said
    /// once for the whole pool (`refusals`).
    pub fn note_refusal(&self, refused: bool) -> Option<Say> {
        self.pool.note_refusal(refused)
    }

    /// Store a verified piece, evicting the pool's least recently used pieces that may go
    /// (stale ones first) to make room; see [`Put`].
    pub fn put(&self, piece: u32, data: &[u8]) -> Result<Put> {
        let len = data.len() as u64;
        if len == 0 || len > u64::from(self.piece_length) {
            return Err(DiskStoreError::WrongLength {
                piece,
                len,
                piece_length: self.piece_length,
            });
        }
        let budget = self.pool.budget();
        if len > budget {
            return Err(DiskStoreError::Full { piece, len, budget });
        }
        let _io = self.pool.io();
        if !self.pool.books().is_member(self.ticket) {
            // Left the pool: stores nothing more.
            return Ok(Put::default());
        }
        self.pool.publish(true)?;
        self.delete(piece)?;
        let made = self.pool.books().make_room(Some(self.ticket), len, false);
        let Some(made) = made else {
            tracing::debug!(
                piece,
                "disk cache full of pieces that may not go; piece not cached"
            );
            return Ok(Put {
                refused: true,
                ..Put::default()
            });
        };
        let written = (self.pool.delete(&made.victims)).and_then(|()| self.write(piece, data));
        match written {
            Ok(stamp) => {
                (self.pool.books()).stored(self.ticket.dir, piece, len as u32, stamp);
                Ok(Put {
                    stored: true,
                    refused: false,
                    evicted: made.own,
                })
            }
            Err(e) => {
                // Our pieces that went for it are gone all the same: the news comes as
                // another store's evictions would.
                self.pool.books().tell_evicted(self.ticket, &made.own);
                Err(e)
            }
        }
    }

    /// Writes the piece's file (to a temp file, renamed into place); its stamp, also its
    /// mtime. Call with `io` held.
    fn write(&self, piece: u32, data: &[u8]) -> Result<SystemTime> {
        let tmp = self.dir.join(format!("{piece}.tmp"));
        let path = self.dir.join(file_name(piece, data.len() as u32));
        let stamp = self.pool.books().stamp();
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
        Ok(stamp)
    }

    /// The piece's bytes, marked as just used; `None` if it is not here (any more). Bytes
    /// from a previous run are unverified: see the module doc. While it is read, no put
    /// evicts it.
    pub fn get(&self, piece: u32) -> Result<Option<Vec<u8>>> {
        let Some((len, stamp)) = self.pool.books().pin(self.ticket, piece) else {
            return Ok(None);
        };
        let path = self.dir.join(file_name(piece, len));
        let read = read_file(&path, len);
        self.pool.books().unpin(self.ticket.dir, piece);
        match read {
            Ok(Some((data, file))) => {
                if let Err(e) = file.set_modified(stamp) {
                    // Only the order after a restart suffers.
                    tracing::debug!(path = %path.display(), error = %e, "cannot touch piece file");
                }
                Ok(Some(data))
            }
            Ok(None) => {
                self.pool.books().forget(self.ticket.dir, piece);
                Ok(None)
            }
            Err(ReadError::Size(size)) => {
                tracing::warn!(path = %path.display(), size, "piece file changed size");
                self.remove(piece)?;
                Ok(None)
            }
            Err(ReadError::Io(source)) => Err(DiskStoreError::Io { path, source }),
        }
    }

    /// Delete a piece (e.g. one that failed its hash check). Returns whether it was here.
    pub fn remove(&self, piece: u32) -> Result<bool> {
        let _io = self.pool.io();
        self.delete(piece)
    }

    /// `remove`, with `io` held.
    fn delete(&self, piece: u32) -> Result<bool> {
        let len = {
            let mut books = self.pool.books();
            match books.len_of(self.ticket, piece) {
                Some(_) => books.forget(self.ticket.dir, piece),
                None => None,
            }
        };
        let Some(len) = len else { return Ok(false) };
        remove_if_present(&self.dir.join(file_name(piece, len)))?;
        Ok(true)
    }

    pub fn contains(&self, piece: u32) -> bool {
        self.pool.books().contains(self.ticket, piece)
    }

    /// The pieces held, ascending: after `join`, what a previous run left.
    pub fn pieces(&self) -> Vec<u32> {
        self.pool.books().pieces(self.ticket)
    }

    /// Bytes of this torrent's piece data held (file sizes; directory overhead not counted).
    pub fn used_bytes(&self) -> u64 {
        self.gauge.load(Ordering::Relaxed)
    }

    /// `used_bytes`, readable without the store: always the latest value.
    pub fn used_gauge(&self) -> Arc<AtomicU64> {
        self.gauge.clone()
    }

    /// The pool's budget, shared with its other stores.
    pub fn budget(&self) -> u64 {
        self.pool.budget()
    }

    pub fn pool(&self) -> &DiskPool {
        &self.pool
    }

    /// `DIR/<hex info-hash>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The handle that tells the pool what this torrent's readers want; no I/O.
    pub fn floor(&self) -> DiskFloor {
        DiskFloor {
            pool: self.pool.clone(),
            ticket: self.ticket,
        }
    }

    /// Pieces other stores' puts evicted since the last call; they are no longer here. No
    /// I/O.
    pub fn take_evicted(&self) -> Vec<u32> {
        self.pool.books().take_evicted(self.ticket)
    }

    /// Leaves the pool (its torrent stopped): its pieces stay on disk, stale, the first to go
    /// for the other stores; it stores and loads nothing more. Other processes are told it is
    /// no longer mounted (blocking).
    pub fn leave(&self) -> Result<()> {
        let _io = self.pool.io();
        self.pool.books().leave(self.ticket);
        self.pool.publish(true)
    }
}

impl Drop for DiskStore {
    /// Leaves the books at once (no I/O here); other processes are told at the pool's next
    /// put or join.
    fn drop(&mut self) {
        self.pool.books().leave(self.ticket);
    }
}

enum ReadError {
    Size(usize),
    Io(io::Error),
}

/// The file's bytes (and the open file, to touch), `None` if it is gone.
fn read_file(path: &Path, len: u32) -> std::result::Result<Option<(Vec<u8>, File)>, ReadError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ReadError::Io(e)),
    };
    let mut data = Vec::with_capacity(len as usize);
    file.read_to_end(&mut data).map_err(ReadError::Io)?;
    if data.len() != len as usize {
        return Err(ReadError::Size(data.len()));
    }
    Ok(Some((data, file)))
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

/// The directory name of an info-hash: 40 lowercase hex digits.
fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// 40 lowercase hex digits (as [`hex`] writes them) to an info-hash; anything else is not ours.
fn parse_hex(name: &str) -> Option<Hash> {
    let digit = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if name.len() != 40 || !name.bytes().all(digit) {
        return None;
    }
    let mut hash = [0u8; 20];
    for (i, b) in hash.iter_mut().enumerate() {
        *b = u8::from_str_radix(&name[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(hash)
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
