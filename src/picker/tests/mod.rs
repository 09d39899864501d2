//! Behaviour tests, one per rule; `model_tests` checks the whole order against the comparator.

mod model;

use std::ops::Range;

use super::*;
use crate::piece::BLOCK_SIZE;

const A: PeerId = PeerId(1);
const B: PeerId = PeerId(2);
const C: PeerId = PeerId(3);
const D: PeerId = PeerId(4);
const R1: ReaderId = ReaderId(1);
const R2: ReaderId = ReaderId(2);

/// `pieces` pieces of `blocks` full blocks each.
pub(super) fn picker(pieces: u32, blocks: u32) -> Picker {
    let len = blocks * BLOCK_SIZE;
    Picker::new(Geometry::new(len, u64::from(len) * u64::from(pieces)).unwrap())
}

pub(super) fn bits(len: u32, ones: &[u32]) -> Bitfield {
    let mut b = Bitfield::new(len);
    for &i in ones {
        b.set(i);
    }
    b
}

fn all(p: &Picker) -> Bitfield {
    Bitfield::full(p.geometry().piece_count())
}

pub(super) fn idx(p: &Picker, i: u32) -> PieceIndex {
    p.geometry().piece(i).unwrap()
}

fn blk(p: &Picker, piece: u32, block: u32) -> Block {
    Block {
        piece: idx(p, piece),
        block,
    }
}

/// `(piece, block)` pairs, for readable assertions.
pub(super) fn pairs(blocks: &[Block]) -> Vec<(u32, u32)> {
    blocks.iter().map(|b| (b.piece.get(), b.block)).collect()
}

fn pieces(blocks: &[Block]) -> Vec<u32> {
    let mut v: Vec<u32> = blocks.iter().map(|b| b.piece.get()).collect();
    v.dedup();
    v
}

fn state(p: &Picker, i: u32) -> PieceState {
    p.piece_state(idx(p, i))
}

/// Delivers every block of piece `i` from `peer`, then verifies it.
fn complete(p: &mut Picker, peer: PeerId, i: u32) {
    for b in 0..p.geometry().block_count(idx(p, i)) {
        p.block_received(peer, blk(p, i, b));
    }
    p.piece_verified(idx(p, i));
}

pub(super) fn want(urgent: Range<u32>, readahead: Range<u32>) -> ReaderWant {
    ReaderWant {
        urgent,
        readahead,
        rate: 0,
        lead: 0,
    }
}

// ---- background order -----------------------------------------------------------------------

#[test]
fn rarest_piece_first() {
    let mut p = picker(4, 1);
    p.peer_bitfield(A, &all(&p));
    p.peer_bitfield(B, &bits(4, &[0, 1, 3]));
    p.peer_bitfield(C, &bits(4, &[0, 3]));
    // availability: 0 -> 3, 1 -> 2, 2 -> 1, 3 -> 3
    let got = p.pick(A, &all(&p), 4);
    assert_eq!(pieces(&got), vec![2, 1, 0, 3]);
}

#[test]
fn equal_availability_goes_by_lowest_index() {
    let mut p = picker(5, 1);
    p.peer_bitfield(A, &all(&p));
    assert_eq!(pieces(&p.pick(A, &all(&p), 3)), vec![0, 1, 2]);
}

#[test]
fn started_piece_finished_before_rarer_fresh_piece() {
    let mut p = picker(3, 2);
    p.peer_bitfield(A, &all(&p));
    p.peer_bitfield(B, &bits(3, &[0]));
    p.peer_bitfield(C, &bits(3, &[0]));
    // Piece 0 is the most common; start it from B.
    assert_eq!(pairs(&p.pick(B, &bits(3, &[0]), 1)), vec![(0, 0)]);
    assert_eq!(state(&p, 0), PieceState::Partial);
    let got = p.pick(A, &all(&p), 3);
    assert_eq!(pairs(&got), vec![(0, 1), (1, 0), (1, 1)]);
}

#[test]
fn one_peer_gets_consecutive_blocks_of_one_piece() {
    let mut p = picker(3, 4);
    p.peer_bitfield(A, &all(&p));
    let got = p.pick(A, &all(&p), 6);
    assert_eq!(
        pairs(&got),
        vec![(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]
    );
    // The next call finishes the started piece 1 before starting piece 2.
    assert_eq!(pairs(&p.pick(A, &all(&p), 3)), vec![(1, 2), (1, 3), (2, 0)]);
}

#[test]
fn lowest_unrequested_block_within_a_piece() {
    let mut p = picker(1, 4);
    p.pick(A, &all(&p), 2);
    p.request_failed(A, blk(&p, 0, 0));
    assert_eq!(pairs(&p.pick(B, &all(&p), 2)), vec![(0, 0), (0, 2)]);
}

#[test]
fn zero_max_blocks_picks_nothing_and_starts_nothing() {
    let mut p = picker(2, 1);
    assert!(p.pick(A, &all(&p), 0).is_empty());
    assert_eq!(state(&p, 0), PieceState::Missing);
}

#[test]
fn rarest_scan_spans_word_boundaries_of_a_large_torrent() {
    let n = 50_000;
    let mut p = picker(n, 1);
    p.peer_bitfield(A, &all(&p));
    p.peer_bitfield(B, &Bitfield::full(n));
    // Everything has availability 2 except piece 64 and the last piece.
    let mut b_has = Bitfield::full(n);
    b_has.clear(64);
    b_has.clear(n - 1);
    p.peer_bitfield(B, &b_has);
    assert_eq!(pieces(&p.pick(A, &all(&p), 3)), vec![64, n - 1, 0]);
}

// ---- readers ----------------------------------------------------------------------------------

#[test]
fn urgent_beats_started_and_rarest_pieces() {
    let mut p = picker(6, 1);
    p.peer_bitfield(A, &all(&p));
    p.peer_bitfield(B, &bits(6, &[0, 1, 2, 3, 4]));
    // Piece 5 is the rarest; piece 2 is started (by B).
    p.pick(B, &bits(6, &[2]), 1);
    p.set_reader(R1, want(4..5, 5..5));
    assert_eq!(pieces(&p.pick(A, &all(&p), 1)), vec![4]);
}

#[test]
fn a_peer_is_urgent_only_for_urgent_pieces_still_to_fetch() {
    let mut p = picker(6, 1);
    p.set_reader(R1, want(2..4, 4..6));
    assert!(p.has_urgent(&bits(6, &[3])));
    assert!(
        !p.has_urgent(&bits(6, &[0, 1, 4, 5])),
        "readahead is not urgent"
    );
    complete(&mut p, A, 2);
    complete(&mut p, A, 3);
    assert!(!p.has_urgent(&all(&p)), "nothing urgent left to fetch");
}

#[test]
fn urgent_range_is_taken_nearest_first() {
    let mut p = picker(10, 1);
    p.set_reader(R1, want(6..9, 9..10));
    assert_eq!(pieces(&p.pick(A, &all(&p), 4)), vec![6, 7, 8, 9]);
}

#[test]
fn readahead_in_rank_order_before_background() {
    let mut p = picker(10, 1);
    p.peer_bitfield(A, &all(&p));
    p.peer_bitfield(B, &bits(10, &[0, 1, 2, 3, 4, 5, 6, 7]));
    // Pieces 8 and 9 are rarest, but the window 3..6 comes first.
    p.set_reader(R1, want(2..3, 3..6));
    p.piece_verified(idx(&p, 2));
    assert_eq!(pieces(&p.pick(A, &all(&p), 5)), vec![3, 4, 5, 8, 9]);
}

#[test]
fn two_readers_interleave_by_rank() {
    let mut p = picker(20, 1);
    p.set_reader(R1, want(0..0, 10..13));
    p.set_reader(R2, want(0..0, 2..5));
    assert_eq!(pieces(&p.pick(A, &all(&p), 6)), vec![2, 10, 3, 11, 4, 12]);
}

#[test]
fn urgent_of_any_reader_before_readahead_of_another() {
    let mut p = picker(20, 1);
    p.set_reader(R1, want(0..1, 1..4));
    p.set_reader(R2, want(15..16, 16..18));
    assert_eq!(pieces(&p.pick(A, &all(&p), 4)), vec![0, 15, 1, 16]);
}

#[test]
fn seek_replaces_window_at_once_and_keeps_started_pieces() {
    let mut p = picker(20, 2);
    p.peer_bitfield(A, &all(&p));
    p.set_reader(R1, want(0..1, 1..4));
    assert_eq!(pairs(&p.pick(A, &all(&p), 3)), vec![(0, 0), (0, 1), (1, 0)]);
    p.block_received(A, blk(&p, 1, 0));
    // Seek to 10: the old window is no reader's any more.
    p.set_reader(R1, want(10..11, 11..12));
    assert!(!p.is_wanted_by_reader(idx(&p, 2)));
    assert!(p.is_wanted_by_reader(idx(&p, 11)));
    let got = p.pick(A, &all(&p), 6);
    // New window first, then the started piece 1 (its data is kept), then fresh background.
    assert_eq!(
        pairs(&got),
        vec![(10, 0), (10, 1), (11, 0), (11, 1), (1, 1), (2, 0)]
    );
    assert_eq!(state(&p, 0), PieceState::Partial);
    assert_eq!(p.in_flight(A), 8);
}

#[test]
fn remove_reader_drops_its_priority() {
    let mut p = picker(10, 1);
    p.set_reader(R1, want(7..8, 8..9));
    p.remove_reader(R1);
    assert!(!p.is_wanted_by_reader(idx(&p, 7)));
    assert!(!p.urgent_pending());
    assert_eq!(pieces(&p.pick(A, &all(&p), 1)), vec![0]);
}

#[test]
fn background_off_picks_only_reader_pieces() {
    let mut p = picker(10, 1);
    p.set_background(false);
    assert!(p.pick(A, &all(&p), 5).is_empty());
    p.set_reader(R1, want(3..4, 4..6));
    assert_eq!(pieces(&p.pick(A, &all(&p), 5)), vec![3, 4, 5]);
    p.set_background(true);
    assert_eq!(pieces(&p.pick(A, &all(&p), 1)), vec![0]);
}

#[test]
fn background_off_leaves_old_window_started_pieces_alone() {
    let mut p = picker(10, 2);
    p.set_reader(R1, want(0..1, 1..1));
    p.pick(A, &all(&p), 1);
    p.set_reader(R1, want(5..6, 6..6));
    p.set_background(false);
    assert_eq!(pairs(&p.pick(A, &all(&p), 4)), vec![(5, 0), (5, 1)]);
    assert_eq!(state(&p, 0), PieceState::Partial);
}

#[test]
fn reader_ranges_past_the_end_are_clipped() {
    let mut p = picker(4, 1);
    p.set_reader(R1, want(3..9, 9..u32::MAX));
    assert!(p.is_wanted_by_reader(idx(&p, 3)));
    p.set_background(false);
    assert_eq!(pieces(&p.pick(A, &all(&p), 4)), vec![3]);
}

#[test]
fn urgent_pending_until_every_urgent_piece_is_had() {
    let mut p = picker(4, 1);
    assert!(!p.urgent_pending());
    p.set_reader(R1, want(1..3, 3..4));
    assert!(p.urgent_pending());
    complete(&mut p, A, 1);
    assert!(p.urgent_pending());
    p.block_received(A, blk(&p, 2, 0));
    assert!(p.urgent_pending(), "a verifying piece is still pending");
    p.piece_verified(idx(&p, 2));
    assert!(!p.urgent_pending(), "readahead does not count");
}

// ---- endgame ----------------------------------------------------------------------------------

#[test]
fn endgame_duplicates_urgent_blocks_from_other_peers() {
    let mut p = picker(4, 2);
    p.set_reader(R1, want(0..1, 1..2));
    p.set_background(false);
    assert_eq!(pairs(&p.pick(A, &all(&p), 2)), vec![(0, 0), (0, 1)]);
    // Nothing is duplicated while A is not late.
    assert_eq!(pairs(&p.pick(C, &all(&p), 1)), vec![(1, 0)]);
    assert!(p.mark_late(blk(&p, 0, 0)) && p.mark_late(blk(&p, 0, 1)));
    assert!(!p.mark_late(blk(&p, 0, 1)), "marked once");
    // For B, duplicates of the late urgent blocks come before readahead's free blocks.
    assert_eq!(pairs(&p.pick(B, &all(&p), 3)), vec![(0, 0), (0, 1), (1, 1)]);
    assert_eq!(p.rerequests(), 2);
    // One more peer per mark.
    assert!(p.pick(D, &all(&p), 3).is_empty());
}

#[test]
fn endgame_never_duplicates_readahead_or_background_blocks() {
    let mut p = picker(4, 2);
    p.set_reader(R1, want(0..0, 0..1));
    p.pick(A, &all(&p), 8);
    assert_eq!(p.in_flight(A), 8);
    assert!(
        !p.mark_late(blk(&p, 0, 0)),
        "a readahead block is never late"
    );
    assert!(p.pick(B, &all(&p), 8).is_empty());
}

#[test]
fn endgame_at_most_three_peers_per_block_never_one_peer_twice() {
    let mut p = picker(2, 1);
    p.set_reader(R1, want(0..1, 1..1));
    p.set_background(false);
    assert_eq!(p.pick(A, &all(&p), 4).len(), 1);
    assert!(
        p.pick(A, &all(&p), 4).is_empty(),
        "never twice from one peer"
    );
    p.mark_late(blk(&p, 0, 0));
    assert!(p.pick(A, &all(&p), 4).is_empty(), "not from the late peer");
    assert_eq!(pairs(&p.pick(B, &all(&p), 4)), vec![(0, 0)]);
    p.mark_late(blk(&p, 0, 0));
    assert_eq!(pairs(&p.pick(C, &all(&p), 4)), vec![(0, 0)]);
    p.mark_late(blk(&p, 0, 0));
    assert!(
        p.pick(D, &all(&p), 4).is_empty(),
        "a fourth peer is not asked"
    );
}

#[test]
fn endgame_waits_for_free_urgent_blocks_to_be_taken() {
    let mut p = picker(2, 1);
    p.set_reader(R1, want(0..2, 2..2));
    p.pick(A, &bits(2, &[0]), 1);
    p.mark_late(blk(&p, 0, 0));
    // B has both: piece 1's free block first, then the duplicate of piece 0.
    assert_eq!(pairs(&p.pick(B, &all(&p), 4)), vec![(1, 0), (0, 0)]);
}

#[test]
fn arrival_of_duplicated_block_cancels_the_other_requests() {
    let mut p = picker(1, 2);
    p.set_reader(R1, want(0..1, 1..1));
    p.pick(A, &all(&p), 2);
    p.mark_late(blk(&p, 0, 0));
    p.mark_late(blk(&p, 0, 1));
    p.pick(B, &all(&p), 2);
    p.mark_late(blk(&p, 0, 0));
    p.pick(C, &all(&p), 1);
    let r = p.block_received(B, blk(&p, 0, 0));
    assert!(r.new);
    assert!(!r.piece_complete);
    assert_eq!(r.cancel, vec![(A, blk(&p, 0, 0)), (C, blk(&p, 0, 0))]);
    assert_eq!(
        p.blocks_requested(A).collect::<Vec<_>>(),
        vec![blk(&p, 0, 1)]
    );
    assert_eq!(p.in_flight(C), 0);
    // The cancelled peer's copy arriving anyway is a duplicate.
    assert!(!p.block_received(A, blk(&p, 0, 0)).new);
    let r = p.block_received(A, blk(&p, 0, 1));
    assert!(r.piece_complete);
    assert_eq!(r.cancel, vec![(B, blk(&p, 0, 1))]);
    assert_eq!(p.in_flight(B), 0);
}

#[test]
fn an_idle_peer_takes_the_urgent_blocks_queued_deepest_elsewhere() {
    let mut p = picker(2, 8);
    p.set_reader(R1, want(0..1, 1..2));
    assert_eq!(p.pick(A, &all(&p), 6).len(), 6);
    // B takes the free urgent blocks, then the one A would send last (5 ahead of it at A,
    // 2 in flight here), then readahead; not block 4, with as many ahead at A as B now has.
    assert_eq!(
        pairs(&p.pick(B, &all(&p), 4)),
        vec![(0, 6), (0, 7), (0, 5), (1, 0)]
    );
    assert_eq!(p.rerequests(), 1);
    // The first copy wins; A is told to cancel its own.
    let r = p.block_received(B, blk(&p, 0, 5));
    assert_eq!(r.cancel, vec![(A, blk(&p, 0, 5))]);
}

/// At the peers' rates, the same spread saves tens of ms on slow links, and is made, but a
/// millisecond on fast ones, where the copy would mostly be a duplicate received for nothing.
#[test]
fn an_urgent_block_is_spread_only_where_it_arrives_much_sooner() {
    for (rate, spread) in [(100e3, true), (40e6, false)] {
        let mut p = picker(2, 8);
        p.set_reader(R1, want(0..1, 1..2));
        p.set_rate(A, rate);
        p.set_rate(B, rate);
        assert_eq!(p.pick(A, &all(&p), 6).len(), 6);
        let want = if spread {
            vec![(0, 6), (0, 7), (0, 5), (1, 0)]
        } else {
            vec![(0, 6), (0, 7), (1, 0), (1, 1)]
        };
        assert_eq!(pairs(&p.pick(B, &all(&p), 4)), want, "at {rate} B/s");
        assert_eq!(p.rerequests(), u64::from(spread));
    }
    // A new peer (no rate yet) takes no copy of a block a fast peer has due in a millisecond.
    let mut p = picker(2, 8);
    p.set_reader(R1, want(0..1, 1..2));
    p.set_rate(A, 40e6);
    assert_eq!(p.pick(A, &all(&p), 6).len(), 6);
    assert_eq!(
        pairs(&p.pick(B, &all(&p), 4)),
        vec![(0, 6), (0, 7), (1, 0), (1, 1)]
    );
}

#[test]
fn peers_with_even_queues_trade_no_urgent_blocks() {
    let mut p = picker(1, 6);
    p.set_reader(R1, want(0..1, 1..1));
    p.set_background(false);
    assert_eq!(p.pick(A, &all(&p), 3).len(), 3);
    assert_eq!(p.pick(B, &all(&p), 3).len(), 3);
    assert!(p.pick(A, &all(&p), 4).is_empty());
    assert!(p.pick(B, &all(&p), 4).is_empty());
    assert_eq!(p.rerequests(), 0);
    // A peer with nothing in flight takes the last block of one queue, then has one in flight.
    assert_eq!(pairs(&p.pick(C, &all(&p), 4)), vec![(0, 2)]);
}

#[test]
fn only_urgent_blocks_are_spread() {
    let mut p = picker(2, 8);
    p.set_reader(R1, want(0..0, 0..2));
    assert_eq!(p.pick(A, &all(&p), 16).len(), 16);
    assert!(
        p.pick(B, &all(&p), 8).is_empty(),
        "readahead queued deep at A stays there"
    );
}

#[test]
fn a_piece_on_parole_is_not_spread() {
    let mut p = picker(1, 8);
    p.set_reader(R1, want(0..1, 1..1));
    p.set_exclusive(idx(&p, 0));
    assert_eq!(p.pick(A, &all(&p), 8).len(), 8);
    assert!(p.pick(B, &all(&p), 8).is_empty());
}

#[test]
fn pick_for_readers_leaves_background_alone_and_background_on() {
    let mut p = picker(4, 2);
    p.set_reader(R1, want(0..0, 1..2));
    assert_eq!(
        pairs(&p.pick_for_readers(A, &all(&p), 8)),
        vec![(1, 0), (1, 1)]
    );
    assert!(p.background_enabled());
    assert_eq!(pieces(&p.pick(A, &all(&p), 8)), vec![0, 2, 3]);
}

#[test]
fn a_lead_puts_a_want_after_others_of_its_class() {
    let mut p = picker(8, 1);
    p.set_background(false);
    // Urgent: the index (lead 0) before a read the kernel sent ahead (lead 1).
    p.set_reader(R1, want(6..7, 0..0));
    p.set_reader(
        R2,
        ReaderWant {
            lead: 1,
            ..want(1..2, 0..0)
        },
    );
    // Readahead: 3 s out at 1 MB/s from its lead of 500 ms, behind a plain window's piece 5.
    p.set_reader(
        ReaderId(3),
        ReaderWant {
            lead: 500,
            ..want(0..0, 2..3)
        },
    );
    p.set_reader(ReaderId(4), want(0..0, 5..6));
    assert_eq!(pieces(&p.pick(A, &all(&p), 8)), vec![6, 1, 5, 2]);
}

// ---- releasing requests -----------------------------------------------------------------------

#[test]
fn peer_gone_releases_blocks_and_availability() {
    let mut p = picker(2, 2);
    p.peer_bitfield(A, &all(&p));
    p.peer_bitfield(B, &bits(2, &[1]));
    p.pick(A, &all(&p), 3);
    p.block_received(A, blk(&p, 0, 0));
    p.peer_gone(A, &all(&p));
    assert_eq!(p.in_flight(A), 0);
    assert_eq!(p.availability(idx(&p, 0)), 0);
    assert_eq!(p.availability(idx(&p, 1)), 1);
    // Piece 1 lost its only request and had nothing: Missing again. Piece 0 keeps block 0.
    assert_eq!(state(&p, 1), PieceState::Missing);
    assert_eq!(state(&p, 0), PieceState::Partial);
    assert_eq!(pairs(&p.pick(B, &all(&p), 4)), vec![(0, 1), (1, 0), (1, 1)]);
}

#[test]
fn peer_choked_releases_blocks_but_keeps_availability() {
    let mut p = picker(2, 2);
    p.peer_bitfield(A, &all(&p));
    p.pick(A, &all(&p), 2);
    p.peer_choked(A);
    assert_eq!(p.in_flight(A), 0);
    assert_eq!(p.availability(idx(&p, 0)), 1);
    assert_eq!(state(&p, 0), PieceState::Missing);
    assert_eq!(pairs(&p.pick(B, &all(&p), 2)), vec![(0, 0), (0, 1)]);
}

#[test]
fn choke_releases_only_that_peers_share_of_a_duplicate() {
    let mut p = picker(1, 1);
    p.set_reader(R1, want(0..1, 1..1));
    p.pick(A, &all(&p), 1);
    p.mark_late(blk(&p, 0, 0));
    p.pick(B, &all(&p), 1);
    p.peer_choked(A);
    assert_eq!(state(&p, 0), PieceState::Partial);
    assert_eq!(p.in_flight(B), 1);
    let r = p.block_received(B, blk(&p, 0, 0));
    assert!(r.cancel.is_empty());
}

#[test]
fn request_failed_makes_block_requestable_again_even_from_same_peer() {
    let mut p = picker(1, 2);
    p.pick(A, &all(&p), 2);
    p.request_failed(A, blk(&p, 0, 1));
    assert_eq!(p.in_flight(A), 1);
    assert_eq!(pairs(&p.pick(A, &all(&p), 2)), vec![(0, 1)]);
}

#[test]
fn request_failed_for_block_never_requested_changes_nothing() {
    let mut p = picker(1, 2);
    p.pick(A, &all(&p), 1);
    p.request_failed(B, blk(&p, 0, 0));
    assert_eq!(p.in_flight(A), 1);
    assert_eq!(pairs(&p.pick(B, &all(&p), 2)), vec![(0, 1)]);
}

// ---- block arrival and piece transitions --------------------------------------------------------

#[test]
fn duplicate_block_is_not_new() {
    let mut p = picker(1, 2);
    p.pick(A, &all(&p), 2);
    assert!(p.block_received(A, blk(&p, 0, 0)).new);
    assert_eq!(p.block_received(A, blk(&p, 0, 0)), Received::default());
}

#[test]
fn unrequested_block_of_a_missing_piece_is_accepted() {
    let mut p = picker(2, 2);
    let r = p.block_received(A, blk(&p, 1, 1));
    assert!(r.new);
    assert_eq!(state(&p, 1), PieceState::Partial);
    assert_eq!(pairs(&p.pick(A, &all(&p), 3)), vec![(1, 0), (0, 0), (0, 1)]);
}

#[test]
fn late_block_after_timeout_is_accepted_and_cancels_the_retry() {
    let mut p = picker(1, 1);
    p.pick(A, &all(&p), 1);
    p.request_failed(A, blk(&p, 0, 0));
    p.pick(B, &all(&p), 1);
    let r = p.block_received(A, blk(&p, 0, 0));
    assert!(r.new && r.piece_complete);
    assert_eq!(r.cancel, vec![(B, blk(&p, 0, 0))]);
}

#[test]
fn block_number_past_the_piece_is_refused() {
    let mut p = picker(1, 2);
    assert_eq!(p.block_received(A, blk(&p, 0, 2)), Received::default());
    assert_eq!(state(&p, 0), PieceState::Missing);
}

#[test]
fn last_block_moves_piece_to_verifying_then_have() {
    let mut p = picker(2, 2);
    p.pick(A, &all(&p), 2);
    assert!(!p.block_received(A, blk(&p, 0, 1)).piece_complete);
    let r = p.block_received(A, blk(&p, 0, 0));
    assert!(r.new && r.piece_complete);
    assert_eq!(state(&p, 0), PieceState::Verifying);
    assert!(!p.have(idx(&p, 0)));
    assert_eq!(p.missing_count(), 2);
    p.piece_verified(idx(&p, 0));
    assert_eq!(state(&p, 0), PieceState::Have);
    assert!(p.have(idx(&p, 0)));
    assert_eq!(p.have_bitfield(), &bits(2, &[0]));
    assert_eq!(p.missing_count(), 1);
}

#[test]
fn block_of_a_verifying_or_had_piece_is_not_new() {
    let mut p = picker(2, 1);
    p.block_received(A, blk(&p, 0, 0));
    assert!(!p.block_received(B, blk(&p, 0, 0)).new);
    complete(&mut p, A, 1);
    assert!(!p.block_received(B, blk(&p, 1, 0)).new);
}

#[test]
fn piece_failed_fetches_every_block_again() {
    let mut p = picker(1, 2);
    p.pick(A, &all(&p), 2);
    p.block_received(A, blk(&p, 0, 0));
    p.block_received(A, blk(&p, 0, 1));
    p.piece_failed(idx(&p, 0));
    assert_eq!(state(&p, 0), PieceState::Missing);
    assert_eq!(pairs(&p.pick(B, &all(&p), 4)), vec![(0, 0), (0, 1)]);
}

#[test]
fn piece_failed_does_not_touch_a_had_piece() {
    let mut p = picker(1, 1);
    complete(&mut p, A, 0);
    p.piece_failed(idx(&p, 0));
    assert!(p.have(idx(&p, 0)));
}

#[test]
fn piece_evicted_is_fetched_again() {
    let mut p = picker(2, 1);
    complete(&mut p, A, 0);
    assert_eq!(pieces(&p.pick(A, &all(&p), 2)), vec![1]);
    p.piece_evicted(idx(&p, 0));
    assert_eq!(state(&p, 0), PieceState::Missing);
    assert!(!p.have(idx(&p, 0)));
    assert_eq!(p.missing_count(), 2);
    assert_eq!(pieces(&p.pick(A, &all(&p), 2)), vec![0]);
}

#[test]
fn a_verified_piece_not_kept_is_missing_and_off_parole() {
    let mut p = picker(2, 1);
    let b = p.pick(A, &all(&p), 1)[0];
    assert!(p.block_received(A, b).piece_complete);
    p.piece_failed(b.piece);
    p.set_exclusive(b.piece);
    let b = p.pick(B, &all(&p), 1)[0];
    assert!(p.block_received(B, b).piece_complete);
    p.piece_not_kept(b.piece);
    assert_eq!(state(&p, 0), PieceState::Missing);
    assert!(!p.have(idx(&p, 0)));
    // Off parole: any peer may fetch it, not only the one that sent it last.
    assert_eq!(pieces(&p.pick(C, &all(&p), 1)), vec![0]);
}

#[test]
fn piece_evicted_ignores_pieces_not_had() {
    let mut p = picker(1, 2);
    p.block_received(A, blk(&p, 0, 0));
    p.piece_evicted(idx(&p, 0));
    assert_eq!(state(&p, 0), PieceState::Partial);
}

#[test]
fn verified_while_partial_drops_its_requests() {
    let mut p = picker(1, 2);
    p.pick(A, &all(&p), 1);
    p.piece_verified(idx(&p, 0));
    assert_eq!(state(&p, 0), PieceState::Have);
    assert_eq!(p.in_flight(A), 0);
}

#[test]
fn never_picks_had_or_verifying_pieces() {
    let mut p = picker(3, 1);
    p.set_reader(R1, want(0..2, 2..3));
    complete(&mut p, A, 0);
    p.block_received(A, blk(&p, 1, 0));
    assert_eq!(state(&p, 1), PieceState::Verifying);
    assert_eq!(pieces(&p.pick(B, &all(&p), 10)), vec![2]);
    assert!(!p.mark_late(blk(&p, 1, 0)), "nothing requested");
    assert!(
        p.pick(C, &all(&p), 10).is_empty(),
        "no endgame on verifying pieces"
    );
}

#[test]
fn never_picks_pieces_the_peer_lacks() {
    let mut p = picker(6, 1);
    p.set_reader(R1, want(0..1, 1..3));
    let has = bits(6, &[2, 5]);
    assert_eq!(pieces(&p.pick(A, &has, 10)), vec![2, 5]);
    assert!(p.pick(A, &has, 10).is_empty());
}

#[test]
fn short_last_piece_has_fewer_blocks() {
    // 3 pieces of 4 blocks, the last one 1.5 blocks long.
    let len = 4 * BLOCK_SIZE;
    let total = 2 * u64::from(len) + u64::from(BLOCK_SIZE + BLOCK_SIZE / 2);
    let mut p = Picker::new(Geometry::new(len, total).unwrap());
    p.set_reader(R1, want(2..3, 3..3));
    p.set_background(false);
    assert_eq!(pairs(&p.pick(A, &all(&p), 10)), vec![(2, 0), (2, 1)]);
    p.block_received(A, blk(&p, 2, 0));
    assert!(p.block_received(A, blk(&p, 2, 1)).piece_complete);
    assert!(!p.block_received(A, blk(&p, 2, 2)).new);
}

#[test]
fn tiny_torrent_smaller_than_a_block() {
    let mut p = Picker::new(Geometry::new(BLOCK_SIZE, 100).unwrap());
    assert_eq!(pairs(&p.pick(A, &all(&p), 10)), vec![(0, 0)]);
    assert!(p.block_received(A, blk(&p, 0, 0)).piece_complete);
}

// ---- queries ----------------------------------------------------------------------------------

#[test]
fn interesting_only_while_peer_has_what_we_still_need() {
    let n = 130;
    let mut p = picker(n, 1);
    let has = bits(n, &[0, 129]);
    assert!(p.is_interesting(&has));
    complete(&mut p, A, 0);
    assert!(p.is_interesting(&has));
    p.block_received(A, blk(&p, 129, 0));
    assert!(!p.is_interesting(&has), "verifying pieces need nothing");
    p.piece_failed(idx(&p, 129));
    assert!(p.is_interesting(&has));
    assert!(!p.is_interesting(&Bitfield::new(n)));
}

#[test]
fn blocks_requested_lists_a_peers_in_flight_blocks_in_order() {
    let mut p = picker(2, 2);
    p.set_reader(R1, want(1..2, 2..2));
    p.pick(A, &all(&p), 3);
    let got: Vec<Block> = p.blocks_requested(A).collect();
    assert_eq!(pairs(&got), vec![(0, 0), (1, 0), (1, 1)]);
    assert_eq!(p.blocks_requested(B).count(), 0);
}

#[test]
fn availability_counts_bitfields_and_haves() {
    let mut p = picker(3, 1);
    p.peer_bitfield(A, &bits(3, &[0, 1]));
    p.peer_have(B, idx(&p, 1));
    assert_eq!(p.availability(idx(&p, 0)), 1);
    assert_eq!(p.availability(idx(&p, 1)), 2);
    assert_eq!(p.availability(idx(&p, 2)), 0);
}

// ---- parole after a failed check -------------------------------------------------------------

#[test]
fn failed_piece_is_refetched_from_one_peer_only() {
    let mut p = picker(2, 4);
    let has = all(&p);
    p.set_reader(R1, want(0..1, 0..0));
    // Two peers share the piece, it fails.
    let a = p.pick(A, &has, 2);
    let b = p.pick(B, &has, 2);
    for x in a.iter() {
        p.block_received(A, *x);
    }
    for x in b.iter() {
        p.block_received(B, *x);
    }
    p.piece_failed(idx(&p, 0));
    p.set_exclusive(idx(&p, 0));
    // A claims it with one request; B gets none of its blocks, not even endgame duplicates.
    assert_eq!(pairs(&p.pick(A, &has, 1)), vec![(0, 0)]);
    p.mark_late(blk(&p, 0, 0));
    assert!(pieces(&p.pick(B, &has, 8)).iter().all(|&i| i != 0));
    // A takes the rest.
    assert_eq!(pairs(&p.pick(A, &has, 8)), vec![(0, 1), (0, 2), (0, 3)]);
}

#[test]
fn parole_piece_passes_to_another_peer_when_its_owner_leaves() {
    let mut p = picker(1, 2);
    let has = all(&p);
    p.set_exclusive(idx(&p, 0));
    assert_eq!(p.pick(A, &has, 1).len(), 1);
    assert!(p.pick(B, &has, 2).is_empty());
    p.peer_gone(A, &has);
    assert_eq!(pairs(&p.pick(B, &has, 2)), vec![(0, 0), (0, 1)]);
}

#[test]
fn parole_owner_that_times_out_loses_the_piece() {
    let mut p = picker(1, 2);
    let has = all(&p);
    p.set_exclusive(idx(&p, 0));
    let taken = p.pick(A, &has, 2);
    assert_eq!(taken.len(), 2);
    for b in taken {
        p.request_failed(A, b);
    }
    // B may take it now, even though A asks again first.
    assert!(!p.pick(A, &has, 1).is_empty());
    assert_eq!(pairs(&p.pick(B, &has, 2)), vec![(0, 1)]);
}

#[test]
fn a_readahead_piece_memory_could_not_keep_waits_until_its_reader_is_near() {
    // 1 MiB pieces: at the unknown-reader rate (1 MB/s) a piece is about a second away.
    let mut p = picker(20, 64);
    p.set_background(false);
    p.set_reader(R1, want(0..0, 0..12));
    // Piece 10, far into the window, was fetched, verified and dropped for want of room.
    let b = Block {
        piece: idx(&p, 10),
        block: 0,
    };
    p.block_received(A, b);
    p.piece_not_kept(idx(&p, 10));
    let picked = pieces(&p.pick(A, &all(&p), 64 * 12));
    assert!(!picked.contains(&10), "fetched again at once: {picked:?}");
    // The reader moves on: piece 10 is now a piece (about a second) ahead of it.
    p.set_reader(R1, want(0..0, 9..14));
    assert!(pieces(&p.pick(B, &all(&p), 64 * 12)).contains(&10));
}

#[test]
fn readers_share_by_deadline_at_their_rates() {
    // 1 MiB pieces; a fast reader (10 MB/s) at piece 0, a slow one (1 MB/s) at piece 50.
    let mut p = picker(60, 64);
    p.set_background(false);
    p.set_reader(
        R1,
        ReaderWant {
            urgent: 0..0,
            readahead: 0..10,
            rate: 10_000_000,
            lead: 0,
        },
    );
    p.set_reader(
        R2,
        ReaderWant {
            urgent: 0..0,
            readahead: 50..53,
            rate: 1_000_000,
            lead: 0,
        },
    );
    let order = pieces(&p.pick(A, &all(&p), 64 * 13));
    // Both first pieces are due now; the fast reader's next nine come within a second, before
    // the slow reader's second piece.
    assert_eq!(order, [0, 50, 1, 2, 3, 4, 5, 6, 7, 8, 9, 51, 52]);
}
