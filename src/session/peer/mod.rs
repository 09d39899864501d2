//! One connected peer: handshake, then a loop that reads its messages, keeps our requests to it
//! topped up from the picker, answers its requests from the store, and frees its requests for
//! other peers when it stalls.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

mod extended;
mod fast;
mod health;
pub(super) mod pex;
mod upload;
mod writer;

use super::verify::{self, Assembly};
use super::{PeerCmd, PeerEntry, PeerSource, Shared};
use crate::bitfield::Bitfield;
use crate::picker::{Block, PeerId};
use crate::piece::BLOCK_SIZE;
use crate::wire::{
    BlockRef, Handshake, Message, MessageReader, MessageWriter, WireError, read_handshake,
    write_handshake,
};
pub use health::PeerTimeouts;
use pex::PeerPex;
use writer::{AbortOnDrop, write_loop};

const KEEPALIVE_EVERY: Duration = Duration::from_secs(90);
/// Blocks a peer may send that we never asked for, beyond those we asked for and then
/// cancelled or gave up on (which may still arrive): more is a peer pushing data on us.
const UNASKED_TOLERANCE: u32 = 2;
/// `have`s for pieces the peer already announced, beyond one per piece of the torrent: more is
/// a flood.
const REDUNDANT_HAVE_SLACK: u32 = 1000;
/// Bounds on requests in flight to one peer. The target follows the peer's rate: about one
/// second of its data, so a read's urgent request never waits behind much background work,
/// while a fast peer still has enough queued to fill the link.
const MIN_QUEUE: usize = 8;
const MAX_QUEUE: usize = 400;

/// Why a connection ended; logged at debug level, never shown as an error to the user.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    #[error("handshake timed out")]
    HandshakeTimeout,
    #[error("peer is for another torrent")]
    WrongTorrent,
    #[error("connected to ourselves")]
    SelfConnection,
    #[error("peer is banned")]
    Banned,
    #[error("too many peers")]
    Full,
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error("sent nothing but keep-alives for too long")]
    Idle,
    #[error("let its requests time out again and again")]
    Stalled,
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("session is shutting down")]
    Shutdown,
}

/// Runs a connection to the end. Any source but `Incoming`: we dialled, so we speak first.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    addr: SocketAddr,
    source: PeerSource,
) -> Result<(), PeerError> {
    let outgoing = source != PeerSource::Incoming;
    let ours = Handshake::new(shared.torrent.info_hash.0, shared.peer_id);
    let theirs = tokio::time::timeout(shared.config.peer_timeouts.handshake, async {
        if outgoing {
            write_handshake(&mut stream, &ours).await?;
        }
        let theirs = read_handshake(&mut stream).await?;
        if theirs.info_hash != ours.info_hash {
            return Err(PeerError::WrongTorrent);
        }
        if !outgoing {
            write_handshake(&mut stream, &ours).await?;
        }
        Ok(theirs)
    })
    .await
    .map_err(|_| PeerError::HandshakeTimeout)
    .and_then(|r| r)
    .inspect_err(|e| tracing::debug!(%addr, outgoing, "handshake failed: {e}"))?;
    if theirs.peer_id == shared.peer_id {
        return Err(PeerError::SelfConnection);
    }
    let _ = stream.set_nodelay(true);

    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (id, have) = {
        let mut st = shared.lock();
        // Checked under the lock `stop` takes to disconnect everyone: no peer slips in after.
        if *shared.shutdown.borrow() {
            return Err(PeerError::Shutdown);
        }
        if st.banned.contains(&addr.ip()) {
            return Err(PeerError::Banned);
        }
        if st.peers.len() >= shared.config.max_peers {
            return Err(PeerError::Full);
        }
        st.next_peer += 1;
        let id = PeerId(st.next_peer);
        if !outgoing {
            st.known.insert(addr, source);
        }
        let entry = PeerEntry {
            addr,
            source,
            cmd: cmd_tx,
            listen: outgoing.then_some(addr),
            seed: false,
        };
        st.peers.insert(id, entry);
        (id, st.picker.have_bitfield().clone())
    };
    tracing::debug!(%addr, outgoing, "peer connected");
    let mut peer = Peer::new(shared.clone(), id, addr);
    peer.extensions = theirs.supports_extensions();
    peer.fast = ours.supports_fast() && theirs.supports_fast();
    peer.outgoing = outgoing;
    let result = peer.run(stream, cmd_rx, have).await;
    peer.leave();
    tracing::debug!(%addr, ?result, "peer disconnected");
    result
}

struct Peer {
    shared: Arc<Shared>,
    id: PeerId,
    addr: SocketAddr,
    has: Bitfield,
    /// The peer chokes us: our requests are void until it unchokes.
    choked: bool,
    interested: bool,
    /// We let it download from us.
    unchoked_it: bool,
    peer_interested: bool,
    /// Our requests in flight to it, with when we sent them.
    requests: HashMap<Block, Instant>,
    /// Smoothed time from our request to its block, over the blocks it delivered.
    avg_block: Option<Duration>,
    /// Requests the picker took as late, with when they were sent: each request is reported
    /// once (a block asked again later is a new request).
    reported_late: HashMap<Block, Instant>,
    last_piece: Instant,
    /// When we sent the most recently sent request the peer has answered.
    newest_answered: Option<Instant>,
    /// The last message that was not a keep-alive.
    last_useful: Instant,
    /// Times its requests timed out, and blocks it delivered that we asked for.
    stalls: u32,
    delivered: u64,
    /// Blocks we asked for and then cancelled or gave up on: they may still arrive.
    late_allowed: u32,
    /// Blocks that arrived unasked beyond `late_allowed`; their data is dropped.
    unasked: u32,
    /// `have`s naming a piece the peer had already announced.
    redundant_haves: u32,
    /// Some message that states pieces (`bitfield`, `have`, `piece`) came: a `bitfield` now
    /// would break BEP 3 (it may only be the first).
    announced: bool,
    /// Bytes of block data received since the last tick, and a smoothed rate (bytes/s).
    recv_tick: u64,
    rate: f64,
    /// A peer that let requests time out gets one request at a time until it delivers again.
    snubbed: bool,
    out: mpsc::UnboundedSender<Message>,
    out_rx: Option<mpsc::UnboundedReceiver<Message>>,
    /// Bytes of `piece` messages queued for the writer and not yet written.
    queued_upload: Arc<AtomicUsize>,
    /// Block bytes the writer has sent this peer, and the smoothed upload rate (bytes/s).
    sent_total: Arc<AtomicU64>,
    sent_last: u64,
    up_rate: f64,
    /// The peer speaks the extension protocol (BEP 10).
    extensions: bool,
    /// Both sides speak the Fast extension (BEP 6): requests are rejected, not ignored.
    fast: bool,
    /// Pieces the peer rejected a request for while it had us unchoked, and when the first of
    /// them was: not asked of it again until `REJECT_BACKOFF` passed (it may have dropped them).
    rejected: Vec<u32>,
    rejected_since: Option<Instant>,
    /// `reject_request`s for blocks we never asked for (nor cancelled or gave up on).
    unasked_rejects: u32,
    /// The peer's id for `ut_metadata` messages we send it, from its extended handshake.
    their_ut_metadata: Option<u8>,
    outgoing: bool,
    /// Peer exchange; `None` for private torrents (BEP 27).
    pex: Option<PeerPex>,
}

impl Peer {
    fn new(shared: Arc<Shared>, id: PeerId, addr: SocketAddr) -> Self {
        let n = shared.geometry.piece_count();
        let (out, out_rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        Self {
            id,
            addr,
            has: Bitfield::new(n),
            choked: true,
            interested: false,
            unchoked_it: false,
            peer_interested: false,
            requests: HashMap::new(),
            avg_block: None,
            reported_late: HashMap::new(),
            last_piece: now,
            newest_answered: None,
            last_useful: now,
            stalls: 0,
            delivered: 0,
            late_allowed: 0,
            unasked: 0,
            redundant_haves: 0,
            announced: false,
            recv_tick: 0,
            rate: 0.0,
            snubbed: false,
            out,
            out_rx: Some(out_rx),
            queued_upload: Arc::new(AtomicUsize::new(0)),
            sent_total: Arc::new(AtomicU64::new(0)),
            sent_last: 0,
            up_rate: 0.0,
            extensions: false,
            fast: false,
            rejected: Vec::new(),
            rejected_since: None,
            unasked_rejects: 0,
            their_ut_metadata: None,
            outgoing: false,
            pex: (!shared.torrent.info.private).then(PeerPex::new),
            shared,
        }
    }

    async fn run(
        &mut self,
        stream: TcpStream,
        mut cmds: mpsc::UnboundedReceiver<PeerCmd>,
        have: Bitfield,
    ) -> Result<(), PeerError> {
        let (rd, wr) = stream.into_split();
        // A frame is at most a block plus its header, or our bitfield, whichever is larger.
        let max_frame = (BLOCK_SIZE + 13).max(have.as_bytes().len() as u32 + 1) + 1024;
        let mut reader =
            MessageReader::new(rd, max_frame).with_gauge(self.shared.read_buffers.clone());
        let out_rx = self.out_rx.take().expect("run once");
        let mut writer = tokio::spawn(write_loop(
            MessageWriter::new(wr),
            out_rx,
            self.queued_upload.clone(),
            self.sent_total.clone(),
            self.shared.clone(),
        ));
        // Dropping a JoinHandle only detaches the task: without this, a writer blocked on a peer
        // that stopped reading would keep the socket (and the blocks queued for it) after we left.
        let _stop_writer = AbortOnDrop(writer.abort_handle());
        if self.extensions {
            self.send_extended_handshake();
        }
        if let Some(first) = self.first_statement(&have) {
            self.send(first);
        }
        let mut shutdown = self.shared.shutdown.subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_keepalive = Instant::now();
        loop {
            tokio::select! {
                msg = reader.next() => {
                    let msg = msg?;
                    tracing::trace!(addr = %self.addr, ?msg, "received");
                    if !matches!(msg, Message::KeepAlive) {
                        self.last_useful = Instant::now();
                    }
                    let block = match &msg {
                        Message::Piece { data, .. } => data.len(),
                        _ => 0,
                    };
                    self.on_message(msg)?;
                    if block > 0 {
                        // Reading no further until the cap allows it slows the sender through
                        // TCP's own flow control.
                        self.shared.down_limit.acquire(block).await;
                    }
                }
                cmd = cmds.recv() => match cmd {
                    // Interest first: a piece that failed its check or was evicted is needed
                    // again, and `refill` asks nothing of a peer we told we are not interested.
                    Some(PeerCmd::Refill) => self.update_interest(),
                    Some(PeerCmd::Have(i)) => {
                        self.send(Message::Have(i));
                        self.update_interest();
                    }
                    Some(PeerCmd::Cancel(b)) => {
                        if self.requests.remove(&b).is_some() {
                            self.late_allowed += 1;
                            self.send(Message::Cancel(self.block_ref(b)));
                        }
                    }
                    Some(PeerCmd::SetUnchoked(u)) => self.set_unchoked(u),
                    Some(PeerCmd::Disconnect) | None => return Err(PeerError::Shutdown),
                },
                _ = tick.tick() => {
                    self.on_tick()?;
                    if last_keepalive.elapsed() >= KEEPALIVE_EVERY {
                        last_keepalive = Instant::now();
                        self.send(Message::KeepAlive);
                    }
                }
                res = &mut writer => {
                    return match res {
                        Ok(Err(e)) => Err(e.into()),
                        _ => Err(PeerError::Protocol("writer ended")),
                    };
                }
                _ = shutdown.changed() => return Err(PeerError::Shutdown),
            }
        }
    }

    fn send(&self, msg: Message) {
        let _ = self.out.send(msg);
    }

    fn block_ref(&self, b: Block) -> BlockRef {
        let (begin, length) = self.shared.geometry.block(b.piece, b.block);
        BlockRef {
            index: b.piece.get(),
            begin,
            length,
        }
    }

    fn on_message(&mut self, msg: Message) -> Result<(), PeerError> {
        let g = &self.shared.geometry;
        match msg {
            Message::KeepAlive | Message::Port(_) | Message::Unknown { .. } => {}
            Message::Suggest(_)
            | Message::HaveAll
            | Message::HaveNone
            | Message::RejectRequest(_)
            | Message::AllowedFast(_) => self.on_fast(msg)?,
            Message::Extended { id, payload } => self.on_extended(id, &payload),
            Message::Choke => {
                self.choked = true;
                self.release_requests();
            }
            Message::Unchoke => {
                self.choked = false;
                self.refill();
            }
            Message::Interested => {
                self.peer_interested = true;
                self.shared.lock().choker.set_interested(self.id.0, true);
            }
            Message::NotInterested => {
                self.peer_interested = false;
                self.shared.lock().choker.set_interested(self.id.0, false);
            }
            Message::Have(i) => {
                let p = g
                    .piece(i)
                    .ok_or(PeerError::Protocol("have: piece out of range"))?;
                self.announced = true;
                if self.has.set(i) {
                    let mut st = self.shared.lock();
                    st.picker.peer_have(self.id, p);
                    if self.has.is_full() {
                        mark_seed(&mut st, self.id);
                    }
                    drop(st);
                    self.update_interest();
                } else {
                    self.redundant_haves += 1;
                    if self.redundant_haves > g.piece_count().saturating_add(REDUNDANT_HAVE_SLACK) {
                        return Err(PeerError::Protocol(
                            "a flood of haves for pieces it announced",
                        ));
                    }
                }
            }
            Message::Bitfield(bytes) => {
                let bf = Bitfield::from_bytes(&bytes, g.piece_count())
                    .map_err(|_| PeerError::Protocol("bad bitfield"))?;
                self.on_bitfield(bf)?;
            }
            Message::Request(r) => self.on_request(r)?,
            Message::Cancel(_) => {} // requests are answered at once; nothing queued to cancel
            Message::Piece { index, begin, data } => self.on_piece(index, begin, data)?,
        }
        Ok(())
    }

    fn on_piece(&mut self, index: u32, begin: u32, data: bytes::Bytes) -> Result<(), PeerError> {
        let g = &self.shared.geometry;
        let p = g
            .piece(index)
            .ok_or(PeerError::Protocol("piece: index out of range"))?;
        let b = g
            .block_index(p, begin, data.len() as u32)
            .ok_or(PeerError::Protocol("piece: not a block we use"))?;
        let block = Block { piece: p, block: b };
        self.announced = true;
        let sent_at = self.requests.remove(&block);
        let asked = sent_at.is_some();
        self.newest_answered = self.newest_answered.max(sent_at);
        if let Some(sent) = sent_at {
            let took = sent.elapsed();
            self.avg_block = Some(match self.avg_block {
                None => took,
                Some(avg) => avg.mul_f64(0.75) + took.mul_f64(0.25),
            });
        }
        if !asked {
            if self.late_allowed == 0 {
                // Not a late answer to anything: the data is not taken, and a peer that keeps
                // pushing it is gone.
                self.unasked += 1;
                if self.unasked > UNASKED_TOLERANCE {
                    return Err(PeerError::Protocol("blocks we never asked for"));
                }
                return Ok(());
            }
            self.late_allowed -= 1;
        }
        self.shared
            .downloaded
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.recv_tick += data.len() as u64;
        if asked {
            self.last_piece = Instant::now();
            self.snubbed = false;
            self.delivered += 1;
        }
        let complete = {
            let mut st = self.shared.lock();
            let r = st.picker.block_received(self.id, block);
            for (other, blk) in &r.cancel {
                if let Some(e) = st.peers.get(other) {
                    let _ = e.cmd.send(PeerCmd::Cancel(*blk));
                }
            }
            if !r.new {
                None
            } else {
                let asm = st
                    .assembly
                    .entry(index)
                    .or_insert_with(|| Assembly::new(g.piece_len(p), g.block_count(p)));
                asm.put(b, begin, &data, self.addr.ip());
                if r.piece_complete {
                    st.assembly.remove(&index)
                } else {
                    None
                }
            }
        };
        if let Some(asm) = complete {
            verify::verify(self.shared.clone(), p, asm);
        }
        self.refill();
        Ok(())
    }

    /// The peer's first statement of what it has: a `bitfield`, or (Fast) `have_all` /
    /// `have_none`. BEP 3 allows it only as the first message.
    fn on_bitfield(&mut self, bf: Bitfield) -> Result<(), PeerError> {
        if std::mem::replace(&mut self.announced, true) {
            return Err(PeerError::Protocol("bitfield after the first message"));
        }
        let mut st = self.shared.lock();
        st.picker.peer_gone(self.id, &self.has);
        st.picker.peer_bitfield(self.id, &bf);
        if bf.is_full() {
            mark_seed(&mut st, self.id);
        }
        drop(st);
        self.has = bf;
        self.update_interest();
        Ok(())
    }

    fn update_interest(&mut self) {
        let want = self.shared.lock().picker.is_interesting(&self.has);
        if want != self.interested {
            self.interested = want;
            self.send(if want {
                Message::Interested
            } else {
                Message::NotInterested
            });
        }
        if want && !self.choked {
            self.refill();
        }
    }

    /// Tops up requests in flight to about one second of this peer's data.
    fn refill(&mut self) {
        if self.choked || !self.interested {
            return;
        }
        let target = if self.snubbed {
            1
        } else {
            ((self.rate / f64::from(BLOCK_SIZE)) as usize).clamp(MIN_QUEUE, MAX_QUEUE)
        };
        if self.requests.len() >= target {
            return;
        }
        let pickable = self.pickable();
        let blocks = {
            let mut st = self.shared.lock();
            st.picker
                .pick(self.id, &pickable, target - self.requests.len())
        };
        if blocks.is_empty() {
            return;
        }
        let now = Instant::now();
        for b in blocks {
            self.requests.insert(b, now);
            self.send(Message::Request(self.block_ref(b)));
        }
    }

    fn on_tick(&mut self) -> Result<(), PeerError> {
        self.end_reject_backoff();
        if let Some(pex) = &mut self.pex
            && let Some((id, payload)) = pex.tick(&self.shared, self.id, self.addr)
        {
            self.send(Message::Extended {
                id,
                payload: payload.into(),
            });
        }
        self.rate = 0.6 * self.rate + 0.4 * self.recv_tick as f64;
        self.recv_tick = 0;
        let sent = self.sent_total.load(Ordering::Relaxed);
        self.up_rate = 0.6 * self.up_rate + 0.4 * sent.saturating_sub(self.sent_last) as f64;
        self.sent_last = sent;
        {
            let mut st = self.shared.lock();
            st.choker
                .set_rates(self.id.0, self.rate as u64, self.up_rate as u64);
            st.choker.set_snubbed(self.id.0, self.snubbed);
            let urgent = st.picker.has_urgent(&self.has);
            st.choker.set_urgent(self.id.0, urgent);
        }
        self.check_health()
    }

    /// Gives every request in flight back to the picker (choked, stalled or leaving).
    fn release_requests(&mut self) {
        if self.requests.is_empty() {
            return;
        }
        self.late_allowed = self
            .late_allowed
            .saturating_add(self.requests.len() as u32)
            .min(2 * MAX_QUEUE as u32);
        let mut st = self.shared.lock();
        for (b, _) in self.requests.drain() {
            st.picker.request_failed(self.id, b);
        }
        Shared::refill_all(&st);
    }

    fn leave(&mut self) {
        self.requests.clear();
        let mut st = self.shared.lock();
        st.picker.peer_gone(self.id, &self.has);
        st.choker.peer_left(self.id.0);
        st.peers.remove(&self.id);
        Shared::refill_all(&st);
    }
}

fn mark_seed(st: &mut super::State, id: PeerId) {
    if let Some(e) = st.peers.get_mut(&id) {
        e.seed = true;
    }
}
