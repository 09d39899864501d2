//! The Fast extension (BEP 6) against fake peers that speak it: a seeder's rejects send the
//! block back to the picker and the read still gets the right bytes; a leecher asking for what
//! we do not hold (or while choked) is told so at once.

use super::fake_peer::{Abuse, Behavior, FakePeer};
use super::liars::abuse_case;
use super::{
    BIG_CACHE, ip, join, read_everything, spawn_read_everything, start, stop, two_files, within,
};

#[tokio::test(flavor = "multi_thread")]
async fn rejected_requests_are_asked_again_and_reads_stay_right() {
    let c = two_files();
    let rejecter = FakePeer::start(ip(2), c.clone(), Behavior::FastRejecter).await;
    let session = start(&c, &[&rejecter], BIG_CACHE).await;
    read_everything(&session, &c, 50_000).await;
    let n = c.torrent.info.geometry.piece_count() as usize;
    let seen = rejecter.counters();
    // The only peer: every first block of each piece was rejected once, then asked again.
    assert_eq!(seen.rejects_sent, n, "{seen:?}");
    assert_eq!(seen.rerequested, n, "{seen:?}");
    let stats = session.stats();
    assert_eq!(stats.hash_failures, 0);
    assert_eq!(stats.banned, 0, "rejecting is no offence: {stats:?}");
    assert_eq!(seen.closed, 0, "the session kept the rejecting peer");
    stop(session).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_blocks_go_to_another_peer() {
    let c = two_files();
    let rejecter = FakePeer::start(ip(2), c.clone(), Behavior::FastRejecter).await;
    let honest = FakePeer::start(ip(3), c.clone(), Behavior::Honest).await;
    // The rejecter first, alone, so that it is asked (and rejects) before the honest peer
    // could serve everything; then the honest one joins.
    let session = start(&c, &[&rejecter], BIG_CACHE).await;
    let reads = spawn_read_everything(&session, &c, 50_000);
    rejecter.wait_for("a reject", |s| s.rejects_sent > 0).await;
    join(&session, &honest).await;
    within("reads", reads).await.expect("reads");
    read_everything(&session, &c, 100_000).await;
    let seen = rejecter.counters();
    assert!(seen.rejects_sent > 0, "{seen:?}");
    assert_eq!(session.stats().hash_failures, 0);
    stop(session).await;
}

/// A choke voids our requests (we give them back to the picker at once); the rejects that
/// follow for them are what BEP 6 asks of the peer, not an offence.
#[tokio::test(flavor = "multi_thread")]
async fn rejects_after_a_choke_are_no_offence() {
    let c = two_files();
    let choker = FakePeer::start(ip(2), c.clone(), Behavior::FastChoker).await;
    let honest = FakePeer::start(ip(3), c.clone(), Behavior::Honest).await;
    // The choker alone first: it chokes us and rejects what we had asked; it unchokes only
    // once we announce a piece, which the honest peer, joining then, makes possible.
    let session = start(&c, &[&choker], BIG_CACHE).await;
    let reads = spawn_read_everything(&session, &c, 50_000);
    choker
        .wait_for("a choke and its rejects", |s| {
            s.chokes > 0 && s.rejects_sent > s.chokes
        })
        .await;
    join(&session, &honest).await;
    within("reads", reads).await.expect("reads");
    read_everything(&session, &c, 100_000).await;
    let seen = choker.counters();
    assert!(seen.chokes > 0, "{seen:?}");
    assert!(
        seen.rejects_sent > seen.chokes,
        "rejects for requests sent before the choke: {seen:?}"
    );
    assert_eq!(
        seen.closed, 0,
        "the session kept the choking peer: {seen:?}"
    );
    assert_eq!(session.stats().hash_failures, 0);
    stop(session).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fast_leecher_gets_rejects_for_a_piece_we_do_not_hold() {
    let c = two_files();
    let leecher = FakePeer::start(ip(4), c.clone(), Behavior::FastLeecher).await;
    // No seeder: the session holds nothing, ever.
    let session = start(&c, &[&leecher], BIG_CACHE).await;
    // One reject for the request made while choked, one for the request once unchoked.
    leecher
        .wait_for("two rejects", |s| s.rejects_received >= 2)
        .await;
    let seen = leecher.counters();
    assert!(
        seen.saw_have_none,
        "the session opened with have_none: {seen:?}"
    );
    assert_eq!(seen.closed, 0, "{seen:?}");
    stop(session).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_a_flood_of_rejects_for_requests_never_made() {
    abuse_case(Abuse::RejectFlood).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_a_reject_without_negotiating_fast() {
    abuse_case(Abuse::FastUnnegotiated).await;
}
