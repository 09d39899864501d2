//! The engine of one torrent: its tokio tasks and the state they share.
//!
//! Tasks (all end when `shutdown` flips to true):
//! - the incoming task takes connections the [`Host`] routed to this torrent (`connect.rs`);
//! - the connector turns addresses from discovery (trackers, DHT, local service discovery,
//!   `--peer`, peers' PEX messages; each tagged with its [`PeerSource`], see `discovery`)
//!   into outgoing connections, up to `max_peers` (`connect.rs`);
//! - one task per peer reads its messages and asks the picker for blocks; a writer task per peer
//!   sends what the session queues for it (`peer/`);
//! - a blocking-pool job hashes each completed piece before anyone sees a byte of it
//!   (`verify.rs`);
//! - the announcer (see `tracker::announcer`) reports to trackers and feeds the connector;
//! - the tick task, once a second, applies the choker's decisions and asks the background
//!   policy (`background.rs`) where fetching may go;
//! - with `--cache-dir`, a writer task puts verified pieces on disk (`disk.rs`);
//! - one task per web seed asks its HTTP server for the blocks the picker gives it
//!   (`webseed/`).
//!
//! Readers (`read.rs`) never talk to peers: they state what they want in the picker, poke the
//! peers to refill their request queues, and wait on `verified` until memory holds every piece
//! they need. Opening a media file wants what a player reads first, in its order: the head,
//! the index at the end (`media.rs` finds an mp4's `moov` from the head), the first frames.
//!
//! The boundary: a session owns one torrent's peers, pieces and readers. What a process shares
//! between torrents comes from outside: the [`Host`] (listening port, peer id), the DHT node
//! (`Config::dht`), local service discovery (`Config::lsd`), and in a library the memory
//! budget (`Config::memory`) and the peer slots and rate caps (`Config::caps`, `caps.rs`).
//!
//! State and locking: see `shared.rs` (the lock order) and `state.rs` (who owns what).

mod addrbook;
mod assembly;
mod background;
mod caps;
mod connect;
mod dial;
mod discovery;
mod disk;
mod disk_io;
mod encryption;
mod host;
mod idle;
mod listen;
mod media;
mod memory;
mod peer;
mod peers;
mod read;
mod readers;
mod residency;
mod shared;
mod sleep;
mod state;
mod stream;
#[cfg(test)]
mod tests;
mod transport;
mod turnover;
mod verify;
mod webseed;
mod window;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::metainfo::Torrent;
use crate::tracker::announcer::{self, AnnounceParams, Progress, TrackerStatus};
use shared::Shared;
use state::State;

pub use background::Background;
pub use caps::SharedCaps;
pub use discovery::{PeerSource, SourceCount};
pub use disk::{DiskCacheConfig, DiskStats};
pub use encryption::Encryption;
pub use host::{Host, HostOptions};
pub use peer::PeerTimeouts;
pub use read::ReadError;
pub use readers::{ReadHandle, ReaderStatus};
pub use webseed::{WebSeedConfig, WebSeedState, WebSeedStatus};

/// How the session runs; the CLI fills it from its flags.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on for incoming peers; port 0 picks a free one. The [`Host`] binds it.
    pub listen: SocketAddr,
    pub max_peers: usize,
    /// Byte budget of the in-memory piece store.
    pub cache_bytes: u64,
    /// A memory budget shared with other sessions (a library's torrents), least recently
    /// used across them; `None`: a budget of `cache_bytes` of the session's own.
    pub memory: Option<crate::store::MemoryPool>,
    /// Extra peers to connect to at start (besides trackers).
    pub peers: Vec<SocketAddr>,
    /// Pieces fetched ahead of a sequential reader at first, and at least; the window grows
    /// with the reader's consumption rate (about 20 s of it).
    pub readahead_bytes: u64,
    /// Largest readahead window a sequential reader grows to.
    pub max_readahead_bytes: u64,
    /// The DHT node to find peers with and announce to; `None` with `--no-dht`.
    pub dht: Option<crate::dht::Dht>,
    /// Local service discovery, to announce the torrent on and find peers with on the local
    /// network; `None` with `--no-lsd`.
    pub lsd: Option<crate::lsd::Lsd>,
    /// Caps in bytes/s; `None`: unlimited.
    pub max_download_rate: Option<u64>,
    pub max_upload_rate: Option<u64>,
    /// Peer slots and rate caps shared with other sessions (a library's torrents, see
    /// `caps.rs`); `None`: `max_peers` and the rate caps are this session's own.
    pub caps: Option<SharedCaps>,
    /// The name every line this session logs carries (a library's folder); `None`: no name,
    /// as for the one torrent of a mount.
    pub log_name: Option<String>,
    /// Never upload (`--no-upload`): nobody is unchoked.
    pub no_upload: bool,
    /// When a peer counts as stalled or useless.
    pub peer_timeouts: PeerTimeouts,
    /// Keep verified pieces on disk too (`--cache-dir`); `None`: nothing touches the disk.
    pub disk_cache: Option<DiskCacheConfig>,
    /// What to fetch when no reader is waiting (`--background`).
    pub background: Background,
    /// The torrent's web seeds (BEP 19): whether to use them, and their limits.
    pub web_seeds: WebSeedConfig,
    /// Which connections are encrypted, both ways (`--encryption`).
    pub encryption: Encryption,
    /// Sleep after this long without a read (`--idle-after`, see `idle.rs`); `None`: never.
    pub idle_after: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 6881)),
            max_peers: 80,
            cache_bytes: 256 * 1024 * 1024,
            memory: None,
            peers: Vec::new(),
            readahead_bytes: 4 * 1024 * 1024,
            max_readahead_bytes: 64 * 1024 * 1024,
            dht: None,
            lsd: None,
            max_download_rate: None,
            max_upload_rate: None,
            caps: None,
            log_name: None,
            no_upload: false,
            peer_timeouts: PeerTimeouts::default(),
            disk_cache: None,
            background: Background::default(),
            web_seeds: WebSeedConfig::default(),
            encryption: Encryption::default(),
            idle_after: None,
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
    DiskCache(#[from] crate::store::DiskStoreError),
}

/// What the status line and `btfs status` show.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub peers: usize,
    /// Connected peers whose connection is RC4-encrypted.
    pub encrypted_peers: usize,
    /// Connected peers over TCP and over uTP.
    pub tcp_peers: usize,
    pub utp_peers: usize,
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
    /// Our plaintext handshakes a peer hung up on, not retried encrypted (see `--encryption`).
    pub refused_plaintext: u64,
    /// Urgent blocks asked of a second peer (endgame: the first was late with them, or had
    /// them queued deep).
    pub rerequests: u64,
    /// Of `downloaded`, bytes of copies another source had delivered first.
    pub wasted: u64,
    pub banned: usize,
    pub trackers: Vec<TrackerStatus>,
    /// Good nodes in the DHT routing tables; `None` without DHT.
    pub dht_nodes: Option<usize>,
    /// Of them, in the IPv4 and in the IPv6 table (BEP 32).
    pub dht_nodes_v4: Option<usize>,
    pub dht_nodes_v6: Option<usize>,
    /// Datagrams the kernel dropped on the process's UDP ports (a full receive buffer slows
    /// uTP peers down); `None` without UDP.
    pub udp_drops: Option<u64>,
    /// Each open file's reader, in the order they were opened.
    pub readers: Vec<ReaderStatus>,
    /// How long the oldest read still waiting for its pieces has waited.
    pub longest_wait: Option<Duration>,
    /// Why the disk cache cannot write now (disk full, directory gone), if it cannot.
    pub disk_failing: Option<String>,
    /// The torrent's web seeds, in `url-list` order (empty with `--no-web-seeds`).
    pub web_seeds: Vec<WebSeedStatus>,
    /// Asleep after `Config::idle_after` without a read: no peers, no announces.
    pub asleep: bool,
}

/// A handle to a running session; cheap to clone.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
    /// Keeps the listening port open while the session runs.
    _host: Host,
}

impl Session {
    /// Starts the session's tasks, taking incoming peers for this torrent from `host`; returns
    /// at once, ready to serve reads.
    pub async fn start(
        torrent: Arc<Torrent>,
        config: Config,
        host: &Host,
    ) -> Result<Session, SessionError> {
        let span = match &config.log_name {
            Some(name) => tracing::info_span!("torrent", name = %name),
            None => tracing::Span::none(),
        };
        Self::start_in(torrent, config, host, span.clone())
            .instrument(span)
            .await
    }

    /// [`Session::start`] in the session's span: every task it starts carries it.
    async fn start_in(
        torrent: Arc<Torrent>,
        config: Config,
        host: &Host,
        span: tracing::Span,
    ) -> Result<Session, SessionError> {
        let geometry = torrent.info.geometry.clone();
        let memory = match &config.memory {
            Some(pool) => crate::store::Store::join(pool),
            None => crate::store::Store::new(config.cache_bytes),
        };
        // One task takes both pools' evictions.
        let evictions = memory.evictions();
        let opened = match &config.disk_cache {
            Some(c) => disk::open(c, torrent.info_hash.0, &geometry, evictions.clone()).await?,
            None => None,
        };
        let files = (torrent.info.files.iter())
            .map(|f| geometry.pieces_in(f.offset, f.length))
            .collect();
        let mut state = State::new(geometry.clone(), memory, config.background, files);
        if let Some(o) = &opened {
            state.disk_opened(o.floor(), o.pieces.iter().copied());
        }
        let incoming = host.register(torrent.info_hash.0, config.encryption);
        let (discovered, discovered_rx) = mpsc::channel(64);
        let (shutdown, _) = watch::channel(false);
        let want_peers: Arc<tokio::sync::Notify> = Arc::default();
        let (disk, writer) = opened.map(disk::Disk::new).unzip();
        let (down_limit, up_limit) = caps::rate_limits(&config);
        let shared = Arc::new(Shared {
            peer_id: host.peer_id(),
            listen_port: host.port(),
            dialer: host.dialer(),
            state: Mutex::new(state),
            disk,
            trackers: watch::channel(Vec::new()).0,
            idle: idle::Idle::new(),
            torrent,
            geometry,
            verified: watch::channel(0).0,
            shutdown,
            downloaded: AtomicU64::new(0),
            uploaded: AtomicU64::new(0),
            hash_failures: AtomicU64::new(0),
            wasted: AtomicU64::new(0),
            refused_plaintext: AtomicU64::new(0),
            down_limit,
            up_limit,
            announcers: watch::channel(0).0,
            discovered,
            known: watch::channel(Default::default()).0,
            redial: tokio::sync::Notify::new(),
            want_peers,
            read_buffers: Default::default(),
            uploads_queued: Default::default(),
            span,
            config,
        });
        if let Some(end) = writer {
            tokio::spawn(disk_io::write_loop(Arc::downgrade(&shared), end).in_current_span());
        }
        tokio::spawn(connect::run(shared.clone(), discovered_rx, incoming).in_current_span());
        tokio::spawn(tick(shared.clone()).in_current_span());
        tokio::spawn(memory::take_evictions(shared.clone(), evictions).in_current_span());
        webseed::spawn_all(&shared);
        if !shared.config.peers.is_empty() {
            let _ = shared
                .discovered
                .try_send((PeerSource::Manual, shared.config.peers.clone()));
        }
        if shared.torrent.info.private && shared.config.dht.is_some() {
            tracing::info!("private torrent: no DHT (BEP 27)");
        }
        if shared.torrent.info.private && shared.config.lsd.is_some() {
            tracing::info!("private torrent: no local service discovery (BEP 27)");
        }
        spawn_discovery(&shared, host, shared.idle.period_end());
        if let Some(after) = shared.config.idle_after {
            tokio::spawn(sleep::run(shared.clone(), after).in_current_span());
        }
        Ok(Session {
            shared,
            _host: host.clone(),
        })
    }

    pub fn torrent(&self) -> &Arc<Torrent> {
        &self.shared.torrent
    }

    /// The span the session's log lines carry (none for the one torrent of a mount): reads
    /// run in it too.
    pub fn span(&self) -> &tracing::Span {
        &self.shared.span
    }

    pub fn listen_port(&self) -> u16 {
        self.shared.listen_port
    }

    /// Whether peers are also looked for in the DHT.
    pub fn has_dht(&self) -> bool {
        self.shared.config.dht.is_some() && !self.shared.torrent.info.private
    }

    /// Asleep (`--idle-after`): cheaper to ask than [`Session::stats`].
    pub fn is_asleep(&self) -> bool {
        self.shared.idle.is_asleep()
    }

    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        // Read before the state lock: nothing else is locked while it is held.
        let trackers = s.trackers.borrow().clone();
        let dht_nodes = s.config.dht.as_ref().map(|d| d.node_count());
        let dht_of = |f| s.config.dht.as_ref().map(|d| d.node_count_of(f));
        let book = s.known.borrow().clone();
        let mut by_source = book.by_source;
        let st = s.lock();
        st.peers.count_connected(&mut by_source);
        Stats {
            peers: st.peers.len(),
            encrypted_peers: st.peers.encrypted(),
            tcp_peers: st.peers.len() - st.peers.utp(),
            utp_peers: st.peers.utp(),
            known_peers: book.known,
            by_source,
            downloaded: s.downloaded.load(Ordering::Relaxed),
            uploaded: s.uploaded.load(Ordering::Relaxed),
            verified_pieces: st.picker.have_bitfield().count_ones(),
            total_pieces: s.geometry.piece_count(),
            verified_bytes: st.verified_bytes(),
            total_bytes: s.geometry.total_length(),
            cache_used: st.residency.memory_used(),
            cache_budget: st.residency.memory_budget(),
            disk: s.disk.as_ref().map(disk::Disk::stats),
            hash_failures: s.hash_failures.load(Ordering::Relaxed),
            refused_plaintext: s.refused_plaintext.load(Ordering::Relaxed),
            rerequests: st.picker.rerequests(),
            wasted: s.wasted.load(Ordering::Relaxed),
            banned: st.peers.banned().len(),
            trackers,
            dht_nodes,
            dht_nodes_v4: dht_of(crate::net::Family::V4),
            dht_nodes_v6: dht_of(crate::net::Family::V6),
            udp_drops: self._host.udp_drops(),
            readers: (st.readers).status(&s.torrent.info.files, &s.geometry, |p| st.picker.have(p)),
            longest_wait: st.readers.longest_wait(),
            disk_failing: s.disk.as_ref().and_then(disk::Disk::failing),
            web_seeds: st.web_seeds.status(tokio::time::Instant::now()),
            asleep: s.idle.is_asleep(),
        }
    }

    /// A read starts: a sleeping session wakes (`idle.rs`).
    fn read_starts(&self) {
        let s = &self.shared;
        if s.idle.read_starts() {
            let _span = s.span.enter();
            sleep::wake(s, |end| spawn_discovery(s, &self._host, end));
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
        // Under the lock peers are admitted with: none slips in after this.
        s.idle.end_period();
        let mut st = s.lock();
        st.peers.broadcast(|| peers::PeerCmd::Disconnect);
        // Its memory goes to the torrents sharing the budget.
        st.residency.release_memory();
    }

    /// `stop`, then tells trackers we stopped and finishes queued disk-cache writes, each
    /// bounded by a timeout so an unreachable tracker or a slow disk cannot hold up the exit.
    pub async fn shutdown(&self) {
        self.stop();
        let s = &self.shared;
        let mut announced = s.announcers.subscribe();
        let announced = async {
            let done = announced.wait_for(|&n| n == 0);
            let _ = tokio::time::timeout(Duration::from_millis(1500), done).await;
        };
        let drained = async {
            if let Some(d) = &s.disk {
                d.drain().await;
            }
        };
        // Queued disk writes finish meanwhile, so the next mount finds them.
        tokio::join!(announced, drained);
    }
}

/// Starts what announces the torrent and looks for peers (trackers, the DHT, local service
/// discovery; not for a private torrent but its trackers), until `end` flips: at shutdown,
/// or when the torrent falls asleep (`idle.rs`; a wake starts them again).
fn spawn_discovery(shared: &Arc<Shared>, host: &Host, end: watch::Receiver<bool>) {
    // Each task it starts carries the session's span (a wake comes from a read's task).
    let _span = shared.span.enter();
    let params = AnnounceParams::new(shared.torrent.info_hash.0, host.peer_id(), host.port())
        .listening_on(host.local_addrs());
    spawn_announcer(shared, params, end.clone());
    let private = shared.torrent.info.private;
    if let Some(dht) = shared.config.dht.as_ref().filter(|_| !private) {
        crate::dht::spawn_announce_loop(
            dht.clone(),
            shared.torrent.info_hash.0,
            Some(shared.listen_port),
            discovery::tagged(&shared.discovered, PeerSource::Dht),
            shared.want_peers.clone(),
            end.clone(),
        );
    }
    if let Some(lsd) = shared.config.lsd.as_ref().filter(|_| !private) {
        lsd.spawn_announce(
            shared.torrent.info_hash,
            shared.listen_port,
            discovery::tagged(&shared.discovered, PeerSource::Lsd),
            end,
        );
    }
}

/// Starts the tracker announcer, until `end` flips; each tracker's status goes to
/// `Shared::trackers`, and `Shared::announcers` counts it until it has said `stopped`.
fn spawn_announcer(shared: &Arc<Shared>, params: AnnounceParams, end: watch::Receiver<bool>) {
    let tiers = shared.torrent.trackers.clone();
    if tiers.is_empty() {
        return;
    }
    shared.announcers.send_modify(|n| *n += 1);
    let peers = discovery::tagged(&shared.discovered, PeerSource::Tracker);
    let more = shared.want_peers.clone();
    let total = shared.torrent.info.geometry.total_length();
    let weak = Arc::downgrade(shared);
    let progress = Arc::new(move || match weak.upgrade() {
        Some(s) => Progress {
            uploaded: s.uploaded.load(Ordering::Relaxed),
            downloaded: s.downloaded.load(Ordering::Relaxed),
            left: total.saturating_sub(s.lock().verified_bytes()),
        },
        None => Progress {
            uploaded: 0,
            downloaded: 0,
            left: total,
        },
    });
    let (handle, mut status) = announcer::spawn(tiers, params, progress, peers, more, end);
    shared
        .trackers
        .send_replace(status.borrow_and_update().clone());
    let shared = Arc::downgrade(shared);
    let forward = async move {
        // Ends when the announcer does (its status sender goes with it).
        while status.changed().await.is_ok() {
            let Some(s) = shared.upgrade() else { return };
            s.trackers.send_replace(status.borrow_and_update().clone());
        }
        let _ = handle.await;
        if let Some(s) = shared.upgrade() {
            s.announcers.send_modify(|n| *n -= 1);
        }
    };
    tokio::spawn(forward.in_current_span());
}

/// Once a second: asks the background policy where fetching may go (it ends a while after
/// the last read), and applies the choker's decisions (it re-ranks every 10 s and rotates the
/// optimistic unchoke every 30 s by itself; nobody is unchoked with `--no-upload`).
async fn tick(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Asleep: no peers to choke, nothing to fetch, no timer until a read wakes us.
    while shared.idle.next_awake_tick(&mut tick, &mut shutdown).await {
        let mut st = shared.lock();
        if st.readers.started() {
            st.refresh_background(tokio::time::Instant::now());
        }
        if shared.config.no_upload {
            continue;
        }
        let seed = st.picker.have_bitfield().is_full();
        for (id, unchoke) in st.choker.tick(std::time::Instant::now(), seed) {
            st.peers.send(id, peers::PeerCmd::SetUnchoked(unchoke));
        }
    }
}
