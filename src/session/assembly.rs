//! Pieces being put together from blocks, with who sent each block, and what is remembered of
//! pieces that failed their check so a liar is found once the piece verifies ("smart ban").
//! Pure bookkeeping; the check itself is `verify.rs`.

use std::collections::HashMap;
use std::net::IpAddr;

use sha1::{Digest, Sha1};

use crate::picker::{Block, PeerId};
use crate::piece::{BLOCK_SIZE, Geometry, PieceIndex};

/// Who sent a block, as far as blame goes: a BitTorrent peer by its IP (a liar is banned by
/// address, whatever port it reconnects from), a web seed by its own id (dropping it bans no
/// peer that shares its server's address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Sender {
    Peer(IpAddr),
    WebSeed(PeerId),
}

impl From<IpAddr> for Sender {
    fn from(ip: IpAddr) -> Self {
        Sender::Peer(ip)
    }
}

impl std::fmt::Display for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sender::Peer(ip) => ip.fmt(f),
            Sender::WebSeed(id) => write!(f, "web seed {}", id.0),
        }
    }
}

/// A piece being put together from blocks; who sent each block is kept for the verdict.
pub(crate) struct Assembly {
    data: Vec<u8>,
    senders: Vec<Option<Sender>>,
}

impl Assembly {
    fn new(len: u32, blocks: u32) -> Self {
        Self {
            data: vec![0; len as usize],
            senders: vec![None; blocks as usize],
        }
    }

    /// Copies a block in; the caller has checked `begin`/`len` against the geometry.
    fn put(&mut self, block: u32, begin: u32, bytes: &[u8], from: Sender) {
        let start = begin as usize;
        self.data[start..start + bytes.len()].copy_from_slice(bytes);
        self.senders[block as usize] = Some(from);
    }

    /// Everyone who sent a block of it, each once.
    pub(crate) fn senders(&self) -> Vec<Sender> {
        let mut senders: Vec<Sender> = self.senders.iter().flatten().copied().collect();
        senders.sort();
        senders.dedup();
        senders
    }
}

/// Pieces in assembly, and what is remembered of pieces that failed their check.
#[derive(Default)]
pub(crate) struct Assembling {
    pieces: HashMap<PieceIndex, Assembly>,
    /// Block hashes from peers whose piece failed its check, to find the liar when the piece
    /// later verifies (libtorrent's "smart ban").
    suspects: Suspects,
}

impl Assembling {
    /// Copies a new block in (it starts at `begin` of its piece); returns the whole piece once
    /// its last block is in (`complete`, as the picker says).
    pub(crate) fn put(
        &mut self,
        g: &Geometry,
        b: Block,
        begin: u32,
        bytes: &[u8],
        from: Sender,
        complete: bool,
    ) -> Option<Assembly> {
        let p = b.piece;
        let asm = self
            .pieces
            .entry(p)
            .or_insert_with(|| Assembly::new(g.piece_len(p), g.block_count(p)));
        asm.put(b.block, begin, bytes, from);
        if complete {
            self.pieces.remove(&p)
        } else {
            None
        }
    }

    /// Pieces being put together now.
    pub(crate) fn len(&self) -> usize {
        self.pieces.len()
    }

    /// A piece failed with blocks from several peers: remember who sent what.
    pub(crate) fn suspect(&mut self, p: PieceIndex, asm: &Assembly) {
        self.suspects.record(p, asm);
    }

    /// `p` verified with `data`: who sent a different block of it before?
    pub(crate) fn liars(&mut self, p: PieceIndex, data: &[u8]) -> Vec<Sender> {
        self.suspects.liars(p, data)
    }
}

/// Block hashes sent by peers for pieces that failed their check. When the piece later
/// verifies with data from elsewhere, any peer whose block differs from the good data lied.
#[derive(Default)]
struct Suspects {
    by_piece: HashMap<PieceIndex, Vec<(u32, Sender, [u8; 20])>>,
}

impl Suspects {
    fn record(&mut self, piece: PieceIndex, asm: &Assembly) {
        let entry = self.by_piece.entry(piece).or_default();
        for (i, from) in asm.senders.iter().enumerate() {
            if let Some(sender) = from {
                let start = i * BLOCK_SIZE as usize;
                let end = (start + BLOCK_SIZE as usize).min(asm.data.len());
                entry.push((i as u32, *sender, sha1(&asm.data[start..end])));
            }
        }
    }

    /// Peers whose recorded blocks for `piece` differ from the verified `data`.
    fn liars(&mut self, piece: PieceIndex, data: &[u8]) -> Vec<Sender> {
        let Some(records) = self.by_piece.remove(&piece) else {
            return Vec::new();
        };
        let mut liars: Vec<Sender> = records
            .into_iter()
            .filter(|(block, _, hash)| {
                let start = *block as usize * BLOCK_SIZE as usize;
                let end = (start + BLOCK_SIZE as usize).min(data.len());
                start < end && sha1(&data[start..end]) != *hash
            })
            .map(|(_, ip, _)| ip)
            .collect();
        liars.sort();
        liars.dedup();
        liars
    }
}

impl Assembly {
    /// The assembled bytes, for the check.
    pub(crate) fn data(&self) -> &[u8] {
        &self.data
    }

    pub(crate) fn into_data(self) -> Vec<u8> {
        self.data
    }
}

pub(crate) fn sha1(data: &[u8]) -> [u8; 20] {
    Sha1::digest(data).into()
}
