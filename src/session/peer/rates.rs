//! One connection's transfer rates, smoothed once a second: what the choker ranks peers by
//! and what sizes our request queue to the peer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Weight of the newest second in the smoothed rates.
const NEWEST: f64 = 0.4;
/// The least time a partial second's bytes are counted over (`down_now`).
const PARTIAL_SECOND: Duration = Duration::from_millis(100);

#[derive(Default)]
pub(super) struct Rates {
    /// Block bytes received since the last tick, and the smoothed download rate (bytes/s).
    received: u64,
    down: f64,
    /// Block bytes received in the last whole second.
    last_second: u64,
    /// When the second `received` counts began (the last tick, or the first block).
    second_began: Option<Instant>,
    /// Block bytes the writer task has sent (it counts them), as of the last tick, and the
    /// smoothed upload rate.
    sent: Arc<AtomicU64>,
    sent_at_tick: u64,
    up: f64,
}

impl Rates {
    pub(super) fn received(&mut self, bytes: usize, now: Instant) {
        self.received += bytes as u64;
        self.second_began.get_or_insert(now);
    }

    /// The counter the writer task adds sent block bytes to.
    pub(super) fn sent_counter(&self) -> Arc<AtomicU64> {
        self.sent.clone()
    }

    /// Once a second: folds the last second into the smoothed rates.
    pub(super) fn tick(&mut self, now: Instant) {
        self.second_began = Some(now);
        self.down = (1.0 - NEWEST) * self.down + NEWEST * self.received as f64;
        self.last_second = self.received;
        self.received = 0;
        let sent = self.sent.load(Ordering::Relaxed);
        self.up = (1.0 - NEWEST) * self.up + NEWEST * sent.saturating_sub(self.sent_at_tick) as f64;
        self.sent_at_tick = sent;
    }

    /// Smoothed bytes/s received from the peer.
    pub(super) fn down(&self) -> f64 {
        self.down
    }

    /// What to size the request queue by: the smoothed rate, or the last second's if higher
    /// (the smoothed rate lags behind a peer speeding up, as every new one does).
    pub(super) fn down_for_queue(&self) -> f64 {
        self.down.max(self.last_second as f64)
    }

    /// The download rate as of `now`, for weighing endgame copies (`Picker::set_rate`): as
    /// `down_for_queue`, or what this second has brought so far if that is more (counted over
    /// at least [`PARTIAL_SECOND`]). On a fast link a whole read may be over before the first
    /// tick.
    pub(super) fn down_now(&self, now: Instant) -> f64 {
        let partial = self.second_began.map_or(0.0, |t| {
            let secs = now.saturating_duration_since(t).max(PARTIAL_SECOND);
            self.received as f64 / secs.as_secs_f64()
        });
        self.down_for_queue().max(partial)
    }

    /// Smoothed bytes/s sent to the peer.
    pub(super) fn up(&self) -> f64 {
        self.up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_follow_each_second_smoothed() {
        let t = Instant::now();
        let mut r = Rates::default();
        for _ in 0..30 {
            r.received(100_000, t);
            r.sent_counter().fetch_add(50_000, Ordering::Relaxed);
            r.tick(t);
        }
        assert!((r.down() - 100_000.0).abs() < 1.0, "{}", r.down());
        assert!((r.up() - 50_000.0).abs() < 1.0, "{}", r.up());
        r.tick(t);
        assert!(
            (r.down() - 60_000.0).abs() < 1.0,
            "a quiet second weighs in"
        );
        let mut fresh = Rates::default();
        fresh.received(300_000, t);
        fresh.tick(t);
        assert!((fresh.down() - 120_000.0).abs() < 1.0);
        assert_eq!(fresh.down_for_queue(), 300_000.0, "not the lagging average");
    }

    /// Before the first tick, the rate is what the partial second brought, counted over at
    /// least `PARTIAL_SECOND`.
    #[test]
    fn a_fast_peer_has_a_rate_before_its_first_second_ends() {
        let t = Instant::now();
        let mut r = Rates::default();
        assert_eq!(r.down_now(t), 0.0);
        r.received(1_000_000, t);
        assert_eq!(r.down_now(t), 10_000_000.0, "over PARTIAL_SECOND at least");
        let later = t + Duration::from_millis(250);
        assert_eq!(r.down_now(later), 4_000_000.0);
        r.tick(later);
        assert_eq!(r.down_now(later), 1_000_000.0, "the last second's, now");
    }
}
