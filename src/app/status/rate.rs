//! Transfer rates over the last few seconds, from totals sampled about once a second.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The span rates are averaged over: short enough to follow a player's seek, long enough
/// not to jump with every burst of blocks.
pub const WINDOW: Duration = Duration::from_secs(5);

/// Samples of (time, downloaded total, uploaded total), the oldest no older than `WINDOW`
/// before the newest (one older sample is kept as the baseline).
#[derive(Debug, Default)]
pub struct RateMeter {
    samples: VecDeque<(Instant, u64, u64)>,
}

impl RateMeter {
    pub fn sample(&mut self, now: Instant, downloaded: u64, uploaded: u64) {
        self.samples.push_back((now, downloaded, uploaded));
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|s| now.saturating_duration_since(s.0) >= WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// (download, upload) in bytes/s from the oldest sample kept up to the totals at `now`
    /// (not stored: a report between two ticks still counts the bytes since the last one).
    pub fn rates_at(&self, now: Instant, downloaded: u64, uploaded: u64) -> (u64, u64) {
        let Some(first) = self.samples.front() else {
            return (0, 0);
        };
        let last = (now, downloaded, uploaded);
        let secs = last.0.saturating_duration_since(first.0).as_secs_f64();
        if secs <= 0.0 {
            return (0, 0);
        }
        let per_sec = |a: u64, b: u64| (b.saturating_sub(a) as f64 / secs) as u64;
        (per_sec(first.1, last.1), per_sec(first.2, last.2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn rates_follow_the_last_seconds_only() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        assert_eq!(m.rates_at(t0, 0, 0), (0, 0));
        m.sample(t0, 0, 0);
        assert_eq!(m.rates_at(t0, 0, 0), (0, 0));
        // Between ticks: half a second after the only sample, 500 bytes came in.
        assert_eq!(m.rates_at(t0 + S / 2, 500, 0), (1000, 0));
        // 1000 B/s down, 10 B/s up for 10 s.
        for s in 1..=10 {
            m.sample(t0 + s * S, 1000 * s as u64, 10 * s as u64);
        }
        assert_eq!(m.rates_at(t0 + 10 * S, 10_000, 100), (1000, 10));
        // Then nothing moves: after the window the rate is zero again.
        for s in 11..=16 {
            m.sample(t0 + s * S, 10_000, 100);
        }
        assert_eq!(m.rates_at(t0 + 16 * S, 10_000, 100), (0, 0));
        assert!(m.samples.len() <= 7, "{:?}", m.samples.len());
    }
}
