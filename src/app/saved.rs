//! `--state-dir`: the torrents added to a library mount with `btfs add` are kept there, one
//! file each, and added again at the next mount of the same mountpoint; `btfs remove` forgets
//! one. A `.torrent` source is kept as its bytes (the file given may be gone by then), a magnet
//! link or URL as its text. The mount's own sources and a watch directory's files are not kept:
//! the command line and the directory say them again.
//!
//! Layout: `STATE_DIR/library/<hash of the mountpoint>/<info-hash>.{torrent,magnet,url}`,
//! written whole to a temporary name and renamed, so a crash never leaves half a file.

use std::io;
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

use crate::metainfo::InfoHash;

/// Largest saved file read back (a .torrent file's own cap is far above any real one's).
const MAX_SAVED: u64 = crate::metainfo::MAX_TORRENT_FILE_BYTES;

/// `$XDG_STATE_HOME/btfs`, else `~/.local/state/btfs`.
pub fn default_state_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("btfs"))
}

/// The kept torrents of one mountpoint.
#[derive(Clone, Debug)]
pub struct Saved {
    dir: PathBuf,
}

impl Saved {
    /// The place of `mountpoint` (canonical) under `state_dir`.
    pub fn new(state_dir: &Path, mountpoint: &Path) -> Saved {
        let digest = Sha1::digest(mountpoint.as_os_str().as_encoded_bytes());
        let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
        Saved {
            dir: state_dir.join("library").join(hex),
        }
    }

    /// The kept sources, as `btfs add` would be given them: a kept .torrent file's path, a
    /// magnet link's or URL's text; in name order. Unreadable entries are skipped (said).
    pub fn load(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        let mut out = Vec::new();
        for path in paths {
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or_default();
            match ext {
                "torrent" => out.push(path.to_string_lossy().into_owned()),
                "magnet" | "url" => match read_text(&path) {
                    Ok(text) => out.push(text),
                    Err(e) => tracing::warn!("cannot read {}: {e}", path.display()),
                },
                _ => {}
            }
        }
        out
    }

    /// Keeps the torrent `info_hash` added from `source`: a local file's bytes, else the text.
    pub fn save(&self, info_hash: &InfoHash, source: &str) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let (ext, bytes) = if source.starts_with("magnet:") {
            ("magnet", source.as_bytes().to_vec())
        } else if source.starts_with("http://") || source.starts_with("https://") {
            ("url", source.as_bytes().to_vec())
        } else {
            ("torrent", std::fs::read(source)?)
        };
        self.forget(info_hash);
        let path = self.dir.join(format!("{info_hash}.{ext}"));
        let tmp = self.dir.join(format!(".{info_hash}.{ext}.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)
    }

    /// Forgets the torrent `info_hash`, if kept.
    pub fn forget(&self, info_hash: &InfoHash) {
        for ext in ["torrent", "magnet", "url"] {
            let _ = std::fs::remove_file(self.dir.join(format!("{info_hash}.{ext}")));
        }
    }
}

fn read_text(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_SAVED)
        .read_to_string(&mut text)?;
    Ok(text.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_sources_come_back_and_forgotten_ones_do_not() {
        let state = tempfile::tempdir().expect("tempdir");
        let saved = Saved::new(state.path(), Path::new("/mnt/x"));
        assert_eq!(saved.load(), Vec::<String>::new());
        let file = state.path().join("a.torrent");
        std::fs::write(&file, b"d4:infodee").expect("write");
        let (a, b, c) = (InfoHash([1; 20]), InfoHash([2; 20]), InfoHash([3; 20]));
        saved.save(&a, &file.to_string_lossy()).expect("save");
        std::fs::remove_file(&file).expect("the original goes");
        let magnet = "magnet:?xt=urn:btih:0202020202020202020202020202020202020202";
        saved.save(&b, magnet).expect("save");
        saved
            .save(&c, "https://example.org/c.torrent")
            .expect("save");
        let back = saved.load();
        assert_eq!(back.len(), 3, "{back:?}");
        assert_eq!(std::fs::read(&back[0]).expect("kept bytes"), b"d4:infodee");
        assert_eq!(back[1], magnet);
        assert_eq!(back[2], "https://example.org/c.torrent");
        saved.forget(&b);
        assert_eq!(saved.load().len(), 2);
        // Another mountpoint keeps its own.
        assert!(
            Saved::new(state.path(), Path::new("/mnt/y"))
                .load()
                .is_empty()
        );
        // A missing file is an error to say, nothing kept.
        let missing = state.path().join("missing.torrent");
        assert!(saved.save(&b, &missing.to_string_lossy()).is_err());
        assert_eq!(saved.load().len(), 2);
    }
}
