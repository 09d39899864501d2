//! Scripted fake peers for the session tests: listeners on loopback that speak the real wire
//! protocol (`crate::wire`) and behave as told, including in ways no real client would.
//!
//! The session dials them (they are in `Config::peers`), so it speaks first. Each fake counts
//! what it saw in a `watch` channel the test waits on. Dropping a [`FakePeer`] aborts its
//! listener and, through the `JoinSet` the listener owns, every connection it serves.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::bitfield::Bitfield;
use crate::metainfo::Torrent;
use crate::wire::extension::{ExtendedHandshake, MetadataMsg, Pex, PexFlags};
use crate::wire::{
    BlockRef, Handshake, Message, MessageReader, MessageWriter, WireError, read_handshake,
    write_handshake,
};

/// Only a hang detector: no test expects anything to take this long.
pub(super) const HANG: Duration = Duration::from_secs(60);

/// A torrent and every byte of its content (empty: every byte is zero).
pub(super) struct Content {
    pub torrent: Arc<Torrent>,
    pub data: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Behavior {
    Honest,
    /// Every block it sends has every byte flipped.
    Liar,
    /// Sends one block of each piece, with one byte flipped. Asked for another block of a piece
    /// it already sent one of, it chokes (voiding all its requests), so the rest of every piece
    /// it touches must come from another peer. It unchokes when the session announces a verified
    /// piece (`have`); choking and unchoking at once would let it re-claim a parole piece before
    /// any other peer could (see `parole_piece_is_not_held_by_a_staller`).
    CorruptOnePerPiece,
    /// Unchokes, takes requests, never answers one.
    Staller,
    /// Answers the first block asked of each piece (true data), then never another: every
    /// piece it is asked for stalls half done.
    StallMidPiece,
    /// After the handshake sends a keep-alive every 100 ms and nothing else, ever.
    KeepAliveOnly,
    /// Has nothing: an empty bitfield, never unchokes, reads until the session hangs up.
    Empty,
    /// A leecher without Fast: interested, asks for the first block of every piece it is told
    /// of (once unchoked), and counts what it was told and what was answered.
    Leecher,
    /// A seeder that says `reqq` in its extended handshake, queues the requests it reads and
    /// answers them one every few milliseconds, counting the most it ever held queued.
    Queue(u32),
    /// Answers every request, right, but only after waiting this long (one at a time).
    Slow(std::time::Duration),
    /// A leecher: once the session has piece 0 and unchokes it, asks for that piece's first
    /// block `n` times and never reads again.
    Hoarder(usize),
    /// Sends `n` PEX messages of 50 new addresses each (127.1.x.y, nobody listening), then
    /// asks for metadata piece 0: the answer means the session has handled every PEX message.
    PexFlood(usize),
    /// Speaks Fast (BEP 6; the other fakes do not): `have_all`, unchoke, and the first request
    /// for the first block of each piece is rejected (later ones are served).
    FastRejecter,
    /// Speaks Fast like `FastRejecter`, but the first request for each piece makes it choke and
    /// reject that request and every one that arrives while it chokes, as BEP 6 asks of a
    /// choking peer; it unchokes when the session announces a verified piece.
    FastChoker,
    /// A Fast leecher: `have_none`, interested, asks for the last piece's first block at once
    /// (choked) and again once unchoked, and counts the session's rejects.
    FastLeecher,
    Abuse(Abuse),
}

impl Behavior {
    fn fast(self) -> bool {
        matches!(
            self,
            Behavior::FastRejecter
                | Behavior::FastChoker
                | Behavior::FastLeecher
                | Behavior::Hoarder(_)
                | Behavior::Abuse(Abuse::RejectFlood)
        )
    }
}

/// Protocol violations; each connection does its one, then only reads until the session hangs up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Abuse {
    /// A length prefix of 16 MiB, far above any frame the session allows.
    HugeFrame,
    /// A `piece` nobody asked for, 1000 bytes long: no block of the torrent has that length.
    UnaskedPieceWrongLength,
    /// `have` for the first index past the last piece.
    HaveOutOfRange,
    /// A bitfield one byte longer than the piece count needs.
    BitfieldWrongLength,
    /// The first 9 bytes of a `piece` frame, then end of stream.
    TruncatedThenEof,
    /// A handshake for another torrent.
    WrongInfoHash,
    /// Four `piece`s nobody asked for, each exactly a block of the torrent (garbage data).
    UnaskedBlocks,
    /// 1,000,000 `have`s after a full bitfield, cycling through the pieces.
    HaveFlood,
    /// A full bitfield, a `have`, then a second, empty bitfield taking every piece back.
    BitfieldContradicted,
    /// Speaks Fast, then sends 10,000 `reject_request`s for the first block of piece 0.
    RejectFlood,
    /// Does not speak Fast, yet sends a `reject_request` (BEP 6: a reason to disconnect).
    FastUnnegotiated,
}

/// What a fake saw, over all its connections.
#[derive(Clone, Debug, Default)]
pub(super) struct Counters {
    pub connections: usize,
    /// Connections on which the session sent `interested`.
    pub interested: usize,
    pub requests: usize,
    pub blocks_sent: usize,
    /// Pieces in the order the session first asked for a block of them (the pick order).
    pub first_requests: Vec<u32>,
    /// Blocks sent, by piece index.
    pub sent_by_piece: std::collections::BTreeMap<u32, usize>,
    /// Requests naming something that is not a block of the torrent; the session must send none.
    pub bad_requests: usize,
    pub chokes: usize,
    /// Connections the session ended (our read saw end of stream or an error).
    pub closed: usize,
    /// Extended handshakes from the session that offered `ut_pex`.
    pub pex_offered: usize,
    /// `ut_metadata` answers the session sent.
    pub metadata_replies: usize,
    /// `reject_request`s sent, and requests for a block this fake had rejected before.
    pub rejects_sent: usize,
    pub rerequested: usize,
    /// `reject_request`s the session sent, and whether its first message was `have_none`.
    pub rejects_received: usize,
    pub saw_have_none: bool,
    /// The most requests queued at once (`Queue`), and `cancel`s received.
    pub max_queued: usize,
    pub cancels: usize,
    /// Pieces the session told it of (`Leecher`), and blocks it received.
    pub announced: usize,
    pub blocks_received: usize,
    /// The session's extended handshake, as last received.
    pub their_handshake: Option<ExtendedHandshake>,
}

pub(super) struct FakePeer {
    pub addr: SocketAddr,
    counters: watch::Receiver<Counters>,
    task: JoinHandle<()>,
    /// What a connection it makes itself (`connect_in`) serves with.
    conn: Conn,
}

impl FakePeer {
    /// Listens on `ip` (any 127.x.y.z; bans are by IP, so liars get their own) on a free port.
    pub async fn start(ip: Ipv4Addr, content: Arc<Content>, behavior: Behavior) -> FakePeer {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Behavior::Hoarder(_) = behavior {
            // It never reads: small buffers make the session's writer block soon.
            socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
        }
        socket
            .bind(SocketAddr::from((ip, 0)))
            .expect("bind fake peer");
        let listener = socket.listen(128).expect("listen");
        let addr = listener.local_addr().expect("fake peer address");
        let (tx, counters) = watch::channel(Counters::default());
        // Each fake is a client of its own: its own peer id, on every connection.
        static FAKES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = FAKES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut peer_id = *b"-FAKE01-fakefakefake";
        peer_id[8..12].copy_from_slice(&n.to_be_bytes());
        // Shared by all connections: a liar that reconnects does not lie twice per piece.
        let conn = Conn {
            content,
            behavior,
            peer_id,
            counters: tx,
            poisoned: Arc::new(std::sync::Mutex::new(HashSet::new())),
        };
        let template = conn.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                conns.spawn(conn.clone().serve(stream));
            }
        });
        FakePeer {
            addr,
            counters,
            task,
            conn: template,
        }
    }

    /// Connects to the session listening at `to`, from its own IP, speaks first, names the
    /// port it listens on in an extended handshake and serves as it does when dialled
    /// (`Behavior::Honest` only). The connection ends when the session hangs up.
    pub async fn connect_in(&self, to: SocketAddr) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from((self.addr.ip(), 0)))
            .expect("bind");
        let stream = socket.connect(to).await.expect("connect to the session");
        let conn = self.conn.clone();
        let listen = self.addr.port();
        tokio::spawn(async move { conn.serve_as_dialler(stream, listen).await });
    }

    pub fn ip(&self) -> std::net::IpAddr {
        self.addr.ip()
    }

    pub fn counters(&self) -> Counters {
        self.counters.borrow().clone()
    }

    /// Waits until `cond` holds for the counters; panics (naming `what`) if it never does.
    pub async fn wait_for(&self, what: &str, cond: impl FnMut(&Counters) -> bool) {
        let mut rx = self.counters.clone();
        match tokio::time::timeout(HANG, rx.wait_for(cond)).await {
            Ok(Ok(_)) => {}
            _ => panic!(
                "fake peer {} never saw {what}; it saw {:?}",
                self.addr,
                self.counters()
            ),
        }
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn empty_bitfield(pieces: u32) -> Message {
    Message::Bitfield(Bytes::copy_from_slice(Bitfield::new(pieces).as_bytes()))
}

/// A peer with nothing that connects to the session at `to` from `from` (any 127.x.y.z),
/// handshakes, sends an empty bitfield and then only reads until the session hangs up (the
/// task then ends). Returns `None` if the session refused it at once.
pub(super) async fn connect_empty(
    to: SocketAddr,
    from: Ipv4Addr,
    torrent: &Torrent,
    id: u32,
) -> Option<JoinHandle<()>> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::from((from, 0))).ok()?;
    let mut stream = socket.connect(to).await.ok()?;
    let mut peer_id = *b"-EMPTY1-000000000000";
    peer_id[8..12].copy_from_slice(&id.to_be_bytes());
    let ours = Handshake::new(torrent.info_hash.0, peer_id);
    write_handshake(&mut stream, &ours).await.ok()?;
    read_handshake(&mut stream).await.ok()?;
    let (rd, wr) = stream.into_split();
    let n = torrent.info.geometry.piece_count();
    let mut writer = MessageWriter::new(wr);
    writer.send(&empty_bitfield(n)).await.ok()?;
    Some(tokio::spawn(async move {
        // The writer lives as long as the connection: dropping it would end our side.
        let _writer = writer;
        let mut reader = MessageReader::new(rd, 1 << 20);
        while reader.next().await.is_ok() {}
    }))
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The bytes of block `r`, if it is one of the torrent's blocks.
fn block_of(content: &Content, r: BlockRef) -> Option<Bytes> {
    let g = &content.torrent.info.geometry;
    let p = g.piece(r.index)?;
    g.block_index(p, r.begin, r.length)?;
    let start = (g.piece_offset(p) + u64::from(r.begin)) as usize;
    Some(Bytes::copy_from_slice(
        &content.data[start..start + r.length as usize],
    ))
}

#[derive(Clone)]
struct Conn {
    content: Arc<Content>,
    behavior: Behavior,
    peer_id: [u8; 20],
    counters: watch::Sender<Counters>,
    poisoned: Arc<std::sync::Mutex<HashSet<u32>>>,
}

impl Conn {
    async fn serve(self, stream: TcpStream) {
        self.counters.send_modify(|c| c.connections += 1);
        // Every way out of `converse` is the session ending the connection (or a fake's own
        // write failing because it did).
        let _ = self.converse(stream).await;
        self.counters.send_modify(|c| c.closed += 1);
    }

    /// A connection it made: its handshake first, then an extended handshake naming `listen`,
    /// then as `converse`.
    async fn serve_as_dialler(self, stream: TcpStream, listen: u16) {
        self.counters.send_modify(|c| c.connections += 1);
        let _ = self.converse_dialled(stream, listen).await;
        self.counters.send_modify(|c| c.closed += 1);
    }

    async fn converse_dialled(&self, mut stream: TcpStream, listen: u16) -> Result<(), WireError> {
        let torrent = &self.content.torrent;
        write_handshake(
            &mut stream,
            &Handshake::new(torrent.info_hash.0, self.peer_id),
        )
        .await?;
        read_handshake(&mut stream).await?;
        let hs = ExtendedHandshake {
            port: Some(listen),
            ..ExtendedHandshake::default()
        };
        let msg = Message::Extended {
            id: 0,
            payload: hs.encode().into(),
        };
        let (rd, wr) = stream.into_split();
        let mut writer = MessageWriter::new(wr);
        writer.send(&msg).await?;
        self.honest(MessageReader::new(rd, 1 << 20), writer).await
    }

    async fn converse(&self, mut stream: TcpStream) -> Result<(), WireError> {
        let torrent = &self.content.torrent;
        read_handshake(&mut stream).await?;
        let mut info_hash = torrent.info_hash.0;
        if self.behavior == Behavior::Abuse(Abuse::WrongInfoHash) {
            info_hash[0] ^= 0xff;
        }
        let mut ours = Handshake::new(info_hash, self.peer_id);
        if !self.behavior.fast() {
            ours.reserved[7] &= !0x04;
        }
        write_handshake(&mut stream, &ours).await?;
        let (rd, mut wr) = stream.into_split();
        if self.behavior == Behavior::KeepAliveOnly {
            let mut writer = MessageWriter::new(wr);
            loop {
                writer.send(&Message::KeepAlive).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let mut reader = MessageReader::new(rd, 1 << 20);
        let n = torrent.info.geometry.piece_count();
        let opening = self.opening(n);
        if let Behavior::Abuse(abuse) = self.behavior {
            self.abuse(abuse, &mut wr, &opening, n).await?;
            loop {
                reader.next().await?;
            }
        }
        let mut writer = MessageWriter::new(wr);
        if self.behavior == Behavior::Empty {
            writer.send(&empty_bitfield(n)).await?;
            loop {
                reader.next().await?;
            }
        }
        if let Behavior::Hoarder(n) = self.behavior {
            return self.hoard(reader, writer, n).await;
        }
        if let Behavior::PexFlood(n) = self.behavior {
            return self.pex_flood(reader, writer, n).await;
        }
        if self.behavior == Behavior::FastLeecher {
            return self.fast_leech(reader, writer, n).await;
        }
        if self.behavior == Behavior::Leecher {
            return self.leech(reader, writer, n).await;
        }
        if let Behavior::Queue(reqq) = self.behavior {
            return self.queue(reader, writer, n, reqq).await;
        }
        self.honest(reader, writer).await
    }

    /// What a seeder says first: it has every piece (`HaveAll` with the Fast extension), and
    /// it unchokes.
    fn opening(&self, n: u32) -> [Message; 2] {
        let have = if self.behavior.fast() {
            Message::HaveAll
        } else {
            Message::Bitfield(Bytes::copy_from_slice(Bitfield::full(n).as_bytes()))
        };
        [have, Message::Unchoke]
    }

    /// A seeder's side of a connection once the handshakes are done.
    async fn honest(
        &self,
        mut reader: MessageReader<OwnedReadHalf>,
        mut writer: MessageWriter<OwnedWriteHalf>,
    ) -> Result<(), WireError> {
        let n = self.content.torrent.info.geometry.piece_count();
        let opening = self.opening(n);
        writer.send_many(&opening).await?;
        let mut interested = false;
        let mut choking = false;
        loop {
            match reader.next().await? {
                Message::Have(_) if choking => {
                    choking = false;
                    writer.send(&Message::Unchoke).await?;
                }
                // BEP 3: requests that arrive while we choke are void; BEP 6 rejects them.
                Message::Request(r) if choking && self.behavior.fast() => {
                    writer.send(&Message::RejectRequest(r)).await?;
                    self.counters.send_modify(|c| c.rejects_sent += 1);
                }
                Message::Request(_) if choking => {}
                Message::Interested if !interested => {
                    interested = true;
                    self.counters.send_modify(|c| c.interested += 1);
                }
                Message::Request(r) => {
                    self.counters.send_modify(|c| {
                        c.requests += 1;
                        if !c.first_requests.contains(&r.index) {
                            c.first_requests.push(r.index);
                        }
                    });
                    let Some(data) = self.block(r) else {
                        self.counters.send_modify(|c| c.bad_requests += 1);
                        continue;
                    };
                    match self.behavior {
                        Behavior::Staller => continue,
                        Behavior::StallMidPiece
                            if !self.poisoned.lock().unwrap().insert(r.index) =>
                        {
                            continue;
                        }
                        Behavior::Slow(delay) => tokio::time::sleep(delay).await,
                        Behavior::FastChoker if self.poisoned.lock().unwrap().insert(r.index) => {
                            choking = true;
                            writer
                                .send_many(&[Message::Choke, Message::RejectRequest(r)])
                                .await?;
                            self.counters.send_modify(|c| {
                                c.chokes += 1;
                                c.rejects_sent += 1;
                            });
                            continue;
                        }
                        Behavior::FastRejecter if r.begin == 0 => {
                            if self.poisoned.lock().unwrap().insert(r.index) {
                                writer.send(&Message::RejectRequest(r)).await?;
                                self.counters.send_modify(|c| c.rejects_sent += 1);
                                continue;
                            }
                            self.counters.send_modify(|c| c.rerequested += 1);
                        }
                        Behavior::CorruptOnePerPiece
                            if !self.poisoned.lock().unwrap().insert(r.index) =>
                        {
                            choking = true;
                            writer.send(&Message::Choke).await?;
                            self.counters.send_modify(|c| c.chokes += 1);
                            continue;
                        }
                        _ => {}
                    }
                    let data = self.tamper(data);
                    writer
                        .send(&Message::Piece {
                            index: r.index,
                            begin: r.begin,
                            data,
                        })
                        .await?;
                    self.counters.send_modify(|c| {
                        c.blocks_sent += 1;
                        *c.sent_by_piece.entry(r.index).or_default() += 1;
                    });
                }
                _ => {}
            }
        }
    }

    async fn queue(
        &self,
        mut reader: MessageReader<OwnedReadHalf>,
        mut writer: MessageWriter<OwnedWriteHalf>,
        pieces: u32,
        reqq: u32,
    ) -> Result<(), WireError> {
        let hs = ExtendedHandshake {
            reqq: Some(reqq),
            ..ExtendedHandshake::default()
        };
        writer
            .send_many(&[
                Message::Extended {
                    id: 0,
                    payload: hs.encode().into(),
                },
                Message::Bitfield(Bytes::copy_from_slice(Bitfield::full(pieces).as_bytes())),
                Message::Unchoke,
            ])
            .await?;
        let queue = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let served = {
            let (queue, content, counters) =
                (queue.clone(), self.content.clone(), self.counters.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    let Some(r) = queue.lock().unwrap().pop_front() else {
                        continue;
                    };
                    let Some(data) = block_of(&content, r) else {
                        continue;
                    };
                    let msg = Message::Piece {
                        index: r.index,
                        begin: r.begin,
                        data,
                    };
                    if writer.send(&msg).await.is_err() {
                        return;
                    }
                    counters.send_modify(|c| c.blocks_sent += 1);
                }
            })
        };
        let _stop = AbortOnDrop(served);
        loop {
            match reader.next().await? {
                Message::Request(r) => {
                    let mut q = queue.lock().unwrap();
                    q.push_back(r);
                    let len = q.len();
                    self.counters.send_modify(|c| {
                        c.requests += 1;
                        c.max_queued = c.max_queued.max(len);
                    });
                }
                Message::Cancel(r) => {
                    queue.lock().unwrap().retain(|q| *q != r);
                    self.counters.send_modify(|c| c.cancels += 1);
                }
                Message::Extended { id: 0, payload } => {
                    let hs = ExtendedHandshake::decode(&payload).ok();
                    self.counters.send_modify(|c| c.their_handshake = hs);
                }
                _ => {}
            }
        }
    }

    async fn hoard(
        &self,
        mut reader: MessageReader<OwnedReadHalf>,
        mut writer: MessageWriter<OwnedWriteHalf>,
        n: usize,
    ) -> Result<(), WireError> {
        writer.send(&Message::Interested).await?;
        let (mut unchoked, mut has_0) = (false, false);
        while !(unchoked && has_0) {
            match reader.next().await? {
                Message::Unchoke => unchoked = true,
                Message::Choke => unchoked = false,
                Message::Have(0) | Message::HaveAll => has_0 = true,
                Message::Bitfield(b) => has_0 |= b.first().is_some_and(|b| b & 0x80 != 0),
                _ => {}
            }
        }
        let block = Message::Request(BlockRef {
            index: 0,
            begin: 0,
            length: 16 * 1024,
        });
        writer.send_many(&vec![block; n]).await?;
        self.counters.send_modify(|c| c.requests += n);
        // Holds the connection open and reads nothing, ever.
        std::future::pending::<()>().await;
        Ok(())
    }

    async fn leech(
        &self,
        mut reader: MessageReader<OwnedReadHalf>,
        mut writer: MessageWriter<OwnedWriteHalf>,
        n: u32,
    ) -> Result<(), WireError> {
        let g = &self.content.torrent.info.geometry;
        writer.send(&Message::Interested).await?;
        let mut told = Bitfield::new(n);
        let mut asked = Bitfield::new(n);
        let mut unchoked = false;
        loop {
            match reader.next().await? {
                Message::Bitfield(b) => {
                    if let Ok(bf) = Bitfield::from_bytes(&b, n) {
                        told = bf;
                    }
                }
                Message::Have(i) if i < n => {
                    told.set(i);
                }
                Message::Unchoke => unchoked = true,
                Message::Choke => unchoked = false,
                Message::Piece { .. } => self.counters.send_modify(|c| c.blocks_received += 1),
                _ => {}
            }
            let count = told.count_ones() as usize;
            self.counters.send_modify(|c| c.announced = count);
            if !unchoked {
                continue;
            }
            let mut requests = Vec::new();
            for i in told.iter_ones() {
                if asked.set(i) {
                    let p = g.piece(i).expect("told of a real piece");
                    let (begin, length) = g.block(p, 0);
                    requests.push(Message::Request(BlockRef {
                        index: i,
                        begin,
                        length,
                    }));
                }
            }
            if !requests.is_empty() {
                self.counters.send_modify(|c| c.requests += requests.len());
                writer.send_many(&requests).await?;
            }
        }
    }

    async fn fast_leech(
        &self,
        mut reader: MessageReader<OwnedReadHalf>,
        mut writer: MessageWriter<OwnedWriteHalf>,
        n: u32,
    ) -> Result<(), WireError> {
        let g = &self.content.torrent.info.geometry;
        let last = Message::Request(BlockRef {
            index: n - 1,
            begin: 0,
            length: g.block(g.piece(n - 1).expect("last piece"), 0).1,
        });
        writer
            .send_many(&[Message::HaveNone, Message::Interested, last.clone()])
            .await?;
        let mut first = true;
        loop {
            let msg = reader.next().await?;
            // Its extended handshake may come first; then its statement of what it has.
            if first && !matches!(msg, Message::Extended { .. }) {
                first = false;
                let none = msg == Message::HaveNone;
                self.counters.send_modify(|c| c.saw_have_none = none);
            }
            match msg {
                Message::Unchoke => writer.send(&last).await?,
                Message::RejectRequest(r) if r.index == n - 1 => {
                    self.counters.send_modify(|c| c.rejects_received += 1);
                }
                _ => {}
            }
        }
    }

    async fn pex_flood(
        &self,
        mut reader: MessageReader<OwnedReadHalf>,
        mut writer: MessageWriter<OwnedWriteHalf>,
        n: usize,
    ) -> Result<(), WireError> {
        const OUR_METADATA: u8 = 3;
        let ours = ExtendedHandshake {
            ut_metadata: Some(OUR_METADATA),
            ut_pex: Some(4),
            ..ExtendedHandshake::default()
        };
        writer
            .send(&Message::Extended {
                id: 0,
                payload: ours.encode().into(),
            })
            .await?;
        let theirs = loop {
            if let Message::Extended { id: 0, payload } = reader.next().await?
                && let Ok(hs) = ExtendedHandshake::decode(&payload)
            {
                break hs;
            }
        };
        if theirs.ut_pex.is_some() {
            self.counters.send_modify(|c| c.pex_offered += 1);
        }
        // Sent under the id a public torrent's session uses, whether it offered PEX or not.
        let pex_id = theirs.ut_pex.unwrap_or(2);
        let mut flood = Vec::new();
        for m in 0..n {
            let added = (0..50)
                .map(|i| {
                    let a = SocketAddr::from(([127, 1, m as u8, i as u8 + 1], 9));
                    (a, PexFlags::REACHABLE)
                })
                .collect();
            let pex = Pex {
                added,
                dropped: Vec::new(),
            };
            flood.push(Message::Extended {
                id: pex_id,
                payload: pex.encode().into(),
            });
        }
        writer.send_many(&flood).await?;
        let metadata = theirs.ut_metadata.expect("the session serves metadata");
        writer
            .send(&Message::Extended {
                id: metadata,
                payload: MetadataMsg::Request { piece: 0 }.encode().into(),
            })
            .await?;
        loop {
            if let Message::Extended {
                id: OUR_METADATA, ..
            } = reader.next().await?
            {
                self.counters.send_modify(|c| c.metadata_replies += 1);
            }
        }
    }

    /// The true bytes of a requested block, if it is exactly one of the torrent's blocks.
    fn block(&self, r: BlockRef) -> Option<Bytes> {
        let g = &self.content.torrent.info.geometry;
        let p = g.piece(r.index)?;
        g.block_index(p, r.begin, r.length)?;
        if self.content.data.is_empty() {
            // A torrent of zeros too large to hold (the scale benchmark).
            return Some(Bytes::from(vec![0u8; r.length as usize]));
        }
        let start = (g.piece_offset(p) + u64::from(r.begin)) as usize;
        Some(Bytes::copy_from_slice(
            &self.content.data[start..start + r.length as usize],
        ))
    }

    fn tamper(&self, data: Bytes) -> Bytes {
        match self.behavior {
            Behavior::Liar => data.iter().map(|b| !b).collect(),
            Behavior::CorruptOnePerPiece => {
                let mut bad = data.to_vec();
                let mid = bad.len() / 2;
                bad[mid] ^= 0x01;
                bad.into()
            }
            _ => data,
        }
    }

    async fn abuse(
        &self,
        abuse: Abuse,
        wr: &mut OwnedWriteHalf,
        opening: &[Message],
        n: u32,
    ) -> Result<(), WireError> {
        let mut out = BytesMut::new();
        if abuse != Abuse::BitfieldWrongLength {
            for m in opening {
                m.encode(&mut out);
            }
        }
        match abuse {
            Abuse::HugeFrame => {
                out.put_u32(16 << 20);
                out.put_slice(&[7; 64]);
            }
            Abuse::UnaskedPieceWrongLength => Message::Piece {
                index: 0,
                begin: 0,
                data: Bytes::from(vec![0xAB; 1000]),
            }
            .encode(&mut out),
            Abuse::HaveOutOfRange => Message::Have(n).encode(&mut out),
            Abuse::BitfieldWrongLength => {
                Message::Bitfield(vec![0xff; n.div_ceil(8) as usize + 1].into()).encode(&mut out)
            }
            Abuse::TruncatedThenEof => {
                // length (9 + a block), id 7, index 0: then nothing more, ever.
                out.put_u32(9 + 16 * 1024);
                out.put_u8(7);
                out.put_u32(0);
            }
            Abuse::WrongInfoHash => {}
            Abuse::UnaskedBlocks => {
                for (index, begin) in [(0, 0), (0, 16 * 1024), (1, 0), (2, 0)] {
                    Message::Piece {
                        index,
                        begin,
                        data: Bytes::from(vec![0xAB; 16 * 1024]),
                    }
                    .encode(&mut out);
                }
            }
            Abuse::HaveFlood => {
                for i in 0..1_000_000u32 {
                    Message::Have(i % n).encode(&mut out);
                }
            }
            Abuse::RejectFlood | Abuse::FastUnnegotiated => {
                let r = Message::RejectRequest(BlockRef {
                    index: 0,
                    begin: 0,
                    length: 16 * 1024,
                });
                let times = if abuse == Abuse::RejectFlood {
                    10_000
                } else {
                    1
                };
                for _ in 0..times {
                    r.encode(&mut out);
                }
            }
            Abuse::BitfieldContradicted => {
                Message::Have(0).encode(&mut out);
                Message::Bitfield(vec![0; n.div_ceil(8) as usize].into()).encode(&mut out);
            }
        }
        wr.write_all(&out).await?;
        if abuse == Abuse::TruncatedThenEof {
            wr.shutdown().await?;
        }
        Ok(())
    }
}
