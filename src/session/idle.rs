//! Idle torrents sleep (`Config::idle_after`; what sleeping does to a session: `sleep.rs`): after that long without a read (and none
//! waiting), a session drops its peers, takes no new ones, stops announcing (trackers are told
//! `stopped`, the DHT and local discovery tasks end) and fetches nothing in the background.
//! What it learned stays: the connector's address book (from trackers, the DHT, PEX...) and
//! memory. The next read wakes it: the connector redials every known address at once, and
//! discovery starts again.
//!
//! # Sleep and wake never cross
//! A read stores its time, then looks at `asleep`; the idle task sets `asleep`, then looks at
//! the time of the last read (both sequentially consistent). So either the read sees `asleep`
//! and wakes the session (after the sleep completes, both under `period`), or the idle task
//! sees the read and stays awake: a read never waits on a sleeping session.
//!
//! # Locks
//! `period` is taken before the state lock (to apply a sleep or a wake to the state), never
//! under it, and by nothing else.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// A session's sleep state.
pub(crate) struct Idle {
    /// When the session started: read times are milliseconds since.
    epoch: Instant,
    last_read: AtomicU64,
    /// True while asleep, and briefly while the idle task decides (see the module doc).
    asleep: AtomicBool,
    period: Mutex<Period>,
    /// True from a sleep to the next wake (never in between, unlike `asleep`): what the
    /// session's periodic tasks wait on, so a sleeping torrent wakes no timer (a library of a
    /// thousand sleeps at no cost).
    slept: watch::Sender<bool>,
}

/// The current awake period, or sleep.
struct Period {
    asleep: bool,
    /// Flips to true to end this period's discovery tasks (at sleep and at shutdown).
    end: watch::Sender<bool>,
}

impl Idle {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_read: AtomicU64::new(0),
            asleep: AtomicBool::new(false),
            period: Mutex::new(Period {
                asleep: false,
                end: watch::channel(false).0,
            }),
            slept: watch::channel(false).0,
        }
    }

    pub(crate) fn is_asleep(&self) -> bool {
        self.asleep.load(Ordering::SeqCst)
    }

    /// True from a sleep to the next wake.
    pub(crate) fn slept(&self) -> bool {
        *self.slept.borrow()
    }

    /// Returns once the session is awake: at once if it is, else at the next wake.
    pub(crate) async fn awake(&self) {
        let mut slept = self.slept.subscribe();
        // The sender lives in `self`, which outlives this borrow.
        let _ = slept.wait_for(|slept| !slept).await;
    }

    /// The next tick of a task that has nothing to do while the session sleeps: asleep, it
    /// waits for the wake (no timer) and restarts `tick` from there. False at shutdown.
    pub(crate) async fn next_awake_tick(
        &self,
        tick: &mut tokio::time::Interval,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        if self.slept() {
            tokio::select! {
                () = self.awake() => tick.reset(),
                _ = shutdown.changed() => return false,
            }
        }
        tokio::select! {
            _ = tick.tick() => true,
            _ = shutdown.changed() => false,
        }
    }

    /// The receiver this awake period's discovery tasks end on.
    pub(crate) fn period_end(&self) -> watch::Receiver<bool> {
        crate::sync::lock(&self.period).end.subscribe()
    }

    /// Ends this period's discovery tasks (shutdown).
    pub(crate) fn end_period(&self) {
        crate::sync::lock(&self.period).end.send_replace(true);
    }

    fn since_epoch(&self) -> u64 {
        let ms = Instant::now()
            .saturating_duration_since(self.epoch)
            .as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    /// A read starts now; true if it must wake the session ([`Idle::wake`]).
    pub(crate) fn read_starts(&self) -> bool {
        self.last_read.store(self.since_epoch(), Ordering::SeqCst);
        self.asleep.load(Ordering::SeqCst)
    }

    /// Falls asleep if no read came for `idle_after` and `sleep` agrees: it is given how long
    /// it has been quiet, and applies the sleep to the session (under `period`) or says no
    /// (a read waits). Ends this awake period's discovery. True if asleep now, newly.
    pub(crate) fn try_sleep(
        &self,
        idle_after: Duration,
        sleep: impl FnOnce(Duration) -> bool,
    ) -> bool {
        let mut period = crate::sync::lock(&self.period);
        if period.asleep {
            return false;
        }
        // Before reading the last read's time: see the module doc.
        self.asleep.store(true, Ordering::SeqCst);
        let last = self.last_read.load(Ordering::SeqCst);
        let quiet = Duration::from_millis(self.since_epoch().saturating_sub(last));
        if quiet < idle_after || !sleep(quiet) {
            self.asleep.store(false, Ordering::SeqCst);
            return false;
        }
        period.asleep = true;
        period.end.send_replace(true);
        self.slept.send_replace(true);
        true
    }

    /// Wakes up if asleep: `wake` applies it to the session (under `period`). Returns the
    /// receiver the new awake period's discovery ends on, or `None` if awake already.
    pub(crate) fn wake(&self, wake: impl FnOnce()) -> Option<watch::Receiver<bool>> {
        let mut period = crate::sync::lock(&self.period);
        if !period.asleep {
            return None;
        }
        period.asleep = false;
        period.end = watch::channel(false).0;
        wake();
        self.asleep.store(false, Ordering::SeqCst);
        self.slept.send_replace(false);
        Some(period.end.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn awake_waits_from_a_sleep_to_the_next_wake() {
        let idle = Idle::new();
        idle.awake().await; // awake: at once
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(idle.try_sleep(Duration::from_secs(1), |_| true));
        assert!(idle.slept());
        let waiting = idle.awake();
        tokio::pin!(waiting);
        assert!(
            futures_poll_once(waiting.as_mut()).await.is_none(),
            "awake while asleep"
        );
        assert!(idle.wake(|| {}).is_some());
        assert!(!idle.slept());
        waiting.await;
    }

    /// Polls `f` once: its output if it is ready.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = f => Some(out),
            _ = std::future::ready(()) => None,
        }
    }
}
