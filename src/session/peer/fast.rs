//! The Fast extension (BEP 6) on one connection, on when both handshakes set its bit: our first
//! statement of what we have, and the peer's Fast messages. `have_all` / `have_none` stand for
//! a bitfield; a `reject_request` gives the block back to the picker for another peer at once.

use std::borrow::Cow;
use std::time::Duration;

use tokio::time::Instant;

use super::{Peer, PeerError};
use crate::bitfield::Bitfield;
use crate::picker::Block;
use crate::session::Shared;
use crate::wire::{BlockRef, Message};

/// `reject_request`s for blocks we never asked for, beyond those we cancelled, released on a
/// choke or gave up on (each of which the peer may reject instead of answering): harmless one
/// by one, many are a broken peer.
const UNASKED_REJECT_TOLERANCE: u32 = 16;
/// How long pieces a peer rejected are not asked of it again: it may have dropped them (a
/// streaming client's cache), or be busy; either way others are asked first, and it again later.
const REJECT_BACKOFF: Duration = Duration::from_secs(2);

impl Peer {
    /// What we tell the peer we have, first: `have_none` / `have_all` when Fast allows it,
    /// else a bitfield; nothing for a non-Fast peer when we have nothing.
    pub(super) fn first_statement(&self, have: &Bitfield) -> Option<Message> {
        let bitfield = || Message::Bitfield(have.as_bytes().to_vec().into());
        match (self.fast, have.count_ones()) {
            (true, 0) => Some(Message::HaveNone),
            (true, _) if have.is_full() => Some(Message::HaveAll),
            (_, 0) => None,
            _ => Some(bitfield()),
        }
    }

    pub(super) fn on_fast(&mut self, msg: Message) -> Result<(), PeerError> {
        let n = self.shared.geometry.piece_count();
        match msg {
            // Hints we do not act on: our order follows the reads.
            Message::Suggest(_) | Message::AllowedFast(_) => {
                tracing::debug!(addr = %self.addr, ?msg, "fast hint ignored");
            }
            _ if !self.fast => {
                return Err(PeerError::Protocol("fast message without negotiating it"));
            }
            Message::HaveAll => self.on_bitfield(Bitfield::full(n))?,
            Message::HaveNone => self.on_bitfield(Bitfield::new(n))?,
            Message::RejectRequest(r) => self.on_reject(r)?,
            _ => {}
        }
        Ok(())
    }

    fn on_reject(&mut self, r: BlockRef) -> Result<(), PeerError> {
        let g = &self.shared.geometry;
        let block = g
            .piece(r.index)
            .and_then(|p| Some((p, g.block_index(p, r.begin, r.length)?)))
            .map(|(piece, block)| Block { piece, block });
        if let Some(b) = block
            && self.requests.remove(&b).is_some()
        {
            tracing::debug!(addr = %self.addr, ?r, "request rejected; asking another peer");
            if !self.rejected.contains(&r.index) {
                self.rejected.push(r.index);
            }
            self.rejected_since.get_or_insert_with(Instant::now);
            let mut st = self.shared.lock();
            st.picker.request_failed(self.id, b);
            Shared::refill_all(&st);
            drop(st);
            self.refill();
            return Ok(());
        }
        // A request we cancelled, released on a choke or gave up on: the peer may reject it
        // instead of sending the block.
        if self.late_allowed > 0 {
            self.late_allowed -= 1;
            return Ok(());
        }
        self.unasked_rejects += 1;
        if self.unasked_rejects > UNASKED_REJECT_TOLERANCE {
            return Err(PeerError::Protocol(
                "a flood of rejects for requests never made",
            ));
        }
        Ok(())
    }

    /// The peer's pieces minus those it rejected lately: what the picker may ask of it.
    pub(super) fn pickable(&self) -> Cow<'_, Bitfield> {
        if self.rejected.is_empty() {
            return Cow::Borrowed(&self.has);
        }
        let mut bf = self.has.clone();
        for &p in &self.rejected {
            bf.clear(p);
        }
        Cow::Owned(bf)
    }

    /// Once a second: pieces rejected long enough ago may be asked of the peer again.
    pub(super) fn end_reject_backoff(&mut self) {
        if self
            .rejected_since
            .is_some_and(|t| t.elapsed() >= REJECT_BACKOFF)
        {
            self.rejected.clear();
            self.rejected_since = None;
            self.refill();
        }
    }
}
