//! LEDBAT (RFC 6817) as BEP 29 applies it to uTP: the window follows the one-way queuing
//! delay of what we send, so an upload yields to other traffic on a shared bottleneck
//! before that traffic sees the queue grow past `TARGET`.
//!
//! The delay samples are the peer's `timestamp_difference_microseconds`: its receive time
//! minus our send time, on two unrelated clocks. Their offset cancels out against the base
//! delay, the smallest sample of the last `BASE_HISTORY` minutes (kept as one minimum per
//! minute, so a route change or clock drift ages out). Queuing delay = current - base, where
//! current is the smallest of the last `CURRENT_FILTER` samples (one late packet is noise,
//! not a queue). The values wrap around `u32`, so they are compared by wrapping difference.
//!
//! On each ACK the window moves by `GAIN * off_target * acked * mss / cwnd`, with
//! `off_target = (TARGET - queuing_delay) / TARGET` capped to [-1, 1]: a full window acked
//! with no queue grows it by at most one MSS, i.e. one MSS per RTT; a queue past the target
//! shrinks it as fast. A loss or a retransmission timeout halves it. It never goes below
//! `MIN_CWND` segments, nor above the peer's receive window.
//!
//! Nor does it grow past what the sender uses: RFC 6817 caps the window at `flightsize +
//! ALLOWED_INCREASE * MSS`. An upload that waits for requests or the disk would otherwise
//! build up credit on delay samples that never saw it used, and spend it later as one burst
//! into whatever queue there is then. Where the RFC's pseudo-code would misread this stream:
//! - The flight size is the most in flight as any ACK arrived over the last round trip or
//!   two, not at this ACK: the stream takes all the ACKs that came in a burst before it sends
//!   again, so along a burst the flight shrinks ACK by ACK even for a sender that keeps its
//!   window full, and a per-ACK cap would stop its growth after the burst's first ACK.
//! - A window with less than one segment of it free counts as used whole: segments are
//!   whole, so that rest could not be sent. So the window may end up to one ACK's growth past
//!   the RFC's cap, never further. (A round trip's ACKs taken in one burst still lose a little
//!   growth at whole segments: the burst's flight was sent on the window before it grew.)
//! - The cap stops the growth only: a window above it (the sender used it a moment ago) is
//!   kept, as libtorrent keeps it, rather than cut to the flight each time the upload pauses;
//!   a queue over the target shrinks it as before.

use std::time::{Duration, Instant};

use crate::rtte::RttEstimator;

use super::CongestionController;

/// The queuing delay LEDBAT aims at (BEP 29, RFC 6817: at most 100 ms).
const TARGET: Duration = Duration::from_millis(100);
/// At most one MSS of growth per RTT (RFC 6817: GAIN MUST NOT exceed 1).
const GAIN: f64 = 1.0;
/// The base delay is the minimum of this many one-minute buckets (RFC 6817: BASE_HISTORY).
const BASE_HISTORY: usize = 10;
const BUCKET: Duration = Duration::from_secs(60);
/// The current delay is the minimum of this many recent samples (RFC 6817: a MIN filter).
const CURRENT_FILTER: usize = 4;
/// Window floor and start, in segments (RFC 6817: MIN_CWND, INIT_CWND).
const MIN_CWND: f64 = 2.0;
const INIT_CWND: f64 = 2.0;
/// How far past the bytes in flight the window may grow, in segments (RFC 6817:
/// ALLOWED_INCREASE, which SHOULD be 1).
const ALLOWED_INCREASE: f64 = 1.0;

/// `a` is earlier than `b` on a wrapping `u32` microsecond clock.
fn earlier(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) > 0
}

fn wrapping_min(a: u32, b: u32) -> u32 {
    if earlier(b, a) { b } else { a }
}

/// The most bytes in flight as an ACK arrived, in this round trip and the one before.
#[derive(Clone, Copy, PartialEq)]
struct Used {
    /// When this round trip's began.
    since: Instant,
    this: f64,
    before: f64,
}

impl Used {
    fn new(now: Instant, flight: f64) -> Used {
        Used {
            since: now,
            this: flight,
            before: 0.,
        }
    }

    /// `flight` was in flight as an ACK arrived at `now`; round trips last `rtt`.
    fn note(&mut self, now: Instant, flight: f64, rtt: Duration) {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < rtt {
            self.this = self.this.max(flight);
            return;
        }
        // Two round trips without an ACK: what was used then says nothing of now.
        let before = if elapsed < 2 * rtt { self.this } else { 0. };
        *self = Used {
            since: now,
            this: flight,
            before,
        };
    }

    fn bytes(&self) -> f64 {
        self.this.max(self.before)
    }
}

/// `Copy` (fixed arrays, not queues): the crate's tracing wrapper compares copies.
#[derive(Clone, Copy, PartialEq)]
pub struct Ledbat {
    /// Bytes.
    cwnd: f64,
    /// The window recovery starts from after a loss (bytes).
    ssthresh: f64,
    mss: usize,
    /// The peer's receive window (bytes).
    rwnd: f64,
    /// The bytes in flight as the ACK about to be taken arrived (`on_flight_size`).
    flight: Option<f64>,
    /// What the sender uses, from those; `None` until a caller says: no cap on growth then.
    used: Option<Used>,
    /// (start of the minute, smallest sample in it), newest last.
    base: [Option<(Instant, u32)>; BASE_HISTORY],
    /// The latest samples, newest last.
    current: [Option<u32>; CURRENT_FILTER],
}

/// Appends `v` to a window of the latest values, dropping the oldest.
fn push<T: Copy, const N: usize>(window: &mut [Option<T>; N], v: T) {
    window.rotate_left(1);
    window[N - 1] = Some(v);
}

impl core::fmt::Debug for Ledbat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ledbat:cwnd={},cwnd_mss={:.2},queuing_delay={:?},mss={}",
            self.window(),
            self.cwnd / self.mss as f64,
            self.queuing_delay(),
            self.mss
        )
    }
}

impl Ledbat {
    pub fn new(mss: usize) -> Ledbat {
        Ledbat {
            cwnd: INIT_CWND * mss as f64,
            ssthresh: f64::INFINITY,
            mss,
            rwnd: f64::INFINITY,
            flight: None,
            used: None,
            base: [None; BASE_HISTORY],
            current: [None; CURRENT_FILTER],
        }
    }

    fn min_cwnd(&self) -> f64 {
        MIN_CWND * self.mss as f64
    }

    /// The queuing delay of the latest samples; `None` before the first one.
    pub fn queuing_delay(&self) -> Option<Duration> {
        let base = self.base.iter().flatten().map(|&(_, d)| d).reduce(wrapping_min)?;
        let current = self.current.iter().flatten().copied().reduce(wrapping_min)?;
        let us = if earlier(current, base) {
            0
        } else {
            current.wrapping_sub(base)
        };
        Some(Duration::from_micros(us.into()))
    }

    fn halve(&mut self) {
        self.cwnd = (self.cwnd / 2.).max(self.min_cwnd());
        self.ssthresh = self.cwnd;
    }
}

impl CongestionController for Ledbat {
    fn window(&self) -> usize {
        self.cwnd.min(self.rwnd).max(self.min_cwnd()) as usize
    }

    fn sshthresh(&self) -> usize {
        self.ssthresh.min(usize::MAX as f64) as usize
    }

    fn set_mss(&mut self, mss: usize) {
        self.mss = mss;
        self.cwnd = self.cwnd.max(self.min_cwnd());
    }

    fn smss(&self) -> usize {
        self.mss
    }

    fn on_recovered(&mut self, _new_cwnd_bytes: usize, _new_sshthresh: usize) {
        // The crate's pick (flight size + 1 MSS) suits a controller that slow-starts back up;
        // LEDBAT grows by one MSS per RTT at most, so it goes on from the window it halved
        // on entering recovery (and moved by delay since).
        self.cwnd = self.cwnd.max(self.min_cwnd());
    }

    fn on_delay_sample(&mut self, now: Instant, their_delay_us: u32) {
        // Zero: the peer had no timestamp of ours yet.
        if their_delay_us == 0 {
            return;
        }
        match &mut self.base[BASE_HISTORY - 1] {
            Some((start, min)) if now.duration_since(*start) < BUCKET => {
                *min = wrapping_min(*min, their_delay_us);
            }
            _ => push(&mut self.base, (now, their_delay_us)),
        }
        push(&mut self.current, their_delay_us);
    }

    fn on_ack(&mut self, now: Instant, len: usize, rtt: &RttEstimator) {
        if len == 0 {
            return;
        }
        if let Some(flight) = self.flight.take() {
            match &mut self.used {
                Some(used) => used.note(now, flight, rtt.roundtrip_time()),
                None => self.used = Some(Used::new(now, flight)),
            }
        }
        // No delay known (a peer that echoes none): grow as if there were no queue; loss
        // still halves the window, as TCP's would be.
        let delay = self.queuing_delay().unwrap_or(Duration::ZERO);
        let off_target =
            ((TARGET.as_secs_f64() - delay.as_secs_f64()) / TARGET.as_secs_f64()).clamp(-1., 1.);
        let change = GAIN * off_target * len as f64 * self.mss as f64 / self.cwnd;
        if change > 0. {
            // Growth up to ALLOWED_INCREASE past what the sender uses, no further; a window
            // above that already stays (see the module doc).
            let mss = self.mss as f64;
            let cap = self.used.map_or(f64::INFINITY, |u| {
                let used = if u.bytes() + mss > self.cwnd {
                    self.cwnd
                } else {
                    u.bytes()
                };
                used + ALLOWED_INCREASE * mss
            });
            self.cwnd = (self.cwnd + change).min(cap.max(self.cwnd));
        } else {
            self.cwnd += change;
        }
        // Growth past the peer's window would be credit never used, and a burst later.
        self.cwnd = self.cwnd.min(self.rwnd.max(self.min_cwnd()));
        self.cwnd = self.cwnd.max(self.min_cwnd());
    }

    fn on_retransmission_timeout(&mut self, _now: Instant) {
        self.halve();
    }

    fn on_enter_recovery(&mut self, _now: Instant) {
        self.halve();
    }

    fn set_remote_window(&mut self, win: usize) {
        self.rwnd = win as f64;
    }

    fn on_flight_size(&mut self, bytes: usize) {
        self.flight = Some(bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: usize = 1400;

    /// A connection with a base delay known: `offset` stands for the two clocks' difference.
    fn started(now: Instant, offset: u32) -> Ledbat {
        let mut l = Ledbat::new(MSS);
        l.set_remote_window(64 * 1024 * 1024);
        for _ in 0..CURRENT_FILTER {
            l.on_delay_sample(now, offset);
        }
        l
    }

    /// The peer's samples say `queue` from now on (enough of them to fill the filter).
    fn queue_becomes(l: &mut Ledbat, now: Instant, offset: u32, queue: Duration) {
        for _ in 0..CURRENT_FILTER {
            l.on_delay_sample(now, offset.wrapping_add(queue.as_micros() as u32));
        }
    }

    /// The round trip the tests' connections have.
    const RTT: Duration = Duration::from_millis(50);

    fn rtte() -> RttEstimator {
        let mut rtte = RttEstimator::default();
        rtte.sample(RTT);
        rtte
    }

    /// Acks one window's worth, one MSS at a time, each packet seeing `queue` of delay; the
    /// sender keeps its window full.
    fn one_rtt(l: &mut Ledbat, now: Instant, offset: u32, queue: Duration) {
        limited_rtt(l, now, offset, queue, usize::MAX);
    }

    /// [`one_rtt`] for a sender that keeps at most `limit` bytes in flight (it has no more to
    /// send, or its window is smaller).
    fn limited_rtt(l: &mut Ledbat, now: Instant, offset: u32, queue: Duration, limit: usize) {
        let rtte = rtte();
        let packets = l.window() / MSS;
        for _ in 0..packets {
            l.on_delay_sample(now, offset.wrapping_add(queue.as_micros() as u32));
            // Whole segments: a window's fraction of one is not sent.
            l.on_flight_size((l.window() / MSS * MSS).min(limit));
            l.on_ack(now, MSS, &rtte);
        }
    }

    /// [`one_rtt`] with the window's ACKs taken in one burst, the sender sending nothing
    /// between them: each finds one MSS less in flight than the one before.
    fn burst_rtt(l: &mut Ledbat, now: Instant, offset: u32) {
        let rtte = rtte();
        let packets = l.window() / MSS;
        for i in 0..packets {
            l.on_delay_sample(now, offset);
            l.on_flight_size((packets - i) * MSS);
            l.on_ack(now, MSS, &rtte);
        }
    }

    #[test]
    fn the_window_grows_while_the_delay_is_under_target_by_at_most_one_mss_per_rtt() {
        let now = Instant::now();
        let mut l = started(now, 123_456);
        for _ in 0..20 {
            let before = l.window();
            one_rtt(&mut l, now, 123_456, Duration::from_millis(10));
            let grown = l.window() as f64 - before as f64;
            assert!(grown > 0., "grows: {before} -> {}", l.window());
            assert!(grown <= MSS as f64 + 1., "at most one MSS per RTT: {grown}");
        }
        assert!(l.window() >= 15 * MSS, "{}", l.window());
    }

    #[test]
    fn the_window_shrinks_while_the_delay_is_over_target_but_not_below_the_minimum() {
        let now = Instant::now();
        let mut l = started(now, 7);
        for _ in 0..30 {
            one_rtt(&mut l, now, 7, Duration::from_millis(1));
        }
        let grown = l.window();
        queue_becomes(&mut l, now, 7, Duration::from_millis(180));
        one_rtt(&mut l, now, 7, Duration::from_millis(180));
        assert!(l.window() < grown, "{grown} -> {}", l.window());
        for _ in 0..200 {
            one_rtt(&mut l, now, 7, Duration::from_millis(500));
        }
        assert_eq!(l.window(), 2 * MSS, "the floor is two segments");
    }

    #[test]
    fn at_the_target_the_window_holds() {
        let now = Instant::now();
        let mut l = started(now, 1000);
        for _ in 0..10 {
            one_rtt(&mut l, now, 1000, Duration::ZERO);
        }
        queue_becomes(&mut l, now, 1000, TARGET);
        let before = l.window();
        one_rtt(&mut l, now, 1000, TARGET);
        assert_eq!(l.window(), before);
    }

    #[test]
    fn loss_and_timeout_halve_the_window() {
        let now = Instant::now();
        let mut l = started(now, 0x8000_0000);
        for _ in 0..40 {
            one_rtt(&mut l, now, 0x8000_0000, Duration::ZERO);
        }
        let before = l.window();
        l.on_enter_recovery(now);
        assert_eq!(l.window(), before / 2);
        assert_eq!(l.sshthresh(), before / 2, "recovery runs on the halved window");
        l.on_recovered(MSS, 0);
        assert_eq!(l.window(), before / 2, "and resumes from it, not from the flight size");
        l.on_retransmission_timeout(now);
        assert_eq!(l.window(), before / 4);
        for _ in 0..20 {
            l.on_retransmission_timeout(now);
        }
        assert_eq!(l.window(), 2 * MSS);
    }

    #[test]
    fn the_clocks_offset_may_wrap_around() {
        let now = Instant::now();
        // Base just below the wrap; samples past it are later, not smaller.
        let offset = u32::MAX - 2_000;
        let mut l = started(now, offset);
        queue_becomes(&mut l, now, offset, Duration::from_millis(50));
        assert_eq!(l.queuing_delay(), Some(Duration::from_millis(50)));
        let before = l.window();
        one_rtt(&mut l, now, offset, Duration::from_millis(50));
        assert!(l.window() > before, "50 ms is under the target");
        queue_becomes(&mut l, now, offset, Duration::from_millis(150));
        assert_eq!(l.queuing_delay(), Some(Duration::from_millis(150)));
        let before = l.window();
        one_rtt(&mut l, now, offset, Duration::from_millis(150));
        assert!(l.window() < before, "150 ms is over it");
    }

    #[test]
    fn the_base_delay_is_forgotten_after_the_history() {
        let mut now = Instant::now();
        let mut l = started(now, 50_000);
        // The path gets longer by 30 ms for good: at first that reads as queuing...
        now += Duration::from_secs(1);
        for _ in 0..CURRENT_FILTER {
            l.on_delay_sample(now, 80_000);
        }
        assert_eq!(l.queuing_delay(), Some(Duration::from_millis(30)));
        // ...until the minute that saw the shorter path has aged out of the history.
        for _ in 0..BASE_HISTORY {
            now += BUCKET;
            l.on_delay_sample(now, 80_000);
        }
        assert_eq!(l.queuing_delay(), Some(Duration::ZERO));
    }

    #[test]
    fn a_peer_that_echoes_no_delay_is_sent_to_as_if_there_were_no_queue() {
        let now = Instant::now();
        let mut l = Ledbat::new(MSS);
        l.set_remote_window(1 << 20);
        l.on_delay_sample(now, 0);
        assert_eq!(l.queuing_delay(), None, "a zero sample is no sample");
        let rtte = RttEstimator::default();
        for _ in 0..2 {
            l.on_ack(now, MSS, &rtte);
        }
        let w = l.window();
        assert!(w > 2 * MSS && w <= 3 * MSS, "up to one MSS for the window acked: {w}");
    }

    #[test]
    fn a_sender_with_little_to_send_grows_its_window_to_one_segment_past_it_and_no_further() {
        let mut now = Instant::now();
        let mut l = started(now, 99);
        // No queue: only the flight size holds it, once the window has one segment free
        // past it (up to one ACK's growth more).
        for _ in 0..50 {
            now += RTT;
            limited_rtt(&mut l, now, 99, Duration::ZERO, 5 * MSS);
        }
        let held = l.window();
        assert!((6 * MSS..6 * MSS + MSS / 5).contains(&held), "{held}");
        for _ in 0..50 {
            now += RTT;
            limited_rtt(&mut l, now, 99, Duration::ZERO, 5 * MSS);
        }
        assert_eq!(l.window(), held);
        // More to send: it grows again.
        for _ in 0..10 {
            now += RTT;
            one_rtt(&mut l, now, 99, Duration::ZERO);
        }
        assert!(l.window() > 7 * MSS, "{}", l.window());
    }

    #[test]
    fn a_full_window_whose_acks_come_in_bursts_keeps_growing() {
        let mut now = Instant::now();
        let mut l = started(now, 31);
        for _ in 0..30 {
            now += RTT;
            burst_rtt(&mut l, now, 31);
        }
        // From two segments, 30 round trips: 23 (taken one by one: 29). A cap on the flight
        // at each ACK would leave it under 10, one without whole segments at 17.
        assert!(l.window() >= 20 * MSS, "{}", l.window());
    }

    #[test]
    fn a_pause_in_sending_neither_grows_the_window_nor_cuts_it() {
        let mut now = Instant::now();
        let mut l = started(now, 4242);
        for _ in 0..20 {
            now += RTT;
            one_rtt(&mut l, now, 4242, Duration::ZERO);
        }
        let used = l.window();
        assert!(used >= 15 * MSS, "{used}");
        // The upload waits for requests: two segments in flight, no queue. The round trip
        // that saw the window used still lets it grow; after that it holds.
        now += RTT;
        limited_rtt(&mut l, now, 4242, Duration::ZERO, 2 * MSS);
        let held = l.window();
        assert!(held >= used && held <= used + MSS, "{used} -> {held}");
        for _ in 0..50 {
            now += RTT;
            limited_rtt(&mut l, now, 4242, Duration::ZERO, 2 * MSS);
        }
        assert_eq!(l.window(), held, "neither grown nor cut to the flight");
        // A queue over the target still shrinks it.
        queue_becomes(&mut l, now, 4242, Duration::from_millis(150));
        limited_rtt(&mut l, now, 4242, Duration::from_millis(150), 2 * MSS);
        assert!(l.window() < held, "{held} -> {}", l.window());
    }

    #[test]
    fn the_peers_receive_window_caps_it() {
        let now = Instant::now();
        let mut l = started(now, 5);
        l.set_remote_window(4 * MSS);
        for _ in 0..50 {
            one_rtt(&mut l, now, 5, Duration::ZERO);
        }
        assert_eq!(l.window(), 4 * MSS);
    }
}
