//! Open files as the session sees them: one [`Reader`] per open file handle, with its own
//! position and readahead window, and the ids that name what readers want in the picker.
//!
//! Two kinds of id, never mixed: a [`ReadHandle`] names an open file (what FUSE's file handle
//! carries); a picker [`ReaderId`] names one want in the picker (a handle's readahead window,
//! a media file's prefetched tail, or one blocked read's urgent pieces), made by
//! [`Readers::want_id`] only.

use std::collections::HashMap;
use std::ops::Range;

use tokio::time::Instant;

use super::window::Pace;
use crate::picker::ReaderId;
use crate::piece::Geometry;

/// An open file handle of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReadHandle(u64);

impl ReadHandle {
    /// The number FUSE carries as the file handle.
    pub fn as_raw(self) -> u64 {
        self.0
    }

    /// Back from FUSE's file handle. A number that names no open reader reads as a reader
    /// with no window (reads still work; nothing is fetched ahead).
    pub fn from_raw(raw: u64) -> Self {
        Self(raw)
    }
}

/// A read of a handle waiting for data.
pub(crate) struct Wait {
    pub(crate) pieces: Range<u32>,
    /// It started away from where the handle's reads were (`Reader::is_jump`): a seek, which
    /// the reader waits on, unlike the kernel's readahead continuing earlier reads.
    pub(crate) jump: bool,
    /// It was the read the reader waits on when it came (see `read.rs`, `restate_waits`).
    pub(crate) waited_on: bool,
}

/// A read this close to where the last one ended still counts as sequential for the rate:
/// the kernel's readahead sends a few reads at once, slightly out of order.
const PACE_SLACK: u64 = 256 * 1024;

/// A read this close to where the last one ended (beyond its own length), or to a read still
/// waiting, is no seek the reader waits on: the kernel's readahead (4 MiB at our mount's
/// `read_ahead_kb`) sends reads up to about twice that far ahead, several at once and out of
/// order.
const SEEK_SLACK: u64 = 8 * 1024 * 1024;

/// One open file handle.
pub(crate) struct Reader {
    pub(crate) file: usize,
    /// Its readahead window in the picker.
    pub(crate) window_id: ReaderId,
    /// Media files: the tail fetched at open (players read the index there before the first
    /// frame), kept wanted while opening; the head's first read narrows it to the index, or
    /// drops it (`None`) when the index is in the head.
    pub(crate) tail_id: Option<ReaderId>,
    /// Media files: the first read of the head has yet to say where the index is (`media.rs`).
    pub(crate) probe_pending: bool,
    /// Media files: the head fetched at open, kept wanted while the player opens the file
    /// (head, index, back to the first frames) even as its window jumps to the index.
    pub(crate) head_id: Option<ReaderId>,
    /// Media files, while opening: where the head ends and the tail (or index) begins,
    /// torrent offsets. The first read between them ends the opening: the head and tail wants
    /// are dropped, and the window alone follows the reader.
    pub(crate) opening: Option<(u64, u64)>,
    /// Torrent offset right after the previous read: a read starting there is sequential.
    pub(crate) next: u64,
    /// Readahead window in bytes.
    pub(crate) window: u64,
    /// Bytes read through this handle in all (a probe reads little; see `background`).
    pub(crate) consumed: u64,
    /// Reads that had to wait for data while no read before them did: the reader waited on
    /// them (the kernel's readahead waits too, on reads after the one the reader needs).
    pub(crate) stalls: u64,
    /// The reads of this handle waiting for data, by torrent offset.
    pub(crate) waiting: std::collections::BTreeMap<(u64, ReaderId), Wait>,
    /// Recent sequential reads: the window follows their rate.
    pace: Pace,
    /// The window's pieces as last told to the picker.
    pub(crate) readahead: Range<u32>,
}

impl Reader {
    pub(crate) fn new(file: usize, window_id: ReaderId, start: u64, window: u64) -> Self {
        Self {
            file,
            window_id,
            tail_id: None,
            probe_pending: false,
            head_id: None,
            opening: None,
            next: start,
            window,
            consumed: 0,
            stalls: 0,
            waiting: std::collections::BTreeMap::new(),
            pace: Pace::default(),
            readahead: 0..0,
        }
    }

    /// Whether a read of `len` bytes at torrent offset `start` is a seek: near neither where
    /// the last read ended nor a read still waiting.
    pub(crate) fn is_jump(&self, start: u64, len: u64) -> bool {
        let near = |at: u64| start.abs_diff(at) <= len.saturating_add(SEEK_SLACK);
        !near(self.next) && !self.waiting.keys().any(|&(at, _)| near(at))
    }

    /// Bytes/s this reader has been consuming lately (0 right after a seek).
    pub(crate) fn rate(&self, now: Instant) -> u64 {
        self.pace.rate(now)
    }

    /// A read of `len` bytes at torrent offset `start` (in a file ending at `file_end`):
    /// sizes the window from the consumption rate while reads are sequential, starts over on a
    /// seek, and returns the window's pieces if they changed (the old window stops counting).
    pub(crate) fn advance(
        &mut self,
        g: &Geometry,
        now: Instant,
        read: Range<u64>,
        file_end: u64,
        min: u64,
        max: u64,
    ) -> Option<Range<u32>> {
        let (start, len) = (read.start, read.end - read.start);
        if start.abs_diff(self.next) > len.max(PACE_SLACK) {
            self.pace.reset();
        }
        self.pace.record(now, len);
        self.window = self.pace.window(now, min, max);
        self.next = read.end;
        let ahead_end = read.end.saturating_add(self.window).min(file_end);
        // From the piece the read ended in: a reader reading less than a piece at a time
        // goes on in it, so it is protected from other torrents' evictions like what follows.
        let readahead = g.pieces_in(read.end, ahead_end.saturating_sub(read.end));
        if readahead == self.readahead {
            return None;
        }
        self.readahead = readahead.clone();
        Some(readahead)
    }
}

/// Where one open file's reader stands (status and tests).
#[derive(Clone, Debug, PartialEq)]
pub struct ReaderStatus {
    /// The file's path in the torrent, `/`-joined.
    pub path: String,
    /// Offset in the file right after the last read.
    pub position: u64,
    /// Offset in the file where the readahead window starts, and its size in bytes.
    pub window_start: u64,
    pub window: u64,
    /// How far ahead of the position the data is held without a gap, in seconds of the
    /// reader's consumption; `None` before it has a rate.
    pub ahead_secs: Option<f64>,
    /// Reads that had to wait for data.
    pub stalls: u64,
}

/// Every open reader of a session, and the reads waiting for pieces.
#[derive(Default)]
pub(crate) struct Readers {
    open: HashMap<ReadHandle, Reader>,
    /// Reads waiting for pieces (by their urgent want), and since when.
    waits: HashMap<ReaderId, std::time::Instant>,
    /// Set by the first read (or media open); until then nothing is downloaded.
    started: bool,
    next_handle: u64,
    next_want: u64,
}

impl Readers {
    pub(crate) fn new_handle(&mut self) -> ReadHandle {
        self.next_handle += 1;
        ReadHandle(self.next_handle)
    }

    /// A fresh id for one want in the picker.
    pub(crate) fn want_id(&mut self) -> ReaderId {
        self.next_want += 1;
        ReaderId(self.next_want)
    }

    pub(crate) fn insert(&mut self, h: ReadHandle, r: Reader) {
        self.open.insert(h, r);
    }

    /// Open readers.
    pub(crate) fn count(&self) -> usize {
        self.open.len()
    }

    pub(crate) fn remove(&mut self, h: ReadHandle) -> Option<Reader> {
        self.open.remove(&h)
    }

    pub(crate) fn get_mut(&mut self, h: ReadHandle) -> Option<&mut Reader> {
        self.open.get_mut(&h)
    }

    /// The first read: true once, when it happens.
    pub(crate) fn start(&mut self) -> bool {
        !std::mem::replace(&mut self.started, true)
    }

    pub(crate) fn started(&self) -> bool {
        self.started
    }

    pub(crate) fn wait_started(&mut self, id: ReaderId) {
        self.waits.insert(id, std::time::Instant::now());
    }

    pub(crate) fn wait_ended(&mut self, id: ReaderId) {
        self.waits.remove(&id);
    }

    /// How long the oldest read still waiting has waited.
    pub(crate) fn longest_wait(&self) -> Option<std::time::Duration> {
        self.waits.values().min().map(|t| t.elapsed())
    }

    /// Each open reader, in the order they were opened; `held`: whether a piece is held.
    pub(crate) fn status(
        &self,
        files: &[crate::metainfo::FileEntry],
        g: &Geometry,
        held: impl Fn(crate::piece::PieceIndex) -> bool,
    ) -> Vec<ReaderStatus> {
        let now = Instant::now();
        let mut out: Vec<(ReadHandle, ReaderStatus)> = (self.open.iter())
            .filter_map(|(&h, r)| {
                let f = files.get(r.file)?;
                let window_start = g
                    .piece(r.readahead.start)
                    .map_or(r.next, |p| g.piece_offset(p).max(r.next));
                Some((
                    h,
                    ReaderStatus {
                        path: f.path.join("/"),
                        position: r.next.saturating_sub(f.offset),
                        window_start: window_start.saturating_sub(f.offset),
                        window: r.window,
                        ahead_secs: (r.rate(now) > 0).then(|| {
                            let held_to = held_until(g, r.next, f.offset + f.length, &held);
                            (held_to - r.next) as f64 / r.rate(now) as f64
                        }),
                        stalls: r.stalls,
                    },
                ))
            })
            .collect();
        out.sort_by_key(|(h, _)| *h);
        out.into_iter().map(|(_, r)| r).collect()
    }
}

/// Where the data held without a gap from `pos` ends (at most `end`), looking no further than
/// a few thousand pieces.
fn held_until(
    g: &Geometry,
    pos: u64,
    end: u64,
    held: impl Fn(crate::piece::PieceIndex) -> bool,
) -> u64 {
    let mut at = pos;
    for _ in 0..4096 {
        let Some(p) = g.piece_at(at).filter(|&p| at < end && held(p)) else {
            break;
        };
        at = g.piece_offset(p) + u64::from(g.piece_len(p));
    }
    at.min(end).max(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_and_want_ids_are_distinct_sequences() {
        let mut r = Readers::default();
        let h1 = r.new_handle();
        let w1 = r.want_id();
        let w2 = r.want_id();
        let h2 = r.new_handle();
        assert_ne!(h1, h2);
        assert_ne!(w1, w2);
        assert_eq!(ReadHandle::from_raw(h2.as_raw()), h2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_seek_moves_the_window_and_a_steady_read_keeps_it() {
        const P: u32 = 16 * 1024;
        let g = Geometry::new(P, u64::from(P) * 100).unwrap();
        let min = u64::from(P) * 4;
        let mut r = Reader::new(0, ReaderId(1), 0, min);
        let now = Instant::now();
        let w = r.advance(&g, now, 0..u64::from(P), g.total_length(), min, min);
        assert_eq!(w, Some(1..5));
        // The same window again: nothing to tell the picker.
        assert_eq!(
            r.advance(&g, now, 0..u64::from(P), g.total_length(), min, min),
            None
        );
        // A seek into piece 50: the reader goes on in it, so the window starts there.
        let at = u64::from(P) * 50;
        let w = r.advance(&g, now, at..at + 100, g.total_length(), min, min);
        assert_eq!(w, Some(50..55));
    }
}
