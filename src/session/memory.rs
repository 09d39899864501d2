//! The session's side of a memory budget shared with other torrents (`store::pool`): another
//! torrent's insert may evict our pieces from memory at any time, without our state lock. It
//! wakes this task, which takes the news under our lock: those pieces are gone (unless on
//! disk), the picker fetches them again when a reader wants them, and reads waiting are woken.
//! Until then the bytes are already gone (reads find them missing and wait); only what we
//! announce lags.
//!
//! The disk budget is shared the same way (`store::disk`), and its evictions wake this task
//! too: pieces the disk no longer holds are gone unless memory holds them. A load that finds
//! one missing before the news arrives counts it gone then (`disk_io`).

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
        let taken = {
            let mut st = shared.lock();
            // Under the state lock: a piece written again since is taken out of the list first.
            let off_disk =
                (shared.disk.as_ref()).map_or_else(Vec::new, |d| d.take_evicted(&shared.geometry));
            st.memory_taken() | st.disk_taken(&off_disk)
        };
        if taken {
            shared.verified.send_modify(|v| *v += 1);
        }
    }
}
