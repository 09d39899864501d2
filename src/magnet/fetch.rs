//! Magnet links: before a session can start, the info dictionary is fetched from peers
//! (`ut_metadata`, BEP 9, over the extension protocol, BEP 10), in 16 KiB pieces from several
//! peers at once, and trusted only once its SHA1 equals the link's info-hash.
//!
//! A short-lived phase of its own: peers come from the link's trackers, the DHT and `x.pe`
//! addresses (and the flags' `--peer`s); each gets a small task that speaks just enough of the wire
//! protocol to ask for metadata, over TCP, or over uTP when TCP gets nowhere (a peer may speak
//! only uTP). The addresses that answered are handed to the session.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::magnet::link::Magnet;
use crate::magnet::metadata::{MetadataError, MetadataFetch, Progress};
use crate::metainfo::Info;
use crate::net::utp::Utp;
use crate::sync::lock;
use crate::tracker::announcer::{self, AnnounceParams};
use crate::wire::extension::{
    CLIENT, ExtendedHandshake, HANDSHAKE_ID, MetadataMsg, OUR_UT_METADATA,
};
use crate::wire::{
    Handshake, HandshakeError, Message, MessageReader, MessageWriter, Role, exchange_handshakes,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a uTP peer may take to close its end after we closed ours.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// A peer that sends nothing this long while we wait on it is dropped; others carry on.
const PEER_SILENCE: Duration = Duration::from_secs(15);
/// Enough for a peer's bitfield of a very large torrent, which may come before anything else.
const MAX_FRAME: u32 = 4 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum MagnetFetchError {
    #[error(
        "no metadata after {secs} s ({tried} peers tried; are the trackers or peers reachable?)"
    )]
    Timeout { secs: u64, tried: usize },
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("interrupted")]
    Interrupted,
}

/// Where the fetch stands, for the progress line.
#[derive(Clone, Copy, Debug, Default)]
pub struct FetchStatus {
    pub peers_tried: usize,
    pub peers_answering: usize,
    pub pieces_have: u32,
    pub pieces_total: u32,
}

/// Fetches and verifies the info dictionary of `magnet` (over TCP, and over `utp` when TCP
/// gets nowhere). Returns it with the peers that answered, to seed the session's connections.
#[allow(clippy::too_many_arguments)]
pub async fn fetch_info(
    magnet: &Magnet,
    extra_peers: &[SocketAddr],
    dht: Option<&crate::dht::Dht>,
    utp: Option<&Utp>,
    listen_port: u16,
    timeout: Duration,
    progress: impl Fn(FetchStatus),
    mut interrupt: watch::Receiver<bool>,
) -> Result<(Info, Vec<SocketAddr>), MagnetFetchError> {
    let peer_id = crate::wire::new_peer_id();
    let fetch = Arc::new(Mutex::new(Fetch {
        metadata: MetadataFetch::new(magnet.info_hash),
        answering: HashSet::new(),
    }));
    let (peers_tx, mut peers_rx) = mpsc::channel::<Vec<SocketAddr>>(64);
    let (done_tx, mut done_rx) = mpsc::channel::<(Info, SocketAddr)>(1);
    // Flips when the fetch is over: the peer tasks close their connections and end.
    let (over_tx, over) = watch::channel(false);

    let (stop_trackers, trackers_stop_rx) = watch::channel(false);
    if !magnet.trackers.is_empty() {
        let tiers = magnet.trackers.iter().map(|t| vec![t.clone()]).collect();
        let params = AnnounceParams::new(magnet.info_hash.0, peer_id, listen_port);
        // Size unknown yet: report one block left, so trackers count us as a leecher.
        let left = Arc::new(|| announcer::Progress {
            uploaded: 0,
            downloaded: 0,
            left: 16 * 1024,
        });
        let more = Arc::default();
        announcer::spawn(
            tiers,
            params,
            left,
            peers_tx.clone(),
            more,
            trackers_stop_rx,
        );
    }
    if let Some(dht) = dht {
        crate::dht::spawn_announce_loop(
            dht.clone(),
            magnet.info_hash.0,
            Some(listen_port),
            peers_tx.clone(),
            Arc::default(),
            stop_trackers.subscribe(),
        );
    }
    let mut initial: Vec<SocketAddr> = magnet.peers.clone();
    initial.extend_from_slice(extra_peers);
    if !initial.is_empty() {
        let _ = peers_tx.send(initial).await;
    }

    let mut tried: HashSet<SocketAddr> = HashSet::new();
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let result = loop {
        tokio::select! {
            Some(addrs) = peers_rx.recv() => {
                for addr in addrs {
                    if tried.insert(addr) {
                        next_id += 1;
                        let ctx = PeerCtx {
                            id: next_id,
                            addr,
                            info_hash: magnet.info_hash.0,
                            peer_id,
                            fetch: fetch.clone(),
                            done: done_tx.clone(),
                            utp: utp.cloned(),
                            over: over.clone(),
                        };
                        tasks.spawn(async move {
                            let r = metadata_peer(&ctx).await;
                            tracing::debug!(addr = %ctx.addr, ?r, "metadata peer done");
                            lock(&ctx.fetch).metadata.peer_gone(ctx.id);
                        });
                    }
                }
            }
            Some((info, _from)) = done_rx.recv() => break Ok(info),
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = tick.tick() => {
                let (have, total, answering) = {
                    let f = lock(&fetch);
                    let (have, total) = f.metadata.progress();
                    (have, total, f.answering.len())
                };
                progress(FetchStatus {
                    peers_tried: tried.len(),
                    peers_answering: answering,
                    pieces_have: have,
                    pieces_total: total,
                });
            }
            _ = &mut deadline => break Err(MagnetFetchError::Timeout { secs: timeout.as_secs(), tried: tried.len() }),
            _ = interrupt.changed() => break Err(MagnetFetchError::Interrupted),
        }
    };
    over_tx.send_replace(true);
    let closed = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(CLOSE_WAIT * 2, closed).await;
    tasks.abort_all();
    stop_trackers.send_replace(true);
    let info = result?;
    let peers = lock(&fetch).answering.iter().copied().collect();
    Ok((info, peers))
}

/// What the per-peer tasks share: the BEP 9 state machine and who answered. Locked briefly
/// with `sync::lock`, never across an `.await`.
struct Fetch {
    metadata: MetadataFetch<u64>,
    answering: HashSet<SocketAddr>,
}

struct PeerCtx {
    id: u64,
    addr: SocketAddr,
    info_hash: [u8; 20],
    peer_id: [u8; 20],
    fetch: Arc<Mutex<Fetch>>,
    done: mpsc::Sender<(Info, SocketAddr)>,
    utp: Option<Utp>,
    over: watch::Receiver<bool>,
}

#[derive(Debug, Error)]
enum PeerFetchError {
    #[error("connect failed")]
    Connect,
    #[error("the fetch is over")]
    Over,
    #[error("no extension protocol, or no metadata to give")]
    Unsuitable,
    #[error("silent for too long")]
    Silent,
    #[error("sent metadata that failed the check")]
    Blamed,
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error(transparent)]
    Wire(#[from] crate::wire::WireError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
}

/// One peer over TCP, or over uTP if TCP got no handshake through (refused, reset: what a
/// peer that speaks only uTP does).
async fn metadata_peer(ctx: &PeerCtx) -> Result<(), PeerFetchError> {
    let tcp = async {
        let connect = TcpStream::connect(ctx.addr);
        let stream = until_over(ctx, tokio::time::timeout(CONNECT_TIMEOUT, connect)).await?;
        let stream = stream.map_err(|_| PeerFetchError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        metadata_over(ctx, rd, wr, false).await
    };
    let failed = match tcp.await {
        Err(e @ (PeerFetchError::Connect | PeerFetchError::Handshake(_))) => e,
        done => return done,
    };
    let Some(utp) = &ctx.utp else {
        return Err(failed);
    };
    let connect = utp.connect(ctx.addr);
    let stream = until_over(ctx, tokio::time::timeout(CONNECT_TIMEOUT, connect)).await?;
    let (rd, wr) = stream.map_err(|_| PeerFetchError::Connect)?.split();
    metadata_over(ctx, rd, wr, true).await
}

/// `f`'s output, unless the fetch is over first (or `f` timed out): then `Over` or `Connect`.
async fn until_over<T>(
    ctx: &PeerCtx,
    f: impl Future<Output = Result<T, tokio::time::error::Elapsed>>,
) -> Result<T, PeerFetchError> {
    let mut over = ctx.over.clone();
    tokio::select! {
        r = f => r.map_err(|_| PeerFetchError::Connect),
        _ = over.wait_for(|o| *o) => Err(PeerFetchError::Over),
    }
}

/// Handshake, extended handshake, then `ut_metadata` requests until the fetch is complete (or
/// the peer is no use, or the fetch is over); then our end is closed at once, and with `drain`
/// (uTP) the peer's close awaited too (see below), so that a peer that keeps one connection
/// per address (libtorrent over uTP) is ready for the session's sooner.
async fn metadata_over<R, W>(ctx: &PeerCtx, rd: R, wr: W, drain: bool) -> Result<(), PeerFetchError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut stream = tokio::io::join(rd, wr);
    let ours = Handshake::new(ctx.info_hash, ctx.peer_id);
    let mut over = ctx.over.clone();
    let theirs = tokio::select! {
        h = exchange_handshakes(&mut stream, &ours, Role::Initiator, CONNECT_TIMEOUT) => h?,
        _ = over.wait_for(|o| *o) => return Err(PeerFetchError::Over),
    };
    if !theirs.supports_extensions() {
        return Err(PeerFetchError::Unsuitable);
    }
    let (rd, wr) = stream.into_inner();
    let mut reader = MessageReader::new(rd, MAX_FRAME);
    let mut writer = MessageWriter::new(wr);
    let result = tokio::select! {
        r = talk(ctx, &mut reader, &mut writer) => r,
        _ = over.wait_for(|o| *o) => Ok(()),
    };
    let (mut rd, mut wr) = (reader.into_parts().0, writer.into_inner());
    // Our end closed: asked once, then the half dropped (the uTP crate acts on a shutdown only
    // when woken, which dropping the half does).
    std::future::poll_fn(|cx| {
        let _ = std::pin::Pin::new(&mut wr).poll_shutdown(cx);
        std::task::Poll::Ready(())
    })
    .await;
    drop(wr);
    // Then read to the end: over uTP the peer's own close is taken (and acknowledged) only
    // while the connection is held, and the peer keeps it until then. (TCP: the kernel does.)
    if drain {
        let to_end = async {
            let mut sink = [0u8; 4096];
            while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, to_end).await;
    }
    result
}

async fn talk<R, W>(
    ctx: &PeerCtx,
    reader: &mut MessageReader<R>,
    writer: &mut MessageWriter<W>,
) -> Result<(), PeerFetchError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let hello = ExtendedHandshake {
        ut_metadata: Some(OUR_UT_METADATA),
        client: Some(CLIENT.into()),
        ..ExtendedHandshake::default()
    };
    writer
        .send(&Message::Extended {
            id: HANDSHAKE_ID,
            payload: hello.encode().into(),
        })
        .await?;
    let mut their_id: Option<u8> = None;
    loop {
        let msg = tokio::time::timeout(PEER_SILENCE, reader.next())
            .await
            .map_err(|_| PeerFetchError::Silent)??;
        let Message::Extended { id, payload } = msg else {
            continue; // bitfield, have, choke...: not needed for metadata
        };
        if id == HANDSHAKE_ID {
            let Ok(hs) = ExtendedHandshake::decode(&payload) else {
                return Err(PeerFetchError::Unsuitable);
            };
            let (Some(tid), Some(size)) = (hs.ut_metadata, hs.metadata_size) else {
                return Err(PeerFetchError::Unsuitable);
            };
            their_id = Some(tid);
            let mut f = lock(&ctx.fetch);
            f.metadata.set_size(ctx.id, size)?;
            f.answering.insert(ctx.addr);
        } else if id == OUR_UT_METADATA {
            let Some(tid) = their_id else { continue };
            match MetadataMsg::decode(&payload) {
                Ok(MetadataMsg::Data { piece, data, .. }) => {
                    let progress = lock(&ctx.fetch).metadata.on_data(ctx.id, piece, data)?;
                    match progress {
                        Progress::Complete(info) => {
                            let _ = ctx.done.send((*info, ctx.addr)).await;
                            return Ok(());
                        }
                        Progress::HashMismatch { blamed } if blamed.contains(&ctx.id) => {
                            return Err(PeerFetchError::Blamed);
                        }
                        _ => {}
                    }
                }
                Ok(MetadataMsg::Reject { piece }) => {
                    lock(&ctx.fetch).metadata.request_failed(ctx.id, piece);
                }
                Ok(MetadataMsg::Request { piece }) => {
                    // We have nothing to give yet.
                    let reject = MetadataMsg::Reject { piece }.encode();
                    writer
                        .send(&Message::Extended {
                            id: tid,
                            payload: reject.into(),
                        })
                        .await?;
                }
                Err(_) => {}
            }
        } else {
            continue;
        }
        // Keep this peer's requests topped up.
        let Some(tid) = their_id else { continue };
        let mut wanted = Vec::new();
        {
            let mut f = lock(&ctx.fetch);
            while let Some(piece) = f.metadata.next_request(ctx.id) {
                wanted.push(piece);
            }
        }
        let msgs: Vec<Message> = wanted
            .into_iter()
            .map(|piece| Message::Extended {
                id: tid,
                payload: MetadataMsg::Request { piece }.encode().into(),
            })
            .collect();
        if !msgs.is_empty() {
            writer.send_many(&msgs).await?;
        }
    }
}
