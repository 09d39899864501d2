//! Our requests to one peer and how it answers them: what is in flight and since when, how
//! fast its blocks come, which answers we still accept late, what it rejected, and whether it
//! has stalled. Pure bookkeeping with the time passed in; the peer task acts on the verdicts.

use std::borrow::Cow;
use std::time::Duration;

use rustc_hash::FxHashMap;
use tokio::time::Instant;

use crate::bitfield::Bitfield;
use crate::picker::Block;
use crate::piece::{BLOCK_SIZE, PieceIndex};

/// Bounds on requests in flight to one peer. The target follows the peer's rate: enough of its
/// data to keep its link busy (a second of it while nobody reads, [`READER_QUEUE`] while a
/// reader may need the link), never fewer than `MIN_QUEUE` before its rate is known.
const MIN_QUEUE: usize = 8;
pub(super) const MAX_QUEUE: usize = 400;
/// While a reader may need the link: a peer serves requests in order, so whatever is queued
/// there delays a read's next urgent block by as long as it takes to send. The queue holds
/// this much of the peer's data, or two of its shortest round trips if longer (less would
/// leave its link idle between our requests and the blocks, and its measured rate would only
/// fall), at least `MIN_QUEUE` blocks (a rate measured while the peer was still speeding up
/// must not shrink the queue that would let it speed up).
const READER_QUEUE: Duration = Duration::from_millis(300);
/// Without readers a queue holds this much of the peer's data: throughput first.
const IDLE_QUEUE: Duration = Duration::from_secs(1);
/// Blocks a peer may send that we never asked for, beyond those we asked for and then
/// cancelled or gave up on (which may still arrive): more is a peer pushing data on us.
const UNASKED_TOLERANCE: u32 = 2;
/// `reject_request`s for blocks we never asked for, beyond those we cancelled, released on a
/// choke or gave up on (each of which the peer may reject instead of answering): harmless one
/// by one, many are a broken peer.
const UNASKED_REJECT_TOLERANCE: u32 = 16;
/// How long pieces a peer rejected are not asked of it again: it may have dropped them (a
/// streaming client's cache), or be busy; either way others are asked first, and it again later.
const REJECT_BACKOFF: Duration = Duration::from_secs(2);
/// Blocks a peer must deliver per stall to be kept once it stalled `PeerTimeouts::stalls`
/// times.
const BLOCKS_PER_STALL: u64 = 16;
/// A request is late (and, if a read waits on it, asked of one more peer) once it is this many
/// times older than the peer's average block time, and at least `LATE_MIN` old; before the
/// peer's first block, once it is `LATE_UNKNOWN` old.
const LATE_FACTOR: u32 = 4;
const LATE_MIN: Duration = Duration::from_secs(1);
const LATE_UNKNOWN: Duration = Duration::from_secs(2);

/// What a block that arrived was to us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Arrival {
    /// An answer to a request in flight.
    Asked,
    /// An answer to a request we cancelled or gave up on: still good data.
    Late,
    /// Nothing we asked for: dropped.
    Unasked,
    /// One unasked block too many: the peer pushes data on us.
    Pushed,
}

/// What a `reject_request` was to us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Rejection {
    /// Our request in flight: give the block back to the picker.
    Ours,
    /// A request we cancelled or gave up on: fine.
    Tolerated,
    /// One reject for a request never made too many.
    Flood,
}

/// The outcome of the once-a-second stall check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stall {
    None,
    /// Requests timed out: free them for other peers; ask one at a time until it delivers.
    Stalled,
    /// Stalled again and again without delivering in between: drop the peer.
    Hopeless,
}

pub(super) struct Requests {
    /// Our requests in flight, with when they were written to the socket (or, until then,
    /// the last time we looked: a request still queued behind our own writes is not late).
    in_flight: FxHashMap<Block, Instant>,
    /// Requests queued in all, and the position in that sequence of each one in flight, to
    /// tell from the writer's count which have reached the socket.
    queued: u64,
    unwritten: std::collections::VecDeque<(u64, Block)>,
    /// Smoothed time from our request to its block, over the blocks it delivered.
    avg_block: Option<Duration>,
    /// The shortest time from a request to its block: about a round trip plus one block's
    /// transfer, what the peer needs at least to answer.
    min_block: Option<Duration>,
    /// Requests the picker took as late, with when they were sent: each request is reported
    /// once (a block asked again later is a new request).
    reported_late: FxHashMap<Block, Instant>,
    last_block: Instant,
    /// When we sent the most recently sent request the peer has answered.
    newest_answered: Option<Instant>,
    /// Times its requests timed out, and blocks it delivered that we asked for.
    stalls: u32,
    delivered: u64,
    /// Blocks we asked for and then cancelled or gave up on: they may still arrive.
    late_allowed: u32,
    /// The latest blocks we cancelled, oldest first: a `reject_request` for one of them
    /// answers the cancel even when the block was asked again since (it is queued behind).
    cancelled: std::collections::VecDeque<Block>,
    /// Blocks that arrived unasked beyond `late_allowed`.
    unasked: u32,
    /// A peer that let requests time out gets one request at a time until it delivers again.
    snubbed: bool,
    /// Pieces it rejected a request for lately, and when the first of them was: not asked of
    /// it again until `REJECT_BACKOFF` passed.
    rejected: Vec<PieceIndex>,
    rejected_since: Option<Instant>,
    /// `reject_request`s for blocks we never asked for (nor cancelled or gave up on).
    unasked_rejects: u32,
}

impl Requests {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            in_flight: FxHashMap::default(),
            queued: 0,
            unwritten: std::collections::VecDeque::new(),
            avg_block: None,
            min_block: None,
            reported_late: FxHashMap::default(),
            last_block: now,
            newest_answered: None,
            stalls: 0,
            delivered: 0,
            late_allowed: 0,
            cancelled: std::collections::VecDeque::new(),
            unasked: 0,
            snubbed: false,
            rejected: Vec::new(),
            rejected_since: None,
            unasked_rejects: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// The blocks in flight.
    pub(super) fn blocks(&self) -> impl Iterator<Item = Block> + '_ {
        self.in_flight.keys().copied()
    }

    pub(super) fn is_snubbed(&self) -> bool {
        self.snubbed
    }

    /// Requests to keep in flight at a download rate of `rate` bytes/s: a second of it, or
    /// while `readers` may need the link, [`READER_QUEUE`] of it (or two round trips).
    pub(super) fn target(&self, rate: f64, readers: bool) -> usize {
        if self.snubbed {
            return 1;
        }
        let blocks = |d: Duration| (rate * d.as_secs_f64() / f64::from(BLOCK_SIZE)).ceil() as usize;
        if !readers || rate <= 0.0 {
            return blocks(IDLE_QUEUE).clamp(MIN_QUEUE, MAX_QUEUE);
        }
        let span = READER_QUEUE
            .max(self.min_block.unwrap_or_default() * 2)
            .min(IDLE_QUEUE);
        blocks(span).clamp(MIN_QUEUE, MAX_QUEUE)
    }

    /// A request for `b` was queued for the writer.
    pub(super) fn sent(&mut self, b: Block, now: Instant) {
        self.in_flight.insert(b, now);
        self.queued += 1;
        self.unwritten.push_back((self.queued, b));
    }

    /// The writer has written `written` requests in all: the rest are still queued behind our
    /// own writes, and their clocks start now at the earliest.
    pub(super) fn written(&mut self, written: u64, now: Instant) {
        while self
            .unwritten
            .front()
            .is_some_and(|&(seq, _)| seq <= written)
        {
            self.unwritten.pop_front();
        }
        for (_, b) in &self.unwritten {
            if let Some(sent) = self.in_flight.get_mut(b) {
                *sent = now;
            }
        }
    }

    /// We did not read from the peer for `d` (our download cap): its clocks stop meanwhile.
    pub(super) fn pause(&mut self, d: Duration) {
        for sent in self.in_flight.values_mut() {
            *sent += d;
        }
        for sent in self.reported_late.values_mut() {
            *sent += d;
        }
        self.last_block += d;
        if let Some(t) = &mut self.newest_answered {
            *t += d;
        }
    }

    pub(super) fn received(&mut self, b: Block, now: Instant) -> Arrival {
        let Some(sent) = self.in_flight.remove(&b) else {
            if self.late_allowed > 0 {
                self.late_allowed -= 1;
                return Arrival::Late;
            }
            self.unasked += 1;
            return if self.unasked > UNASKED_TOLERANCE {
                Arrival::Pushed
            } else {
                Arrival::Unasked
            };
        };
        self.newest_answered = self.newest_answered.max(Some(sent));
        let took = now.saturating_duration_since(sent);
        self.min_block = Some(self.min_block.map_or(took, |m| m.min(took)));
        self.avg_block = Some(match self.avg_block {
            None => took,
            Some(avg) => avg.mul_f64(0.75) + took.mul_f64(0.25),
        });
        self.last_block = now;
        self.snubbed = false;
        self.delivered += 1;
        Arrival::Asked
    }

    /// Another peer delivered `b` first: true if it was in flight here (send `cancel`).
    pub(super) fn cancel(&mut self, b: Block) -> bool {
        let had = self.in_flight.remove(&b).is_some();
        if had {
            self.late_allowed += 1;
            if self.cancelled.len() >= MAX_QUEUE {
                self.cancelled.pop_front();
            }
            self.cancelled.push_back(b);
        }
        had
    }

    /// Gives up on every request in flight (choked, stalled, leaving); their blocks may still
    /// arrive and are then taken.
    pub(super) fn release_all(&mut self) -> Vec<Block> {
        self.late_allowed = self
            .late_allowed
            .saturating_add(self.in_flight.len() as u32)
            .min(2 * MAX_QUEUE as u32);
        self.in_flight.drain().map(|(b, _)| b).collect()
    }

    /// The peer rejected a request for `b` (Fast).
    pub(super) fn rejected(&mut self, b: Option<Block>, now: Instant) -> Rejection {
        if let Some(b) = b
            && let Some(i) = self.cancelled.iter().position(|c| *c == b)
        {
            self.cancelled.remove(i);
            self.late_allowed = self.late_allowed.saturating_sub(1);
            return Rejection::Tolerated;
        }
        if let Some(b) = b
            && self.in_flight.remove(&b).is_some()
        {
            if !self.rejected.contains(&b.piece) {
                self.rejected.push(b.piece);
            }
            self.rejected_since.get_or_insert(now);
            return Rejection::Ours;
        }
        if self.late_allowed > 0 {
            self.late_allowed -= 1;
            return Rejection::Tolerated;
        }
        self.unasked_rejects += 1;
        if self.unasked_rejects > UNASKED_REJECT_TOLERANCE {
            Rejection::Flood
        } else {
            Rejection::Tolerated
        }
    }

    /// The peer's pieces minus those it rejected lately: what the picker may ask of it.
    pub(super) fn pickable<'a>(&self, has: &'a Bitfield) -> Cow<'a, Bitfield> {
        if self.rejected.is_empty() {
            return Cow::Borrowed(has);
        }
        let mut bf = has.clone();
        for p in &self.rejected {
            bf.clear(p.get());
        }
        Cow::Owned(bf)
    }

    /// Pieces rejected long enough ago may be asked of the peer again; true if some were.
    pub(super) fn end_reject_backoff(&mut self, now: Instant) -> bool {
        let over = self
            .rejected_since
            .is_some_and(|t| now.saturating_duration_since(t) >= REJECT_BACKOFF);
        if over {
            self.rejected.clear();
            self.rejected_since = None;
        }
        over
    }

    /// Requests the peer is late with that were not reported yet: much later than its own
    /// average block time (or `LATE_UNKNOWN` before its first block).
    pub(super) fn late(&mut self, now: Instant) -> Vec<(Block, Instant)> {
        let in_flight = &self.in_flight;
        self.reported_late
            .retain(|b, sent| in_flight.get(b) == Some(sent));
        let threshold = self
            .avg_block
            .map_or(LATE_UNKNOWN, |avg| (avg * LATE_FACTOR).max(LATE_MIN));
        (self.in_flight.iter())
            .filter(|(b, sent)| {
                now.saturating_duration_since(**sent) >= threshold
                    && !self.reported_late.contains_key(b)
            })
            .map(|(b, sent)| (*b, *sent))
            .collect()
    }

    /// The picker took `b` (sent at `sent`) as late: not reported again.
    pub(super) fn reported(&mut self, b: Block, sent: Instant) {
        self.reported_late.insert(b, sent);
    }

    pub(super) fn avg_block(&self) -> Option<Duration> {
        self.avg_block
    }

    /// Whether the requests in flight have stalled: the oldest is older than `timeout` and
    /// either nothing came for that long, or a request sent later was answered while this one
    /// was skipped (peers answer in order). After `max_stalls` stalls with too few blocks in
    /// between, the peer is hopeless.
    pub(super) fn check_stall(
        &mut self,
        now: Instant,
        timeout: Duration,
        max_stalls: u32,
    ) -> Stall {
        let Some(&oldest) = self.in_flight.values().min() else {
            return Stall::None;
        };
        let silent = now.saturating_duration_since(self.last_block) >= timeout;
        let skipped = self.newest_answered.is_some_and(|t| t > oldest);
        if now.saturating_duration_since(oldest) < timeout || !(silent || skipped) {
            return Stall::None;
        }
        self.stalls += 1;
        // A slow peer that mostly delivers is kept; one that stalls about as often as it
        // delivers (e.g. a block of each piece, then nothing) is not.
        if self.stalls >= max_stalls && self.delivered < u64::from(self.stalls) * BLOCKS_PER_STALL {
            return Stall::Hopeless;
        }
        self.snubbed = true;
        Stall::Stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::piece::Geometry;

    fn block(piece: u32, block: u32) -> Block {
        let g = Geometry::new(4 * BLOCK_SIZE, u64::from(BLOCK_SIZE) * 400).unwrap();
        Block {
            piece: g.piece(piece).unwrap(),
            block,
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(8);
    const STALLS: u32 = 2;

    #[test]
    fn answers_late_answers_and_pushed_blocks() {
        let t0 = Instant::now();
        let mut r = Requests::new(t0);
        r.sent(block(0, 0), t0);
        r.sent(block(0, 1), t0);
        assert_eq!(
            r.received(block(0, 0), t0 + Duration::from_millis(100)),
            Arrival::Asked
        );
        assert!(r.cancel(block(0, 1)));
        assert!(!r.cancel(block(0, 1)), "cancelled once");
        assert_eq!(r.received(block(0, 1), t0), Arrival::Late);
        assert_eq!(r.received(block(5, 0), t0), Arrival::Unasked);
        assert_eq!(r.received(block(5, 1), t0), Arrival::Unasked);
        assert_eq!(r.received(block(5, 2), t0), Arrival::Pushed);
        assert_eq!(r.avg_block(), Some(Duration::from_millis(100)));
    }

    #[test]
    fn the_queue_target_follows_the_rate_and_a_snub() {
        let t0 = Instant::now();
        let mut r = Requests::new(t0);
        assert_eq!(r.target(0.0, false), MIN_QUEUE);
        assert_eq!(r.target(f64::from(BLOCK_SIZE) * 100.0, false), 100);
        assert_eq!(r.target(1e12, false), MAX_QUEUE);
        r.sent(block(0, 0), t0);
        assert_eq!(
            r.check_stall(t0 + Duration::from_secs(9), TIMEOUT, STALLS),
            Stall::Stalled
        );
        assert_eq!(r.target(1e12, false), 1, "snubbed: one at a time");
        assert_eq!(r.target(1e12, true), 1, "snubbed: one at a time");
        r.sent(block(0, 1), t0 + Duration::from_secs(9));
        r.received(block(0, 1), t0 + Duration::from_secs(10));
        assert!(!r.is_snubbed(), "a delivered block ends the snub");
    }

    #[test]
    fn while_a_reader_may_need_the_link_the_queue_is_shallow_but_covers_round_trips() {
        let t0 = Instant::now();
        let mut r = Requests::new(t0);
        let rate = f64::from(BLOCK_SIZE) * 100.0;
        assert_eq!(r.target(0.0, true), MIN_QUEUE, "rate unknown");
        assert_eq!(r.target(rate, true), 30, "300 ms of 100 blocks/s");
        assert_eq!(r.target(f64::from(BLOCK_SIZE), true), MIN_QUEUE);
        // Blocks take at least 400 ms to come: two of those round trips are queued.
        r.sent(block(0, 0), t0);
        r.received(block(0, 0), t0 + Duration::from_millis(400));
        assert_eq!(r.target(rate, true), 80);
        // Never more than without a reader.
        r.sent(block(0, 1), t0);
        r.received(block(0, 1), t0 + Duration::from_secs(3));
        assert_eq!(r.target(rate, true), 80, "the shortest answer counts");
        let mut slow = Requests::new(t0);
        slow.sent(block(0, 0), t0);
        slow.received(block(0, 0), t0 + Duration::from_secs(2));
        assert_eq!(slow.target(rate, true), slow.target(rate, false));
    }

    #[test]
    fn a_peer_that_only_stalls_is_hopeless_one_that_delivers_is_not() {
        let t0 = Instant::now();
        let mut r = Requests::new(t0);
        let mut t = t0;
        r.sent(block(0, 0), t);
        t += Duration::from_secs(9);
        assert_eq!(r.check_stall(t, TIMEOUT, STALLS), Stall::Stalled);
        r.release_all();
        r.sent(block(0, 1), t);
        t += Duration::from_secs(9);
        assert_eq!(r.check_stall(t, TIMEOUT, STALLS), Stall::Hopeless);

        let mut r = Requests::new(t0);
        let mut t = t0;
        for i in 0..40 {
            r.sent(block(i, 0), t);
            r.received(block(i, 0), t);
        }
        for round in 0..2 {
            r.sent(block(90 + round, 0), t);
            t += Duration::from_secs(9);
            assert_eq!(r.check_stall(t, TIMEOUT, STALLS), Stall::Stalled);
            r.release_all();
        }
    }

    #[test]
    fn a_skipped_request_is_stalled_before_the_peer_goes_silent() {
        let t0 = Instant::now();
        let mut r = Requests::new(t0);
        r.sent(block(0, 0), t0);
        r.sent(block(0, 1), t0 + Duration::from_secs(1));
        // The later one is answered at 8.5 s; the first, skipped, is 9 s old at 9 s.
        r.received(block(0, 1), t0 + Duration::from_millis(8500));
        assert_eq!(
            r.check_stall(t0 + Duration::from_secs(9), TIMEOUT, STALLS),
            Stall::Stalled
        );
    }

    #[test]
    fn rejects_back_off_the_piece_and_floods_are_caught() {
        let t0 = Instant::now();
        let mut r = Requests::new(t0);
        let has = Bitfield::full(8);
        r.sent(block(3, 0), t0);
        assert_eq!(r.rejected(Some(block(3, 0)), t0), Rejection::Ours);
        assert!(!r.pickable(&has).get(3));
        assert!(!r.end_reject_backoff(t0 + Duration::from_secs(1)));
        assert!(r.end_reject_backoff(t0 + REJECT_BACKOFF));
        assert!(r.pickable(&has).get(3));
        for _ in 0..UNASKED_REJECT_TOLERANCE {
            assert_eq!(r.rejected(None, t0), Rejection::Tolerated);
        }
        assert_eq!(r.rejected(None, t0), Rejection::Flood);
    }

    #[test]
    fn a_reject_answering_a_cancel_spares_the_same_block_asked_again() {
        let t0 = Instant::now();
        let mut r = Requests::new(t0);
        let has = Bitfield::full(8);
        r.sent(block(3, 0), t0);
        assert!(r.cancel(block(3, 0)));
        // Asked again behind a reader's blocks, before the peer answered the cancel.
        r.sent(block(3, 0), t0);
        assert_eq!(r.rejected(Some(block(3, 0)), t0), Rejection::Tolerated);
        assert_eq!(r.len(), 1, "the new request stands");
        assert!(r.pickable(&has).get(3), "no backoff for the piece");
        assert_eq!(r.received(block(3, 0), t0), Arrival::Asked);
        // A second reject is for the request itself.
        r.sent(block(3, 1), t0);
        assert_eq!(r.rejected(Some(block(3, 1)), t0), Rejection::Ours);
    }

    #[test]
    fn a_request_still_queued_behind_our_writes_is_not_late() {
        let t0 = Instant::now();
        let mut r = Requests::new(t0);
        r.sent(block(0, 0), t0);
        r.sent(block(0, 1), t0);
        // Twenty seconds on, the writer has written only the first.
        let t = t0 + S20;
        r.written(1, t);
        assert_eq!(r.late(t), [(block(0, 0), t0)]);
        r.written(2, t + S20);
        assert_eq!(r.late(t + S20 + LATE_UNKNOWN).len(), 2);
    }

    #[test]
    fn time_we_did_not_read_for_our_own_cap_does_not_count() {
        let t0 = Instant::now();
        let mut r = Requests::new(t0);
        r.sent(block(0, 0), t0);
        r.pause(S20);
        assert!(r.late(t0 + S20 + Duration::from_secs(1)).is_empty());
        assert_eq!(
            r.check_stall(t0 + S20 + Duration::from_secs(7), TIMEOUT, STALLS),
            Stall::None
        );
        assert_eq!(
            r.check_stall(t0 + S20 + TIMEOUT, TIMEOUT, STALLS),
            Stall::Stalled
        );
    }

    const S20: Duration = Duration::from_secs(20);

    #[test]
    fn late_requests_are_reported_once_per_request() {
        let t0 = Instant::now();
        let mut r = Requests::new(t0);
        r.sent(block(0, 0), t0);
        assert!(r.late(t0 + Duration::from_secs(1)).is_empty());
        let late = r.late(t0 + LATE_UNKNOWN);
        assert_eq!(late, [(block(0, 0), t0)]);
        r.reported(block(0, 0), t0);
        assert!(r.late(t0 + LATE_UNKNOWN * 2).is_empty());
        // Asked again later: a new request, reported again when late.
        r.release_all();
        let t1 = t0 + Duration::from_secs(10);
        r.sent(block(0, 0), t1);
        assert_eq!(r.late(t1 + LATE_UNKNOWN).len(), 1);
    }
}
