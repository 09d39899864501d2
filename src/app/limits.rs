//! File descriptors. A process starts with a soft limit (often 1,024, or 256 under a strict
//! `ulimit -n`) below its hard one; btfs raises the soft limit to the hard one at start, then
//! sizes what takes descriptors by the limit, so that running out means fewer peers, never a
//! failed disk-cache read, tracker lookup or FUSE request.

/// Descriptors kept for everything but peer connections: stdio, FUSE, the UDP socket, the
/// status socket, tracker connections and DNS lookups, disk-cache files being read or written.
pub const RESERVED: u64 = 128;

/// What the descriptor limit allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft limit after raising it.
    pub limit: u64,
    /// Peer connections at once (at most the `--max-peers` asked for).
    pub peers: usize,
    /// Incoming connections waiting for their handshake.
    pub pending: usize,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit in force.
pub fn raise_fd_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
    }
    rl.rlim_cur
}

/// How `limit` descriptors are shared: [`RESERVED`] kept aside, a quarter of the rest (at most
/// 64) for handshakes pending, the rest for peers, up to `max_peers`.
pub fn budget(limit: u64, max_peers: usize) -> FdBudget {
    let spare = limit.saturating_sub(RESERVED);
    let pending = (spare / 4).clamp(1, 64);
    let peers = spare.saturating_sub(pending).max(1);
    FdBudget {
        limit,
        peers: max_peers.min(usize::try_from(peers).unwrap_or(usize::MAX)),
        pending: pending as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tight_limit_means_fewer_peers_and_keeps_the_reserve() {
        let b = budget(256, 80);
        assert_eq!(b.pending, 32);
        assert_eq!(b.peers, 80);
        assert!(b.peers as u64 + b.pending as u64 + RESERVED <= 256);
        let b = budget(200, 80);
        assert_eq!((b.peers, b.pending), (54, 18));
        assert!(b.peers as u64 + b.pending as u64 + RESERVED <= 200);
        assert_eq!(
            budget(1_048_576, 80),
            FdBudget {
                limit: 1_048_576,
                peers: 80,
                pending: 64
            }
        );
        let starved = budget(64, 80);
        assert_eq!((starved.peers, starved.pending), (1, 1));
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let limit = raise_fd_limit();
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) }, 0);
        assert_eq!(limit, rl.rlim_cur);
        assert_eq!(rl.rlim_cur, rl.rlim_max);
    }
}
