//! Serving the peer: our choke decision, and the answer to each of its requests — the block
//! (from memory, or loaded from disk), or with the Fast extension (BEP 6) a `reject_request`
//! for what we will not serve, so the peer asks someone else at once instead of timing out.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::writer::Upload;
use super::{Peer, PeerError};
use crate::wire::{BlockRef, Message};

/// Block data queued for one peer's socket before its further requests are refused: about
/// [`QUEUE_SECONDS`] of what it takes from us, within these bounds. A peer that requests faster
/// than it reads cannot make us buffer without bound, and a slow one does not tie up memory
/// (and the socket, ahead of our own requests) with data it will take a minute to read.
const MIN_QUEUED_UPLOAD: usize = 256 * 1024;
pub(super) const MAX_QUEUED_UPLOAD: usize = 4 * 1024 * 1024;
const QUEUE_SECONDS: f64 = 2.0;

/// Our side of the peer's downloading from us.
#[derive(Default)]
pub(super) struct UploadSide {
    /// We let it download from us (the choker's decision).
    unchoked: bool,
    /// It says it wants our pieces.
    pub(super) interested: bool,
    /// Bytes of `piece` messages queued for the writer and not yet written.
    queued: Arc<AtomicUsize>,
}

impl UploadSide {
    /// The counter the writer task takes written block bytes off.
    pub(super) fn queued_counter(&self) -> Arc<AtomicUsize> {
        self.queued.clone()
    }

    /// Whether enough is queued for a peer taking `rate` bytes/s from us.
    fn full(&self, rate: f64) -> bool {
        let limit = ((rate * QUEUE_SECONDS) as usize).clamp(MIN_QUEUED_UPLOAD, MAX_QUEUED_UPLOAD);
        self.queued.load(Ordering::Relaxed) >= limit
    }
}

impl Peer {
    pub(super) fn on_request(&mut self, r: BlockRef) -> Result<(), PeerError> {
        let g = &self.shared.geometry;
        let p = g
            .piece(r.index)
            .ok_or(PeerError::Protocol("request: index out of range"))?;
        if r.length == 0
            || r.length > 128 * 1024
            || u64::from(r.begin) + u64::from(r.length) > u64::from(g.piece_len(p))
        {
            return Err(PeerError::Protocol("request: block out of range"));
        }
        // Choked (always, with `--no-upload`) or too much queued: BEP 3 lets us drop the
        // request; with Fast the peer is told.
        if !self.upload.unchoked || self.upload.full(self.rates.up()) {
            self.reject(r);
            return Ok(());
        }
        let (data, on_disk) = {
            let st = self.shared.lock();
            (st.residency.peek(p), st.residency.on_disk(p))
        };
        tracing::trace!(addr = %self.addr, ?r, have = data.is_some(), on_disk, "request");
        let upload = Upload {
            shared: self.shared.clone(),
            out: self.out.clone(),
            queued: self.upload.queued.clone(),
            fast: self.ext.fast,
        };
        match data {
            Some(data) => upload.send(r, &data),
            None if on_disk => {
                // Counted as queued while the disk is read, so a flood of requests for disk
                // pieces is bounded like any other.
                upload
                    .queued
                    .fetch_add(r.length as usize, Ordering::Relaxed);
                tokio::spawn(async move {
                    let data = crate::session::disk_io::load(&upload.shared, p).await;
                    upload
                        .queued
                        .fetch_sub(r.length as usize, Ordering::Relaxed);
                    match data {
                        Some(data) => upload.send(r, &data),
                        None => upload.reject(r),
                    }
                });
            }
            // Announced once, no longer held (see `residency`).
            None => self.reject(r),
        }
        Ok(())
    }

    /// Tells a Fast peer we will not serve `r`; without Fast, BEP 3 has us drop it silently.
    pub(super) fn reject(&self, r: BlockRef) {
        if self.ext.fast {
            tracing::trace!(addr = %self.addr, ?r, "rejecting request");
            self.send(Message::RejectRequest(r));
        }
    }

    /// Our choke decision for this peer, made by the session's choker.
    ///
    /// Requests are answered (queued for the writer) as they arrive, so none is pending when
    /// we choke: those that arrive after it are rejected (Fast) or dropped.
    pub(super) fn set_unchoked(&mut self, unchoke: bool) {
        if unchoke != self.upload.unchoked {
            self.upload.unchoked = unchoke;
            self.send(if unchoke {
                Message::Unchoke
            } else {
                Message::Choke
            });
        }
    }
}
