//! The engine: one torrent's tokio tasks and the state they share.
//!
//! Tasks (all end when `shutdown` flips to true):
//! - the listener accepts incoming peer connections;
//! - the connector turns addresses from discovery (trackers, DHT, `--peer`, peers' PEX
//!   messages; each tagged with its [`PeerSource`], see `discovery`) into outgoing
//!   connections, up to `max_peers`;
//! - one task per peer reads its messages and asks the picker for blocks; a writer task per peer
//!   sends what the session queues for it;
//! - a blocking-pool job hashes each completed piece before anyone sees a byte of it;
//! - the announcer (see `tracker::announcer`) reports to trackers and feeds the connector;
//! - with `--cache-dir`, a writer task puts verified pieces on disk (see `disk`).
//!
//! Readers (`read`) never talk to peers: they state what they want in the picker, poke the peers
//! to refill their request queues, and wait on `verified` until the store holds every piece they
//! need.
//!
//! Locking: one `std::sync::Mutex<State>`, held for short synchronous steps and never across an
//! `.await` (mini-redis style). Hashing and copying piece data happen outside it.

mod connect;
mod discovery;
mod disk;
mod peer;
mod read;
#[cfg(test)]
mod tests;
mod verify;
mod window;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{mpsc, watch};

use crate::bitfield::Bitfield;
use crate::choker::Choker;
use crate::metainfo::Torrent;
use crate::picker::{PeerId, Picker, ReaderId};
use crate::piece::Geometry;
use crate::ratelimit::RateLimit;
use crate::store::Store;
use crate::tracker::announcer::{self, AnnounceParams, Progress, TrackerStatus};

pub use discovery::{PeerSource, SourceCount};
pub use disk::{DiskCacheConfig, DiskStats};
pub use peer::PeerTimeouts;
pub use read::{ReadError, ReaderStatus};

/// How the session runs; the CLI fills it from its flags.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on for incoming peers; port 0 picks a free one.
    pub listen: SocketAddr,
    pub max_peers: usize,
    /// Byte budget of the in-memory piece store.
    pub cache_bytes: u64,
    /// Extra peers to connect to at start (besides trackers).
    pub peers: Vec<SocketAddr>,
    /// Pieces fetched ahead of a sequential reader at first, and at least; the window grows
    /// with the reader's consumption rate (about 20 s of it).
    pub readahead_bytes: u64,
    /// Largest readahead window a sequential reader grows to.
    pub max_readahead_bytes: u64,
    /// The DHT node to find peers with and announce to; `None` with `--no-dht`.
    pub dht: Option<crate::dht::Dht>,
    /// Caps in bytes/s; `None`: unlimited.
    pub max_download_rate: Option<u64>,
    pub max_upload_rate: Option<u64>,
    /// Never upload (`--no-upload`): nobody is unchoked.
    pub no_upload: bool,
    /// When a peer counts as stalled or useless.
    pub peer_timeouts: PeerTimeouts,
    /// Keep verified pieces on disk too (`--cache-dir`); `None`: nothing touches the disk.
    pub disk_cache: Option<DiskCacheConfig>,
}

/// Peers we upload to at once (one of them the optimistic unchoke).
const UPLOAD_SLOTS: usize = 8;

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 6881)),
            max_peers: 80,
            cache_bytes: 256 * 1024 * 1024,
            peers: Vec::new(),
            readahead_bytes: 4 * 1024 * 1024,
            max_readahead_bytes: 64 * 1024 * 1024,
            dht: None,
            max_download_rate: None,
            max_upload_rate: None,
            no_upload: false,
            peer_timeouts: PeerTimeouts::default(),
            disk_cache: None,
        }
    }
}

#[derive(Debug, Error)]
pub enum SessionError {
    #[error("port {port} is already in use (choose another with --port)")]
    PortInUse { port: u16 },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    DiskCache(#[from] crate::store::disk::DiskStoreError),
}

/// What the status line and `btfs status` show.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub peers: usize,
    pub known_peers: usize,
    /// Connected and known peers of each source, in [`PeerSource::ALL`] order.
    pub by_source: Vec<SourceCount>,
    pub downloaded: u64,
    pub uploaded: u64,
    pub verified_pieces: u32,
    pub total_pieces: u32,
    /// Bytes of the verified pieces, and of the whole torrent.
    pub verified_bytes: u64,
    pub total_bytes: u64,
    pub cache_used: u64,
    pub cache_budget: u64,
    /// The disk cache; `None` without `--cache-dir`.
    pub disk: Option<DiskStats>,
    pub hash_failures: u64,
    /// Blocks a read waited on that were asked of a second peer because the first was late.
    pub rerequests: u64,
    pub banned: usize,
    pub trackers: Vec<TrackerStatus>,
    /// Good nodes in the DHT routing table; `None` without DHT.
    pub dht_nodes: Option<usize>,
    /// Each open file's reader, in the order they were opened.
    pub readers: Vec<ReaderStatus>,
    /// How long the oldest read still waiting for its pieces has waited.
    pub longest_wait: Option<Duration>,
    /// Why the disk cache cannot write now (disk full, directory gone), if it cannot.
    pub disk_failing: Option<String>,
}

/// A handle to a running session; cheap to clone.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

/// Messages the session sends to one peer task.
#[derive(Debug)]
pub(crate) enum PeerCmd {
    /// Priorities changed or blocks were released: ask the picker for more.
    Refill,
    /// We verified a piece: tell the peer (`have`).
    Have(u32),
    /// Another peer delivered this block first (endgame): cancel our request.
    Cancel(crate::picker::Block),
    /// The choker's decision: let the peer download from us, or not.
    SetUnchoked(bool),
    /// The peer sent bad data or we are shutting down: close the connection.
    Disconnect,
}

pub(crate) struct Shared {
    torrent: Arc<Torrent>,
    geometry: Geometry,
    config: Config,
    peer_id: [u8; 20],
    listen_port: u16,
    /// Only ever locked briefly from synchronous code: never held across an `.await`.
    state: Mutex<State>,
    /// Bumped after every change of the store (a piece verified or evicted); readers wait on it.
    verified: watch::Sender<u64>,
    shutdown: watch::Sender<bool>,
    downloaded: AtomicU64,
    uploaded: AtomicU64,
    hash_failures: AtomicU64,
    /// Caps on block data in and out, shared fairly by all peers.
    down_limit: RateLimit,
    up_limit: RateLimit,
    trackers: std::sync::OnceLock<watch::Receiver<Vec<TrackerStatus>>>,
    /// The disk cache, if `--cache-dir` was given.
    disk: Option<disk::Disk>,
    /// Addresses learned from discovery, tagged with their source, consumed by the connector.
    discovered: mpsc::Sender<(PeerSource, Vec<SocketAddr>)>,
    /// Wakes the connector to redial known peers now: a read waits and no peer is connected
    /// (seeds drop a peer that looked like a seed, and our cache may have evicted since).
    redial: tokio::sync::Notify,
    /// Bytes held by the read buffers of all peer connections: bounded per connection by the
    /// largest frame we accept, whatever a peer sends.
    read_buffers: Arc<std::sync::atomic::AtomicUsize>,
    /// The tracker task, awaited (briefly) at shutdown so `stopped` reaches the trackers.
    announcer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

pub(crate) struct State {
    picker: Picker,
    /// Whom we upload to; ticked by the rechoke task.
    choker: Choker,
    store: Store,
    /// Which pieces the disk cache holds (empty without one).
    disk: disk::Index,
    peers: HashMap<PeerId, PeerEntry>,
    /// Pieces being assembled from blocks, by piece index.
    assembly: HashMap<u32, verify::Assembly>,
    /// Block hashes from peers whose piece failed its check, to find the liar when the piece
    /// later verifies (libtorrent's "smart ban").
    suspects: verify::Suspects,
    banned: HashSet<IpAddr>,
    /// Every address discovery has told us about, with who told us.
    known: discovery::Known,
    readers: HashMap<u64, read::Reader>,
    /// Reads waiting for pieces (by their urgent picker id), and since when.
    waits: HashMap<ReaderId, std::time::Instant>,
    /// Set by the first read; until then nothing is downloaded.
    reading_started: bool,
    next_peer: u64,
    next_reader: u64,
}

pub(crate) struct PeerEntry {
    addr: SocketAddr,
    source: PeerSource,
    cmd: mpsc::UnboundedSender<PeerCmd>,
    /// Where it accepts connections: `addr` if outgoing, else the port its extended handshake
    /// named; what PEX tells other peers.
    listen: Option<SocketAddr>,
    /// It has every piece.
    seed: bool,
}

/// Binds the port peers connect to. Done first, before any metadata fetch, so that trackers
/// learn the real port and a port in use fails at once.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, SessionError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AddrInUse => SessionError::PortInUse { port: addr.port() },
            _ => SessionError::Listen { addr, source },
        })
}

impl Session {
    /// Starts the session's tasks on a listener from [`bind`]; returns at once, ready to serve
    /// reads.
    pub async fn start(
        torrent: Arc<Torrent>,
        config: Config,
        listener: tokio::net::TcpListener,
    ) -> Result<Session, SessionError> {
        let listen_port = listener
            .local_addr()
            .map_err(|source| SessionError::Listen {
                addr: config.listen,
                source,
            })?
            .port();
        let geometry = torrent.info.geometry.clone();
        let mut picker = Picker::new(geometry.clone());
        picker.set_background(false);
        let (disk, on_disk) = match &config.disk_cache {
            Some(c) => match disk::Disk::open(c, torrent.info_hash.0, &geometry).await? {
                Some((d, pieces)) => (Some(d), pieces),
                None => (None, Vec::new()),
            },
            None => (None, Vec::new()),
        };
        let mut disk_index = disk::Index::default();
        for &p in &on_disk {
            picker.piece_verified(p);
            disk_index.insert(p);
        }
        let (discovered, discovered_rx) = mpsc::channel(64);
        let shared = Arc::new(Shared {
            peer_id: crate::wire::new_peer_id(),
            listen_port,
            state: Mutex::new(State {
                picker,
                choker: Choker::new(UPLOAD_SLOTS),
                store: Store::new(config.cache_bytes),
                disk: disk_index,
                peers: HashMap::new(),
                assembly: HashMap::new(),
                suspects: verify::Suspects::default(),
                banned: HashSet::new(),
                known: discovery::Known::default(),
                readers: HashMap::new(),
                waits: HashMap::new(),
                reading_started: false,
                next_peer: 0,
                next_reader: 0,
            }),
            torrent,
            geometry,
            verified: watch::channel(0).0,
            shutdown: watch::channel(false).0,
            downloaded: AtomicU64::new(0),
            uploaded: AtomicU64::new(0),
            hash_failures: AtomicU64::new(0),
            down_limit: RateLimit::new(config.max_download_rate),
            up_limit: RateLimit::new(config.max_upload_rate),
            trackers: Default::default(),
            disk,
            discovered,
            redial: tokio::sync::Notify::new(),
            read_buffers: Default::default(),
            announcer: Mutex::new(None),
            config,
        });
        disk::spawn_writer(&shared);
        tokio::spawn(connect::listen(shared.clone(), listener));
        tokio::spawn(connect::connect_loop(shared.clone(), discovered_rx));
        if !shared.config.no_upload {
            tokio::spawn(rechoke(shared.clone()));
        }
        if !shared.config.peers.is_empty() {
            let _ = shared
                .discovered
                .try_send((PeerSource::Manual, shared.config.peers.clone()));
        }
        let session = Session { shared };
        session.spawn_announcer();
        if let Some(dht) = &session.shared.config.dht {
            let s = &session.shared;
            let port = (!s.torrent.info.private).then_some(s.listen_port);
            if s.torrent.info.private {
                tracing::info!("private torrent: no DHT (BEP 27)");
            } else {
                crate::dht::spawn_announce_loop(
                    dht.clone(),
                    s.torrent.info_hash.0,
                    port,
                    discovery::tagged(&s.discovered, PeerSource::Dht),
                    s.shutdown.subscribe(),
                );
            }
        }
        Ok(session)
    }

    fn spawn_announcer(&self) {
        let s = &self.shared;
        let tiers = s.torrent.trackers.clone();
        if tiers.is_empty() {
            return;
        }
        let params = AnnounceParams {
            info_hash: s.torrent.info_hash.0,
            peer_id: s.peer_id,
            port: s.listen_port,
            key: rand::random(),
            num_want: 80,
        };
        let weak = Arc::downgrade(s);
        let total = s.geometry.total_length();
        let progress = Arc::new(move || match weak.upgrade() {
            Some(s) => Progress {
                uploaded: s.uploaded.load(Ordering::Relaxed),
                downloaded: s.downloaded.load(Ordering::Relaxed),
                left: total.saturating_sub(s.lock().verified_bytes(&s.geometry)),
            },
            None => Progress {
                uploaded: 0,
                downloaded: 0,
                left: total,
            },
        });
        let (handle, trackers) = announcer::spawn(
            tiers,
            params,
            progress,
            discovery::tagged(&s.discovered, PeerSource::Tracker),
            s.shutdown.subscribe(),
        );
        let _ = s.trackers.set(trackers);
        *s.announcer.lock().expect("announcer lock") = Some(handle);
    }

    pub fn torrent(&self) -> &Arc<Torrent> {
        &self.shared.torrent
    }

    pub fn listen_port(&self) -> u16 {
        self.shared.listen_port
    }

    /// Whether peers are also looked for in the DHT.
    pub fn has_dht(&self) -> bool {
        self.shared.config.dht.is_some() && !self.shared.torrent.info.private
    }

    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        let st = s.lock();
        Stats {
            peers: st.peers.len(),
            known_peers: st.known.len(),
            by_source: discovery::by_source(&st.known, st.peers.values().map(|p| p.source)),
            downloaded: s.downloaded.load(Ordering::Relaxed),
            uploaded: s.uploaded.load(Ordering::Relaxed),
            verified_pieces: st.picker.have_bitfield().count_ones(),
            total_pieces: s.geometry.piece_count(),
            verified_bytes: st.verified_bytes(&s.geometry),
            total_bytes: s.geometry.total_length(),
            cache_used: st.store.used_bytes(),
            cache_budget: st.store.budget(),
            disk: s.disk.as_ref().map(disk::Disk::stats),
            hash_failures: s.hash_failures.load(Ordering::Relaxed),
            rerequests: st.picker.rerequests(),
            banned: st.banned.len(),
            trackers: s
                .trackers
                .get()
                .map(|t| t.borrow().clone())
                .unwrap_or_default(),
            dht_nodes: s.config.dht.as_ref().map(|d| d.node_count()),
            readers: read::reader_status(s, &st),
            longest_wait: st.waits.values().min().map(|t| t.elapsed()),
            disk_failing: s.disk.as_ref().and_then(disk::Disk::failing),
        }
    }

    /// Bytes of block data received so far (cheap; for watching progress).
    pub fn downloaded_bytes(&self) -> u64 {
        self.shared.downloaded.load(Ordering::Relaxed)
    }

    /// Fails every waiting read at once and starts closing connections; call before unmounting
    /// so that no FUSE request is left waiting on the network.
    pub fn stop(&self) {
        let s = &self.shared;
        s.shutdown.send_replace(true);
        let st = s.lock();
        for p in st.peers.values() {
            let _ = p.cmd.send(PeerCmd::Disconnect);
        }
    }

    /// `stop`, then tells trackers we stopped and finishes queued disk-cache writes, each
    /// bounded by a timeout so an unreachable tracker or a slow disk cannot hold up the exit.
    pub async fn shutdown(&self) {
        self.stop();
        let s = &self.shared;
        let handle = s.announcer.lock().expect("announcer lock").take();
        let announced = async {
            if let Some(h) = handle {
                let _ = tokio::time::timeout(Duration::from_millis(1500), h).await;
            }
        };
        // Queued disk writes finish meanwhile, so the next mount finds them.
        tokio::join!(announced, disk::drain(s));
    }
}

/// Applies the choker's decisions once a second (it re-ranks every 10 s and rotates the
/// optimistic unchoke every 30 s by itself).
async fn rechoke(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let mut st = shared.lock();
        let seed = st.picker.have_bitfield().is_full();
        for (id, unchoke) in st.choker.tick(std::time::Instant::now(), seed) {
            if let Some(p) = st.peers.get(&PeerId(id)) {
                let _ = p.cmd.send(PeerCmd::SetUnchoked(unchoke));
            }
        }
    }
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock already aborted a task; the state is still usable for
        // shutting down, so recover instead of cascading panics into every FUSE reply.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Addresses a peer named in a PEX message (already filtered by `pex`) join discovery.
    /// Dropped if the connector is behind: PEX repeats itself, trackers and the DHT too.
    pub(crate) fn discover_from_pex(&self, addrs: Vec<SocketAddr>) {
        let _ = self.discovered.try_send((PeerSource::Pex, addrs));
    }

    /// Asks every peer to top up its request queue (priorities changed or blocks were freed).
    pub(crate) fn refill_all(st: &State) {
        for p in st.peers.values() {
            let _ = p.cmd.send(PeerCmd::Refill);
        }
    }
}

impl State {
    fn verified_bytes(&self, g: &Geometry) -> u64 {
        self.picker
            .have_bitfield()
            .iter_ones()
            .filter_map(|i| g.piece(i))
            .map(|p| u64::from(g.piece_len(p)))
            .sum()
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Session>();
    let _ = (ReaderId(0), Bitfield::new(0));
}
