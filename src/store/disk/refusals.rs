//! When to tell the user that the disk cache refuses writes (its budget full of pieces being
//! read): once when refusals start, not per piece, and not more often than every
//! [`SAY_REFUSED_EVERY`]; then once when a write is stored again, if the start was said. One
//! per pool, so a library of torrents sharing `--cache-dir` says it once, not per torrent.

use std::time::{Duration, Instant};

/// The least time between two warnings that writes are refused.
pub const SAY_REFUSED_EVERY: Duration = Duration::from_secs(600);

/// What to tell the user of refused writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Say {
    Refusing,
    StoringAgain,
}

/// The pure state machine: each write's outcome in, what to say out.
#[derive(Debug, Default)]
pub struct RefusalNote {
    refusing: bool,
    /// Said since refusals started this time.
    said: bool,
    last_said: Option<Instant>,
}

impl RefusalNote {
    /// A write was refused (`true`) or stored (`false`) at `now`.
    pub fn observe(&mut self, refused: bool, now: Instant) -> Option<Say> {
        if refused == self.refusing {
            return None;
        }
        self.refusing = refused;
        if !refused {
            return std::mem::take(&mut self.said).then_some(Say::StoringAgain);
        }
        if self.last_said.is_some_and(|t| now - t < SAY_REFUSED_EVERY) {
            return None;
        }
        self.said = true;
        self.last_said = Some(now);
        Some(Say::Refusing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_said_when_they_start_not_per_piece_nor_more_often_than_the_pause() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut note = RefusalNote::default();
        assert_eq!(note.observe(false, t0), None);
        assert_eq!(note.observe(true, t0), Some(Say::Refusing));
        assert_eq!(note.observe(true, t0 + s), None, "the next piece refused");
        assert_eq!(note.observe(false, t0 + s), Some(Say::StoringAgain));
        // Flapping: not said again within the pause, nor its end.
        assert_eq!(note.observe(true, t0 + 2 * s), None);
        assert_eq!(note.observe(false, t0 + 3 * s), None);
        assert_eq!(
            note.observe(true, t0 + SAY_REFUSED_EVERY),
            Some(Say::Refusing)
        );
    }
}
