//! One connected peer: handshake, then a loop that reads its messages, keeps our requests to it
//! topped up from the picker, answers its requests from the store, and frees its requests for
//! other peers when it stalls.
//!
//! A connection's state is split the way its work is: [`requests`] (what we asked and how it
//! answers), [`rates`], [`upload`] (its downloading from us), [`extended`] (BEP 10 extensions:
//! metadata, PEX) with [`fast`] (BEP 6), and [`health`] (stalls, lateness, idling); the loop
//! and the messages that touch several of them are here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

mod extended;
mod fast;
mod health;
mod open;
pub(super) mod pex;
mod rates;
mod requests;
mod upload;
mod writer;

use super::peers::PeerCmd;
use super::stream::PeerStream;
use super::{Shared, verify};
use crate::bitfield::Bitfield;
use crate::picker::{Block, Interest, PeerId, Picker};
use crate::piece::BLOCK_SIZE;
use crate::wire::{BlockRef, HandshakeError, Message, MessageReader, MessageWriter, WireError};
use extended::Extensions;
pub use health::PeerTimeouts;
pub(crate) use open::{accept, dialled, handshake};
use rates::Rates;
use requests::{Arrival, Requests};
use upload::UploadSide;
use writer::{AbortOnDrop, Counters, Inbox, Outbox, write_loop};

/// The wait for our download cap to let the next block in.
type Throttle = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

const KEEPALIVE_EVERY: Duration = Duration::from_secs(90);
/// `have`s for pieces the peer already announced, beyond one per piece of the torrent: more is
/// a flood.
const REDUNDANT_HAVE_SLACK: u32 = 1000;
/// Commands taken from the queue at once (then the peer's socket and timers get a turn).
const COMMAND_BATCH: usize = 64;

/// Why a connection ended; logged at debug level, never shown as an error to the user.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("connected to ourselves")]
    SelfConnection,
    #[error("already connected to this peer over another connection")]
    Duplicate,
    #[error("peer is banned")]
    Banned,
    #[error("too many peers")]
    Full,
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error("sent nothing but keep-alives for too long")]
    Idle,
    #[error("dropped to make room for a peer we have not tried")]
    Useless,
    #[error("let its requests time out again and again")]
    Stalled,
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("session is shutting down")]
    Shutdown,
}

struct Peer {
    shared: Arc<Shared>,
    id: PeerId,
    addr: SocketAddr,
    outgoing: bool,
    /// Messages for the writer task.
    out: Outbox,
    /// `request` messages the writer has written, in all (it counts them).
    requests_written: Arc<AtomicU64>,
    /// The pieces it has.
    has: Bitfield,
    /// What the last "has it anything we need?" learnt, so the next is O(1).
    interest: Interest,
    /// Some message that states pieces (`bitfield`, `have`, `piece`) came: a `bitfield` now
    /// would break BEP 3 (it may only be the first).
    announced: bool,
    /// `have`s naming a piece the peer had already announced.
    redundant_haves: u32,
    /// The last message that was not a keep-alive.
    last_useful: Instant,
    /// The peer chokes us: our requests are void until it unchokes.
    choked: bool,
    /// Since when it chokes us while we want its pieces (turnover asks).
    choking_us_since: Option<Instant>,
    /// We told it we want some of its pieces.
    interested: bool,
    requests: Requests,
    rates: Rates,
    upload: UploadSide,
    ext: Extensions,
}

impl Peer {
    fn new(
        shared: Arc<Shared>,
        id: PeerId,
        addr: SocketAddr,
        outgoing: bool,
        out: Outbox,
        ext: Extensions,
    ) -> Self {
        let n = shared.geometry.piece_count();
        let now = Instant::now();
        let upload = UploadSide::new(shared.uploads_queued.clone());
        Self {
            shared,
            id,
            addr,
            outgoing,
            out,
            requests_written: Arc::default(),
            has: Bitfield::new(n),
            interest: Interest::default(),
            announced: false,
            redundant_haves: 0,
            last_useful: now,
            choked: true,
            choking_us_since: None,
            interested: false,
            requests: Requests::new(now),
            rates: Rates::default(),
            upload,
            ext,
        }
    }

    async fn run(
        &mut self,
        stream: PeerStream,
        mut cmds: mpsc::UnboundedReceiver<PeerCmd>,
        inbox: Inbox,
        have: Bitfield,
    ) -> Result<(), PeerError> {
        let want = stream.want_hint();
        let (rd, wr) = stream.into_halves();
        // A frame is at most a block plus its header, or our bitfield, whichever is larger.
        let max_frame = (BLOCK_SIZE + 13).max(have.as_bytes().len() as u32 + 1) + 1024;
        let mut reader =
            MessageReader::new(rd, max_frame).with_gauge(self.shared.read_buffers.clone());
        if let Some(want) = want {
            reader = reader.with_want_hint(want);
        }
        let drained = self.upload.drained();
        let counters = Counters {
            drained: drained.clone(),
            queued_upload: self.upload.queued_counter(),
            sent_total: self.rates.sent_counter(),
            requests_written: self.requests_written.clone(),
        };
        let writer = write_loop(
            MessageWriter::new(wr),
            inbox,
            counters,
            self.shared.up_limit.clone(),
        );
        let mut writer = tokio::spawn(tracing::Instrument::in_current_span(writer));
        // Dropping a JoinHandle only detaches the task: without this, a writer blocked on a peer
        // that stopped reading would keep the socket (and the blocks queued for it) after we left.
        let _stop_writer = AbortOnDrop(writer.abort_handle());
        if self.ext.protocol {
            self.send_extended_handshake();
        }
        if let Some(first) = self.first_statement(&have) {
            self.send(first);
        }
        let mut shutdown = self.shared.shutdown.subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_keepalive = Instant::now();
        // Our download cap: while it holds us back we read nothing more from this peer (TCP's
        // flow control slows the sender), and everything else goes on.
        let mut throttle: Option<(Instant, Throttle)> = None;
        loop {
            tokio::select! {
                () = async { throttle.as_mut().expect("guarded").1.as_mut().await },
                    if throttle.is_some() =>
                {
                    let (since, _) = throttle.take().expect("guarded");
                    // Our own throttling is not the peer being slow.
                    self.requests.pause(since.elapsed());
                }
                msg = reader.next(), if throttle.is_none() => {
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
                    if block > 0 && self.shared.down_limit.is_limited() {
                        let limit = self.shared.down_limit.clone();
                        let wait: Throttle = Box::pin(async move { limit.acquire(block).await });
                        throttle = Some((Instant::now(), wait));
                    }
                }
                cmd = cmds.recv() => {
                    // Commands queued together are applied together: the refills and haves
                    // among them (a verified piece sends both to every peer) need one interest
                    // check and one refill, not one each.
                    let mut recheck = self.on_command(cmd)?;
                    for _ in 1..COMMAND_BATCH {
                        let Ok(more) = cmds.try_recv() else { break };
                        recheck |= self.on_command(Some(more))?;
                    }
                    if recheck {
                        self.update_interest();
                    }
                }
                _ = tick.tick() => {
                    self.on_tick(throttle.is_some())?;
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
                () = drained.notified(), if self.upload.has_waiting() => self.serve_waiting(),
                _ = shutdown.changed() => return Err(PeerError::Shutdown),
            }
        }
    }

    fn send(&self, msg: Message) {
        self.out.send(msg);
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
                self.upload.interested = true;
                self.shared.lock().choker.set_interested(self.id, true);
            }
            Message::NotInterested => {
                self.upload.interested = false;
                self.shared.lock().choker.set_interested(self.id, false);
            }
            Message::Have(i) => {
                let p = g
                    .piece(i)
                    .ok_or(PeerError::Protocol("have: piece out of range"))?;
                self.announced = true;
                if self.has.set(i) {
                    let mut st = self.shared.lock();
                    st.picker.peer_have(self.id, p);
                    st.picker.peer_announced(p, &mut self.interest);
                    if self.has.is_full() {
                        st.peers.mark_seed(self.id);
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
            Message::Cancel(r) => self.on_cancel(r),
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
        match self.requests.received(block, Instant::now()) {
            Arrival::Asked | Arrival::Late => {}
            // Not a late answer to anything: the data is not taken, and a peer that keeps
            // pushing it is gone.
            Arrival::Unasked => return Ok(()),
            Arrival::Pushed => return Err(PeerError::Protocol("blocks we never asked for")),
        }
        self.shared
            .downloaded
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.rates.received(data.len(), Instant::now());
        let arrived =
            self.shared
                .lock()
                .block_arrived(self.id, block, begin, &data, self.addr.ip());
        if !arrived.new {
            self.shared
                .wasted
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        if let Some(asm) = arrived.complete {
            verify::check(self.shared.clone(), p, asm);
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
            st.peers.mark_seed(self.id);
        }
        drop(st);
        self.has = bf;
        self.interest.reset();
        self.update_interest();
        Ok(())
    }

    /// Applies a command from the session; true if interest (and so the queue) needs a look.
    /// Interest first: a piece that failed its check or was evicted is needed again, and
    /// `refill` asks nothing of a peer we told we are not interested.
    fn on_command(&mut self, cmd: Option<PeerCmd>) -> Result<bool, PeerError> {
        match cmd {
            Some(PeerCmd::Refill) => return Ok(true),
            Some(PeerCmd::Have { piece, durable }) => {
                if self.ext.fast || durable {
                    self.send(Message::Have(piece.get()));
                }
                return Ok(true);
            }
            Some(PeerCmd::Durable(piece)) => {
                if !self.ext.fast {
                    self.send(Message::Have(piece.get()));
                }
            }
            Some(PeerCmd::Cancel(b)) => {
                if self.requests.cancel(b) {
                    self.send(Message::Cancel(self.block_ref(b)));
                }
            }
            Some(PeerCmd::SetUnchoked(u)) => self.set_unchoked(u),
            Some(PeerCmd::Drop) => return Err(PeerError::Useless),
            Some(PeerCmd::Disconnect) | None => return Err(PeerError::Shutdown),
        }
        Ok(false)
    }

    fn update_interest(&mut self) {
        let want = (self.shared.lock().picker).interest(&self.has, &mut self.interest);
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

    /// Tops up requests in flight to the queue target (`Requests::target`): what keeps this
    /// peer's link busy, shallower while a reader may need it. Background requests queued here
    /// are cancelled first when a reader could use this peer (`make_room`). Readahead queued
    /// ahead of a blocked read is not: cancelling it for every blocked read cost a fast swarm
    /// a sixth of its throughput, and shallow queues bound what it delays.
    fn refill(&mut self) {
        if self.choked || !self.interested {
            return;
        }
        let now = Instant::now();
        let (background, blocks) = {
            let pickable = self.requests.pickable(&self.has);
            let mut st = self.shared.lock();
            let readers = st.picker.has_readers();
            st.picker.set_rate(self.id, self.rates.down_now(now));
            let mut target = self.requests.target(self.rates.down_for_queue(), readers);
            if let Some(reqq) = self.ext.their_reqq {
                target = target.min(reqq as usize);
            }
            let background = if !readers {
                Vec::new()
            } else if st.picker.has_reader_work(self.id, &pickable) {
                let wanted = |p: &Picker, b: &Block| p.is_wanted_by_reader(b.piece);
                make_room(&mut st.picker, self.id, self.requests.blocks(), wanted)
            } else {
                Vec::new()
            };
            let in_flight = self.requests.len() - background.len();
            let room = target.saturating_sub(in_flight);
            let blocks = match (room, background.is_empty()) {
                (0, _) => Vec::new(),
                (_, true) => st.picker.pick(self.id, &pickable, room),
                (_, false) => st.picker.pick_for_readers(self.id, &pickable, room),
            };
            (background, blocks)
        };
        if !background.is_empty() {
            tracing::debug!(addr = %self.addr, n = background.len(), "cancelling requests queued ahead of a reader's");
        }
        for b in background {
            if self.requests.cancel(b) {
                self.send(Message::Cancel(self.block_ref(b)));
            }
        }
        for b in blocks {
            self.requests.sent(b, now);
            self.send(Message::Request(self.block_ref(b)));
        }
    }

    /// Once a second. `throttled`: our download cap holds this peer's data back right now, so
    /// its clocks are stopped (see `Requests::pause`) and its health is not judged.
    fn on_tick(&mut self, throttled: bool) -> Result<(), PeerError> {
        self.end_reject_backoff();
        if let Some(pex) = &mut self.ext.pex
            && let Some((id, payload)) = pex.tick(&self.shared, self.id, self.addr)
        {
            self.send(Message::Extended {
                id,
                payload: payload.into(),
            });
        }
        self.rates.tick(Instant::now());
        let written = self.requests_written.load(Ordering::Relaxed);
        self.requests.written(written, Instant::now());
        if self.choked && self.interested {
            self.choking_us_since.get_or_insert_with(Instant::now);
        } else {
            self.choking_us_since = None;
        }
        {
            let mut st = self.shared.lock();
            (st.choker).set_rates(self.id, self.rates.down() as u64, self.rates.up() as u64);
            st.choker.set_snubbed(self.id, self.requests.is_snubbed());
            let urgent = st.picker.has_urgent(&self.has);
            st.choker.set_urgent(self.id, urgent);
            if let Some(w) = st.peers.worth_mut(self.id) {
                w.wanted = self.interested;
                w.urgent = urgent;
                w.rate = self.rates.down() as u64;
                w.choking_since = self.choking_us_since;
            }
        }
        if throttled {
            return Ok(());
        }
        self.check_health()
    }

    /// Gives every request in flight back to the picker (choked, stalled or leaving).
    fn release_requests(&mut self) {
        let released = self.requests.release_all();
        if released.is_empty() {
            return;
        }
        let mut st = self.shared.lock();
        for b in released {
            st.picker.request_failed(self.id, b);
        }
        st.peers.refill_all();
    }

    fn leave(&mut self) {
        self.requests.release_all();
        self.shared.lock().peer_left(self.id, &self.has);
    }
}

/// A peer serves requests in order: whatever is queued at it holds up a reader's blocks by as
/// long as it takes to send. So when a reader could use the peer, the requests in flight that
/// do not `keep` (background ones) are given back to the picker, to be cancelled at the peer,
/// and returned.
fn make_room(
    picker: &mut Picker,
    peer: PeerId,
    in_flight: impl Iterator<Item = Block>,
    keep: impl Fn(&Picker, &Block) -> bool,
) -> Vec<Block> {
    let give_back: Vec<Block> = in_flight.filter(|b| !keep(picker, b)).collect();
    for &b in &give_back {
        picker.request_failed(peer, b);
    }
    give_back
}
