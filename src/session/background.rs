//! What to fetch when no reader is waiting: the `--background` policy, a pure state machine
//! with the time passed in.
//!
//! - `off`: nothing but what readers ask for.
//! - `open-files` (the default): the rest of what is being watched. A file is watched once a
//!   reader has read [`WATCH_BYTES`] of it (or half of a smaller file): a player streaming it,
//!   a copy. A probe (a thumbnailer taking a frame, a media scanner reading head and tail,
//!   `file`) reads far less and never turns into a download. The watched files are fetched
//!   first, in order; once they are held, their neighbours in the torrent (the next episode).
//!   It ends [`IDLE`] after the last read of a watched file.
//! - `torrent`: every piece, rarest first, while memory has room (as a swarm member would).
//!
//! Nothing is fetched in the background before the first read, whatever the policy: a mount
//! only browsed downloads nothing.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::time::Duration;

use tokio::time::Instant;

/// Read from a file before it counts as watched (or half the file, if that is less).
pub(crate) const WATCH_BYTES: u64 = 16 * 1024 * 1024;
/// Background fetching for watched files ends this long after their last read.
pub(crate) const IDLE: Duration = Duration::from_secs(120);

/// `--background`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Background {
    Off,
    #[default]
    OpenFiles,
    Torrent,
}

impl Background {
    pub const ALL: [Background; 3] = [Background::Off, Background::OpenFiles, Background::Torrent];

    pub fn name(self) -> &'static str {
        match self {
            Background::Off => "off",
            Background::OpenFiles => "open-files",
            Background::Torrent => "torrent",
        }
    }
}

impl fmt::Display for Background {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Background {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Background::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| format!("'{s}' is not one of off, open-files, torrent"))
    }
}

/// Where background fetching may go now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Nowhere.
    Off,
    /// Anywhere (rarest first).
    Torrent,
    /// These piece ranges (in order).
    Pieces(Vec<Range<u32>>),
}

/// The files being watched, and what the policy makes of them.
pub(crate) struct Watching {
    policy: Background,
    /// Each file's pieces, by file index.
    files: Vec<Range<u32>>,
    /// Watched files, with their last read.
    watched: HashMap<usize, Instant>,
}

impl Watching {
    pub(crate) fn new(policy: Background, files: Vec<Range<u32>>) -> Self {
        Self {
            policy,
            files,
            watched: HashMap::new(),
        }
    }

    /// A reader of `file` (of `len` bytes) has read `consumed` bytes in all, the last at `now`.
    /// Returns true if the file became watched.
    pub(crate) fn read(&mut self, file: usize, consumed: u64, len: u64, now: Instant) -> bool {
        if let Some(last) = self.watched.get_mut(&file) {
            *last = now;
            return false;
        }
        if consumed >= WATCH_BYTES.min(len / 2).max(1) {
            self.watched.insert(file, now);
            return true;
        }
        false
    }

    /// The scope at `now`; `held(range)`: whether every piece of it is held.
    pub(crate) fn scope(&mut self, now: Instant, held: impl Fn(&Range<u32>) -> bool) -> Scope {
        match self.policy {
            Background::Off => return Scope::Off,
            Background::Torrent => return Scope::Torrent,
            Background::OpenFiles => {}
        }
        self.watched
            .retain(|_, last| now.saturating_duration_since(*last) < IDLE);
        let mut files: Vec<usize> = self.watched.keys().copied().collect();
        files.sort_unstable();
        let ranges = |files: &[usize]| -> Vec<Range<u32>> {
            (files.iter())
                .filter_map(|&f| self.files.get(f).cloned())
                .filter(|r| !r.is_empty())
                .collect()
        };
        let watched = ranges(&files);
        if watched.is_empty() {
            return Scope::Off;
        }
        if !watched.iter().all(&held) {
            return Scope::Pieces(watched);
        }
        // What is watched is held: on to the files next to it (the next episode first).
        let mut next: Vec<usize> = (files.iter())
            .flat_map(|&f| [f + 1, f.wrapping_sub(1)])
            .filter(|f| *f < self.files.len() && !files.contains(f))
            .collect();
        next.sort_unstable();
        next.dedup();
        let next = ranges(&next);
        if next.is_empty() {
            Scope::Off
        } else {
            Scope::Pieces(next)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// Three files of ten pieces each.
    fn watching(policy: Background) -> Watching {
        Watching::new(policy, vec![0..10, 10..20, 20..30])
    }

    #[test]
    fn a_probe_is_not_watched_a_stream_is() {
        let t = Instant::now();
        let mut w = watching(Background::OpenFiles);
        // `file`, a thumbnailer: the head, a frame, the tail.
        assert!(!w.read(0, 4096, 500 * MIB, t));
        assert!(!w.read(0, 3 * MIB, 500 * MIB, t));
        assert_eq!(w.scope(t, |_| false), Scope::Off);
        // A player keeps reading.
        assert!(w.read(0, WATCH_BYTES, 500 * MIB, t));
        assert_eq!(
            w.scope(t, |_| false),
            Scope::Pieces(std::iter::once(0..10).collect())
        );
        // A small file counts once half of it is read.
        assert!(w.read(2, 2 * MIB, 4 * MIB, t));
    }

    #[test]
    fn neighbours_once_the_watched_file_is_held_and_nothing_after_idle() {
        let t = Instant::now();
        let mut w = watching(Background::OpenFiles);
        w.read(1, WATCH_BYTES, 500 * MIB, t);
        let held_first = |r: &Range<u32>| *r == (10..20);
        assert_eq!(w.scope(t, held_first), Scope::Pieces(vec![0..10, 20..30]));
        // Reading goes on: still in scope until IDLE after the last read.
        w.read(1, WATCH_BYTES + MIB, 500 * MIB, t + IDLE / 2);
        assert_eq!(
            w.scope(t + IDLE, |_| false),
            Scope::Pieces(std::iter::once(10..20).collect())
        );
        assert_eq!(w.scope(t + IDLE / 2 + IDLE, |_| false), Scope::Off);
    }

    #[test]
    fn off_and_torrent_do_what_they_say() {
        let t = Instant::now();
        let mut off = watching(Background::Off);
        off.read(0, WATCH_BYTES, 500 * MIB, t);
        assert_eq!(off.scope(t, |_| false), Scope::Off);
        let mut all = watching(Background::Torrent);
        assert_eq!(all.scope(t, |_| false), Scope::Torrent);
        assert_eq!("open-files".parse(), Ok(Background::OpenFiles));
        assert!("most".parse::<Background>().is_err());
    }
}
