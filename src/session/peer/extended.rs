//! The extension protocol (BEP 10) on one connection: our extended handshake, and the
//! peer's handshake, `ut_metadata` requests (BEP 9: we serve the info dictionary to peers that
//! came by magnet) and PEX messages (BEP 11).

use std::net::SocketAddr;

use super::Peer;
use super::pex::{OUR_UT_PEX, PeerPex};
use crate::magnet::metadata::metadata_piece;
use crate::wire::Message;
use crate::wire::extension::{
    CLIENT, ExtendedHandshake, HANDSHAKE_ID, MAX_METADATA_SIZE, MetadataMsg, OUR_UT_METADATA,
};

/// What the two handshakes said about extensions, and the extensions' own state.
pub(super) struct Extensions {
    /// The peer speaks the extension protocol (BEP 10).
    pub(super) protocol: bool,
    /// Both sides speak the Fast extension (BEP 6): requests are rejected, not ignored.
    pub(super) fast: bool,
    /// The peer's id for `ut_metadata` messages we send it, from its extended handshake.
    their_ut_metadata: Option<u8>,
    /// `reqq`: how many of our requests the peer queues; we never have more in flight.
    pub(super) their_reqq: Option<u32>,
    /// Peer exchange; `None` for private torrents (BEP 27).
    pub(super) pex: Option<PeerPex>,
    /// Where a peer that connected to us listens, from its first extended handshake naming a
    /// port: one address per connection, whatever later handshakes say.
    pub(super) their_listen: Option<SocketAddr>,
}

/// `reqq` we announce: requests we queue from one peer. Past about two seconds of its upload
/// (see `upload.rs`) we reject (Fast) or drop further ones anyway; this tells a well-behaved
/// peer not to send more.
pub(super) const OUR_REQQ: u32 = 250;

impl Extensions {
    pub(super) fn new(protocol: bool, fast: bool, private: bool) -> Self {
        Self {
            protocol,
            fast,
            their_ut_metadata: None,
            their_reqq: None,
            pex: (!private).then(PeerPex::new),
            their_listen: None,
        }
    }
}

impl Peer {
    /// Tells the peer we serve metadata (peers that came by magnet need it) and, for public
    /// torrents, that we speak PEX.
    pub(super) fn send_extended_handshake(&self) {
        let raw = &self.shared.torrent.info.raw;
        let hs = ExtendedHandshake {
            ut_metadata: Some(OUR_UT_METADATA),
            ut_pex: self.ext.pex.is_some().then_some(OUR_UT_PEX),
            metadata_size: u32::try_from(raw.len())
                .ok()
                .filter(|&n| n > 0 && n <= MAX_METADATA_SIZE),
            client: Some(CLIENT.into()),
            port: Some(self.shared.listen_port),
            reqq: Some(OUR_REQQ),
            yourip: Some(self.addr.ip()),
        };
        self.send(Message::Extended {
            id: HANDSHAKE_ID,
            payload: hs.encode().into(),
        });
    }

    /// Extension messages: the peer's extended handshake, its `ut_metadata` requests and its
    /// PEX messages.
    /// Anything else (or anything malformed) is ignored, as BEP 10 asks.
    pub(super) fn on_extended(&mut self, id: u8, payload: &[u8]) {
        if id == HANDSHAKE_ID {
            if let Ok(hs) = ExtendedHandshake::decode(payload) {
                self.ext.their_ut_metadata = hs.ut_metadata;
                // Zero would stall the connection for good: read it as "not said".
                self.ext.their_reqq = hs.reqq.filter(|&n| n > 0);
                if let Some(pex) = &mut self.ext.pex {
                    pex.on_handshake(hs.ut_pex, hs.yourip);
                }
                let port = hs.port.filter(|&p| p != 0);
                if let (false, None, Some(port)) = (self.outgoing, self.ext.their_listen, port) {
                    let listen = SocketAddr::new(self.addr.ip(), port);
                    self.ext.their_listen = Some(listen);
                    self.shared.lock().peers.set_listen(self.id, listen);
                }
            }
            return;
        }
        if id == OUR_UT_PEX {
            if let Some(pex) = &mut self.ext.pex {
                pex.on_message(&self.shared, self.addr, payload);
            }
            return;
        }
        if id != OUR_UT_METADATA {
            return;
        }
        let (Some(theirs), Ok(MetadataMsg::Request { piece })) =
            (self.ext.their_ut_metadata, MetadataMsg::decode(payload))
        else {
            return;
        };
        let raw = &self.shared.torrent.info.raw;
        let reply = match metadata_piece(raw, piece) {
            Some(data) => MetadataMsg::Data {
                piece,
                total_size: raw.len() as u32,
                data,
            }
            .encode(),
            None => MetadataMsg::Reject { piece }.encode(),
        };
        self.send(Message::Extended {
            id: theirs,
            payload: reply.into(),
        });
    }
}
