//! btfs: mount a torrent read-only and stream its files from the swarm.
//!
//! # Modules, top to bottom (each depends only on those below it)
//! - [`mount`]: `btfs mount` glue: a [`session::Session`] behind a [`fs`] mount, signals,
//!   the live status line, `--daemon`, and the order of shutdown.
//! - [`status`]: `btfs status`: the mount's report (JSON on a unix socket, text in the
//!   `user.btfs.status` attribute), transfer rates; [`alerts`]: problems said once.
//! - [`fs`]: the FUSE filesystem: a pure inode table and a thin fuser adapter. Knows files and a
//!   `Backend` that turns `(file, offset, len)` into verified bytes; nothing of peers.
//! - [`session`]: the tokio engine of one torrent: peer connections, discovery, verification,
//!   and `read(handle, file, offset, len)`.
//! - [`picker`]: synchronous, I/O-free: which block to ask which peer for next.
//! - [`choker`]: synchronous: whom we upload to (BEP 3 rechoke, optimistic unchoke).
//! - [`ratelimit`]: token buckets for download/upload caps, fair across peers.
//! - [`store`]: verified pieces in memory, LRU by bytes; [`disk_store`]: the same on disk
//!   (`--cache-dir`), written behind the memory store and re-verified on every load.
//! - [`metadata`]: assembling (and serving) the info dictionary over BEP 9, for magnets.
//! - [`tracker`]: HTTP and UDP announces, and the announcer task.
//! - [`wire`]: peer messages (pure encode/decode) and their tokio framing.
//! - [`metainfo`]: `.torrent` files and magnet links to [`metainfo::Torrent`]; paths made safe.
//! - [`piece`], [`bitfield`], [`bencode`], [`units`]: geometry, piece sets, encoding, sizes.
//!
//! # Tasks and channels of a mount
//! ```text
//! FUSE threads --read--> tokio task --Session::read--> picker wants (urgent + readahead)
//!                                          ^   waits on `verified` (watch<u64>)
//! announcer --peer addrs (mpsc)--> connector --dial--> peer task <--PeerCmd (mpsc)-- session
//! peer task --addrs from PEX messages (the same mpsc)--> connector
//! listener --accept-----------------------------------> peer task --Message (mpsc)--> writer
//! peer task --complete piece--> spawn_blocking SHA1 --> store + picker, `have` to peers,
//!                                                       `verified` bumped
//!                                   --queue (mpsc)--> disk writer --spawn_blocking--> DiskStore
//! read/upload missing from memory --spawn_blocking load + SHA1--> store (or refetch if bad)
//! shutdown (watch<bool>): fails every waiting read, ends every task
//! announcer, DHT loop (, PEX) --addrs, tagged with their PeerSource--> connector
//! status socket --accept--> status::Live::report (stats + rates + warnings) --JSON--> `btfs status`
//! ```
//! One `std::sync::Mutex` guards the session state (picker, store, peers); it is held only
//! for short synchronous steps, never across an `.await`.

pub mod app;
pub mod bencode;
pub mod bitfield;
pub mod choker;
pub mod dht;
pub mod fs;
pub mod magnet;
pub mod metainfo;
pub mod picker;
pub mod piece;
pub mod ratelimit;
pub mod session;
pub mod store;
pub mod sync;
pub mod tracker;
pub mod units;
pub mod wire;
