//! Streaming when the swarm is the bottleneck: what a reader needs goes ahead of background
//! work already queued at a peer, and readers share by deadline.

use super::fake_peer::{Behavior, FakePeer};
use super::*;

/// A peer serves requests in order. The background work queued at it is cancelled when a read
/// needs the peer, so the read's blocks are not served after all of it; every byte is right.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_cancels_background_requests_queued_ahead_of_it() {
    // 4 MiB in 32 KiB pieces, from one peer answering a block every few milliseconds.
    let c = content(21, 32 * 1024, &[4 * 1024 * 1024]);
    let peer = FakePeer::start(ip(2), c.clone(), Behavior::Queue(250)).await;
    let session = start(&c, &[&peer], BIG_CACHE).await;
    let h = session.open_reader(0);
    // The first read starts background fetching; the peer's queue fills with it.
    check_read(&session, &c, h, 0, 0, 1024).await;
    peer.wait_for("background requests", |n| n.requests >= 24)
        .await;
    // A seek far ahead: its pieces are no background work queued yet.
    check_read(&session, &c, h, 0, 3 * 1024 * 1024 + 4000, 100_000).await;
    let seen = peer.counters();
    assert!(
        seen.cancels >= 1,
        "no background request was cancelled: {seen:?}"
    );
    stop(session).await;
}
