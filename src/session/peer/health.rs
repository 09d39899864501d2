//! When a peer is stalled, late or useless: the limits, and the once-a-second check of a
//! connection against them (stalled requests go back to the picker; blocks a read waits on
//! are asked of another peer when this one is late; a peer that only stalls is dropped).

use std::time::Duration;

use tokio::time::Instant;

use super::requests::Stall;
use super::{Peer, PeerError};

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
    /// Stalls before the peer is dropped, unless it delivered enough blocks for each of them.
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
        match (self.requests).check_stall(Instant::now(), limits.request, limits.stalls) {
            Stall::None => {}
            Stall::Hopeless => return Err(PeerError::Stalled),
            Stall::Stalled => {
                tracing::debug!(addr = %self.addr, n = self.requests.len(), "requests timed out; freeing them for other peers");
                self.release_requests();
                self.shared.lock().peers.refill_all();
                self.refill();
            }
        }
        Ok(())
    }

    /// Tells the picker of requests this peer is late with, so that a read waiting on one gets
    /// it from another peer too (the first copy wins, the other request is cancelled).
    fn report_late(&mut self) {
        let late = self.requests.late(Instant::now());
        if late.is_empty() {
            return;
        }
        let mut st = self.shared.lock();
        let mut marked = 0;
        for (b, sent) in late {
            // A block no read waits on yet is checked again next time: it may become urgent.
            if st.picker.mark_late(b) {
                self.requests.reported(b, sent);
                marked += 1;
            }
        }
        if marked > 0 {
            tracing::debug!(addr = %self.addr, marked, avg = ?self.requests.avg_block(), "late with blocks a read waits on; asking other peers too");
            st.peers.refill_all();
        }
    }
}
