//! The Mainline DHT (BEP 5): Kademlia over UDP, to find peers of a torrent without a tracker,
//! and to be found.
//!
//! # Modules
//! - [`krpc`]: pure encode/decode of the KRPC queries, responses and errors.
//! - [`routing`]: pure routing table: k-buckets, node states, replacement caches, refresh.
//! - [`server`]: pure answers to other nodes: tokens, the announced-peer store, rate limit.
//! - `lookup`: iterative lookups (a pure state machine plus its driver), the announce, and
//!   [`spawn_announce_loop`].
//! - `node`: the UDP socket, its receive task, bootstrap and upkeep, and the [`Dht`] handle.
//! - `state`: [`SavedState`], the table saved between mounts.
//!
//! # Tasks
//! ```text
//! recv task:  datagram -> query?    -> answer (rate-limited per IP) -> socket
//!                      -> response? -> table.responded + oneshot to the waiting `query`
//! upkeep:     bootstrap (seeds, then a lookup of our id) -> every minute: expire peers,
//!             ping questionable nodes, refresh stale buckets
//! get_peers:  one task per lookup: ALPHA queries in flight -> peers (mpsc) -> announce
//! ```
//! One `std::sync::Mutex` guards the table, the pending queries and the server state; it is
//! held for short synchronous steps only, never across an `.await`.
//!
//! # API for the session
//! ```ignore
//! let socket = tokio::net::UdpSocket::bind("0.0.0.0:6881").await?;
//! let mut config = DhtConfig::default();             // public routers as bootstrap
//! if let Ok(saved) = SavedState::load(&state_path) { saved.apply(&mut config); }
//! config.nodes.extend(torrent_nodes);                // a torrent's `nodes`, if any
//! let dht = Dht::bind(socket, config)?;              // bootstraps in the background
//! dht.node_count();                                  // "DHT: 142 nodes" (good nodes)
//! let mut rx = dht.get_peers(info_hash, Some(port)); // one lookup (+ announce); peers
//! while let Some(batch) = rx.recv().await { .. }     //   stream in as they arrive
//! spawn_announce_loop(dht.clone(), info_hash, Some(port), peers_tx, shutdown_rx);
//! SavedState::of(&dht).save(&state_path)?;           // at unmount
//! dht.shutdown();
//! ```
//! Only IPv4 is spoken; ids and info-hashes are `[u8; 20]` ([`NodeId`]).

pub mod krpc;
mod lookup;
mod node;
pub mod routing;
pub mod server;
mod state;
#[cfg(test)]
mod tests;

pub use krpc::NodeId;
pub use lookup::{REANNOUNCE, spawn_announce_loop};
pub use node::{DEFAULT_BOOTSTRAP, Dht, DhtConfig, DhtError, QUERY_TIMEOUT, QueryError};
pub use state::{SavedState, StateError};
