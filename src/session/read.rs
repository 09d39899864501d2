//! Reads: what an open file handle's read does, from stating its wants to copying bytes out.
//!
//! A read states what it needs in the picker (its pieces as urgent, under a want of its own so
//! parallel reads of one handle never overwrite each other), pokes the peers, and waits until
//! memory holds all of them. The handle's reader (`readers.rs`) carries the readahead window:
//! it follows the reader's consumption rate while reads are sequential and snaps back on a
//! seek, and the old window stops mattering at once because `set_reader` replaces it.

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use super::readers::{ReadHandle, Reader};
use super::{Session, Shared, disk_io};
use crate::picker::{ReaderId, ReaderWant};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("the mount is shutting down")]
    Shutdown,
    #[error("no such file in the torrent")]
    NoSuchFile,
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
            let head = g.pieces_in(f.offset, f.length.min(MEDIA_PREFETCH));
            let tail_len = f.length.min(MEDIA_PREFETCH);
            let tail = g.pieces_in(f.offset + f.length - tail_len, tail_len);
            let tail_id = st.readers.want_id();
            st.picker.set_reader(
                window_id,
                ReaderWant {
                    urgent: 0..0,
                    readahead: head.clone(),
                    rate: 0,
                },
            );
            st.picker.set_reader(
                tail_id,
                ReaderWant {
                    urgent: 0..0,
                    readahead: tail,
                    rate: 0,
                },
            );
            reader.tail_id = Some(tail_id);
            reader.readahead = head;
            st.start_reading();
            st.peers.refill_all();
        }
        st.readers.insert(handle, reader);
        handle
    }

    pub fn close_reader(&self, handle: ReadHandle) {
        let mut st = self.shared.lock();
        if let Some(r) = st.readers.remove(handle) {
            st.picker.remove_reader(r.window_id);
            if let Some(t) = r.tail_id {
                st.picker.remove_reader(t);
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
            // would evict each other before being read. More readers, smaller windows.
            let share = cfg.cache_bytes / 2 / st.readers.count().max(1) as u64;
            let max = cfg.max_readahead_bytes.min(share);
            let read = start..start + len;
            let file = f.offset..file_end;
            let ahead = st.reader_moved(handle, read, file, cfg.readahead_bytes, max);
            if let Some(ahead) = ahead {
                // The window's pieces on disk come into memory ahead of the reader.
                disk_io::start_loads(s, &mut st, ahead.filter_map(|i| s.geometry.piece(i)));
            }
            st.readers.want_id()
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
                        st.residency.get(p)
                    })
                    .collect();
                if held.is_none() && !asked {
                    asked = true;
                    if let Some(r) = st.readers.get_mut(handle) {
                        r.stalls += 1;
                    }
                    st.readers.wait_started(urgent);
                    st.picker.set_reader(
                        urgent,
                        ReaderWant {
                            urgent: pieces.clone(),
                            readahead: 0..0,
                            rate: 0,
                        },
                    );
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
                return Ok(copy_out(s, &held, pieces.start, start, len));
            }
            tokio::select! {
                _ = verified.changed() => {}
                _ = shutdown.changed() => {}
            }
        }
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
        st.readers.wait_ended(self.id);
    }
}
