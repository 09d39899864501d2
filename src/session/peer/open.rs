//! Opening a connection: the BitTorrent handshakes (ours first when we dialled; the host has
//! read theirs when it came to us), admission to a slot, and what the peer is told we have;
//! then the peer's loop (`Peer::run`) until the connection ends.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::extended::Extensions;
use super::{Peer, PeerError, writer};
use crate::session::host::Incoming;
use crate::session::peers::Refusal;
use crate::session::stream::{PeerStream, Transport};
use crate::session::{PeerSource, Shared};
use crate::wire::{Handshake, HandshakeError, Role, exchange_handshakes, write_handshake};

/// Exchanges handshakes over a connection we dialled (we speak first); returns theirs. Apart
/// from running the peer (`dialled`), so that the dialler can keep whichever transport gets
/// this far first.
pub(crate) async fn handshake(
    shared: &Shared,
    mut stream: PeerStream,
    addr: SocketAddr,
) -> Result<(PeerStream, Handshake), PeerError> {
    let ours = Handshake::new(shared.torrent.info_hash.0, shared.peer_id);
    let within = shared.config.peer_timeouts.handshake;
    let theirs = exchange_handshakes(&mut stream, &ours, Role::Initiator, within)
        .await
        .inspect_err(|e| tracing::debug!(%addr, outgoing = true, "handshake failed: {e}"))?;
    Ok((stream, theirs))
}

/// Runs a connection we dialled, its handshakes exchanged (`handshake`), to the end.
/// `admitted` is called once the peer has a slot.
pub(crate) async fn dialled(
    shared: Arc<Shared>,
    stream: PeerStream,
    addr: SocketAddr,
    source: PeerSource,
    theirs: Handshake,
    admitted: impl FnOnce(),
) -> Result<(), PeerError> {
    let ours = Handshake::new(shared.torrent.info_hash.0, shared.peer_id);
    connected(
        shared,
        stream,
        addr,
        source,
        &ours,
        &theirs,
        admitted,
        |_| {},
    )
    .await
}

/// Runs a connection the host routed to us (their handshake read, for our torrent) to the end.
/// `listens` is told, once the connection ended, where the peer said it accepts connections.
pub(crate) async fn accept(
    shared: Arc<Shared>,
    conn: Incoming,
    listens: impl FnOnce(SocketAddr),
) -> Result<(), PeerError> {
    let Incoming {
        mut stream,
        addr,
        theirs,
    } = conn;
    let ours = Handshake::new(shared.torrent.info_hash.0, shared.peer_id);
    tokio::time::timeout(
        shared.config.peer_timeouts.handshake,
        write_handshake(&mut stream, &ours),
    )
    .await
    .map_err(|_| HandshakeError::Timeout)?
    .inspect_err(|e| tracing::debug!(%addr, outgoing = false, "handshake failed: {e}"))?;
    connected(
        shared,
        stream,
        addr,
        PeerSource::Incoming,
        &ours,
        &theirs,
        || {},
        listens,
    )
    .await
}

/// After both handshakes: admits the peer and runs its loop until it ends; then tells
/// `listens` the address an incoming peer's extended handshake named, if any.
#[allow(clippy::too_many_arguments)]
pub(super) async fn connected(
    shared: Arc<Shared>,
    stream: PeerStream,
    addr: SocketAddr,
    source: PeerSource,
    ours: &Handshake,
    theirs: &Handshake,
    admitted: impl FnOnce(),
    listens: impl FnOnce(SocketAddr),
) -> Result<(), PeerError> {
    if theirs.peer_id == shared.peer_id {
        return Err(PeerError::SelfConnection);
    }
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (id, have) = {
        let mut st = shared.lock();
        // Checked under the lock `stop` (and falling asleep) takes to disconnect everyone: no
        // peer slips in after.
        if shared.is_shutting_down() || st.asleep {
            return Err(PeerError::Shutdown);
        }
        if st
            .peers
            .is_duplicate(&theirs.peer_id, source != PeerSource::Incoming)
        {
            return Err(PeerError::Duplicate);
        }
        let id = (st.peers)
            .admit(addr, source, cmd_tx, shared.config.max_peers)
            .map_err(|r| match r {
                Refusal::Banned => PeerError::Banned,
                Refusal::Full => PeerError::Full,
            })?;
        st.peers.set_peer_id(id, theirs.peer_id);
        if stream.is_encrypted() {
            st.peers.set_encrypted(id);
        }
        if stream.transport() == Transport::Utp {
            st.peers.set_utp(id);
        }
        // What it is told we have: all we hold if it can be told "no" later (Fast), else
        // only what the disk holds (see `residency`).
        let have = if ours.supports_fast() && theirs.supports_fast() {
            st.picker.have_bitfield().clone()
        } else {
            // Pieces on disk are held, so this is a part of the picker's Have set.
            st.residency.durable_bitfield(shared.geometry.piece_count())
        };
        (id, have)
    };
    admitted();
    let outgoing = source != PeerSource::Incoming;
    let encrypted = stream.is_encrypted();
    tracing::debug!(%addr, outgoing, transport = ?stream.transport(), encrypted, "peer connected");
    let ext = Extensions::new(
        theirs.supports_extensions(),
        ours.supports_fast() && theirs.supports_fast(),
        shared.torrent.info.private,
    );
    let (out, inbox) = writer::outbox();
    let mut peer = Peer::new(shared, id, addr, outgoing, out, ext);
    let result = peer.run(stream, cmd_rx, inbox, have).await;
    peer.leave();
    if let Some(listen) = peer.ext.their_listen {
        listens(listen);
    }
    tracing::debug!(%addr, ?result, "peer disconnected");
    result
}
