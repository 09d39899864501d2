//! btfs: mount a torrent read-only and stream its files from the swarm.
//!
//! # Modules, top to bottom (each depends only on those below it; `scripts/check_layout.py`
//! checks there is no import circle)
//! - [`app`]: the commands above the engine. [`app::mount`]: `btfs mount`, a session behind a
//!   FUSE mount, signals, the live status line, `--daemon`, the order of shutdown;
//!   [`app::library`]: several torrents in one mount, a folder and a session each on one
//!   host ([`app::catalog`]: the set, changed while mounted; [`app::watch`]: `--watch DIR`;
//!   [`app::saved`]: `--state-dir`); [`app::backend`]: the FUSE backends over sessions;
//!   [`app::status`]: `btfs status` (`socket`: the per-mount unix socket, which also takes
//!   `btfs add` and `btfs remove` as `request`s; `rate`: rates over the last seconds); [`app::source`]: a `.torrent` file, URL or magnet link to a torrent;
//!   [`app::alerts`]: problems said once.
//! - [`fs`]: the FUSE filesystem, knowing files and a `Backend` that turns `(file, offset,
//!   len)` into verified bytes, nothing of peers. `inode`: the pure inode table; `folders`: a
//!   library's root whose folders come and go (the kernel told through fuser's `Notifier`);
//!   `tree`: what the adapter asks of either; `fuse`: the
//!   fuser adapter (each callback replies once; reads reply from a tokio task); `kernel`:
//!   mounting, unmounting, noticing the kernel side end.
//! - [`session`]: the tokio engine of one torrent; its own map is at the top of
//!   `session/mod.rs`. `host`: the listening ports (TCP, and uTP on the UDP port the DHT
//!   shares, on every IPv4 and IPv6 address or those `--bind` names: `listen`) and peer id
//!   shared by a process's sessions; `stream`: a connection's bytes
//!   whatever the transport; `shared`: what its tasks share and the lock order; `state`: the
//!   state behind the lock, made of owners (`residency`: where verified pieces live, and what
//!   we announce; `peers`; `readers` with `window`; `assembly`); `read`: reads (`media`:
//!   what a player reads first when it opens a video, an mp4's index found); `connect`
//!   with `discovery`: incoming and outgoing connections (`dial`: one outgoing connection,
//!   over uTP or TCP as `transport` races them, the first through the handshake kept,
//!   encrypted or not as `encryption`, the `--encryption` policy, says); `peer/`: one
//!   connection (`requests`, `rates`, `upload`, `extended`, `fast`, `health`, `pex`,
//!   `writer`); `verify`: SHA1 of each completed piece; `memory`: our side of the memory and
//!   disk budgets shared with other torrents (`store::pool`, `store::disk`); `caps`: the peer
//!   slots ([`slots`]) and rate limits shared with them; `idle` and `sleep`: an idle torrent sleeps,
//!   a read wakes it; `disk` and `disk_io`: the disk
//!   cache handle and its tasks; `webseed/`: web seeds (BEP 19), HTTP servers the picker asks
//!   like peers (`layout`: the URL of each file; `blocks`; `http`; `health`: backoff and
//!   dropping; `registry`: what status shows).
//! - [`magnet`]: `link` parses magnet links; `hints`: its trackers and web seeds added to the
//!   torrent's; `metadata`: the BEP 9 state machine assembling
//!   and serving the info dictionary; `fetch`: the phase before a session that gets it.
//! - Policy, pure state machines with time passed in: [`picker`] (which block to ask whom for
//!   next; `order`: the one comparator), [`choker`] (whom we upload to), [`ratelimit`] (token
//!   buckets for the rate caps), [`slots`] (`--max-peers` shared by a library's torrents: a
//!   sleeping one holds none, one being read gets its fair share).
//! - [`store`]: verified pieces at rest: `memory` (LRU by bytes, one torrent's part of a
//!   `pool`, the memory budget shared by every torrent of the process, least recently used
//!   across them) and `disk` (files, re-verified on load; one torrent's member of a disk
//!   `pool` for the whole `--cache-dir`, whose `books` count every torrent's pieces, those of
//!   torrents not mounted first out); neither knows where else a piece lives.
//! - Discovery: [`tracker`] (`http`, over `plain` hyper for http:// with no TLS set-up; `udp`;
//!   and the `announcer` task), [`dht`] (the
//!   Mainline DHT node: KRPC, routing table, lookups, saved state) and [`lsd`] (local service
//!   discovery, BEP 14: `message` parsed and formatted, `policy` of when to announce and what to
//!   take in, multicast `socket`s).
//! - [`net`]: the UDP ports the DHT and uTP share (`udp`: one socket per address, datagrams
//!   told apart by their first byte; `recv_batch`, `recvmmsg`; `rcvbuf`, the kernel buffer
//!   and its drops) and uTP on them (`utp`, the `librqbit-utp` crate, one endpoint over both
//!   families); `Family`, IPv4 or IPv6; `tls`: the one TLS context every
//!   HTTP client shares, built at the first https need.
//! - [`wire`]: peer messages, pure encode/decode (`message`, `handshake`, `extension`) and
//!   their tokio framing (`conn`, with the handshake exchange); `mse`: protocol encryption
//!   (Diffie-Hellman, RC4) under them, over any byte stream.
//! - [`metainfo`]: `.torrent` files to [`metainfo::Torrent`], paths made safe (`paths`), `btfs
//!   info` (`summary`).
//! - Foundations: [`piece`] (geometry, the checked `PieceIndex`), [`bitfield`], [`bencode`]
//!   (the span-keeping decoder and the encoder), [`units`] (sizes), [`sync`] (taking a lock).
//!
//! # Tasks and channels of a mount
//! ```text
//! FUSE threads (fs::kernel) --read--> tokio task (fs::fuse) --Session::read--> picker wants
//!                                   waits on `verified` (watch<u64>) <-- piece held or evicted
//! host accept loops (TCP, uTP) --handshake read, routed by info-hash (mpsc)--> session
//!                                                          connector --> peer task
//! announcer (tracker), DHT announce loop, LSD task, PEX, --peer
//!            --addrs tagged with their PeerSource (mpsc)--> connector --dial--> peer task
//! session --PeerCmd (mpsc: refill, have, cancel, choke, disconnect)--> peer task
//! peer task --Message (mpsc)--> its writer task (batches, upload cap) --> socket
//! peer task --complete piece--> verify task --spawn_blocking SHA1--> State::piece_passed
//!           (residency -> picker Have + `have` to every peer) --queue (mpsc)--> disk writer
//! read/upload missing from memory --disk_io load (spawn_blocking, SHA1)--> State
//! web seed task (one per url-list entry) --picks--> HTTP Range requests (reqwest, pooled)
//!           --blocks--> State::block_arrived --> verify task, as a peer's
//! rechoke task (1 s): choker decisions --SetUnchoked--> peer tasks
//! app::mount tick (1 s): status::Live (rates, said-once alerts), the status line
//! status socket --accept--> report as JSON --> `btfs status`
//!           --add/remove (mpsc Control, oneshot reply)--> app::catalog task per request
//!           --> source resolved, Session::start, fs::Folders add (kernel told) | stop, remove
//! watch task (1 s, --watch DIR) --> app::catalog add/remove
//! DHT node: a receive loop per family and the maintenance task, shared by every session
//!           (Config::dht)
//! LSD task (lsd): multicast announces of every registered torrent, peers others announce
//!           --mpsc per torrent, tagged Lsd--> connector; shared by every session (Config::lsd)
//! UDP port (net::udp): one receive task --first byte--> DHT channel | uTP channel (librqbit-utp)
//! shutdown: Session::stop flips `shutdown` (watch<bool>): every waiting read fails, every
//!           task ends; the disk writer and the announcer say on watch channels when done
//! ```
//! # Locks
//! Each session has one state lock (`Shared::state`), held for short synchronous steps and
//! never across an `.await`; no other lock is taken while it is held but the memory pool's and
//! the disk pool's books, leaves (the budgets the sessions of a library share). The other mutexes are
//! leaves listed at `session/shared.rs`. Every `std::sync::Mutex` is taken with [`sync::lock`].
//!
//! # Tests
//! Unit tests sit at the bottom of their file; a module whose tests outgrow that keeps them
//! in its `tests/` folder (`mod.rs` plus one file per subject, property tests in `props.rs`).
//! `tests/` at the crate root mounts real torrents served by libtorrent.

pub mod app;
pub mod bencode;
pub mod bitfield;
pub mod choker;
pub mod dht;
pub mod fs;
pub mod lsd;
pub mod magnet;
pub mod metainfo;
pub mod net;
pub mod picker;
pub mod piece;
pub mod ratelimit;
pub mod session;
pub mod slots;
pub mod store;
pub mod sync;
pub mod tracker;
pub mod units;
pub mod wire;
