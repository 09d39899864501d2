//! Which info-hash directories other processes have mounted now, so that a pool never counts
//! or empties them as stale. Each pool lists its members' directories in
//! `DIR/.btfs-mounts/<id>.list` and holds an exclusive lock (`flock`) on `<id>.lock` for its
//! life: one descriptor per process, however many torrents it mounts. A list whose lock can
//! be taken belongs to a process that is gone, and is removed (under that lock, so a new
//! process taking the same id never loses its own). On a filesystem without `flock` no list
//! can be told live, and every directory is taken as this process's.
//!
//! A join appends one line to the list (a library of a thousand torrents writes a thousand
//! lines at mount, not a thousand lists); a leave writes the list anew, to a temp file renamed
//! over it. A reader may see a line being appended cut short: it names a directory whose join
//! holds that directory's lock (see `pool.rs`), so no reader acts on it meanwhile.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::books::Hash;
use super::{hex, parse_hex};

const DIR: &str = ".btfs-mounts";

/// This process's list of the directories it mounts.
pub(super) struct Claims {
    dir: PathBuf,
    id: String,
    /// Held for the pool's life: our list is live while it is.
    _lock: Option<File>,
    /// Bytes written to the list, over its life.
    #[cfg(test)]
    written: std::sync::atomic::AtomicU64,
}

impl Claims {
    /// Takes a free id under `root` (the pid, or the pid and a number: two processes of one
    /// pid in two pid namespaces may share DIR), with an empty list.
    pub(super) fn open(root: &Path) -> io::Result<Claims> {
        let dir = root.join(DIR);
        fs::create_dir_all(&dir)?;
        let pid = std::process::id();
        for n in 0u32.. {
            let id = match n {
                0 => pid.to_string(),
                n => format!("{pid}-{n}"),
            };
            let file = (OpenOptions::new().create(true).truncate(false).write(true))
                .open(dir.join(format!("{id}.lock")))?;
            let lock = match file.try_lock() {
                Ok(()) => Some(file),
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(e)) => {
                    tracing::debug!(error = %e, "no locks in the disk cache; not shared safely");
                    None
                }
            };
            let claims = Claims {
                dir,
                id,
                _lock: lock,
                #[cfg(test)]
                written: Default::default(),
            };
            claims.publish(&[])?;
            return Ok(claims);
        }
        unreachable!("some id is free")
    }

    /// Says that this process mounts `dirs` (and no other).
    pub(super) fn publish(&self, dirs: &[Hash]) -> io::Result<()> {
        let list = self.list();
        let tmp = self.dir.join(format!("{}.list.tmp", self.id));
        let mut text = String::with_capacity(dirs.len() * 41);
        for d in dirs {
            text.push_str(&hex(d));
            text.push('\n');
        }
        self.count(text.len());
        File::create(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|()| fs::rename(&tmp, &list))
    }

    /// Says that this process mounts `dir` too, with one write at the end of the list.
    pub(super) fn add(&self, dir: &Hash) -> io::Result<()> {
        let line = format!("{}\n", hex(dir));
        self.count(line.len());
        (OpenOptions::new().append(true).open(self.list()))
            .and_then(|mut f| f.write_all(line.as_bytes()))
    }

    fn list(&self) -> PathBuf {
        self.dir.join(format!("{}.list", self.id))
    }

    #[cfg(test)]
    fn count(&self, bytes: usize) {
        (self.written).fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
    }

    #[cfg(not(test))]
    fn count(&self, _bytes: usize) {}

    /// Bytes written to the list so far.
    #[cfg(test)]
    pub(super) fn written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The directories other live processes list. A dead process's list is removed.
    pub(super) fn others(&self) -> HashSet<Hash> {
        let mut out = HashSet::new();
        let Ok(listing) = fs::read_dir(&self.dir) else {
            return out;
        };
        for item in listing.filter_map(|i| i.ok()) {
            let name = item.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".lock")) else {
                continue;
            };
            if id == self.id {
                continue;
            }
            let Ok(lock) = File::open(item.path()) else {
                continue;
            };
            let list = self.dir.join(format!("{id}.list"));
            match lock.try_lock_shared() {
                Err(TryLockError::WouldBlock) => {
                    let text = fs::read_to_string(&list).unwrap_or_default();
                    out.extend(text.lines().filter_map(parse_hex));
                }
                Ok(()) => {
                    // Gone: its lock was ours to take. Removed while we hold it.
                    let _ = fs::remove_file(&list);
                    let _ = fs::remove_file(item.path());
                }
                Err(TryLockError::Error(_)) => {}
            }
        }
        out
    }
}
