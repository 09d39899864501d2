//! Token buckets for `--max-download-rate` and `--max-upload-rate`.
//!
//! One [`RateLimit`] per direction, shared by every peer task through an `Arc`; a task calls
//! [`RateLimit::acquire`] with a message's size before it sends (upload) or after it reads
//! (download). The bucket holds up to a quarter second of rate, and never less than one
//! 16 KiB block, so a single block always fits and short bursts are not chopped up.
//!
//! Fairness: waiters queue on a tokio `Mutex`, whose queue is FIFO, and the waiter at the
//! head holds it while it sleeps for its tokens. So grants go out in arrival order and a
//! peer that asks again at once queues behind everyone already waiting.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// The smallest burst: one request-sized block.
pub const MIN_BURST: u64 = 16 * 1024;

/// A shared limit of bytes per second, or none at all.
#[derive(Debug)]
pub struct RateLimit {
    /// `None` when unlimited, so `acquire` costs one branch. The tokio `Mutex` is held across
    /// the wait on purpose: see the module doc on fairness.
    bucket: Option<Mutex<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    /// Bytes per second.
    rate: f64,
    /// Most tokens the bucket holds.
    burst: f64,
    /// May go negative after a grant larger than `burst`: later callers wait off the debt.
    tokens: f64,
    /// When `tokens` was last brought up to date; `None` until first use (the bucket starts
    /// full), so a limit made outside a runtime still reads tokio's clock.
    last: Option<Instant>,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let earned = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + earned).min(self.burst);
        }
        self.last = Some(now);
    }
}

impl RateLimit {
    /// A limit of `bytes_per_sec`; `None` or `Some(0)` means unlimited (as in libtorrent).
    pub fn new(bytes_per_sec: Option<u64>) -> Self {
        let bucket = bytes_per_sec.filter(|&r| r > 0).map(|rate| {
            let burst = (rate / 4).max(MIN_BURST) as f64;
            Mutex::new(Bucket {
                rate: rate as f64,
                burst,
                tokens: burst,
                last: None,
            })
        });
        RateLimit { bucket }
    }

    /// No limit: `acquire` returns at once.
    pub fn unlimited() -> Self {
        RateLimit { bucket: None }
    }

    /// Whether `acquire` can ever wait.
    pub fn is_limited(&self) -> bool {
        self.bucket.is_some()
    }

    /// Wait until `bytes` may pass, in FIFO order with the other callers.
    ///
    /// Cancel-safe: a caller dropped while waiting has taken nothing. A request larger than
    /// the burst waits for a full bucket, then goes through and leaves a debt the next
    /// callers wait off, so the long-run rate still holds.
    pub async fn acquire(&self, bytes: usize) {
        let Some(bucket) = &self.bucket else {
            return;
        };
        let mut b = bucket.lock().await;
        let bytes = bytes as f64;
        let need = bytes.min(b.burst);
        loop {
            b.refill(Instant::now());
            if b.tokens >= need {
                b.tokens -= bytes;
                return;
            }
            // Timers fire on whole milliseconds; a shortfall left by rounding costs one more.
            let wait = Duration::from_secs_f64((need - b.tokens) / b.rate);
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const BLOCK: usize = 16 * 1024;

    /// Time on the paused clock to push `total` bytes through `limit` in blocks.
    async fn time_to_send(limit: &RateLimit, total: usize) -> Duration {
        let start = Instant::now();
        for _ in 0..total / BLOCK {
            limit.acquire(BLOCK).await;
        }
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        for limit in [
            RateLimit::new(None),
            RateLimit::new(Some(0)),
            RateLimit::unlimited(),
        ] {
            assert!(!limit.is_limited());
            let start = Instant::now();
            for _ in 0..1000 {
                limit.acquire(1 << 30).await;
            }
            assert_eq!(start.elapsed(), Duration::ZERO);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn n_bytes_at_rate_r_take_n_over_r() {
        // 64 KiB/s: the burst is one block. 1 MiB takes 16 s less the free first block.
        let limit = RateLimit::new(Some(64 * 1024));
        let elapsed = time_to_send(&limit, 1 << 20).await;
        assert!(elapsed >= Duration::from_secs_f64(15.75), "{elapsed:?}");
        assert!(elapsed <= Duration::from_secs(16), "{elapsed:?}");

        // 1 MiB/s: a 256 KiB burst. 8 MiB takes 8 s less the burst.
        let limit = RateLimit::new(Some(1 << 20));
        let elapsed = time_to_send(&limit, 8 << 20).await;
        assert!(elapsed >= Duration::from_secs_f64(7.75), "{elapsed:?}");
        assert!(elapsed <= Duration::from_secs(8), "{elapsed:?}");

        // Idle time refills only up to the burst, not a backlog.
        tokio::time::advance(Duration::from_secs(60)).await;
        let elapsed = time_to_send(&limit, 8 << 20).await;
        assert!(elapsed >= Duration::from_secs_f64(7.75), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn oversized_request_passes_and_the_next_pays_its_debt() {
        let limit = RateLimit::new(Some(16 * 1024));
        let start = Instant::now();
        limit.acquire(100 * 1024).await;
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "a full bucket lets it through"
        );
        limit.acquire(BLOCK).await;
        // Debt of 84 KiB plus one block, at 16 KiB/s.
        assert!(
            start.elapsed() >= Duration::from_secs_f64(6.25),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_acquire_takes_nothing() {
        let limit = RateLimit::new(Some(16 * 1024));
        limit.acquire(BLOCK).await; // drain the bucket
        let start = Instant::now();
        let gave_up = tokio::time::timeout(Duration::from_millis(500), limit.acquire(BLOCK)).await;
        assert!(gave_up.is_err());
        limit.acquire(BLOCK).await;
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
        assert!(
            elapsed < Duration::from_millis(1100),
            "the abandoned block was not charged"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_acquirers_take_turns() {
        let limit = Arc::new(RateLimit::new(Some(16 * 1024)));
        // Drain the bucket so both are queued before the first grant.
        limit.acquire(BLOCK).await;
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks: Vec<_> = ['a', 'b']
            .into_iter()
            .map(|name| {
                let (limit, order) = (limit.clone(), order.clone());
                tokio::spawn(async move {
                    for _ in 0..8 {
                        limit.acquire(BLOCK).await;
                        order.lock().expect("order lock").push(name);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("acquirer task");
        }
        let order = order.lock().expect("order lock").clone();
        assert_eq!(order.len(), 16);
        // Neither waits behind more than one grant to the other.
        let mut lead = 0i32;
        for name in &order {
            lead += if *name == 'a' { 1 } else { -1 };
            assert!(lead.abs() <= 1, "{order:?}");
        }
    }
}
