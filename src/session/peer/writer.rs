//! A peer connection's sending side: the writer task that batches queued messages onto the
//! socket under the upload cap, and the answer to a block request (which may come later, from
//! a disk load).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::mpsc;

use crate::session::Shared;
use crate::session::stream::WriteHalf;
use crate::wire::{BlockRef, Message, MessageWriter, WireError};

/// What answering a request needs, apart from the peer task (a disk load answers later).
pub(super) struct Upload {
    pub(super) shared: Arc<Shared>,
    pub(super) out: mpsc::UnboundedSender<Message>,
    pub(super) queued: Arc<AtomicUsize>,
    /// The peer speaks the Fast extension (BEP 6): what we cannot serve is rejected.
    pub(super) fast: bool,
}

impl Upload {
    /// Queues the requested block of `piece` (verified data) for the writer.
    pub(super) fn send(&self, r: BlockRef, piece: &bytes::Bytes) {
        let start = r.begin as usize;
        let chunk = piece.slice(start..start + r.length as usize);
        self.shared
            .uploaded
            .fetch_add(u64::from(r.length), Ordering::Relaxed);
        self.queued.fetch_add(chunk.len(), Ordering::Relaxed);
        let _ = self.out.send(Message::Piece {
            index: r.index,
            begin: r.begin,
            data: chunk,
        });
    }

    /// A request we cannot serve after all (the disk load failed): a Fast peer is told.
    pub(super) fn reject(&self, r: BlockRef) {
        if self.fast {
            let _ = self.out.send(Message::RejectRequest(r));
        }
    }
}

/// Aborts a task when dropped.
pub(super) struct AbortOnDrop(pub(super) tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends queued messages, batching what is ready into one write.
pub(super) async fn write_loop(
    mut w: MessageWriter<WriteHalf>,
    mut rx: mpsc::UnboundedReceiver<Message>,
    queued_upload: Arc<AtomicUsize>,
    sent_total: Arc<AtomicU64>,
    shared: Arc<Shared>,
) -> Result<(), WireError> {
    let mut batch = Vec::new();
    while let Some(m) = rx.recv().await {
        batch.push(m);
        while batch.len() < 64 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let sent: usize = batch
            .iter()
            .map(|m| match m {
                Message::Piece { data, .. } => data.len(),
                _ => 0,
            })
            .sum();
        if sent > 0 {
            shared.up_limit.acquire(sent).await;
        }
        w.send_many(&batch).await?;
        queued_upload.fetch_sub(sent, Ordering::Relaxed);
        sent_total.fetch_add(sent as u64, Ordering::Relaxed);
        batch.clear();
    }
    Ok(())
}
