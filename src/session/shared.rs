//! What a session's tasks share: fixed facts about the torrent, counters, signals, and the
//! state behind its lock.
//!
//! # Locks
//! - `Shared::state` is the session's one state lock. It is held for short synchronous steps,
//!   never across an `.await`, and **no other lock of btfs is taken while it is held**, but
//!   two: the memory pool's (`store::pool`) and the disk pool's books (`store::disk`, no I/O
//!   under them), leaves under it. The other locks are leaves, each taken alone. No session
//!   ever takes another session's state lock: a pool evicts another torrent's pieces by
//!   itself and that session takes the news under its own lock (`memory.rs`). The sleep lock
//!   (`idle.rs`) is taken before a state lock, never under one.
//! - The leaves: the disk pool's I/O lock (`store::disk`, taken only on the blocking pool,
//!   with its books under it) and its note of refused writes (`store::disk::refusals`), the host's
//!   routes (`host.rs`), each rate limit's bucket (`ratelimit.rs`, a tokio mutex held while a
//!   task waits for its tokens: the wait is the point), the DHT node's state (`dht/`), the UDP
//!   trackers' connection ids (`tracker/`), the peer slots a library's sessions share
//!   (`slots.rs`), the status report's rate meters (`app/status`) and the FUSE status probes
//!   (`fs/fuse.rs`).
//! - Everything else moves by owning tasks and channels: tracker status and the disk's
//!   condition are `watch` channels, counters are atomics.
//!
//! Every `std::sync::Mutex` is taken with [`crate::sync::lock`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, watch};

use super::Config;
use super::addrbook::BookStats;
use super::discovery::PeerSource;
use super::disk::Disk;
use super::state::State;
use super::transport::Dialer;
use crate::metainfo::Torrent;
use crate::piece::{Geometry, PieceIndex};
use crate::ratelimit::RateLimit;
use crate::tracker::announcer::TrackerStatus;

pub(crate) struct Shared {
    pub(crate) torrent: Arc<Torrent>,
    pub(crate) geometry: Geometry,
    pub(crate) config: Config,
    pub(crate) peer_id: [u8; 20],
    pub(crate) listen_port: u16,
    /// The transports the host dials with (TCP, uTP).
    pub(crate) dialer: Dialer,
    /// The session state; see the module doc for what may be locked with it (nothing).
    pub(crate) state: Mutex<State>,
    /// Bumped after every change of what memory holds (a piece verified, loaded or evicted);
    /// readers wait on it.
    pub(crate) verified: watch::Sender<u64>,
    /// Flips to true once, at `Session::stop`: every task ends, every waiting read fails.
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) downloaded: AtomicU64,
    pub(crate) uploaded: AtomicU64,
    pub(crate) hash_failures: AtomicU64,
    /// Of `downloaded`, the bytes of blocks another source had delivered first (endgame copies
    /// whose cancel came too late).
    pub(crate) wasted: AtomicU64,
    /// Our plaintext handshakes a peer hung up on, not retried encrypted: such peers most
    /// likely require encryption.
    pub(crate) refused_plaintext: AtomicU64,
    /// Caps on block data in and out, shared fairly by all peers.
    pub(crate) down_limit: Arc<RateLimit>,
    pub(crate) up_limit: Arc<RateLimit>,
    /// Each tracker's last result, kept by the announcer task; empty without trackers.
    pub(crate) trackers: watch::Sender<Vec<TrackerStatus>>,
    /// Announcers that have not yet said `stopped` (or given up): shutdown waits for none,
    /// bounded, so `stopped` reaches the trackers.
    pub(crate) announcers: watch::Sender<usize>,
    /// Asleep or awake (`idle.rs`).
    pub(crate) idle: super::idle::Idle,
    /// The disk cache, if `--cache-dir` was given.
    pub(crate) disk: Option<Disk>,
    /// Addresses learned from discovery, tagged with their source, consumed by the connector.
    pub(crate) discovered: mpsc::Sender<(PeerSource, Vec<SocketAddr>)>,
    /// What the connector knows of peer addresses, published once a second.
    pub(crate) known: watch::Sender<BookStats>,
    /// Wakes the connector to redial known peers now: a read waits and no peer is connected
    /// (seeds drop a peer that looked like a seed, and our cache may have evicted since).
    pub(crate) redial: Notify,
    /// Wakes the trackers and the DHT to look for peers early: a read starves and every known
    /// address was tried (they still keep to their own minimum intervals).
    pub(crate) want_peers: Arc<Notify>,
    /// Block bytes queued for every peer's socket together (bounded, see `peer/upload.rs`).
    pub(crate) uploads_queued: Arc<AtomicUsize>,
    /// Bytes held by the read buffers of all peer connections: bounded per connection by the
    /// largest frame we accept, whatever a peer sends.
    pub(crate) read_buffers: Arc<AtomicUsize>,
    /// Names the torrent in the session's log lines (`Config::log_name`); the tasks the
    /// session starts run in it.
    pub(crate) span: tracing::Span,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Addresses a peer named in a PEX message (already filtered) join discovery. Dropped if
    /// the connector is behind: PEX repeats itself, trackers and the DHT too.
    pub(crate) fn discover_from_pex(&self, addrs: Vec<SocketAddr>) {
        let _ = self.discovered.try_send((PeerSource::Pex, addrs));
    }

    /// Queues a verified piece for the disk cache, if there is one.
    pub(crate) fn save_to_disk(&self, p: PieceIndex, data: Bytes) {
        if let Some(disk) = &self.disk {
            disk.save(p, data);
        }
    }
}
