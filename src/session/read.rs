//! Reads: what an open file handle's read does, from stating its wants to copying bytes out.
//!
//! A read states what it needs in the picker (its pieces as urgent, under a want of its own so
//! parallel reads of one handle never overwrite each other), pokes the peers, and waits until
//! memory holds all of them. A handle's waiting reads come in the order the reader needs them:
//! the one it waits on first, the kernel's readahead behind it after (`restate_waits`). The
//! handle's reader (`readers.rs`) carries the readahead window: it follows the reader's
//! consumption rate while reads are sequential and snaps back on a seek, and the old window
//! stops mattering at once because `set_reader` replaces it. Opening a media file wants what a
//! player reads first (`open_reader`, `probe_media`, `end_opening`).

use std::collections::BTreeMap;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use super::media::{Index, find_index, is_media};
use super::readers::{ReadHandle, Reader, Wait};
use super::state::State;
use super::{Session, Shared, disk_io};
use crate::picker::{ReaderId, ReaderWant};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("the mount is shutting down")]
    Shutdown,
    #[error("no such file in the torrent")]
    NoSuchFile,
}

/// How much of a media file's head is fetched as soon as it is opened.
const MEDIA_HEAD: u64 = 2 * 1024 * 1024;

/// How much of a media file's end is fetched at open, before its head says where the index is
/// (players jump there second: an mkv's cues, the `moov` of an mp4 written without faststart).
/// Little: an mp4's head soon says where its index really starts, and what is fetched beyond
/// it costs the first frame as much as what it needs.
const MEDIA_TAIL: u64 = 256 * 1024;

/// The most of an mp4's index, from its `moov` on, fetched ahead of the player; a quarter of the
/// cache at most too.
const MEDIA_INDEX_MAX: u64 = 64 * 1024 * 1024;

/// The urgent rank a waiting read the reader may not wait on yet starts at (see
/// `restate_waits`): after every want of what a reader needs first, a read or a media file's
/// index, which span fewer pieces.
const AFTER_FIRST_NEEDS: u32 = 1 << 16;

/// A media file's index: urgent from the open on, after the head's first piece (by index)
/// and before anything else of the head. The player needs both before its first frame.
fn index_want(pieces: Range<u32>) -> ReaderWant {
    ReaderWant {
        urgent: pieces,
        readahead: 0..0,
        rate: 0,
        lead: 0,
    }
}

impl Session {
    /// A new reader for `file`; each open file handle gets its own. Opening a media file
    /// starts fetching its head and tail at once, in the order a player reads them: the first
    /// piece, the tail, the rest of the head. The first read of the head narrows the tail down
    /// to the index (`probe_media`).
    pub fn open_reader(&self, file: usize) -> ReadHandle {
        let s = &self.shared;
        let mut st = s.lock();
        let handle = st.readers.new_handle();
        let Some(f) = s.torrent.info.files.get(file) else {
            return handle;
        };
        let window_id = st.readers.want_id();
        let mut reader = Reader::new(file, window_id, f.offset, s.config.readahead_bytes);
        if is_media(&f.path) && f.length > 0 {
            let g = &s.geometry;
            let head_len = f.length.min(MEDIA_HEAD);
            let head = g.pieces_in(f.offset, head_len);
            let tail_len = f.length.min(MEDIA_TAIL);
            let tail = g.pieces_in(f.offset + f.length - tail_len, tail_len);
            let head_id = st.readers.want_id();
            let tail_id = st.readers.want_id();
            // The first piece is what the player reads first: urgent, before the index.
            let first = head.start..(head.start + 1).min(head.end);
            let head_want = ReaderWant {
                urgent: first.clone(),
                readahead: first.end..head.end,
                rate: 0,
                lead: 0,
            };
            st.set_reader(head_id, head_want);
            st.set_reader(tail_id, index_want(tail));
            reader.head_id = Some(head_id);
            reader.tail_id = Some(tail_id);
            reader.opening = Some((f.offset + head_len, f.offset + f.length - tail_len));
            reader.probe_pending = true;
            st.start_reading();
            st.peers.refill_all();
        }
        st.readers.insert(handle, reader);
        st.readers_changed();
        handle
    }

    pub fn close_reader(&self, handle: ReadHandle) {
        let mut st = self.shared.lock();
        if let Some(r) = st.readers.remove(handle) {
            st.readers_changed();
            st.remove_reader(r.window_id);
            for id in [r.head_id, r.tail_id].into_iter().flatten() {
                st.remove_reader(id);
            }
        }
    }

    /// `len` bytes of `file` from `offset` (fewer only at the end of the file), once every piece
    /// they span is downloaded and verified.
    pub async fn read(
        &self,
        handle: ReadHandle,
        file: usize,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, ReadError> {
        self.read_starts();
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
            st.start_reading();
            let cfg = &s.config;
            // The readers' windows together take at most half the cache: beyond that they
            // would evict each other before being read. More readers, smaller windows; the
            // readers of every torrent sharing the memory budget count.
            let readers = st.residency.readers_sharing_memory().max(1) as u64;
            let share = st.residency.memory_budget() / 2 / readers;
            let max = cfg.max_readahead_bytes.min(share);
            let read = start..start + len;
            let file = f.offset..file_end;
            let jump = st
                .readers
                .get_mut(handle)
                .is_some_and(|r| r.is_jump(start, len));
            end_opening(&mut st, handle, start);
            let ahead = st.reader_moved(handle, read, file, cfg.readahead_bytes, max);
            if let Some(ahead) = ahead {
                // The window's pieces on disk come into memory ahead of the reader.
                disk_io::start_loads(s, &mut st, ahead.filter_map(|i| s.geometry.piece(i)));
            }
            (st.readers.want_id(), jump)
        };
        let (urgent, jump) = urgent;
        // Drops the read's want on every exit, including cancellation.
        let _guard = WaitGuard {
            shared: s,
            handle,
            key: (start, urgent),
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
                        st.residency.get(p)
                    })
                    .collect();
                if held.is_none() && !asked {
                    asked = true;
                    st.readers.wait_started(urgent);
                    match st.readers.get_mut(handle) {
                        Some(r) => {
                            let key = (start, urgent);
                            let wait = Wait {
                                pieces: pieces.clone(),
                                jump,
                                waited_on: false,
                            };
                            r.waiting.insert(key, wait);
                            let waited_on = anchor(&r.waiting) == Some(key);
                            if waited_on && let Some(w) = r.waiting.get_mut(&key) {
                                w.waited_on = true;
                                r.stalls += 1;
                            }
                            tracing::trace!(
                                offset,
                                len,
                                jump,
                                waited_on,
                                waiting = r.waiting.len(),
                                "read waits"
                            );
                            restate_waits(&mut st, handle);
                        }
                        // A handle the session does not know: this read alone.
                        None => st.set_reader(
                            urgent,
                            ReaderWant {
                                urgent: pieces.clone(),
                                readahead: 0..0,
                                rate: 0,
                                lead: 0,
                            },
                        ),
                    }
                    st.peers.refill_all();
                }
                // After the urgent want, so loaded pieces are kept even in a full store.
                if held.is_none() {
                    let wanted = pieces.clone().filter_map(|i| s.geometry.piece(i));
                    let all_on_disk = disk_io::start_loads(s, &mut st, wanted);
                    if !all_on_disk && st.peers.is_empty() {
                        s.redial.notify_one();
                    }
                }
                held
            };
            if let Some(held) = held {
                self.probe_media(handle, file, &held, pieces.start);
                return Ok(copy_out(s, &held, pieces.start, start, len));
            }
            tokio::select! {
                _ = verified.changed() => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// The first read of a media file's head (`held`, from piece `first` on): where the head
    /// says the index is decides what of the end is fetched. The index in the head: nothing
    /// (the player never jumps to the end first). After the media data: that, from its start
    /// on, instead of a guess at the tail. Unknown: the tail stays. Once per handle.
    fn probe_media(&self, handle: ReadHandle, file: usize, held: &[Bytes], first: u32) {
        let s = &self.shared;
        let g = &s.geometry;
        let Some(f) = s.torrent.info.files.get(file) else {
            return;
        };
        if g.piece_at(f.offset).map(|p| p.get()) != Some(first) {
            return;
        }
        {
            let mut st = s.lock();
            let Some(r) = st.readers.get_mut(handle).filter(|r| r.file == file) else {
                return;
            };
            if !std::mem::take(&mut r.probe_pending) {
                return;
            }
        }
        let held_len: u64 = held.iter().map(|b| b.len() as u64).sum();
        let held_end = (u64::from(first) * u64::from(g.piece_length()) + held_len)
            .min(f.offset + f.length)
            .min(f.offset + MEDIA_HEAD);
        let head = copy_out(s, held, first, f.offset, held_end - f.offset);
        let index = find_index(&head, f.length);
        let path = f.path.join("/");
        let mut st = s.lock();
        let Some(r) = st.readers.get_mut(handle) else {
            return;
        };
        let Some(tail_id) = r.tail_id else {
            return;
        };
        match index {
            Index::InHead(at) => {
                tracing::debug!(%path, moov = at, "media index in the head: no tail fetched");
                r.tail_id = None;
                if let Some((_, tail)) = &mut r.opening {
                    *tail = f.offset + f.length;
                }
                st.remove_reader(tail_id);
            }
            Index::After(at) => {
                let len = f
                    .length
                    .saturating_sub(at)
                    .min(MEDIA_INDEX_MAX.min(s.config.cache_bytes / 4));
                let index = g.pieces_in(f.offset + at, len);
                tracing::debug!(%path, from = at, len, ?index, "media index after the data");
                if let Some((_, tail)) = &mut r.opening {
                    *tail = f.offset + at;
                }
                st.set_reader(tail_id, index_want(index));
                st.peers.refill_all();
            }
            Index::Unknown => {
                tracing::debug!(%path, head = head.len(), "media index unknown: tail kept");
            }
        }
    }
}

/// A media reader's first read neither in its head nor at its tail (a frame past the head, a
/// seek target): the player has opened the file, so what was fetched for the opening is no
/// longer wanted ahead of that read.
fn end_opening(st: &mut State, handle: ReadHandle, at: u64) {
    let Some(r) = st.readers.get_mut(handle) else {
        return;
    };
    let Some((head_end, tail_start)) = r.opening else {
        return;
    };
    if at < head_end || at >= tail_start {
        return;
    }
    r.opening = None;
    let ids = [r.head_id.take(), r.tail_id.take()];
    for id in ids.into_iter().flatten() {
        st.remove_reader(id);
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

/// The read of a handle the reader waits on, of those `waiting`: the newest seek among them,
/// else the lowest (the kernel sends its readahead as reads right behind the one the reader
/// needs, at once, and after a seek the reads before it wait for nobody).
fn anchor(waiting: &BTreeMap<(u64, ReaderId), Wait>) -> Option<(u64, ReaderId)> {
    let newest_jump = (waiting.iter())
        .filter(|(_, w)| w.jump)
        .map(|(k, _)| *k)
        .max_by_key(|&(_, id)| id);
    newest_jump.or_else(|| waiting.keys().next().copied())
}

/// A handle's reads waiting for data, as urgent wants in the picker (each holds up a FUSE
/// request), in the order the reader needs them: first the one it waits on (`anchor`), then
/// the others by their distance from it in pieces, after what readers need first (a media
/// file's index: `AFTER_FIRST_NEEDS`). The anchor itself comes after those too when the
/// reader was not seen waiting on it (the kernel's readahead, next in line once the read
/// before it was served).
fn restate_waits(st: &mut State, handle: ReadHandle) {
    let Some(r) = st.readers.get_mut(handle) else {
        return;
    };
    let Some((_, anchor_id)) = anchor(&r.waiting) else {
        return;
    };
    let from = r.waiting.iter().find(|((_, id), _)| *id == anchor_id);
    let from = from.map_or(0, |(_, w)| w.pieces.start);
    let wants: Vec<(ReaderId, ReaderWant)> = (r.waiting.iter())
        .map(|(&(_, id), w)| {
            let lead = match id == anchor_id {
                true if w.waited_on || w.jump => 0,
                true => AFTER_FIRST_NEEDS,
                false => AFTER_FIRST_NEEDS.saturating_add(w.pieces.start.abs_diff(from)),
            };
            let want = ReaderWant {
                urgent: w.pieces.clone(),
                readahead: 0..0,
                rate: 0,
                lead,
            };
            (id, want)
        })
        .collect();
    st.set_readers(wants);
}

struct WaitGuard<'a> {
    shared: &'a Shared,
    handle: ReadHandle,
    key: (u64, ReaderId),
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        let id = self.key.1;
        st.remove_reader(id);
        st.readers.wait_ended(id);
        if let Some(r) = st.readers.get_mut(self.handle)
            && r.waiting.remove(&self.key).is_some()
        {
            restate_waits(&mut st, self.handle);
            st.peers.refill_all();
        }
    }
}
