//! `--watch DIR`: every `*.torrent` file (and every `*.magnet` text file holding one magnet
//! link) in the directory is a torrent of the library; a file added appears as a folder, a
//! file deleted takes its folder away, a file rewritten is mounted again.
//!
//! The directory is listed once a second rather than watched with inotify: one listing a
//! second costs nothing, sees changes on any filesystem (inotify is blind on NFS, FUSE and
//! to changes made in another mount namespace), and the rule that keeps a half-written file
//! from being read (its size and mtime unchanged over one poll) needs a timer anyway. Hidden
//! files (a browser's `.x.torrent.part`) are ignored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::app::catalog::{Library, Origin};

/// How often the directory is listed.
const POLL: Duration = Duration::from_secs(1);
/// Longest `.magnet` file read: one link, with room for many trackers.
const MAX_MAGNET_FILE: u64 = 64 * 1024;

/// What a file looked like at a poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub len: u64,
    pub mtime: SystemTime,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// The file is whole (unchanged since the last poll) and not yet mounted at this stamp.
    Add(PathBuf),
    /// The file mounted is gone or being rewritten.
    Remove(PathBuf),
}

/// The directory's files as last seen, each with whether it was acted on at that stamp. Pure:
/// the caller lists the directory and carries out the actions.
#[derive(Default)]
pub struct Watcher {
    seen: HashMap<PathBuf, (Stamp, bool)>,
}

impl Watcher {
    /// What to do, given the directory's files now: removals first, then additions, each in
    /// path order. A file is added once its stamp held over one poll, at most once per stamp
    /// (one that fails to load is tried again only when it changes).
    pub fn poll(&mut self, now: HashMap<PathBuf, Stamp>) -> Vec<Action> {
        let mut removes: Vec<PathBuf> = (self.seen.iter())
            .filter(|(path, (_, done))| *done && !now.contains_key(*path))
            .map(|(path, _)| path.clone())
            .collect();
        let mut adds = Vec::new();
        let mut next = HashMap::with_capacity(now.len());
        for (path, stamp) in now {
            let done = match self.seen.get(&path) {
                Some(&(before, done)) if before == stamp => {
                    if !done {
                        adds.push(path.clone());
                    }
                    true
                }
                Some(&(_, true)) => {
                    removes.push(path.clone());
                    false
                }
                _ => false,
            };
            next.insert(path, (stamp, done));
        }
        self.seen = next;
        removes.sort();
        adds.sort();
        (removes.into_iter().map(Action::Remove))
            .chain(adds.into_iter().map(Action::Add))
            .collect()
    }
}

/// A file of the directory that names a torrent.
fn watched(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let lower = name.to_ascii_lowercase();
    !name.starts_with('.') && (lower.ends_with(".torrent") || lower.ends_with(".magnet"))
}

/// The watched files of `dir` and their stamps.
fn list(dir: &Path) -> std::io::Result<HashMap<PathBuf, Stamp>> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !watched(&path) {
            continue;
        }
        // Following a symlink; a file gone since the listing is skipped.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_file() {
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            out.insert(
                path,
                Stamp {
                    len: meta.len(),
                    mtime,
                },
            );
        }
    }
    Ok(out)
}

/// What `library` is given for a watched file: a `.torrent` file's path, a `.magnet` file's
/// one link.
fn source_of(path: &Path) -> Result<String, String> {
    let is_magnet = (path.extension().and_then(|e| e.to_str()))
        .is_some_and(|e| e.eq_ignore_ascii_case("magnet"));
    if !is_magnet {
        return Ok(path.to_string_lossy().into_owned());
    }
    let text = read_small(path).map_err(|e| format!("cannot read it: {e}"))?;
    magnet_in(&text)
}

fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_MAGNET_FILE + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_MAGNET_FILE {
        return Err(std::io::Error::other(format!(
            "over {MAX_MAGNET_FILE} bytes"
        )));
    }
    Ok(text)
}

/// The one magnet link of a `.magnet` file's text (blank lines and surrounding space allowed).
fn magnet_in(text: &str) -> Result<String, String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    match (lines.next(), lines.next()) {
        (Some(link), None) if link.starts_with("magnet:") => Ok(link.to_string()),
        _ => Err("a .magnet file must hold one magnet link".to_string()),
    }
}

/// Keeps `library` in step with `dir` until the mount ends.
pub async fn run(library: Arc<Library>, dir: PathBuf) {
    let mut watcher = Watcher::default();
    let mut tick = tokio::time::interval(POLL);
    let mut unreadable = false;
    loop {
        tick.tick().await;
        let listed = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || list(&dir)).await
        };
        let now = match listed {
            Ok(Ok(now)) => {
                unreadable = false;
                now
            }
            Ok(Err(e)) => {
                if !unreadable {
                    tracing::warn!("cannot list the watch directory {}: {e}", dir.display());
                }
                unreadable = true;
                continue;
            }
            Err(_) => continue,
        };
        for action in watcher.poll(now) {
            match action {
                Action::Remove(path) => {
                    if let Some(folder) = library.folder_of(&Origin::Watched(path)) {
                        let _ = library.remove(&folder).await;
                    }
                }
                Action::Add(path) => {
                    // In a task of its own: a magnet may take minutes.
                    tokio::spawn(add(library.clone(), path));
                }
            }
        }
    }
}

async fn add(library: Arc<Library>, path: PathBuf) {
    let name = path.to_string_lossy().into_owned();
    let source = match source_of(&path) {
        Ok(s) => s,
        Err(why) => {
            library.refused(&name, &why);
            return;
        }
    };
    let origin = Origin::Watched(path.clone());
    if library.add_source(&source, origin.clone()).await.is_ok() && !path.exists() {
        // Deleted while it loaded: the poll that saw it go found nothing to remove.
        if let Some(folder) = library.folder_of(&origin) {
            let _ = library.remove(&folder).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, len: u64) -> Stamp {
        Stamp {
            len,
            mtime: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        }
    }

    fn files(list: &[(&str, Stamp)]) -> HashMap<PathBuf, Stamp> {
        list.iter().map(|(p, s)| (PathBuf::from(p), *s)).collect()
    }

    #[test]
    fn a_file_is_added_once_it_held_still_for_a_poll() {
        let mut w = Watcher::default();
        assert_eq!(w.poll(files(&[("a.torrent", at(1, 10))])), []);
        // Still being written: it grew.
        assert_eq!(w.poll(files(&[("a.torrent", at(2, 20))])), []);
        let add = Action::Add("a.torrent".into());
        assert_eq!(w.poll(files(&[("a.torrent", at(2, 20))])), [add]);
        // Once only, even if it failed to load.
        assert_eq!(w.poll(files(&[("a.torrent", at(2, 20))])), []);
    }

    #[test]
    fn a_file_deleted_or_rewritten_is_removed_and_a_rewritten_one_added_again() {
        let mut w = Watcher::default();
        let both = files(&[("a.torrent", at(1, 10)), ("b.magnet", at(1, 5))]);
        w.poll(both.clone());
        assert_eq!(w.poll(both).len(), 2);
        let rewritten = files(&[("b.magnet", at(3, 6))]);
        assert_eq!(
            w.poll(rewritten.clone()),
            [
                Action::Remove("a.torrent".into()),
                Action::Remove("b.magnet".into())
            ]
        );
        assert_eq!(w.poll(rewritten), [Action::Add("b.magnet".into())]);
        // A file gone before it was ever added is nothing to remove.
        let mut w = Watcher::default();
        w.poll(files(&[("c.torrent", at(1, 1))]));
        assert_eq!(w.poll(HashMap::new()), []);
    }

    #[test]
    fn only_visible_torrent_and_magnet_files_are_watched() {
        assert!(watched(Path::new("/w/a.torrent")));
        assert!(watched(Path::new("/w/B.TORRENT")));
        assert!(watched(Path::new("/w/x.magnet")));
        assert!(!watched(Path::new("/w/.a.torrent")));
        assert!(!watched(Path::new("/w/a.torrent.part")));
        assert!(!watched(Path::new("/w/notes.txt")));
    }

    #[test]
    fn a_magnet_file_holds_one_link() {
        let link = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            magnet_in(&format!("\n  {link}  \n\n")),
            Ok(link.to_string())
        );
        assert!(magnet_in("").is_err());
        assert!(magnet_in("http://example.com/a.torrent").is_err());
        assert!(magnet_in(&format!("{link}\n{link}")).is_err());
    }
}
