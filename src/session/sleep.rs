//! What sleeping and waking do to a session (when: `idle.rs`). Asleep: every peer
//! disconnected and none admitted, background fetching off, discovery ended (the announcer
//! tells trackers `stopped`). Awake again: the connector redials every address it knows at
//! once, and discovery starts again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::peers::PeerCmd;
use super::shared::Shared;

/// The idle task: puts the session to sleep after `idle_after` without a read, until shutdown;
/// asleep, it waits for the wake without ticking.
pub(crate) async fn run(shared: Arc<Shared>, idle_after: Duration) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(idle_after));
    while shared.idle.next_awake_tick(&mut tick, &mut shutdown).await {
        let mut dropped = 0;
        let slept = shared.idle.try_sleep(idle_after, |_| {
            let mut st = shared.lock();
            if st.readers.longest_wait().is_some() {
                return false;
            }
            st.asleep = true;
            st.peers.broadcast(|| PeerCmd::Disconnect);
            st.update_background();
            dropped = st.peers.len();
            true
        });
        if slept {
            tracing::info!(
                peers = dropped,
                after = ?idle_after,
                "no read for a while: the torrent sleeps"
            );
        }
    }
}

/// Wakes a sleeping session (a read starts): peers may come in again, every known address is
/// dialled now, and `spawn_discovery` (given the new period's end) starts announcing again.
pub(crate) fn wake(shared: &Shared, spawn_discovery: impl FnOnce(watch::Receiver<bool>)) {
    let end = shared.idle.wake(|| {
        let mut st = shared.lock();
        st.asleep = false;
        st.update_background();
    });
    let Some(end) = end else { return };
    tracing::info!("a read wakes the torrent");
    shared.redial.notify_one();
    spawn_discovery(end);
}
