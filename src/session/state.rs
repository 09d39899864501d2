//! The session state behind the one state lock: each part an owner of its own data, and here
//! the operations that change more than one part at once.
//!
//! | part | owns | file |
//! |---|---|---|
//! | `picker` | piece states, blocks in flight, reader wants | `picker/` |
//! | `choker` | whom we upload to | `choker.rs` |
//! | `residency` | which verified pieces memory and disk hold | `residency.rs` |
//! | `loads` | disk loads in flight and who waits for them | `residency.rs` |
//! | `peers` | connected, banned and known peers | `peers.rs` |
//! | `assembling` | pieces being put together, suspects of bad data | `assembly.rs` |
//! | `readers` | open file handles, their windows, waiting reads | `readers.rs` |
//! | `web_seeds` | each web seed's health and bytes | `webseed/registry.rs` |
//!
//! The picker's Have pieces change only in [`State::apply`], from residency changes.

use std::ops::Range;

use bytes::Bytes;

use super::assembly::{Assembling, Assembly, Sender};
use super::background::{Background, Scope, Watching};
use super::peers::{PeerCmd, Peers};
use super::readers::{ReadHandle, Readers};
use super::residency::{Change, Loads, Residency};
use super::webseed::registry::WebSeeds;
use crate::bitfield::Bitfield;
use crate::choker::Choker;
use crate::picker::{Block, PeerId, Picker, ReaderId, ReaderWant};
use crate::piece::{Geometry, PieceIndex};
use crate::store::Store;

/// Peers we upload to at once (one of them the optimistic unchoke).
const UPLOAD_SLOTS: usize = 8;

/// What became of a block that arrived (`State::block_arrived`).
pub(crate) struct Arrived {
    /// False for a copy of a block another source delivered first: wasted bytes.
    pub(crate) new: bool,
    /// The piece it completed, to verify.
    pub(crate) complete: Option<Assembly>,
}

pub(crate) struct State {
    /// The background policy and the files being watched; `scope`, where it last said
    /// background fetching may go.
    pub(crate) watching: Watching,
    scope: Scope,
    pub(crate) picker: Picker,
    /// Whom we upload to; ticked by the rechoke task.
    pub(crate) choker: Choker<PeerId>,
    pub(crate) residency: Residency,
    pub(crate) loads: Loads,
    pub(crate) peers: Peers,
    pub(crate) assembling: Assembling,
    pub(crate) readers: Readers,
    pub(crate) web_seeds: WebSeeds,
    /// Asleep (`idle.rs`): no peers admitted, no background fetching.
    pub(crate) asleep: bool,
}

impl State {
    /// Nothing held, no background fetching until the first read.
    /// `files`: each file's piece range, for the background policy.
    pub(crate) fn new(
        geometry: Geometry,
        memory: Store,
        background: Background,
        files: Vec<Range<u32>>,
    ) -> Self {
        let mut picker = Picker::new(geometry);
        picker.set_background(false);
        Self {
            watching: Watching::new(background, files),
            scope: Scope::Off,
            picker,
            choker: Choker::new(UPLOAD_SLOTS),
            residency: Residency::new(memory),
            loads: Loads::default(),
            peers: Peers::default(),
            assembling: Assembling::default(),
            readers: Readers::default(),
            web_seeds: WebSeeds::default(),
            asleep: false,
        }
    }

    /// Applies what residency reports: the only place pieces become Have or stop being Have in
    /// the picker, and the only place `have` goes out to peers.
    fn apply(&mut self, changes: Vec<Change>) {
        for c in changes {
            match c {
                Change::Held { piece, durable } => {
                    self.picker.piece_verified(piece);
                    self.peers.broadcast(|| PeerCmd::Have { piece, durable });
                }
                Change::Durable(piece) => self.peers.broadcast(|| PeerCmd::Durable(piece)),
                Change::Gone(p) => self.picker.piece_evicted(p),
                Change::NotKept(p) => self.picker.piece_not_kept(p),
            }
        }
    }

    /// Pieces other torrents sharing the memory budget evicted: gone unless on disk, fetched
    /// again when wanted. Returns whether any was.
    pub(crate) fn memory_taken(&mut self) -> bool {
        let changes = self.residency.taken_by_others();
        self.apply_losses(changes)
    }

    /// Pieces other torrents sharing the disk budget evicted from disk: gone unless in memory.
    /// Returns whether any was.
    pub(crate) fn disk_taken(&mut self, gone: &[PieceIndex]) -> bool {
        let changes: Vec<Change> = (gone.iter())
            .flat_map(|&p| self.residency.disk_lost(p))
            .collect();
        self.apply_losses(changes)
    }

    /// Pieces another torrent took: applied, and what is fetched next follows. Returns whether
    /// there were any.
    fn apply_losses(&mut self, changes: Vec<Change>) -> bool {
        if changes.is_empty() {
            return false;
        }
        self.apply(changes);
        self.update_background();
        self.peers.refill_all();
        true
    }

    /// A reader's want in the picker (`picker::Picker::set_reader`), and the store told what
    /// readers now protect.
    pub(crate) fn set_reader(&mut self, id: ReaderId, want: ReaderWant) {
        self.picker.set_reader(id, want);
        self.publish_protection();
    }

    pub(crate) fn set_readers(&mut self, wants: impl IntoIterator<Item = (ReaderId, ReaderWant)>) {
        self.picker.set_readers(wants);
        self.publish_protection();
    }

    pub(crate) fn remove_reader(&mut self, id: ReaderId) {
        self.picker.remove_reader(id);
        self.publish_protection();
    }

    /// Other torrents sharing the memory or disk budget never evict what our readers want.
    fn publish_protection(&mut self) {
        let ranges = self.picker.reader_ranges();
        self.residency.protect(ranges);
    }

    /// The open readers changed: counted with other torrents' for the size of windows.
    pub(crate) fn readers_changed(&mut self) {
        let n = self.readers.count();
        self.residency.set_readers(n);
    }

    /// The disk cache opened: what our readers want is kept from other torrents' writes
    /// through `floor`, and `pieces` are what it held when the session started.
    pub(crate) fn disk_opened(
        &mut self,
        floor: crate::store::DiskFloor,
        pieces: impl IntoIterator<Item = PieceIndex>,
    ) {
        self.residency.set_disk_floor(floor);
        self.publish_protection();
        let changes = self.residency.found_on_disk(pieces);
        self.apply(changes);
    }

    /// `p` passed its check with `data`: held (if there is room, or a read waits on it) and
    /// announced; peers whose earlier blocks of it differ are banned. Returns whether the disk
    /// cache should get a copy (it does not hold one yet).
    pub(crate) fn piece_passed(&mut self, p: PieceIndex, data: Bytes) -> bool {
        let liars = self.assembling.liars(p, &data);
        let must_keep = self.picker.is_urgent(p);
        let picker = &self.picker;
        let changes = self
            .residency
            .verified(p, data, must_keep, |q| picker.is_wanted_by_reader(q));
        self.apply(changes);
        self.update_background();
        for liar in liars {
            tracing::warn!(%liar, piece = %p, "a corrupt block (found after the piece verified); its sender is banned");
            self.distrust(liar);
        }
        !self.residency.on_disk(p)
    }

    /// `p` failed its check: fetched again; a lone sender is banned, several are suspects and
    /// the piece comes from one peer next time, so the next verdict names one sender.
    pub(crate) fn piece_failed(&mut self, p: PieceIndex, asm: Assembly) {
        self.picker.piece_failed(p);
        match asm.senders().as_slice() {
            [one] => {
                tracing::warn!(sender = %one, piece = %p, "piece failed its SHA1 check; its only sender is banned");
                self.distrust(*one);
            }
            senders => {
                tracing::warn!(piece = %p, senders = senders.len(), "piece failed its SHA1 check; fetching it from one peer");
                self.assembling.suspect(p, &asm);
                self.picker.set_exclusive(p);
            }
        }
    }

    /// A sender of bad data is never asked again: a peer's address is banned, a web seed
    /// dropped (its task ends on the `Disconnect`).
    fn distrust(&mut self, sender: Sender) {
        match sender {
            Sender::Peer(ip) => self.peers.ban(ip),
            Sender::WebSeed(id) => {
                if self.web_seeds.lied(id) {
                    self.peers.send(id, PeerCmd::Disconnect);
                }
            }
        }
    }

    /// A piece loaded back from disk (and checked again) goes into memory if it fits.
    pub(crate) fn loaded_from_disk(&mut self, p: PieceIndex, data: Bytes) {
        let must_keep = self.picker.is_urgent(p);
        let picker = &self.picker;
        let changes = self
            .residency
            .loaded(p, data, must_keep, |q| picker.is_wanted_by_reader(q));
        self.apply(changes);
    }

    /// The disk cache wrote `p` and evicted `evicted` for it.
    pub(crate) fn disk_written(&mut self, p: PieceIndex, evicted: &[PieceIndex]) {
        let changes = self.residency.written(p, evicted);
        self.apply(changes);
    }

    /// The disk copy of `p` is gone (bad, unreadable or vanished).
    pub(crate) fn disk_lost(&mut self, p: PieceIndex) {
        let changes = self.residency.disk_lost(p);
        self.apply(changes);
    }

    /// Memory forgets every piece at once, as under pressure (tests).
    #[cfg(test)]
    pub(crate) fn drop_memory(&mut self) {
        let changes = self.residency.drop_memory();
        self.apply(changes);
    }

    /// A block `peer` sent: the picker's verdict, cancels to other peers that had it requested
    /// too, and the data into its piece. Returns the whole piece once its last block is in.
    pub(crate) fn block_arrived(
        &mut self,
        peer: PeerId,
        block: Block,
        begin: u32,
        data: &[u8],
        from: impl Into<Sender>,
    ) -> Arrived {
        let r = self.picker.block_received(peer, block);
        for (other, b) in r.cancel {
            self.peers.send(other, PeerCmd::Cancel(b));
        }
        if !r.new {
            return Arrived {
                new: false,
                complete: None,
            };
        }
        let g = self.picker.geometry();
        let complete = (self.assembling).put(g, block, begin, data, from.into(), r.piece_complete);
        // Buffers of pieces being put together count against the memory budget.
        self.residency.reserve(self.assembling.bytes());
        Arrived {
            new: true,
            complete,
        }
    }

    /// A peer's connection ended: its pieces stop counting, its requests go to others.
    pub(crate) fn peer_left(&mut self, id: PeerId, has: &Bitfield) {
        self.picker.peer_gone(id, has);
        self.choker.peer_left(id);
        self.peers.remove(id);
        self.peers.refill_all();
    }

    /// A read of `read` (torrent offsets) through `handle`, in a file ending at `file_end`:
    /// moves the handle's readahead window (between `min` and `max` bytes) and, when its
    /// pieces changed, tells the picker (the old window stops counting at once) and the peers.
    /// Returns the new window's pieces then.
    pub(crate) fn reader_moved(
        &mut self,
        handle: ReadHandle,
        read: Range<u64>,
        file: Range<u64>,
        min: u64,
        max: u64,
    ) -> Option<Range<u32>> {
        let now = tokio::time::Instant::now();
        let r = self.readers.get_mut(handle)?;
        r.consumed += read.end - read.start;
        let (index, consumed) = (r.file, r.consumed);
        if self
            .watching
            .read(index, consumed, file.end - file.start, now)
        {
            self.refresh_background(now);
        }
        let r = self.readers.get_mut(handle)?;
        let ahead = r.advance(self.picker.geometry(), now, read, file.end, min, max)?;
        let want = ReaderWant {
            urgent: 0..0,
            readahead: ahead.clone(),
            rate: r.rate(now),
            lead: 0,
        };
        let id = r.window_id;
        self.set_reader(id, want);
        self.peers.refill_all();
        Some(ahead)
    }

    /// The first read (or a media file opened) lets background fetching begin; until then a
    /// mount only browsed downloads nothing.
    pub(crate) fn start_reading(&mut self) {
        if self.readers.start() {
            self.refresh_background(tokio::time::Instant::now());
        }
    }

    /// Asks the background policy where fetching may go now (once a second, and when a file
    /// becomes watched): it looks at what is held and at the time since the last read.
    pub(crate) fn refresh_background(&mut self, now: tokio::time::Instant) {
        let picker = &self.picker;
        let held = |r: &Range<u32>| {
            let g = picker.geometry();
            r.clone().filter_map(|i| g.piece(i)).all(|p| picker.have(p))
        };
        let scope = self.watching.scope(now, held);
        if scope != self.scope {
            self.picker.set_background_scope(match &scope {
                Scope::Pieces(ranges) => Some(ranges.clone()),
                Scope::Torrent | Scope::Off => None,
            });
            self.scope = scope;
            self.peers.refill_all();
        }
        self.update_background();
    }

    /// Background fetching (see `background.rs` for where) runs after the first read and only
    /// while memory has room, so it never churns the cache or evicts what readers will want.
    pub(crate) fn update_background(&mut self) {
        // Pieces being assembled hold memory already (reserved in the store); two more fit.
        let room = 2 * u64::from(self.picker.geometry().piece_length());
        let enabled = self.readers.started()
            && !self.asleep
            && self.scope != Scope::Off
            && self.residency.memory_has_room_for(room);
        self.picker.set_background(enabled);
    }

    /// Bytes of the pieces we hold.
    pub(crate) fn verified_bytes(&self) -> u64 {
        let g = self.picker.geometry();
        (self.picker.have_bitfield().iter_ones())
            .filter_map(|i| g.piece(i))
            .map(|p| u64::from(g.piece_len(p)))
            .sum()
    }

    /// A read waits on a piece and no connected peer can serve it now (none has one of its
    /// pieces and unchokes us).
    pub(crate) fn starving(&self) -> bool {
        self.picker.urgent_pending() && !self.peers.any_serves_read()
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use tokio::sync::mpsc;

    use super::*;
    use crate::picker::PieceState;
    use crate::session::discovery::PeerSource;

    const PIECE: u32 = 16 * 1024;

    /// Residency's invariant through the state: after any sequence of verdicts, disk writes,
    /// disk losses and loads, the picker's Have pieces are exactly the held pieces, and a
    /// connected peer was sent `have` for every piece held since it connected.
    #[test]
    fn the_pickers_have_is_what_residency_holds_and_peers_are_told() {
        for seed in 0..30 {
            let mut rng = StdRng::seed_from_u64(seed);
            let g = Geometry::new(PIECE, u64::from(PIECE) * 12).unwrap();
            let mut st = State::new(
                g.clone(),
                Store::new(u64::from(PIECE) * 3),
                Background::default(),
                std::iter::once(0..12).collect(),
            );
            let (tx, mut rx) = mpsc::unbounded_channel();
            st.peers
                .admit("10.0.0.1:1".parse().unwrap(), PeerSource::Tracker, tx, 10)
                .unwrap();
            let mut told = std::collections::HashSet::new();
            let data = Bytes::from(vec![1u8; PIECE as usize]);
            for _ in 0..300 {
                let p = g.piece(rng.random_range(0..12)).unwrap();
                match rng.random_range(0..4) {
                    0 | 1 if !st.residency.holds(p) => {
                        st.piece_passed(p, data.clone());
                    }
                    2 => {
                        let evicted: Vec<PieceIndex> = g
                            .pieces()
                            .filter(|&q| st.residency.on_disk(q) && rng.random_bool(0.2))
                            .collect();
                        st.disk_written(p, &evicted);
                    }
                    3 => st.disk_lost(p),
                    _ => {}
                }
                while let Ok(cmd) = rx.try_recv() {
                    if let PeerCmd::Have { piece: p, .. } = cmd {
                        told.insert(p);
                    }
                }
                for q in g.pieces() {
                    let have = st.picker.piece_state(q) == PieceState::Have;
                    assert_eq!(have, st.residency.holds(q), "seed {seed}, piece {q}");
                    if have {
                        assert!(told.contains(&q), "{q} held but never announced");
                    }
                }
            }
        }
    }
}
