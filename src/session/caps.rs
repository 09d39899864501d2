//! What a session shares with the other torrents of its process besides memory: the peer slots
//! of `--max-peers` ([`crate::slots`]: a total, shared as the torrents need it) and one rate
//! limit per direction (whose per-peer fairness then holds across torrents). A library mount
//! gives each of its sessions the same [`SharedCaps`]; a mount of one torrent gives none, and
//! the session has `max_peers` and its rate caps to itself.
//!
//! The connector holds the session's place among the slots (a [`Seat`]): every dial and every
//! incoming connection takes a slot first and keeps it to its end. Once a second the seat says
//! whether the torrent claims (a read waited within [`CLAIM_FOR`] and there are addresses to
//! try) and drops the least useful peers the policy asks back for another torrent's claim.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Config;
use super::peers::PeerCmd;
use super::shared::Shared;
use super::turnover;
use crate::ratelimit::RateLimit;
use crate::slots::{PeerSlots, Slot, SlotHolder};

/// How long after a read last waited the torrent still claims its share: a streaming read
/// waits a moment at a time, and its claim must outlast the gaps.
pub(crate) const CLAIM_FOR: Duration = Duration::from_secs(10);

/// The peer slots and rate caps of a process, shared by its sessions; cheap to clone.
#[derive(Clone, Debug)]
pub struct SharedCaps {
    pub slots: PeerSlots,
    pub download: Arc<RateLimit>,
    pub upload: Arc<RateLimit>,
}

impl SharedCaps {
    /// `max_peers` connections for the process, and its rate caps in bytes/s (`None`:
    /// unlimited).
    pub fn new(max_peers: usize, download: Option<u64>, upload: Option<u64>) -> Self {
        Self {
            slots: PeerSlots::new(max_peers),
            download: Arc::new(RateLimit::new(download)),
            upload: Arc::new(RateLimit::new(upload)),
        }
    }
}

/// The limits a session's peers wait on: the process's shared ones, or its own.
pub(crate) fn rate_limits(config: &Config) -> (Arc<RateLimit>, Arc<RateLimit>) {
    match &config.caps {
        Some(c) => (c.download.clone(), c.upload.clone()),
        None => (
            Arc::new(RateLimit::new(config.max_download_rate)),
            Arc::new(RateLimit::new(config.max_upload_rate)),
        ),
    }
}

/// The connector's place among the shared slots; with none (`Config::caps` unset), every
/// question is answered "yes" and the session's own `max_peers` is the only limit.
pub(crate) struct Seat {
    holder: Option<SlotHolder>,
    awake: bool,
    last_wait: Option<Instant>,
}

/// A slot a connection holds to its end; `None` without shared slots.
pub(crate) type Held = Option<Slot>;

impl Seat {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            holder: config.caps.as_ref().map(|c| c.slots.join()),
            awake: true,
            last_wait: None,
        }
    }

    /// The torrent fell asleep or woke: asleep, it takes no slot and counts for no share.
    pub(crate) fn set_awake(&mut self, awake: bool) {
        if let Some(h) = &self.holder
            && awake != self.awake
        {
            self.awake = awake;
            h.update(awake, false);
        }
    }

    /// A slot for a connection that came in, or `Err` if the process has none for it now.
    pub(crate) fn incoming(&self) -> Result<Held, ()> {
        match &self.holder {
            None => Ok(None),
            Some(h) => h.take(true).map(Some).ok_or(()),
        }
    }

    /// Slots for up to `n` dials (fewer when the process has fewer for this torrent now).
    pub(crate) fn dials(&self, n: usize) -> Vec<Held> {
        match &self.holder {
            None => (0..n).map(|_| None).collect(),
            Some(h) => (0..n.min(h.room()))
                .map_while(|_| h.take(false))
                .map(Some)
                .collect(),
        }
    }

    /// Whether the process has no slot for a dial of this torrent now.
    pub(crate) fn is_full(&self) -> bool {
        self.holder.as_ref().is_some_and(|h| !h.may_dial())
    }

    /// Once a second while awake: claims while a read waits (or waited within [`CLAIM_FOR`])
    /// and addresses are due, and drops the peers the policy asks back for another torrent's
    /// claim, the least useful first.
    pub(crate) fn tick(&mut self, shared: &Shared, due: bool, now: Instant) {
        let Some(h) = &self.holder else { return };
        if shared.lock().readers.longest_wait().is_some() {
            self.last_wait = Some(now);
        }
        let claiming = due && self.last_wait.is_some_and(|t| now - t < CLAIM_FOR);
        let n = h.update(self.awake, claiming);
        if n == 0 {
            return;
        }
        let st = shared.lock();
        let victims = turnover::least_useful(&st.peers.worths(), n);
        for &id in &victims {
            st.peers.send(id, PeerCmd::Drop);
        }
        drop(st);
        tracing::debug!(
            peers = victims.len(),
            "giving peer slots back to a torrent being read"
        );
        h.dropping(victims.len());
    }
}
