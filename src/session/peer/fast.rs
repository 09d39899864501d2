//! The Fast extension (BEP 6) on one connection, on when both handshakes set its bit: our first
//! statement of what we have, and the peer's Fast messages. `have_all` / `have_none` stand for
//! a bitfield; a `reject_request` gives the block back to the picker for another peer at once.

use tokio::time::Instant;

use super::requests::Rejection;
use super::{Peer, PeerError};
use crate::bitfield::Bitfield;
use crate::picker::Block;
use crate::wire::{BlockRef, Message};

impl Peer {
    /// What we tell the peer we have, first: `have_none` / `have_all` when Fast allows it,
    /// else a bitfield; nothing for a non-Fast peer when we have nothing.
    pub(super) fn first_statement(&self, have: &Bitfield) -> Option<Message> {
        let bitfield = || Message::Bitfield(have.as_bytes().to_vec().into());
        match (self.ext.fast, have.count_ones()) {
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
            _ if !self.ext.fast => {
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
        match self.requests.rejected(block, Instant::now()) {
            Rejection::Ours => {
                tracing::debug!(addr = %self.addr, ?r, "request rejected; asking another peer");
                if let Some(b) = block {
                    let mut st = self.shared.lock();
                    st.picker.request_failed(self.id, b);
                    st.peers.refill_all();
                }
                self.refill();
                Ok(())
            }
            // A request we cancelled, released on a choke or gave up on: the peer may reject
            // it instead of sending the block.
            Rejection::Tolerated => Ok(()),
            Rejection::Flood => Err(PeerError::Protocol(
                "a flood of rejects for requests never made",
            )),
        }
    }

    /// Once a second: pieces rejected long enough ago may be asked of the peer again.
    pub(super) fn end_reject_backoff(&mut self) {
        if self.requests.end_reject_backoff(Instant::now()) {
            self.refill();
        }
    }
}
