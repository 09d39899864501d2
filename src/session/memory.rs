//! The session's side of a memory budget shared with other torrents (`store::pool`): another
//! torrent's insert may evict our pieces from memory at any time, without our state lock. It
//! wakes this task, which takes the news under our lock: those pieces are gone (unless on
//! disk), the picker fetches them again when a reader wants them, and reads waiting are woken.
//! Until then the bytes are already gone (reads find them missing and wait); only what we
//! announce lags.

use std::sync::Arc;

use tokio::sync::Notify;

use super::shared::Shared;

pub(super) async fn take_evictions(shared: Arc<Shared>, wake: Arc<Notify>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = shutdown.changed() => return,
        }
        let taken = shared.lock().memory_taken();
        if taken {
            shared.verified.send_modify(|v| *v += 1);
        }
    }
}
