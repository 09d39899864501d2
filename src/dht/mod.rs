//! The Mainline DHT (BEP 5): Kademlia over UDP, to find peers of a torrent without a tracker,
//! and to be found. Over IPv6 too (BEP 32): a node on sockets of both families keeps a routing
//! table of each, under one id, and looks up and announces in both DHTs at once.
//!
//! # Modules
//! Each depends only on those listed below it.
//! - `state`: [`SavedState`], the table saved between mounts.
//! - `announce_loop`: [`spawn_announce_loop`], a torrent's lookups and announces, repeated.
//! - `node`: bootstrap, upkeep of the tables, and the [`Dht`] handle.
//! - `lookup`: iterative lookups (a pure state machine plus its driver) and the announce.
//! - `rpc`: the sockets (the DHT's channel of a [`crate::net::udp::UdpPort`] per family):
//!   `query` (one request, its timeout) and the receive task that routes responses to their
//!   queries and answers other nodes; the state every task shares.
//! - [`server`]: pure answers to other nodes: tokens, the announced-peer store, rate limit.
//! - [`routing`]: pure routing table: k-buckets, node states, replacement caches, refresh;
//!   one per family.
//! - [`krpc`]: pure encode/decode of the KRPC queries, responses and errors.
//! - `tests/`: whole-node tests (`mod.rs`), KRPC by hand (`krpc.rs`) and by property
//!   (`props.rs`), the two families' tables (`routing.rs`).
//!
//! # Tasks
//! ```text
//! recv task (one per socket):
//!             datagram -> query?    -> answer (rate-limited per IP) -> socket
//!                      -> response? -> its family's table.responded + oneshot to the
//!                                      waiting `query`
//! upkeep:     bootstrap (seeds, then a lookup of our id in each family) -> every minute:
//!             expire peers, ping questionable nodes, refresh stale buckets
//! get_peers:  one task per lookup: a lookup in each family at once, ALPHA queries in flight
//!             each -> peers (mpsc) -> announce
//! ```
//! One `std::sync::Mutex` (in `rpc`) guards the tables, the pending queries and the server
//! state; it is held for short synchronous steps only, never across an `.await`.
//!
//! # API for the session
//! ```ignore
//! let socket = tokio::net::UdpSocket::bind("0.0.0.0:6881").await?;
//! let mut config = DhtConfig::default();             // public routers as bootstrap
//! if let Ok(saved) = SavedState::load(&state_path) { saved.apply(&mut config); }
//! config.nodes.extend(torrent_nodes);                // a torrent's `nodes`, if any
//! let dht = Dht::bind(socket, config)?;              // bootstraps in the background
//! // or, on the ports uTP shares, one of each family (BEP 32):
//! // Dht::start_all([port4.channel(Protocol::Dht), port6.channel(Protocol::Dht)], config)?
//! dht.node_count();                                  // "DHT: 142 nodes" (good nodes)
//! dht.node_count_of(Family::V6);                     // of them, in the IPv6 table
//! let mut rx = dht.get_peers(info_hash, Some(port)); // one lookup (+ announce); peers
//! while let Some(batch) = rx.recv().await { .. }     //   stream in as they arrive
//! spawn_announce_loop(dht.clone(), info_hash, Some(port), peers_tx, shutdown_rx);
//! SavedState::of(&dht).save(&state_path)?;           // at unmount
//! dht.shutdown();
//! ```
//! Ids and info-hashes are `[u8; 20]` ([`NodeId`]).

mod announce_loop;
pub mod krpc;
mod lookup;
mod node;
pub mod routing;
mod rpc;
pub mod server;
mod state;
#[cfg(test)]
mod tests;

pub use announce_loop::{REANNOUNCE, spawn_announce_loop};
pub use krpc::NodeId;
pub use node::{DEFAULT_BOOTSTRAP, Dht, DhtConfig, DhtError};
pub use rpc::{QUERY_TIMEOUT, QueryError};
pub use state::{SavedState, StateError};
