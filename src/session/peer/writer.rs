//! A peer connection's sending side: the writer task, and the answer to a block request (which
//! may come later, from a disk load).
//!
//! Two queues: control messages (our requests and cancels, `have`, choke, keep-alive,
//! extension messages) and block data. Control always goes first: our requests never wait
//! behind our uploads, and while block data waits for the upload cap, control keeps flowing.
//! The writer counts the requests it has written, so the peer task starts a request's timer
//! when it reached the socket, not when it was queued.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::ratelimit::RateLimit;
use crate::session::Shared;
use crate::session::stream::WriteHalf;
use crate::wire::{BlockRef, Message, MessageWriter, WireError};

/// Block data the writer puts in one write, at most.
const DATA_BATCH: usize = 4 * 16 * 1024;
/// Control messages in one write, at most.
const CONTROL_BATCH: usize = 64;

/// The peer task's handle on its writer: where each kind of message goes.
#[derive(Clone)]
pub(super) struct Outbox {
    control: mpsc::UnboundedSender<Message>,
    data: mpsc::UnboundedSender<Message>,
}

/// The writer's ends of the queues, and what it counts.
pub(super) struct Inbox {
    control: mpsc::UnboundedReceiver<Message>,
    data: mpsc::UnboundedReceiver<Message>,
}

/// A new pair of queues.
pub(super) fn outbox() -> (Outbox, Inbox) {
    let (control, control_rx) = mpsc::unbounded_channel();
    let (data, data_rx) = mpsc::unbounded_channel();
    (
        Outbox { control, data },
        Inbox {
            control: control_rx,
            data: data_rx,
        },
    )
}

impl Outbox {
    /// Queues a message: block data behind other block data, anything else ahead of it.
    pub(super) fn send(&self, msg: Message) {
        let queue = match msg {
            Message::Piece { .. } => &self.data,
            _ => &self.control,
        };
        let _ = queue.send(msg);
    }
}

/// What answering a request needs, apart from the peer task (a disk load answers later).
pub(super) struct Upload {
    pub(super) shared: Arc<Shared>,
    pub(super) out: Outbox,
    pub(super) queued: Arc<AtomicUsize>,
    /// The peer speaks the Fast extension (BEP 6): what we cannot serve is rejected.
    pub(super) fast: bool,
}

impl Upload {
    /// Queues the requested block of `piece` (verified data) for the writer. The block is
    /// copied out: a queued block must not keep a whole piece alive after memory dropped it.
    pub(super) fn send(&self, r: BlockRef, piece: &Bytes) {
        let start = r.begin as usize;
        let chunk = Bytes::copy_from_slice(&piece[start..start + r.length as usize]);
        self.shared
            .uploaded
            .fetch_add(u64::from(r.length), Ordering::Relaxed);
        self.queued.fetch_add(chunk.len(), Ordering::Relaxed);
        self.out.send(Message::Piece {
            index: r.index,
            begin: r.begin,
            data: chunk,
        });
    }

    /// A request we cannot serve after all (the disk load failed): a Fast peer is told.
    pub(super) fn reject(&self, r: BlockRef) {
        if self.fast {
            self.out.send(Message::RejectRequest(r));
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

/// Counters the writer keeps for the peer task.
pub(super) struct Counters {
    /// Bytes of block data queued and not yet written.
    pub(super) queued_upload: Arc<AtomicUsize>,
    /// Block bytes written in all.
    pub(super) sent_total: Arc<AtomicU64>,
    /// `request` messages written in all.
    pub(super) requests_written: Arc<AtomicU64>,
}

/// Writes queued messages until the peer task drops its outbox: control first, block data
/// under the upload cap.
pub(super) async fn write_loop(
    mut w: MessageWriter<WriteHalf>,
    mut inbox: Inbox,
    counters: Counters,
    up_limit: Arc<RateLimit>,
) -> Result<(), WireError> {
    let mut control = Vec::new();
    let mut data = Vec::new();
    loop {
        // Wait for anything, control first.
        tokio::select! {
            biased;
            m = inbox.control.recv() => match m {
                Some(m) => control.push(m),
                None => return Ok(()),
            },
            m = inbox.data.recv() => match m {
                Some(m) => data.push(m),
                None => return Ok(()),
            },
        }
        write_control(&mut w, &mut inbox, &mut control, &counters).await?;
        let mut bytes: usize = data.iter().map(block_len).sum();
        while bytes < DATA_BATCH {
            match inbox.data.try_recv() {
                Ok(m) => {
                    bytes += block_len(&m);
                    data.push(m);
                }
                Err(_) => break,
            }
        }
        if data.is_empty() {
            continue;
        }
        // While the upload cap holds the data back, control goes out as it comes.
        let mut tokens = std::pin::pin!(up_limit.acquire(bytes));
        loop {
            tokio::select! {
                biased;
                () = &mut tokens => break,
                m = inbox.control.recv() => match m {
                    Some(m) => {
                        control.push(m);
                        write_control(&mut w, &mut inbox, &mut control, &counters).await?;
                    }
                    None => return Ok(()),
                },
            }
        }
        w.send_many(&data).await?;
        data.clear();
        counters.queued_upload.fetch_sub(bytes, Ordering::Relaxed);
        counters
            .sent_total
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// Writes `control` and whatever else control is queued, in one write.
async fn write_control(
    w: &mut MessageWriter<WriteHalf>,
    inbox: &mut Inbox,
    control: &mut Vec<Message>,
    counters: &Counters,
) -> Result<(), WireError> {
    while control.len() < CONTROL_BATCH {
        match inbox.control.try_recv() {
            Ok(m) => control.push(m),
            Err(_) => break,
        }
    }
    if control.is_empty() {
        return Ok(());
    }
    w.send_many(control).await?;
    let requests = control
        .iter()
        .filter(|m| matches!(m, Message::Request(_)))
        .count();
    counters
        .requests_written
        .fetch_add(requests as u64, Ordering::Relaxed);
    control.clear();
    Ok(())
}

fn block_len(m: &Message) -> usize {
    match m {
        Message::Piece { data, .. } => data.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::session::stream::PeerStream;
    use crate::wire::MessageReader;

    const BLOCK: usize = 16 * 1024;

    fn piece(i: u32) -> Message {
        Message::Piece {
            index: i,
            begin: 0,
            data: Bytes::from(vec![0u8; BLOCK]),
        }
    }

    fn request(i: u32) -> Message {
        Message::Request(BlockRef {
            index: i,
            begin: 0,
            length: BLOCK as u32,
        })
    }

    /// Starts a writer over a pipe that holds `buffer` bytes, with an upload `limit`; returns
    /// the outbox, the reading end and the counters.
    fn writer(buffer: usize, limit: Option<u64>) -> (Outbox, MessageReader<ReadHalfOf>, Counters) {
        let (ours, theirs) = tokio::io::duplex(buffer);
        let (_, wr) = PeerStream::from_duplex(ours).into_halves();
        let (out, inbox) = outbox();
        let counters = Counters {
            queued_upload: Arc::default(),
            sent_total: Arc::default(),
            requests_written: Arc::default(),
        };
        let mine = Counters {
            queued_upload: counters.queued_upload.clone(),
            sent_total: counters.sent_total.clone(),
            requests_written: counters.requests_written.clone(),
        };
        let limit = Arc::new(RateLimit::new(limit));
        tokio::spawn(write_loop(MessageWriter::new(wr), inbox, counters, limit));
        (out, MessageReader::new(theirs, 1 << 20), mine)
    }

    type ReadHalfOf = tokio::io::DuplexStream;

    /// Pieces that reached the reader before the first request did.
    async fn pieces_before_request(reader: &mut MessageReader<ReadHalfOf>) -> usize {
        let mut pieces = 0;
        loop {
            match reader.next().await.expect("the writer keeps writing") {
                Message::Piece { .. } => pieces += 1,
                Message::Request(_) => return pieces,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_request_overtakes_queued_uploads() {
        // Room for two blocks in the pipe: the writer blocks in its first data batch.
        let (out, mut reader, counters) = writer(2 * BLOCK, None);
        for i in 0..40 {
            out.send(piece(i));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        out.send(request(7));
        let before = pieces_before_request(&mut reader).await;
        assert!(
            before <= DATA_BATCH / BLOCK + 2,
            "our request came after {before} of 40 queued blocks"
        );
        assert_eq!(counters.requests_written.load(Ordering::Relaxed), 1);
        let mut rest = 0;
        while rest < 40 - before {
            if let Message::Piece { .. } = reader.next().await.unwrap() {
                rest += 1;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn control_flows_while_the_upload_cap_holds_data_back() {
        // 16 KiB/s: after the first batch, each block waits a second for its tokens.
        let (out, mut reader, _) = writer(1 << 20, Some(BLOCK as u64));
        for i in 0..20 {
            out.send(piece(i));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        out.send(request(1));
        let before = pieces_before_request(&mut reader).await;
        assert!(
            before <= DATA_BATCH / BLOCK,
            "{before} blocks went out first"
        );
        // The data still comes, at the cap.
        let mut rest = 0;
        while rest < 20 - before {
            if let Message::Piece { .. } = reader.next().await.unwrap() {
                rest += 1;
            }
        }
    }
}
