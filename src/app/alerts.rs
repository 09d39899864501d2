//! Problems a user must hear about, said once: a condition is logged (`tracing::warn`) in plain
//! words when it starts, not again while it lasts, and again only after it cleared and came
//! back. A log that repeats every second hides the one line that matters.
//!
//! [`Once`] is the pure state machine (time comes in as an [`Instant`]); [`Alerts`] holds one
//! per [`Condition`] and does the logging. A new condition ("disk store full") is a variant, a
//! delay and a `cleared` sentence, plus one `observe` call where it is detected.

use std::time::{Duration, Instant};

/// Something wrong that the user can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Condition {
    /// Every tracker's last announce failed.
    TrackersFailing,
    /// No peer connected.
    NoPeers,
    /// A read has waited a long time for its data.
    ReadStalled,
    /// The disk cache cannot write (full, or its directory is gone).
    DiskFailing,
}

impl Condition {
    const ALL: [Condition; 4] = [
        Condition::TrackersFailing,
        Condition::NoPeers,
        Condition::ReadStalled,
        Condition::DiskFailing,
    ];

    /// How long the condition must hold before it is said: a moment without peers between two
    /// connections is normal, a minute is not.
    pub fn delay(self) -> Duration {
        match self {
            Condition::TrackersFailing => Duration::ZERO,
            Condition::NoPeers => Duration::from_secs(60),
            // The caller passes the wait already measured.
            Condition::ReadStalled => Duration::ZERO,
            Condition::DiskFailing => Duration::ZERO,
        }
    }

    /// Logged (at info) when a condition that was said clears.
    fn cleared(self) -> &'static str {
        match self {
            Condition::TrackersFailing => "a tracker answers again",
            Condition::NoPeers => "peers are connected again",
            Condition::ReadStalled => "reads get their data again",
            Condition::DiskFailing => "the disk cache writes again",
        }
    }
}

/// What an observation changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The condition has held for its delay: say it now.
    Raised,
    /// A condition that was said is over.
    Cleared,
}

/// One condition's said-once state.
#[derive(Clone, Debug)]
pub struct Once {
    delay: Duration,
    /// When the condition started holding, while it holds.
    since: Option<Instant>,
    said: bool,
}

impl Once {
    pub fn new(delay: Duration) -> Self {
        Self {
            delay,
            since: None,
            said: false,
        }
    }

    /// Whether the condition holds at `now`; `Some` exactly when the user should hear of it.
    pub fn observe(&mut self, now: Instant, holds: bool) -> Option<Change> {
        if !holds {
            self.since = None;
            return std::mem::take(&mut self.said).then_some(Change::Cleared);
        }
        let since = *self.since.get_or_insert(now);
        if !self.said && now.saturating_duration_since(since) >= self.delay {
            self.said = true;
            return Some(Change::Raised);
        }
        None
    }

    /// Said and still holding.
    pub fn is_raised(&self) -> bool {
        self.said
    }
}

/// Every condition of one mount, with the sentence of those currently raised.
#[derive(Debug)]
pub struct Alerts {
    conditions: Vec<(Condition, Once, String)>,
}

impl Default for Alerts {
    fn default() -> Self {
        Self {
            conditions: Condition::ALL
                .iter()
                .map(|&c| (c, Once::new(c.delay()), String::new()))
                .collect(),
        }
    }
}

impl Alerts {
    /// `problem`: the sentence to say if the condition holds now, `None` if it does not. Logs
    /// a warning when the condition is raised and a note when it clears; returns the change.
    pub fn observe(
        &mut self,
        now: Instant,
        condition: Condition,
        problem: Option<String>,
    ) -> Option<Change> {
        let (_, once, text) = self.conditions.iter_mut().find(|(c, ..)| *c == condition)?;
        let change = once.observe(now, problem.is_some());
        match change {
            Some(Change::Raised) => {
                *text = problem.unwrap_or_default();
                tracing::warn!("{text}");
            }
            Some(Change::Cleared) => {
                text.clear();
                tracing::info!("{}", condition.cleared());
            }
            None => {}
        }
        change
    }

    /// Forgets `condition` without a word: it no longer applies (a sleeping torrent has no
    /// peers by design); should it hold again, its delay starts anew.
    pub fn forget(&mut self, condition: Condition) {
        if let Some((_, once, text)) = self.conditions.iter_mut().find(|(c, ..)| *c == condition) {
            *once = Once::new(condition.delay());
            text.clear();
        }
    }

    /// The sentences of the conditions raised now (for `btfs status`).
    pub fn raised(&self) -> Vec<String> {
        self.conditions
            .iter()
            .filter(|(_, once, _)| once.is_raised())
            .map(|(_, _, text)| text.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn said_once_while_it_lasts_and_again_only_after_it_cleared() {
        let t0 = Instant::now();
        let mut once = Once::new(Duration::ZERO);
        assert_eq!(once.observe(t0, true), Some(Change::Raised));
        for s in 1..100 {
            assert_eq!(once.observe(t0 + s * S, true), None, "at {s} s");
        }
        assert!(once.is_raised());
        assert_eq!(once.observe(t0 + 100 * S, false), Some(Change::Cleared));
        assert_eq!(once.observe(t0 + 101 * S, false), None);
        assert_eq!(once.observe(t0 + 102 * S, true), Some(Change::Raised));
    }

    #[test]
    fn a_delayed_condition_is_said_only_after_holding_that_long() {
        let t0 = Instant::now();
        let mut once = Once::new(60 * S);
        for s in 0..60 {
            assert_eq!(once.observe(t0 + s * S, true), None, "at {s} s");
        }
        assert_eq!(once.observe(t0 + 60 * S, true), Some(Change::Raised));
        assert_eq!(once.observe(t0 + 61 * S, true), None);
    }

    #[test]
    fn a_brief_lapse_before_the_delay_restarts_the_count_and_says_nothing() {
        let t0 = Instant::now();
        let mut once = Once::new(60 * S);
        assert_eq!(once.observe(t0, true), None);
        assert_eq!(once.observe(t0 + 50 * S, true), None);
        // Cleared before it was ever said: nothing to take back.
        assert_eq!(once.observe(t0 + 51 * S, false), None);
        assert_eq!(once.observe(t0 + 52 * S, true), None);
        assert_eq!(
            once.observe(t0 + 111 * S, true),
            None,
            "59 s since it came back"
        );
        assert_eq!(once.observe(t0 + 112 * S, true), Some(Change::Raised));
    }

    #[test]
    fn alerts_keep_the_sentence_of_each_raised_condition() {
        let t0 = Instant::now();
        let mut a = Alerts::default();
        let failing = || Some("every tracker fails".to_string());
        assert_eq!(
            a.observe(t0, Condition::TrackersFailing, failing()),
            Some(Change::Raised)
        );
        assert_eq!(
            a.observe(t0 + S, Condition::TrackersFailing, failing()),
            None
        );
        assert_eq!(
            a.observe(t0, Condition::NoPeers, Some("no peers".into())),
            None
        );
        assert_eq!(a.raised(), vec!["every tracker fails".to_string()]);
        assert_eq!(
            a.observe(t0 + 2 * S, Condition::TrackersFailing, None),
            Some(Change::Cleared)
        );
        assert!(a.raised().is_empty());
        assert_eq!(
            a.observe(t0 + 60 * S, Condition::NoPeers, Some("no peers".into())),
            Some(Change::Raised)
        );
        assert_eq!(a.raised(), vec!["no peers".to_string()]);
    }

    #[test]
    fn a_forgotten_condition_is_quiet_and_waits_its_delay_again() {
        let t0 = Instant::now();
        let mut alerts = Alerts::default();
        let no_peers = || Some("no peer".to_string());
        assert_eq!(alerts.observe(t0, Condition::NoPeers, no_peers()), None);
        let raised = alerts.observe(t0 + 60 * S, Condition::NoPeers, no_peers());
        assert_eq!(raised, Some(Change::Raised));
        alerts.forget(Condition::NoPeers);
        assert!(alerts.raised().is_empty());
        // Holding again: said only after its whole delay from now.
        assert_eq!(
            alerts.observe(t0 + 61 * S, Condition::NoPeers, no_peers()),
            None
        );
        assert_eq!(
            alerts.observe(t0 + 120 * S, Condition::NoPeers, no_peers()),
            None
        );
        let again = alerts.observe(t0 + 121 * S, Condition::NoPeers, no_peers());
        assert_eq!(again, Some(Change::Raised));
    }
}
