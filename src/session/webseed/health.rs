//! Whether a web seed is asked now: active, backing off after an error, or dropped for good.
//! A pure state machine with the time passed in; the task acts on it.
//!
//! What an error means (`classify`):
//! - the server lacks one file (HTTP 404 and other 4xx, a file of another size): that file's
//!   pieces are not asked of it again, the rest still are;
//! - the server is busy or away (503, 429, 408, a refused or broken connection, a timeout, a
//!   body cut short): back off, 1 s doubling up to a cap, or as `Retry-After` says;
//! - the server answers wrongly (another range than asked, a longer body, an encoded body, a
//!   redirect loop): back off too, and after `MAX_STRIKES` of these in a row, drop it;
//! - the server ignores ranges (200 for part of a file): it would send whole files for every
//!   block, drop it;
//! - and, decided elsewhere, its data failed a SHA1 check: drop it (`lied`).

use std::time::Duration;

use tokio::time::Instant;

use super::http::FetchError;

/// Wrong answers in a row before a web seed is dropped.
pub(crate) const MAX_STRIKES: u32 = 3;
/// The longest `Retry-After` honoured: a server asking for more is asked again then.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// What one failed request says about the web seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// It lacks this file; its other files may still be fine.
    FileMissing,
    /// Busy or unreachable for now.
    Transient { retry_after: Option<Duration> },
    /// It answered wrongly.
    Broken,
    /// It cannot serve us at all.
    Fatal,
}

pub(crate) fn classify(e: &FetchError) -> Failure {
    match e {
        FetchError::Status {
            status,
            retry_after,
        } => {
            let code = status.as_u16();
            if code == 408 || code == 429 || status.is_server_error() {
                Failure::Transient {
                    retry_after: *retry_after,
                }
            } else if status.is_client_error() {
                Failure::FileMissing
            } else {
                Failure::Broken
            }
        }
        FetchError::WrongSize { .. } => Failure::FileMissing,
        FetchError::Connect(_)
        | FetchError::Timeout
        | FetchError::Short { .. }
        | FetchError::Request(_) => Failure::Transient { retry_after: None },
        FetchError::Redirects
        | FetchError::WrongRange { .. }
        | FetchError::TooLong { .. }
        | FetchError::Encoded(_) => Failure::Broken,
        FetchError::RangeIgnored => Failure::Fatal,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SeedState {
    Active,
    BackingOff { until: Instant, reason: String },
    Dropped { reason: String },
}

#[derive(Clone, Debug)]
pub(crate) struct Health {
    state: SeedState,
    /// Busy-or-away failures since the last good request: the backoff doubles with each.
    failures: u32,
    /// Wrong answers since the last good request.
    strikes: u32,
    first_backoff: Duration,
    max_backoff: Duration,
}

impl Health {
    pub(crate) fn new(first_backoff: Duration, max_backoff: Duration) -> Self {
        Self {
            state: SeedState::Active,
            failures: 0,
            strikes: 0,
            first_backoff,
            max_backoff,
        }
    }

    pub(crate) fn state(&self) -> &SeedState {
        &self.state
    }

    pub(crate) fn is_active(&self) -> bool {
        self.state == SeedState::Active
    }

    pub(crate) fn is_dropped(&self) -> bool {
        matches!(self.state, SeedState::Dropped { .. })
    }

    /// When a backing-off seed may be asked again.
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        match self.state {
            SeedState::BackingOff { until, .. } => Some(until),
            _ => None,
        }
    }

    /// A request came back whole: the seed works.
    pub(crate) fn succeeded(&mut self) {
        self.failures = 0;
        self.strikes = 0;
    }

    /// A request failed with `failure` at `now` (`reason` for the status).
    pub(crate) fn failed(&mut self, now: Instant, failure: Failure, reason: String) {
        if self.is_dropped() {
            return;
        }
        let retry_after = match failure {
            Failure::FileMissing => return,
            Failure::Fatal => return self.drop(reason),
            Failure::Broken => {
                self.strikes += 1;
                if self.strikes >= MAX_STRIKES {
                    return self.drop(reason);
                }
                None
            }
            Failure::Transient { retry_after } => retry_after,
        };
        self.failures += 1;
        let doubling = self
            .first_backoff
            .saturating_mul(1 << (self.failures - 1).min(20));
        let delay = match retry_after {
            Some(d) => d.min(MAX_RETRY_AFTER),
            None => doubling.min(self.max_backoff),
        };
        self.state = SeedState::BackingOff {
            until: now + delay,
            reason,
        };
    }

    /// Its data failed a SHA1 check: never asked again.
    pub(crate) fn lied(&mut self) {
        self.drop("sent data that failed the SHA1 check".to_string());
    }

    /// Nothing left to ask of it (every file missing, or a URL we cannot use).
    pub(crate) fn drop(&mut self, reason: String) {
        if !self.is_dropped() {
            self.state = SeedState::Dropped { reason };
        }
    }

    /// Ends a backoff that is over at `now`; true if the seed became active.
    pub(crate) fn wake(&mut self, now: Instant) -> bool {
        match self.state {
            SeedState::BackingOff { until, .. } if until <= now => {
                self.state = SeedState::Active;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    const S: Duration = Duration::from_secs(1);

    fn status(code: u16, retry_after: Option<Duration>) -> FetchError {
        FetchError::Status {
            status: StatusCode::from_u16(code).unwrap(),
            retry_after,
        }
    }

    #[test]
    fn errors_are_classified_as_the_module_doc_says() {
        assert_eq!(classify(&status(404, None)), Failure::FileMissing);
        assert_eq!(classify(&status(403, None)), Failure::FileMissing);
        assert_eq!(classify(&status(416, None)), Failure::FileMissing);
        let wrong_size = FetchError::WrongSize { got: 1, want: 2 };
        assert_eq!(classify(&wrong_size), Failure::FileMissing);
        assert_eq!(
            classify(&status(503, Some(S))),
            Failure::Transient {
                retry_after: Some(S)
            }
        );
        for e in [
            status(500, None),
            status(429, None),
            status(408, None),
            FetchError::Timeout,
            FetchError::Connect("refused".into()),
            FetchError::Short { got: 1, asked: 2 },
        ] {
            assert!(matches!(classify(&e), Failure::Transient { .. }), "{e}");
        }
        assert_eq!(classify(&FetchError::TooLong { asked: 1 }), Failure::Broken);
        assert_eq!(classify(&status(304, None)), Failure::Broken);
        assert_eq!(classify(&FetchError::RangeIgnored), Failure::Fatal);
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_a_success_resets_it() {
        let t0 = Instant::now();
        let mut h = Health::new(S, 8 * S);
        let away = Failure::Transient { retry_after: None };
        let mut delays = Vec::new();
        for _ in 0..6 {
            h.failed(t0, away, "refused".into());
            delays.push(h.retry_at().unwrap() - t0);
            assert!(!h.wake(t0 + delays.last().unwrap().saturating_sub(S / 2)));
            assert!(h.wake(t0 + *delays.last().unwrap()));
            assert!(h.is_active());
        }
        assert_eq!(delays, [S, 2 * S, 4 * S, 8 * S, 8 * S, 8 * S]);
        h.succeeded();
        h.failed(t0, away, "refused".into());
        assert_eq!(h.retry_at(), Some(t0 + S), "back to the first step");
        h.wake(t0 + S);
        h.failed(
            t0,
            Failure::Transient {
                retry_after: Some(30 * S),
            },
            "503".into(),
        );
        assert_eq!(
            h.retry_at(),
            Some(t0 + 30 * S),
            "Retry-After wins over the cap"
        );
    }

    #[test]
    fn wrong_answers_in_a_row_drop_it_and_a_missing_file_does_not() {
        let t0 = Instant::now();
        let mut h = Health::new(S, 8 * S);
        for _ in 0..10 {
            h.failed(t0, Failure::FileMissing, "404".into());
        }
        assert!(h.is_active());
        for i in 1..=MAX_STRIKES {
            h.wake(t0 + 100 * S);
            h.failed(t0, Failure::Broken, format!("wrong {i}"));
        }
        assert_eq!(
            h.state(),
            &SeedState::Dropped {
                reason: format!("wrong {MAX_STRIKES}")
            }
        );
        assert!(!h.wake(t0 + 1000 * S), "dropped stays dropped");
        h.failed(t0, Failure::Transient { retry_after: None }, "x".into());
        assert!(h.is_dropped());
    }

    #[test]
    fn a_liar_is_dropped_whatever_it_was_doing() {
        let t0 = Instant::now();
        let mut h = Health::new(S, 8 * S);
        h.failed(t0, Failure::Transient { retry_after: None }, "503".into());
        h.lied();
        assert!(h.is_dropped());
        assert_eq!(h.retry_at(), None);
    }
}
