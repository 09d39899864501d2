//! The check of a completed piece: SHA1 on the blocking pool, before anyone sees a byte. What
//! follows a verdict (held and announced, or fetched again and its senders distrusted) is
//! `State::piece_passed` / `State::piece_failed`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::Instrument;

use super::Shared;
use super::assembly::{Assembly, sha1};
use crate::piece::PieceIndex;

/// Hashes a completed piece off the async workers and applies the verdict.
pub(crate) fn check(shared: Arc<Shared>, piece: PieceIndex, asm: Assembly) {
    let verdict = async move {
        let expected = shared.torrent.info.piece_hashes[piece.as_usize()];
        let hashed = tokio::task::spawn_blocking(move || {
            let ok = sha1(asm.data()) == expected;
            (ok, asm)
        })
        .await;
        let Ok((ok, asm)) = hashed else {
            return; // the runtime is shutting down
        };
        let mut st = shared.lock();
        let save = if ok {
            let data = bytes::Bytes::from(asm.into_data());
            st.piece_passed(piece, data.clone()).then_some(data)
        } else {
            shared.hash_failures.fetch_add(1, Ordering::Relaxed);
            st.piece_failed(piece, asm);
            None
        };
        st.peers.refill_all();
        drop(st);
        if let Some(data) = save {
            shared.save_to_disk(piece, data);
        }
        shared.verified.send_modify(|g| *g += 1);
    };
    tokio::spawn(verdict.in_current_span());
}
