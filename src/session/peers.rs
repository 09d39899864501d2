//! The connected peers of a session, as the rest of the session sees them: who is connected
//! (each with a command channel to its task), who is banned, and every address discovery named.
//! The per-connection state lives in the peer task (`peer/`); this is the directory.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use tokio::sync::mpsc;

use tokio::time::Instant;

use super::discovery::{PeerSource, SourceCount};
use super::turnover::Worth;
use crate::picker::{Block, PeerId};
use crate::piece::PieceIndex;
use crate::slots::outgoing_reserve;
use crate::wire::extension::PexFlags;

/// Messages the session sends to one peer task.
#[derive(Debug)]
pub(crate) enum PeerCmd {
    /// Priorities changed or blocks were released: ask the picker for more.
    Refill,
    /// We hold a new piece: tell the peer (`have`) if it speaks Fast or the piece is on disk
    /// (see `residency`).
    Have { piece: PieceIndex, durable: bool },
    /// A piece we hold reached the disk: tell a peer without Fast now.
    Durable(PieceIndex),
    /// Another peer delivered this block first (endgame): cancel our request.
    Cancel(Block),
    /// Turnover: its slot is worth more to an address we have not tried; close the connection.
    Drop,
    /// The choker's decision: let the peer download from us, or not.
    SetUnchoked(bool),
    /// The peer sent bad data or we are shutting down: close the connection.
    Disconnect,
}

/// One connected peer.
pub(crate) struct PeerEntry {
    pub(crate) addr: SocketAddr,
    pub(crate) source: PeerSource,
    cmd: mpsc::UnboundedSender<PeerCmd>,
    /// Where it accepts connections: `addr` if outgoing, else the port its extended handshake
    /// named; what PEX tells other peers.
    listen: Option<SocketAddr>,
    /// It has every piece.
    seed: bool,
    /// What it is worth to us, kept fresh by its task, for turnover.
    pub(crate) worth: Worth,
    /// Its connection is RC4-encrypted.
    encrypted: bool,
    /// Its connection runs over uTP, not TCP.
    utp: bool,
    /// The peer id from its handshake.
    peer_id: Option<[u8; 20]>,
}

impl PeerEntry {
    pub(crate) fn new(
        addr: SocketAddr,
        source: PeerSource,
        cmd: mpsc::UnboundedSender<PeerCmd>,
    ) -> Self {
        let outgoing = source != PeerSource::Incoming;
        Self {
            addr,
            source,
            cmd,
            listen: outgoing.then_some(addr),
            seed: false,
            worth: Worth::new(Instant::now(), !outgoing),
            encrypted: false,
            utp: false,
            peer_id: None,
        }
    }

    /// Where it listens and the flags to name it with in PEX: an outgoing connection's address
    /// is its listening address and reachable; an incoming one's only if it told us its port
    /// (extended handshake `p`), else we cannot name it.
    pub(crate) fn advertised(&self) -> Option<(SocketAddr, PexFlags)> {
        let addr = self.listen?;
        let mut flags = 0;
        if self.source != PeerSource::Incoming {
            flags |= PexFlags::REACHABLE.0;
        }
        if self.seed {
            flags |= PexFlags::SEED.0;
        }
        Some((addr, PexFlags(flags)))
    }
}

/// Why a peer was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Banned,
    Full,
}

#[derive(Default)]
pub(crate) struct Peers {
    connected: HashMap<PeerId, PeerEntry>,
    banned: HashSet<IpAddr>,
    next_id: u64,
    /// Sources that are no connection (web seeds): numbered with the peers and sent the same
    /// commands (`Refill` above all), but no peer anywhere else: not counted, not named in
    /// PEX, not banned by address, not held to `max_peers`.
    sources: HashMap<PeerId, mpsc::UnboundedSender<PeerCmd>>,
}

impl Peers {
    /// Admits a peer that completed its handshake, unless banned or `max` are connected.
    /// Incoming peers get all but [`outgoing_reserve`] of the slots: a crowd connecting to us
    /// never leaves us without room to dial the peers we found.
    pub(crate) fn admit(
        &mut self,
        addr: SocketAddr,
        source: PeerSource,
        cmd: mpsc::UnboundedSender<PeerCmd>,
        max: usize,
    ) -> Result<PeerId, Refusal> {
        if self.banned.contains(&addr.ip()) {
            return Err(Refusal::Banned);
        }
        if self.connected.len() >= max {
            return Err(Refusal::Full);
        }
        if source == PeerSource::Incoming {
            let incoming = (self.connected.values())
                .filter(|e| e.source == PeerSource::Incoming)
                .count();
            if incoming >= max - outgoing_reserve(max) {
                return Err(Refusal::Full);
            }
        }
        self.next_id += 1;
        let id = PeerId(self.next_id);
        self.connected.insert(id, PeerEntry::new(addr, source, cmd));
        Ok(id)
    }

    /// Whether a new connection (`outgoing` or not) duplicates one to the same peer id made the
    /// same way: one client reached twice over TCP and uTP, which would be asked for every
    /// block twice. Such a second connection is refused; the first stays. A crossed pair (each
    /// side dialled the other) is left alone: the other side may drop one by its own rule
    /// (libtorrent does), and our dropping the other one too would leave none.
    pub(crate) fn is_duplicate(&self, theirs: &[u8; 20], outgoing: bool) -> bool {
        (self.connected.values()).any(|e| {
            e.peer_id.as_ref() == Some(theirs) && (e.source != PeerSource::Incoming) == outgoing
        })
    }

    /// The peer id a connected peer's handshake carried.
    pub(crate) fn set_peer_id(&mut self, id: PeerId, peer_id: [u8; 20]) {
        if let Some(e) = self.connected.get_mut(&id) {
            e.peer_id = Some(peer_id);
        }
    }

    /// Marks a peer's connection as encrypted, for the count in the status.
    pub(crate) fn set_encrypted(&mut self, id: PeerId) {
        if let Some(e) = self.connected.get_mut(&id) {
            e.encrypted = true;
        }
    }

    /// Marks a peer's connection as running over uTP, for the count in the status.
    pub(crate) fn set_utp(&mut self, id: PeerId) {
        if let Some(e) = self.connected.get_mut(&id) {
            e.utp = true;
        }
    }

    /// How many connected peers run over uTP.
    pub(crate) fn utp(&self) -> usize {
        self.connected.values().filter(|e| e.utp).count()
    }

    /// How many connected peers are encrypted.
    pub(crate) fn encrypted(&self) -> usize {
        self.connected.values().filter(|e| e.encrypted).count()
    }

    pub(crate) fn remove(&mut self, id: PeerId) {
        self.connected.remove(&id);
    }

    /// A source that is not a connection (a web seed): its own id and the commands.
    pub(crate) fn add_source(&mut self, cmd: mpsc::UnboundedSender<PeerCmd>) -> PeerId {
        self.next_id += 1;
        let id = PeerId(self.next_id);
        self.sources.insert(id, cmd);
        id
    }

    pub(crate) fn remove_source(&mut self, id: PeerId) {
        self.sources.remove(&id);
    }

    pub(crate) fn len(&self) -> usize {
        self.connected.len()
    }

    #[cfg(test)]
    pub(crate) fn ids(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.connected.keys().copied()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.connected.is_empty()
    }

    pub(crate) fn send(&self, id: PeerId, cmd: PeerCmd) {
        let to = (self.connected.get(&id).map(|e| &e.cmd)).or_else(|| self.sources.get(&id));
        if let Some(to) = to {
            let _ = to.send(cmd);
        }
    }

    /// Sends one command to every peer and source; `make` is called once per receiver.
    pub(crate) fn broadcast(&self, make: impl Fn() -> PeerCmd) {
        for cmd in self
            .connected
            .values()
            .map(|e| &e.cmd)
            .chain(self.sources.values())
        {
            let _ = cmd.send(make());
        }
    }

    /// Asks every peer to top up its request queue (priorities changed or blocks were freed).
    pub(crate) fn refill_all(&self) {
        self.broadcast(|| PeerCmd::Refill);
    }

    /// Never trusts this address again and closes its connections.
    pub(crate) fn ban(&mut self, ip: IpAddr) {
        self.banned.insert(ip);
        for e in self.connected.values().filter(|e| e.addr.ip() == ip) {
            let _ = e.cmd.send(PeerCmd::Disconnect);
        }
    }

    pub(crate) fn is_banned(&self, ip: IpAddr) -> bool {
        self.banned.contains(&ip)
    }

    pub(crate) fn banned(&self) -> &HashSet<IpAddr> {
        &self.banned
    }

    /// The peer's extended handshake named the port it listens on.
    pub(crate) fn set_listen(&mut self, id: PeerId, listen: SocketAddr) {
        if let Some(e) = self.connected.get_mut(&id) {
            e.listen = Some(listen);
        }
    }

    pub(crate) fn mark_seed(&mut self, id: PeerId) {
        if let Some(e) = self.connected.get_mut(&id) {
            e.seed = true;
        }
    }

    /// Addresses of connected peers, both where they connect from and where they listen.
    pub(crate) fn addresses(&self) -> HashSet<SocketAddr> {
        (self.connected.values())
            .flat_map(|e| [Some(e.addr), e.listen])
            .flatten()
            .collect()
    }

    /// The peers to name in a PEX message to `me` at `to` (not itself).
    pub(crate) fn pex_view(&self, me: PeerId, to: SocketAddr) -> HashMap<SocketAddr, PexFlags> {
        (self.connected.iter())
            .filter(|(id, _)| **id != me)
            .filter_map(|(_, e)| e.advertised())
            .filter(|(a, _)| *a != to)
            .collect()
    }

    /// Fills in the connected counts of `counts` (known counts come from the address book).
    pub(crate) fn count_connected(&self, counts: &mut [SourceCount]) {
        for c in counts {
            c.connected = (self.connected.values())
                .filter(|e| e.source == c.source)
                .count();
        }
    }

    pub(crate) fn worth_mut(&mut self, id: PeerId) -> Option<&mut Worth> {
        self.connected.get_mut(&id).map(|e| &mut e.worth)
    }

    /// Each connected peer's worth, for turnover.
    pub(crate) fn worths(&self) -> Vec<(PeerId, Worth)> {
        (self.connected.iter())
            .map(|(id, e)| (*id, e.worth))
            .collect()
    }

    /// Some connected peer can serve a waiting read now.
    pub(crate) fn any_serves_read(&self) -> bool {
        self.connected.values().any(|e| e.worth.serves_read())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_second_connection_made_the_same_way_to_one_peer_id_is_a_duplicate() {
        let (cmd, _rx) = mpsc::unbounded_channel();
        let peer = [1u8; 20];
        let mut peers = Peers::default();
        assert!(!peers.is_duplicate(&peer, true));
        let ours = peers
            .admit(addr("10.0.0.1:6881"), PeerSource::Tracker, cmd.clone(), 8)
            .unwrap();
        peers.set_peer_id(ours, peer);
        assert!(peers.is_duplicate(&peer, true), "uTP after TCP, both ours");
        assert!(
            !peers.is_duplicate(&peer, false),
            "a crossed pair is left alone"
        );
        assert!(!peers.is_duplicate(&[5; 20], true), "another peer");
        let theirs = peers
            .admit(addr("10.0.0.1:5000"), PeerSource::Incoming, cmd, 8)
            .unwrap();
        peers.set_peer_id(theirs, peer);
        assert!(peers.is_duplicate(&peer, false), "it dialled us twice");
    }

    #[test]
    fn advertised_addresses_and_flags() {
        let (cmd, _rx) = mpsc::unbounded_channel();
        let mut e = PeerEntry::new(addr("10.0.0.5:40000"), PeerSource::Incoming, cmd);
        assert_eq!(e.advertised(), None, "incoming, no port told");
        e.listen = Some(addr("10.0.0.5:6881"));
        e.seed = true;
        assert_eq!(
            e.advertised(),
            Some((addr("10.0.0.5:6881"), PexFlags::SEED))
        );
        e.source = PeerSource::Tracker;
        e.seed = false;
        assert_eq!(
            e.advertised(),
            Some((addr("10.0.0.5:6881"), PexFlags::REACHABLE))
        );
    }

    #[test]
    fn incoming_peers_leave_room_for_outgoing_ones() {
        let mut peers = Peers::default();
        let (cmd, _rx) = mpsc::unbounded_channel();
        let admit = |peers: &mut Peers, port, source| {
            peers.admit(addr(&format!("10.0.1.1:{port}")), source, cmd.clone(), 8)
        };
        let reserve = outgoing_reserve(8);
        for port in 0..8 - reserve {
            admit(&mut peers, port as u16, PeerSource::Incoming).unwrap();
        }
        assert_eq!(
            admit(&mut peers, 100, PeerSource::Incoming),
            Err(Refusal::Full)
        );
        for port in 0..reserve {
            admit(&mut peers, 200 + port as u16, PeerSource::Tracker).unwrap();
        }
        assert_eq!(
            admit(&mut peers, 300, PeerSource::Tracker),
            Err(Refusal::Full)
        );
    }

    #[test]
    fn a_source_gets_commands_but_counts_as_no_peer() {
        let mut peers = Peers::default();
        let (cmd, mut peer_rx) = mpsc::unbounded_channel();
        let p = peers
            .admit(addr("127.0.0.1:1"), PeerSource::Tracker, cmd, 1)
            .unwrap();
        let (cmd, mut rx) = mpsc::unbounded_channel();
        let s = peers.add_source(cmd);
        assert_ne!(s, p, "ids are not shared");
        assert_eq!(peers.len(), 1);
        assert!(peers.pex_view(p, addr("10.0.0.9:1")).is_empty());
        peers.refill_all();
        assert!(matches!(rx.try_recv(), Ok(PeerCmd::Refill)));
        peers.send(s, PeerCmd::Disconnect);
        assert!(matches!(rx.try_recv(), Ok(PeerCmd::Disconnect)));
        // Banning the address a web server shares with the peer reaches only the peer.
        peers.ban(addr("127.0.0.1:1").ip());
        assert!(rx.try_recv().is_err());
        assert!(matches!(peer_rx.try_recv(), Ok(PeerCmd::Refill)));
        assert!(matches!(peer_rx.try_recv(), Ok(PeerCmd::Disconnect)));
        peers.remove_source(s);
        peers.refill_all();
        assert!(rx.try_recv().is_err(), "removed");
    }

    #[test]
    fn admission_refuses_the_banned_and_beyond_the_limit() {
        let mut peers = Peers::default();
        let (cmd, mut rx) = mpsc::unbounded_channel();
        let a = peers
            .admit(addr("10.0.0.1:1"), PeerSource::Tracker, cmd.clone(), 2)
            .unwrap();
        peers
            .admit(addr("10.0.0.2:1"), PeerSource::Tracker, cmd.clone(), 2)
            .unwrap();
        assert_eq!(
            peers.admit(addr("10.0.0.3:1"), PeerSource::Tracker, cmd.clone(), 2),
            Err(Refusal::Full)
        );
        peers.ban(addr("10.0.0.1:1").ip());
        assert!(matches!(rx.try_recv(), Ok(PeerCmd::Disconnect)));
        peers.remove(a);
        assert_eq!(
            peers.admit(addr("10.0.0.1:2"), PeerSource::Tracker, cmd, 2),
            Err(Refusal::Banned)
        );
    }
}
