//! A read waiting on a peer that is slow but not stalled gets its blocks from another peer
//! too: the first copy wins, the other is counted as wasted. Checked by the session's counts
//! of re-requests and wasted bytes, not by timing.

use std::time::Duration;

use super::fake_peer::{Behavior, FakePeer};
use super::{BIG_CACHE, check_read, eventually, ip, join, start, stop, two_files, within};

#[tokio::test(flavor = "multi_thread")]
async fn a_block_late_at_a_slow_peer_is_also_asked_of_a_fast_one() {
    let c = two_files();
    let honest = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    // Slower than a read should wait, faster than the stall timeout: it keeps delivering.
    let slow = FakePeer::start(ip(3), c.clone(), Behavior::Slow(Duration::from_secs(5))).await;
    let session = start(&c, &[&slow], BIG_CACHE).await;

    // The read's blocks (piece 21, in file 1) are asked of the slow peer before the fast one
    // is even known, so only a re-request can bring them sooner.
    let h = session.open_reader(1);
    let read = {
        let (session, c) = (session.clone(), c.clone());
        tokio::spawn(async move { check_read(&session, &c, h, 1, 400_000, 20_000).await })
    };
    let piece = c.torrent.info.geometry.piece(21).unwrap();
    eventually(&session, "the read's blocks asked of the slow peer", |_| {
        let st = session.shared.lock();
        st.peers
            .ids()
            .any(|id| st.picker.blocks_requested(id).any(|b| b.piece == piece))
    })
    .await;
    join(&session, &honest).await;
    within("the read", read).await.expect("read task");

    let stats = session.stats();
    assert!(stats.rerequests >= 1, "re-requested: {stats:?}");
    assert!(
        honest.counters().sent_by_piece.contains_key(&21),
        "the fast peer sent piece 21: {:?}",
        honest.counters()
    );
    assert_eq!(stats.hash_failures, 0);
    assert_eq!(stats.banned, 0, "slow is not bad");
    // The slow peer sends its own copy anyway (it answers every request it read, cancelled or
    // not): received, not used, and counted as wasted.
    let stats = eventually(&session, "the slow copy counted as wasted", |s| {
        s.wasted > 0
    })
    .await;
    assert!(stats.wasted < stats.downloaded, "{stats:?}");
    stop(session).await;
}
