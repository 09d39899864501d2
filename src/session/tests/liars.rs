//! Peers that lie or abuse the protocol: corrupt blocks traced to their sender and banned,
//! malformed or unasked messages, floods. Every read still returns the right bytes.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn liar_is_banned_and_reads_stay_right() {
    let c = two_files();
    let (honest, liar, session) = bad_peer_first(&c, Behavior::Liar).await;

    let reads = spawn_read_everything(&session, &c, 64 * 1024);
    liar.wait_for("a block sent", |n| n.blocks_sent >= 1).await;
    join(&session, &honest).await;
    within("reads", reads).await.expect("reads");
    let stats = eventually(&session, "liar banned", |s| s.banned >= 1).await;
    assert!(banned(&session, liar.ip()), "the liar's IP is banned");
    assert!(!banned(&session, honest.ip()), "the honest IP is not");
    assert_eq!(stats.banned, 1);
    assert!(stats.hash_failures >= 1);
    liar.wait_for("the session hang up", |n| n.closed >= 1)
        .await;
    eventually(&session, "only the honest peer left", |s| s.peers == 1).await;
    // Re-reads after the ban (from the store) are still right.
    read_everything(&session, &c, 100_000).await;
    assert_eq!(
        honest.counters().bad_requests + liar.counters().bad_requests,
        0
    );
    stop(session).await;
}

/// The liar sends one corrupt block of each piece it is asked for and refuses the rest (see
/// `CorruptOnePerPiece`); the honest peer, joining once the liar's first block is in, sends the
/// rest. No failed piece has a single sender to blame, so the piece is fetched again from one
/// peer ("parole"), and when it verifies, the block hashes kept from the failure name the liar
/// ("smart ban"), the only way it can end up banned here.
#[tokio::test(flavor = "multi_thread")]
async fn one_corrupt_block_in_a_shared_piece_is_traced_to_the_liar() {
    // 64 KiB pieces of 4 blocks; the last piece has 3, so no piece is a single block.
    let c = content(3, 64 * 1024, &[1_000_000, 90_000]);
    let (honest, liar, session) = bad_peer_first(&c, Behavior::CorruptOnePerPiece).await;

    let reads = spawn_read_everything(&session, &c, 128 * 1024);
    liar.wait_for("a choke", |n| n.chokes >= 1).await;
    join(&session, &honest).await;
    within("reads", reads).await.expect("reads");
    let stats = eventually(&session, "liar banned", |s| s.banned >= 1).await;
    assert!(banned(&session, liar.ip()));
    assert!(!banned(&session, honest.ip()));
    assert!(stats.hash_failures >= 1);
    liar.wait_for("the session hang up", |n| n.closed >= 1)
        .await;
    let sent = liar.counters().sent_by_piece;
    assert!(
        sent.values().all(|&n| n == 1),
        "one block per piece: {sent:?}"
    );
    let total = c.torrent.info.geometry.piece_count();
    eventually(&session, "all pieces verified", |s| {
        s.verified_pieces == total
    })
    .await;
    read_everything(&session, &c, 50_000).await;
    stop(session).await;
}

/// One protocol violation from its own fake, next to an honest seeder.
pub(super) async fn abuse_case(abuse: Abuse) {
    let c = two_files();
    let honest = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    let abuser = FakePeer::start(ip(4), c.clone(), Behavior::Abuse(abuse)).await;
    let session = start(&c, &[&honest, &abuser], BIG_CACHE).await;

    abuser
        .wait_for("the session hang up", |n| n.closed >= 1)
        .await;
    read_everything(&session, &c, 96 * 1024).await;
    // The abuser may be dialled again later (and dropped again); in between only the honest
    // peer is connected.
    let stats = eventually(&session, "only the honest peer connected", |s| s.peers == 1).await;
    assert_eq!(stats.hash_failures, 0, "{abuse:?}");
    assert_eq!(stats.banned, 0, "{abuse:?}");
    assert_eq!(honest.counters().bad_requests, 0);
    stop(session).await;
    abuser
        .wait_for("every connection closed", |n| n.closed == n.connections)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_frame_over_the_limit() {
    abuse_case(Abuse::HugeFrame).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_unrequested_piece_of_a_wrong_length() {
    abuse_case(Abuse::UnaskedPieceWrongLength).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_have_past_the_last_piece() {
    abuse_case(Abuse::HaveOutOfRange).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_bitfield_of_the_wrong_length() {
    abuse_case(Abuse::BitfieldWrongLength).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_truncated_message_then_eof() {
    abuse_case(Abuse::TruncatedThenEof).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_handshake_for_another_torrent() {
    abuse_case(Abuse::WrongInfoHash).await;
}

/// A peer sending 40 PEX messages of 50 new addresses each at once: the session takes no more
/// than one peer's budget (a burst of 100, then 50 a minute); a private torrent takes none and
/// does not offer PEX.
async fn pex_flood_case(private: bool) -> (usize, usize, Duration) {
    let c = content_with(5, 32 * 1024, &[100_000], private);
    let flooder = FakePeer::start(ip(60), c.clone(), Behavior::PexFlood(40)).await;
    let started = std::time::Instant::now();
    let session = start(&c, &[&flooder], BIG_CACHE).await;
    flooder
        .wait_for("the metadata answer after the flood", |c| {
            c.metadata_replies > 0
        })
        .await;
    let took = started.elapsed();
    // Every PEX message was handled; discovery is a channel away: wait for the burst (public)
    // or the configured peer (private) to reach the known set.
    let least = if private { 1 } else { 101 };
    let known = eventually(&session, "known peers", |s| s.known_peers >= least)
        .await
        .known_peers;
    let offered = flooder.counters().pex_offered;
    stop(session).await;
    (known, offered, took)
}

#[tokio::test]
async fn a_pex_flood_adds_a_bounded_number_of_peers() {
    let (known, offered, took) = pex_flood_case(false).await;
    assert_eq!(offered, 1, "a public torrent offers ut_pex");
    // The flooder itself, the burst, and what the bucket refilled meanwhile.
    let refill = (took.as_secs_f64() / 60.0 * 50.0).ceil() as usize + 1;
    assert!(
        (101..=1 + 100 + refill).contains(&known),
        "{known} known peers after 2000 addresses in {took:?}"
    );
}

#[tokio::test]
async fn a_private_torrent_neither_offers_nor_takes_pex() {
    let (known, offered, _) = pex_flood_case(true).await;
    assert_eq!(offered, 0);
    assert_eq!(known, 1, "only the configured peer");
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_blocks_nobody_asked_for() {
    abuse_case(Abuse::UnaskedBlocks).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_a_million_haves() {
    abuse_case(Abuse::HaveFlood).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn abuse_a_bitfield_that_takes_pieces_back() {
    abuse_case(Abuse::BitfieldContradicted).await;
}
