//! "Does this peer have anything we need?", asked on every `have` a peer sends and every piece
//! we verify, answered in O(1) almost always instead of a scan of the piece set.
//!
//! Each peer keeps an [`Interest`]: a piece it has that we need (its witness), checked first;
//! or the fact that a full scan found nothing, valid until a piece we had becomes needed
//! again (a failed check, memory or disk losing it). Only then, or when the witness goes,
//! does a scan run, starting at the old witness so repeated scans move on instead of
//! re-reading the same words.

use super::{Picker, bitfield_word};
use crate::bitfield::Bitfield;
use crate::piece::PieceIndex;

/// What a peer's last interest check learnt (one per connected peer).
#[derive(Debug, Default, Clone)]
pub struct Interest {
    witness: Option<PieceIndex>,
    /// `Picker::regained` when a scan found nothing: still nothing while it is unchanged.
    none_since: Option<u64>,
}

impl Interest {
    /// The peer sent a new bitfield (or have-all/none): what was learnt no longer holds.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

impl Picker {
    /// Whether a peer with `has` has a piece we neither have nor are verifying. O(1) while
    /// `hint`'s witness stands or nothing needed came back; else a scan from the witness.
    pub fn interest(&self, has: &Bitfield, hint: &mut Interest) -> bool {
        if has.is_full() {
            return self.needed_count > 0;
        }
        if let Some(w) = hint.witness
            && self.needed.get(w.get())
            && has.get(w.get())
        {
            return true;
        }
        if hint.witness.is_none() && hint.none_since == Some(self.regained) {
            return false;
        }
        let words = self.needed.0.len();
        let start = hint.witness.map_or(0, |w| w.as_usize() / 64);
        let found = (0..words).map(|k| (start + k) % words).find_map(|w| {
            let both = bitfield_word(has, w) & self.needed.0[w];
            let i = w * 64 + both.leading_zeros() as usize;
            (both != 0).then(|| self.geometry.piece(i as u32)).flatten()
        });
        hint.witness = found;
        hint.none_since = found.is_none().then_some(self.regained);
        found.is_some()
    }

    /// The peer announced `p`: if we need it, it is the witness (no scan needed).
    pub fn peer_announced(&self, p: PieceIndex, hint: &mut Interest) {
        if self.needed.get(p.get()) {
            hint.witness = Some(p);
            hint.none_since = None;
        }
    }
}
