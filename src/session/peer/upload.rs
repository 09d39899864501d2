//! Serving the peer: our choke decision, and the answer to each of its requests — the block
//! (from memory, or loaded from disk), or with the Fast extension (BEP 6) a `reject_request`
//! for what we will not serve, so the peer asks someone else at once instead of timing out.
//!
//! Block data queued for the socket is bounded (about two seconds of the peer's rate); a
//! request that comes while it is full waits as a request (a few bytes) and is served as the
//! writer drains, up to the `reqq` we announced. Only past that is a request refused.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::Notify;

use super::extended::OUR_REQQ;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::writer::UploadGauge;

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
/// Block data queued for all peers together: with 80 peers downloading from us, uploads add
/// at most this to the memory the cache budget allows.
const MAX_QUEUED_UPLOAD_ALL: usize = 16 * 1024 * 1024;

/// Our side of the peer's downloading from us.
#[derive(Default)]
pub(super) struct UploadSide {
    /// We let it download from us (the choker's decision).
    unchoked: bool,
    /// It says it wants our pieces.
    pub(super) interested: bool,
    /// Bytes of `piece` messages queued for the writer and not yet written (this peer's, and
    /// every peer's together).
    queued: UploadGauge,
    /// Requests waiting for room in the queue, oldest first.
    waiting: VecDeque<BlockRef>,
    /// Rung by the writer when it has written block data: room may have come.
    drained: Arc<Notify>,
}

impl UploadSide {
    /// `all`: the session's count of block bytes queued for every peer.
    pub(super) fn new(all: Arc<AtomicUsize>) -> Self {
        Self {
            queued: UploadGauge {
                peer: Arc::default(),
                all,
            },
            ..Self::default()
        }
    }

    /// The counter the writer task takes written block bytes off.
    pub(super) fn queued_counter(&self) -> UploadGauge {
        self.queued.clone()
    }

    /// What the writer rings when it has written block data.
    pub(super) fn drained(&self) -> Arc<Notify> {
        self.drained.clone()
    }

    /// Requests are waiting for room.
    pub(super) fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Whether enough is queued for a peer taking `rate` bytes/s from us.
    fn full(&self, rate: f64) -> bool {
        let limit = ((rate * QUEUE_SECONDS) as usize).clamp(MIN_QUEUED_UPLOAD, MAX_QUEUED_UPLOAD);
        self.queued.peer.load(Ordering::Relaxed) >= limit
            || self.queued.all.load(Ordering::Relaxed) >= MAX_QUEUED_UPLOAD_ALL
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
        // Choked (always, with `--no-upload`): BEP 3 lets us drop the request; with Fast the
        // peer is told. More waiting than the `reqq` we announced: the same.
        if !self.upload.unchoked || self.upload.waiting.len() >= OUR_REQQ as usize {
            self.reject(r);
            return Ok(());
        }
        if self.upload.has_waiting() || self.upload.full(self.rates.up()) {
            self.upload.waiting.push_back(r);
            return Ok(());
        }
        self.serve(r);
        Ok(())
    }

    /// Serves waiting requests while there is room in the queue.
    pub(super) fn serve_waiting(&mut self) {
        while !self.upload.full(self.rates.up()) {
            let Some(r) = self.upload.waiting.pop_front() else {
                return;
            };
            self.serve(r);
        }
    }

    /// The peer cancelled `r`: dropped if it still waits (a queued block goes out anyway).
    pub(super) fn on_cancel(&mut self, r: BlockRef) {
        self.upload.waiting.retain(|w| *w != r);
    }

    /// Queues the block `r` asks for (a checked request), from memory or from disk.
    fn serve(&mut self, r: BlockRef) {
        let Some(p) = self.shared.geometry.piece(r.index) else {
            return;
        };
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
                upload.queued.add(r.length as usize);
                let load = async move {
                    let data = crate::session::disk_io::load(&upload.shared, p).await;
                    upload.queued.sub(r.length as usize);
                    match data {
                        Some(data) => upload.send(r, &data),
                        None => upload.reject(r),
                    }
                };
                tokio::spawn(tracing::Instrument::in_current_span(load));
            }
            // Announced once, no longer held (see `residency`).
            None => self.reject(r),
        }
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
    /// Choking voids the requests still waiting (BEP 3; with Fast each is rejected); blocks
    /// already queued for the socket go out.
    pub(super) fn set_unchoked(&mut self, unchoke: bool) {
        if unchoke != self.upload.unchoked {
            self.upload.unchoked = unchoke;
            if !unchoke {
                for r in std::mem::take(&mut self.upload.waiting) {
                    self.reject(r);
                }
            }
            self.send(if unchoke {
                Message::Unchoke
            } else {
                Message::Choke
            });
        }
    }
}
