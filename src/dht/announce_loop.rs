//! The announce loop a torrent session runs on top of the [`Dht`] handle: one `get_peers`
//! lookup (and announce) after another, for as long as the torrent is mounted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::krpc::NodeId;
use super::node::Dht;

/// The announce loop's period once peers were found (BEP 5 peers expire after ~30 min).
pub const REANNOUNCE: Duration = Duration::from_secs(15 * 60);
/// The announce loop's first retry while no peer is found, doubling up to `RETRY_MAX`.
const RETRY_MIN: Duration = Duration::from_secs(30);
const RETRY_MAX: Duration = Duration::from_secs(120);
/// A wish for more peers (`more`) starts the next lookup early, but no sooner than this after
/// the last one began.
pub const EARLY_FLOOR: Duration = Duration::from_secs(60);

/// Repeats `get_peers` (announcing `port`, when given) for a torrent until `shutdown`:
/// every [`REANNOUNCE`] once a lookup found peers, and after 30 s, 60 s, 120 s, 120 s ...
/// while lookups find none (a fresh DHT is still filling its table), sooner when `more` says
/// the session needs peers (see `EARLY_FLOOR`). Peers go to `peers_tx`; the loop also ends
/// when that channel closes.
pub fn spawn_announce_loop(
    dht: Dht,
    info_hash: NodeId,
    port: Option<u16>,
    peers_tx: mpsc::Sender<Vec<SocketAddr>>,
    more: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    // In the span of the session that asked: its lines name the torrent.
    let announcing = async move {
        let mut retry = RETRY_MIN;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let began = tokio::time::Instant::now();
            let mut rx = dht.get_peers(info_hash, port);
            let mut found = false;
            loop {
                tokio::select! {
                    batch = rx.recv() => match batch {
                        Some(batch) => {
                            found = true;
                            if peers_tx.send(batch).await.is_err() {
                                return;
                            }
                        }
                        None => break,
                    },
                    _ = shutdown.changed() => return,
                }
            }
            let wait = if found {
                retry = RETRY_MIN;
                REANNOUNCE
            } else {
                let wait = retry;
                retry = (retry * 2).min(RETRY_MAX);
                wait
            };
            let mut next = tokio::time::Instant::now() + wait;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => break,
                    () = more.notified() => next = next.min(began + EARLY_FLOOR),
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    tokio::spawn(announcing.in_current_span())
}
