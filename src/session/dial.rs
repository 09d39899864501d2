//! Dialling one peer: over uTP and TCP as `transport.rs` races them (the first connection
//! through the BitTorrent handshake is kept), each encrypted or not as the `--encryption`
//! policy and what worked for this address before say, with a second try at once when the way
//! the first failed says the other kind would work; then the peer task.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::addrbook::{Outcome, Worked};
use super::encryption::Attempt;
use super::peer::{self, PeerError};
use super::stream::{PeerStream, Transport};
use super::{PeerSource, Shared};
use crate::wire::mse::{self, MseError};
use crate::wire::{Handshake, HandshakeError, WireError};

/// The peer closed or reset the connection before sending a byte of its handshake: what a
/// client that requires encryption does with our plaintext one.
fn hung_up(e: &HandshakeError) -> bool {
    use std::io::ErrorKind::*;
    match e {
        HandshakeError::Wire(WireError::Closed) => true,
        HandshakeError::Wire(WireError::Io(io)) => matches!(
            io.kind(),
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
        ),
        _ => false,
    }
}

/// How one transport's try at an address failed.
enum Failed {
    /// Before a BitTorrent handshake could start (connect, encryption handshake).
    Outcome(Outcome),
    /// The BitTorrent handshake failed.
    Peer(PeerError),
}

impl Failed {
    /// Which failure says most about the address: a handshake that failed, then an encryption
    /// handshake, then a refused connect, then a timeout (a TCP-only peer times uTP out).
    fn rank(&self) -> u8 {
        match self {
            Failed::Peer(_) => 3,
            Failed::Outcome(Outcome::TimedOut) => 0,
            Failed::Outcome(Outcome::Refused | Outcome::Local) => 1,
            Failed::Outcome(_) => 2,
        }
    }
}

/// Dials `addr` over the transports the host speaks (raced, see `transport.rs`), each try
/// encrypted or not as the policy and `worked` say, and runs the peer over the first to get
/// through the BitTorrent handshake; `admitted` is called when the peer gets its slot.
/// Returns how the peer session ended (`Err`: no connection got as far as a BitTorrent
/// handshake, and why; `Ok(Err)` with a handshake error: one got that far and failed it) and
/// how the connection that got through was made, to try first next time.
pub(crate) async fn dial(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    source: PeerSource,
    worked: Option<Worked>,
    admitted: impl Fn(),
) -> (Result<Result<(), PeerError>, Outcome>, Option<Worked>) {
    let attempt = worked.map(|w| w.attempt);
    let raced = (shared.dialer)
        .race(worked.map(|w| w.transport), |t| {
            establish(shared, addr, t, attempt)
        })
        .await;
    match raced {
        Ok(((stream, theirs, attempt), transport)) => {
            let ran = peer::dialled(shared.clone(), stream, addr, source, theirs, admitted).await;
            (Ok(ran), Some(Worked { transport, attempt }))
        }
        Err(failures) => match failures.into_iter().max_by_key(Failed::rank) {
            Some(Failed::Peer(e)) => (Ok(Err(e)), None),
            Some(Failed::Outcome(o)) => (Err(o), None),
            None => (Err(Outcome::Local), None),
        },
    }
}

/// One transport's try: a connection over `transport`, encrypted or not as the policy and
/// `worked` say, then the BitTorrent handshake; a second connection at once when the way the
/// first failed says the other kind would work. Returns the stream, their handshake and the
/// kind that got through.
async fn establish(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    transport: Transport,
    worked: Option<Attempt>,
) -> Result<(PeerStream, Handshake, Attempt), Failed> {
    let policy = shared.config.encryption;
    let (mut attempt, mut fallback) = policy.attempts(worked);
    loop {
        let stream = match shared.dialer.connect(transport, addr).await {
            Ok(stream) => stream,
            Err(e) => return Err(Failed::Outcome(connect_failed(&e))),
        };
        let stream = match attempt {
            Attempt::Plaintext => stream,
            Attempt::Encrypted => {
                let skey = &shared.torrent.info_hash.0;
                let within = shared.config.peer_timeouts.handshake;
                match mse::initiate(stream, skey, policy.provide(), &[], within).await {
                    Ok(s) => PeerStream::encrypted(s),
                    Err(e) => {
                        tracing::debug!(%addr, ?transport, "{e}");
                        if e.peer_does_not_speak_mse() && fallback == Some(Attempt::Plaintext) {
                            tracing::debug!(%addr, "no encryption there: dialling plaintext");
                            attempt = Attempt::Plaintext;
                            fallback = None;
                            continue;
                        }
                        return Err(Failed::Outcome(match e {
                            MseError::Timeout { .. } => Outcome::TimedOut,
                            _ => Outcome::HungUp,
                        }));
                    }
                }
            }
        };
        match peer::handshake(shared, stream, addr).await {
            Ok((stream, theirs)) => return Ok((stream, theirs, attempt)),
            Err(PeerError::Handshake(e))
                if attempt == Attempt::Plaintext
                    && fallback == Some(Attempt::Encrypted)
                    && hung_up(&e) =>
            {
                tracing::debug!(%addr, ?transport, "hung up on plaintext: dialling encrypted");
                attempt = Attempt::Encrypted;
                fallback = None;
            }
            Err(e) => {
                if let PeerError::Handshake(h) = &e
                    && attempt == Attempt::Plaintext
                    && hung_up(h)
                {
                    refused_plaintext(shared, addr);
                }
                return Err(Failed::Peer(e));
            }
        }
    }
}

/// A connect error: out of file descriptors is our problem, anything else the address's.
fn connect_failed(e: &io::Error) -> Outcome {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => Outcome::Local,
        _ if e.kind() == io::ErrorKind::TimedOut => Outcome::TimedOut,
        _ => Outcome::Refused,
    }
}

/// Counts a plaintext handshake a peer hung up on; says the first time what it may mean.
fn refused_plaintext(shared: &Shared, addr: SocketAddr) {
    if shared.refused_plaintext.fetch_add(1, Ordering::Relaxed) == 0 {
        tracing::info!(
            "peer {addr} hung up on our plaintext handshake: it may require encryption \
             (--encryption is {})",
            shared.config.encryption
        );
    }
}
