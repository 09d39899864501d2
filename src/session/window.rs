//! How far ahead of a sequential reader to fetch: far enough for the next [`AHEAD`] of its own
//! consumption rate. A 40 Mbit/s video gets tens of seconds ahead; a slow reader keeps the
//! initial window and does not fill the cache with what it will read in minutes.
//!
//! The rate is measured over the reader's last [`PERIOD`] of sequential reads, and over at
//! least [`MIN_SPAN`], so a burst of the kernel's parallel reads is not mistaken for a huge rate.
//! A seek starts a new measurement. The clock is tokio's, so tests run it paused.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The window covers this much of the reader's consumption.
pub(crate) const AHEAD: Duration = Duration::from_secs(20);
/// Reads older than this no longer count toward the rate.
pub(crate) const PERIOD: Duration = Duration::from_secs(10);
/// The shortest span a rate is computed over.
pub(crate) const MIN_SPAN: Duration = Duration::from_secs(1);

/// One reader's recent sequential reads.
#[derive(Debug, Default)]
pub(crate) struct Pace {
    /// When each read came, and its bytes; oldest first, none older than `PERIOD`.
    reads: VecDeque<(Instant, u64)>,
    bytes: u64,
}

impl Pace {
    /// A sequential read of `len` bytes at `now`.
    pub(crate) fn record(&mut self, now: Instant, len: u64) {
        while let Some(&(t, b)) = self.reads.front() {
            if now.saturating_duration_since(t) <= PERIOD {
                break;
            }
            self.reads.pop_front();
            self.bytes -= b;
        }
        self.reads.push_back((now, len));
        self.bytes += len;
    }

    /// A seek: what was read before says nothing about the new position.
    pub(crate) fn reset(&mut self) {
        self.reads.clear();
        self.bytes = 0;
    }

    /// Bytes per second over the recorded reads.
    pub(crate) fn rate(&self, now: Instant) -> u64 {
        let Some(&(first, _)) = self.reads.front() else {
            return 0;
        };
        let span = now.saturating_duration_since(first).max(MIN_SPAN);
        (self.bytes as f64 / span.as_secs_f64()) as u64
    }

    /// The readahead window for this rate: `AHEAD` of it, within `[min, max]` (`max` wins if
    /// the two cross).
    pub(crate) fn window(&self, now: Instant, min: u64, max: u64) -> u64 {
        let want = (self.rate(now) as f64 * AHEAD.as_secs_f64()) as u64;
        want.max(min).min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;
    const MIN: u64 = 4 * MIB;
    const MAX: u64 = 256 * MIB;

    /// Reads `chunk` bytes every `every` for `count` reads, then returns the window.
    async fn read_steadily(pace: &mut Pace, chunk: u64, every: Duration, count: u32) -> u64 {
        for _ in 0..count {
            pace.record(Instant::now(), chunk);
            tokio::time::advance(every).await;
        }
        pace.window(Instant::now(), MIN, MAX)
    }

    #[tokio::test(start_paused = true)]
    async fn a_video_stream_gets_about_twenty_seconds_ahead() {
        // 40 Mbit/s: 5 MB/s in 128 KiB reads.
        let mut pace = Pace::default();
        let rate = 5_000_000u64;
        let chunk = 128 * 1024;
        let every = Duration::from_secs_f64(chunk as f64 / rate as f64);
        let window = read_steadily(&mut pace, chunk, every, 400).await;
        let want = rate * 20;
        assert!(
            window.abs_diff(want) < want / 20,
            "window {window} for 20 s at {rate} B/s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_keeps_the_initial_window() {
        // 50 KB/s: 20 s of it is 1 MB, under the 4 MiB floor.
        let mut pace = Pace::default();
        let window = read_steadily(&mut pace, 5_000, Duration::from_millis(100), 300).await;
        assert_eq!(window, MIN);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fast_reader_is_capped_at_the_maximum() {
        let mut pace = Pace::default();
        let window = read_steadily(&mut pace, MIB, Duration::from_millis(10), 300).await;
        assert_eq!(window, MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_reads_in_no_time_is_not_a_huge_rate() {
        let mut pace = Pace::default();
        for _ in 0..8 {
            pace.record(Instant::now(), 128 * 1024);
        }
        // 1 MiB "in no time" counts as 1 MiB over MIN_SPAN.
        assert_eq!(pace.rate(Instant::now()), MIB);
        assert_eq!(pace.window(Instant::now(), MIN, MAX), 20 * MIB);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_follows_the_rate_down_and_a_seek_resets_it() {
        let mut pace = Pace::default();
        let fast = read_steadily(&mut pace, MIB, Duration::from_millis(100), 100).await;
        assert_eq!(fast, 200 * MIB, "10 MiB/s");
        // Slowing to 1 MiB/s: once the fast reads age out of PERIOD the window follows.
        let slow = read_steadily(&mut pace, MIB, Duration::from_secs(1), 15).await;
        assert!((20 * MIB..25 * MIB).contains(&slow), "{slow}");
        pace.reset();
        assert_eq!(pace.rate(Instant::now()), 0);
        assert_eq!(pace.window(Instant::now(), MIN, MAX), MIN);
    }

    #[test]
    fn max_wins_when_min_and_max_cross() {
        let pace = Pace::default();
        assert_eq!(pace.window(Instant::now(), 8 * MIB, 2 * MIB), 2 * MIB);
    }
}
