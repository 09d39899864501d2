//! The web seeds of a session as its state holds them: each one's picker id, URL, health and
//! bytes delivered. Owned by `State` (so a SHA1 verdict can drop a lying seed under the same
//! lock it is given under); the seed's task changes its health, `Stats` reads it.

use std::time::Duration;

use tokio::time::Instant;

use super::health::{Health, SeedState};
use crate::picker::PeerId;

/// One web seed as `btfs status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebSeedStatus {
    pub url: String,
    pub state: WebSeedState,
    /// Bytes of block data it delivered.
    pub downloaded: u64,
    /// Files it does not have (HTTP 404 and the like): their pieces come from elsewhere.
    pub missing_files: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebSeedState {
    Active,
    /// Asked again after `retry_in`, for `reason` (the last error).
    BackingOff {
        retry_in: Duration,
        reason: String,
    },
    /// Never asked again.
    Dropped {
        reason: String,
    },
}

impl WebSeedState {
    /// `active`, `backing off`, `dropped`: the words of `btfs status`.
    pub fn name(&self) -> &'static str {
        match self {
            WebSeedState::Active => "active",
            WebSeedState::BackingOff { .. } => "backing off",
            WebSeedState::Dropped { .. } => "dropped",
        }
    }
}

pub(crate) struct Entry {
    pub(crate) id: PeerId,
    pub(crate) url: String,
    pub(crate) health: Health,
    pub(crate) downloaded: u64,
    pub(crate) missing_files: usize,
}

#[derive(Default)]
pub(crate) struct WebSeeds {
    seeds: Vec<Entry>,
}

impl WebSeeds {
    pub(crate) fn add(&mut self, id: PeerId, url: String, health: Health) {
        self.seeds.push(Entry {
            id,
            url,
            health,
            downloaded: 0,
            missing_files: 0,
        });
    }

    pub(crate) fn get(&self, id: PeerId) -> Option<&Entry> {
        self.seeds.iter().find(|e| e.id == id)
    }

    pub(crate) fn get_mut(&mut self, id: PeerId) -> Option<&mut Entry> {
        self.seeds.iter_mut().find(|e| e.id == id)
    }

    /// Its data failed a check: dropped. True if it was not dropped before.
    pub(crate) fn lied(&mut self, id: PeerId) -> bool {
        match self.get_mut(id) {
            Some(e) if !e.health.is_dropped() => {
                e.health.lied();
                true
            }
            _ => false,
        }
    }

    pub(crate) fn status(&self, now: Instant) -> Vec<WebSeedStatus> {
        (self.seeds.iter())
            .map(|e| WebSeedStatus {
                url: e.url.clone(),
                state: match e.health.state() {
                    SeedState::Active => WebSeedState::Active,
                    SeedState::BackingOff { until, reason } => WebSeedState::BackingOff {
                        retry_in: until.saturating_duration_since(now),
                        reason: reason.clone(),
                    },
                    SeedState::Dropped { reason } => WebSeedState::Dropped {
                        reason: reason.clone(),
                    },
                },
                downloaded: e.downloaded,
                missing_files: e.missing_files,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shows_each_state_and_a_liar_is_dropped_once() {
        let s = Duration::from_secs(1);
        let t0 = Instant::now();
        let mut seeds = WebSeeds::default();
        seeds.add(PeerId(7), "http://a/".into(), Health::new(s, 8 * s));
        seeds.add(PeerId(8), "http://b/".into(), Health::new(s, 8 * s));
        let b = seeds.get_mut(PeerId(8)).unwrap();
        b.health.failed(
            t0,
            super::super::health::Failure::Transient { retry_after: None },
            "HTTP 503".into(),
        );
        b.downloaded = 5;
        let st = seeds.status(t0);
        assert_eq!(st[0].state, WebSeedState::Active);
        assert_eq!(
            st[1].state,
            WebSeedState::BackingOff {
                retry_in: s,
                reason: "HTTP 503".into()
            }
        );
        assert_eq!(st[1].downloaded, 5);
        assert!(seeds.lied(PeerId(7)));
        assert!(!seeds.lied(PeerId(7)), "already dropped");
        assert!(!seeds.lied(PeerId(99)), "not a web seed");
        assert_eq!(seeds.status(t0)[0].state.name(), "dropped");
    }
}
