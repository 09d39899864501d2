//! Reads: one reader per open file handle, with its own position and readahead window.
//!
//! A read states what it needs in the picker (its pieces as urgent, under a picker reader of its
//! own so parallel reads of one handle never overwrite each other), pokes the peers, and waits
//! until the store holds all of them. The handle's reader carries the readahead window: it follows
//! the reader's consumption rate while reads are sequential (`window.rs`) and snaps back on a
//! seek, and the old window stops mattering at once because `set_reader` replaces it.

use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use super::window::Pace;
use super::{Session, Shared, State};
use crate::picker::{ReaderId, ReaderWant};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("the mount is shutting down")]
    Shutdown,
    #[error("no such file in the torrent")]
    NoSuchFile,
}

pub(crate) struct Reader {
    file: usize,
    picker_id: ReaderId,
    /// Media files: the tail fetched at open (players read the index there before the first
    /// frame), kept wanted until close.
    tail_id: Option<ReaderId>,
    /// Torrent offset right after the previous read: a read starting there is sequential.
    next: u64,
    window: u64,
    /// Recent sequential reads: the window follows their rate.
    pace: Pace,
    readahead: Range<u32>,
}

/// How much of a media file's head and tail is fetched as soon as it is opened.
const MEDIA_PREFETCH: u64 = 2 * 1024 * 1024;

/// Files players open: they read the header, then the index at the end (mp4 `moov`, mkv cues),
/// then the first frames.
fn is_media(path: &[String]) -> bool {
    const EXTENSIONS: &[&str] = &[
        "mkv", "mp4", "m4v", "avi", "webm", "mov", "wmv", "flv", "ts", "m2ts", "mpg", "mpeg",
        "ogv", "3gp", "mp3", "flac", "m4a", "ogg", "opus", "wav", "aac",
    ];
    path.last()
        .and_then(|name| name.rsplit_once('.'))
        .is_some_and(|(_, ext)| EXTENSIONS.iter().any(|e| ext.eq_ignore_ascii_case(e)))
}

impl Session {
    /// A new reader for `file`; each open file handle gets its own. Opening a media file
    /// starts fetching its head and tail at once.
    pub fn open_reader(&self, file: usize) -> u64 {
        let s = &self.shared;
        let mut st = s.lock();
        st.next_reader += 1;
        let handle = st.next_reader;
        let Some(f) = s.torrent.info.files.get(file) else {
            return handle;
        };
        let mut reader = Reader {
            file,
            picker_id: ReaderId(handle),
            tail_id: None,
            next: f.offset,
            window: s.config.readahead_bytes,
            pace: Pace::default(),
            readahead: 0..0,
        };
        if is_media(&f.path) && f.length > 0 {
            let g = &s.geometry;
            let head = g.pieces_in(f.offset, f.length.min(MEDIA_PREFETCH));
            let tail_len = f.length.min(MEDIA_PREFETCH);
            let tail = g.pieces_in(f.offset + f.length - tail_len, tail_len);
            st.next_reader += 1;
            let tail_id = ReaderId(u64::MAX - st.next_reader);
            st.picker.set_reader(
                reader.picker_id,
                ReaderWant {
                    urgent: 0..0,
                    readahead: head.clone(),
                },
            );
            st.picker.set_reader(
                tail_id,
                ReaderWant {
                    urgent: 0..0,
                    readahead: tail,
                },
            );
            reader.tail_id = Some(tail_id);
            reader.readahead = head;
            start_reading(s, &mut st);
            Shared::refill_all(&st);
        }
        st.readers.insert(handle, reader);
        handle
    }

    pub fn close_reader(&self, handle: u64) {
        let mut st = self.shared.lock();
        if let Some(r) = st.readers.remove(&handle) {
            st.picker.remove_reader(r.picker_id);
            if let Some(t) = r.tail_id {
                st.picker.remove_reader(t);
            }
        }
    }

    /// `len` bytes of `file` from `offset` (fewer only at the end of the file), once every piece
    /// they span is downloaded and verified.
    pub async fn read(
        &self,
        handle: u64,
        file: usize,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, ReadError> {
        let s = &self.shared;
        let f = s
            .torrent
            .info
            .files
            .get(file)
            .ok_or(ReadError::NoSuchFile)?;
        if offset >= f.length || len == 0 {
            return Ok(Bytes::new());
        }
        let len = u64::from(len).min(f.length - offset);
        let start = f.offset + offset;
        let pieces = s.geometry.pieces_in(start, len);
        let file_end = f.offset + f.length;

        let mut verified = s.verified.subscribe();
        let mut shutdown = s.shutdown.subscribe();
        let urgent = {
            let mut st = s.lock();
            start_reading(s, &mut st);
            move_window(s, &mut st, handle, start, len, file_end);
            st.next_reader += 1;
            ReaderId(u64::MAX - st.next_reader)
        };
        // Drops the read's urgent want on every exit, including cancellation.
        let _guard = UrgentGuard {
            shared: s,
            id: urgent,
        };
        let mut asked = false;
        loop {
            verified.borrow_and_update();
            if *shutdown.borrow_and_update() {
                return Err(ReadError::Shutdown);
            }
            let held = {
                let mut st = s.lock();
                let held: Option<Vec<_>> = pieces
                    .clone()
                    .map(|i| {
                        let p = s.geometry.piece(i)?;
                        st.store.get(p)
                    })
                    .collect();
                if held.is_none() && !asked {
                    asked = true;
                    st.waits.insert(urgent, std::time::Instant::now());
                    st.picker.set_reader(
                        urgent,
                        ReaderWant {
                            urgent: pieces.clone(),
                            readahead: 0..0,
                        },
                    );
                    Shared::refill_all(&st);
                }
                // After the urgent want, so loaded pieces are kept even in a full store.
                if held.is_none() {
                    let wanted = pieces.clone().filter_map(|i| s.geometry.piece(i));
                    let all_on_disk = super::disk::start_loads(s, &mut st, wanted);
                    if !all_on_disk && st.peers.is_empty() {
                        s.redial.notify_one();
                    }
                }
                held
            };
            if let Some(held) = held {
                return Ok(copy_out(s, &held, pieces.start, start, len));
            }
            tokio::select! {
                _ = verified.changed() => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

/// The first read (or a media open) lets background fetching begin; until then a mount only
/// browsed downloads nothing.
fn start_reading(s: &Shared, st: &mut State) {
    if !st.reading_started {
        st.reading_started = true;
        super::verify::update_background(s, st);
    }
}

/// Where one open file's reader stands (status and tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReaderStatus {
    /// The file's path in the torrent, `/`-joined.
    pub path: String,
    /// Offset in the file right after the last read.
    pub position: u64,
    /// Offset in the file where the readahead window starts, and its size in bytes.
    pub window_start: u64,
    pub window: u64,
}

pub(crate) fn reader_status(s: &Shared, st: &State) -> Vec<ReaderStatus> {
    let mut out: Vec<(u64, ReaderStatus)> = st
        .readers
        .iter()
        .filter_map(|(&h, r)| {
            let f = s.torrent.info.files.get(r.file)?;
            let window_start = s
                .geometry
                .piece(r.readahead.start)
                .map_or(r.next, |p| s.geometry.piece_offset(p).max(r.next));
            Some((
                h,
                ReaderStatus {
                    path: f.path.join("/"),
                    position: r.next.saturating_sub(f.offset),
                    window_start: window_start.saturating_sub(f.offset),
                    window: r.window,
                },
            ))
        })
        .collect();
    out.sort_by_key(|(h, _)| *h);
    out.into_iter().map(|(_, r)| r).collect()
}

/// Sizes the window from the reader's consumption rate on a sequential read (see `window`),
/// resets it on a seek, and tells the picker (and the peers) only when the window's pieces
/// changed: the old window's pieces stop counting at once.
fn move_window(s: &Arc<Shared>, st: &mut State, handle: u64, start: u64, len: u64, file_end: u64) {
    let cfg = &s.config;
    // Readahead beyond half the cache would evict itself before it is read.
    let max = cfg.max_readahead_bytes.min(cfg.cache_bytes / 2);
    let Some(r) = st.readers.get_mut(&handle) else {
        return;
    };
    // Kernel readahead sends a few reads at once, slightly out of order: near the last
    // position still counts as sequential.
    let now = tokio::time::Instant::now();
    if start.abs_diff(r.next) > len.max(256 * 1024) {
        r.pace.reset();
    }
    r.pace.record(now, len);
    r.window = r.pace.window(now, cfg.readahead_bytes, max);
    r.next = start + len;
    let ahead_end = (start + len).saturating_add(r.window).min(file_end);
    let first = s.geometry.pieces_in(start, len).end;
    let window = s
        .geometry
        .pieces_in(start + len, ahead_end.saturating_sub(start + len));
    let readahead = first.min(window.end)..window.end;
    if readahead != r.readahead {
        r.readahead = readahead.clone();
        let id = r.picker_id;
        st.picker.set_reader(
            id,
            ReaderWant {
                urgent: 0..0,
                readahead: readahead.clone(),
            },
        );
        Shared::refill_all(st);
        // The window's pieces on disk come into memory ahead of the reader, as peers' would.
        let ahead = readahead.filter_map(|i| s.geometry.piece(i));
        super::disk::start_loads(s, st, ahead);
    }
}

/// The requested bytes out of the pieces that hold them; a read inside one piece shares the
/// piece's buffer instead of copying it.
fn copy_out(s: &Shared, held: &[Bytes], first_piece: u32, start: u64, len: u64) -> Bytes {
    let pl = u64::from(s.geometry.piece_length());
    if let [only] = held {
        let from = (start - u64::from(first_piece) * pl) as usize;
        return only.slice(from..from + len as usize);
    }
    let mut out = BytesMut::with_capacity(len as usize);
    let mut pos = start;
    let end = start + len;
    for (i, data) in held.iter().enumerate() {
        let piece_start = (u64::from(first_piece) + i as u64) * pl;
        let from = (pos - piece_start) as usize;
        let to = ((end - piece_start) as usize).min(data.len());
        out.extend_from_slice(&data[from..to]);
        pos = piece_start + to as u64;
    }
    debug_assert_eq!(out.len() as u64, len);
    out.freeze()
}

struct UrgentGuard<'a> {
    shared: &'a Shared,
    id: ReaderId,
}

impl Drop for UrgentGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.picker.remove_reader(self.id);
        st.waits.remove(&self.id);
    }
}
