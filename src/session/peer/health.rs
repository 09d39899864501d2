//! When a peer is stalled, late or useless: the limits, and the once-a-second check of a
//! connection against them (stalled requests go back to the picker; blocks a read waits on
//! are asked of another peer when this one is late; a peer that only stalls is dropped).

use std::time::Duration;

use tokio::time::Instant;

use super::{Peer, PeerError};
use crate::picker::Block;
use crate::session::Shared;

/// How long a peer may keep us waiting before it counts as stalled or dead. The session's
/// config carries them (tests shorten them; no test waits out the defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerTimeouts {
    /// From accepting (or dialling) to a complete handshake: a connection that never
    /// handshakes holds a socket and a task, and nothing else, for this long.
    pub handshake: Duration,
    /// A peer that sends no block for this long while we wait on requests has stalled: its
    /// requests go back to the picker for other peers.
    pub request: Duration,
    /// Stalls before the peer is dropped, unless it delivered `BLOCKS_PER_STALL` blocks for
    /// each of them.
    pub stalls: u32,
    /// No message but keep-alives for this long from a peer that never said what it has, or
    /// that keeps us choked while we want its pieces: it is useless to us, and its slot is
    /// better given to another.
    pub idle: Duration,
}

impl Default for PeerTimeouts {
    fn default() -> Self {
        Self {
            handshake: Duration::from_secs(10),
            request: Duration::from_secs(8),
            stalls: 3,
            idle: Duration::from_secs(300),
        }
    }
}

/// Blocks a peer must deliver per stall to be kept once it stalled `PeerTimeouts::stalls`
/// times.
const BLOCKS_PER_STALL: u64 = 16;
/// A request is late (and, if a read waits on it, asked of one more peer) once it is this many
/// times older than the peer's average block time, and at least `LATE_MIN` old; before the
/// peer's first block, once it is `LATE_UNKNOWN` old.
const LATE_FACTOR: u32 = 4;
const LATE_MIN: Duration = Duration::from_secs(1);
const LATE_UNKNOWN: Duration = Duration::from_secs(2);

impl Peer {
    /// Drops a useless or stalling peer (`Err`), frees the requests of a stalled one and
    /// reports late ones.
    pub(super) fn check_health(&mut self) -> Result<(), PeerError> {
        let limits = self.shared.config.peer_timeouts;
        // Idle only counts against a peer that never said what it has, or that has what we want
        // and keeps us choked: a seed we want nothing from may stay quiet.
        let useless = !self.announced || (self.interested && self.choked);
        if useless && self.last_useful.elapsed() >= limits.idle {
            return Err(PeerError::Idle);
        }
        self.report_late();
        if let Some(&oldest) = self.requests.values().min() {
            // Stalled: nothing came for a while, or a request sent later was answered while
            // this one, old by now, was skipped (peers answer in order).
            let silent = self.last_piece.elapsed() >= limits.request;
            let skipped = self.newest_answered.is_some_and(|t| t > oldest);
            if oldest.elapsed() >= limits.request && (silent || skipped) {
                tracing::debug!(addr = %self.addr, n = self.requests.len(), "requests timed out; freeing them for other peers");
                self.stalls += 1;
                // A slow peer that mostly delivers is kept; one that stalls about as often as
                // it delivers (e.g. a block of each piece, then nothing) is not.
                if self.stalls >= limits.stalls
                    && self.delivered < u64::from(self.stalls) * BLOCKS_PER_STALL
                {
                    return Err(PeerError::Stalled);
                }
                self.snubbed = true;
                self.release_requests();
                let st = self.shared.lock();
                Shared::refill_all(&st);
                drop(st);
                self.refill();
            }
        }
        Ok(())
    }

    /// Tells the picker of requests this peer is late with, so that a read waiting on one gets
    /// it from another peer too (the first copy wins, the other request is cancelled).
    fn report_late(&mut self) {
        self.reported_late
            .retain(|b, sent| self.requests.get(b) == Some(sent));
        let threshold = self
            .avg_block
            .map_or(LATE_UNKNOWN, |avg| (avg * LATE_FACTOR).max(LATE_MIN));
        let late: Vec<(Block, Instant)> = self
            .requests
            .iter()
            .filter(|(b, sent)| sent.elapsed() >= threshold && !self.reported_late.contains_key(b))
            .map(|(b, sent)| (*b, *sent))
            .collect();
        if late.is_empty() {
            return;
        }
        let mut st = self.shared.lock();
        let mut marked = 0;
        for (b, sent) in late {
            // A block no read waits on yet is checked again next time: it may become urgent.
            if st.picker.mark_late(b) {
                self.reported_late.insert(b, sent);
                marked += 1;
            }
        }
        if marked > 0 {
            tracing::debug!(addr = %self.addr, marked, avg = ?self.avg_block, "late with blocks a read waits on; asking other peers too");
            Shared::refill_all(&st);
        }
    }
}
