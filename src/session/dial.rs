//! Dialling one peer: a connection, encrypted or not as the `--encryption` policy and what
//! worked for this address before say, then the peer task; a second try at once when the way
//! the first failed says the other kind would work.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::addrbook::Outcome;
use super::encryption::Attempt;
use super::peer::{self, PeerError};
use super::stream::PeerStream;
use super::{PeerSource, Shared};
use crate::wire::mse::{self, MseError};
use crate::wire::{HandshakeError, WireError};

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

/// Dials `addr` (each try a new connection from `connect`) and runs the peer, encrypted or
/// not as the policy and `worked` say, falling back at once when the way the first try failed
/// says the other would do; `admitted` is called when a peer gets its slot. Returns how the
/// peer session ended (`Err`: no connection got as far as a BitTorrent handshake, and why) and
/// the attempt that got that far, to try first next time.
pub(crate) async fn dial<C, F>(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    source: PeerSource,
    worked: Option<Attempt>,
    connect: C,
    admitted: impl Fn(),
) -> (Result<Result<(), PeerError>, Outcome>, Option<Attempt>)
where
    C: Fn() -> F,
    F: Future<Output = Result<PeerStream, Outcome>>,
{
    let policy = shared.config.encryption;
    let (mut attempt, mut fallback) = policy.attempts(worked);
    loop {
        let stream = match connect().await {
            Ok(stream) => stream,
            Err(outcome) => return (Err(outcome), None),
        };
        let stream = match attempt {
            Attempt::Plaintext => stream,
            Attempt::Encrypted => {
                let skey = &shared.torrent.info_hash.0;
                let within = shared.config.peer_timeouts.handshake;
                match mse::initiate(stream, skey, policy.provide(), &[], within).await {
                    Ok(s) => PeerStream::encrypted(s),
                    Err(e) => {
                        tracing::debug!(%addr, "{e}");
                        if e.peer_does_not_speak_mse() && fallback == Some(Attempt::Plaintext) {
                            tracing::debug!(%addr, "no encryption there: dialling plaintext");
                            attempt = Attempt::Plaintext;
                            fallback = None;
                            continue;
                        }
                        let outcome = match e {
                            MseError::Timeout { .. } => Outcome::TimedOut,
                            _ => Outcome::HungUp,
                        };
                        return (Err(outcome), None);
                    }
                }
            }
        };
        let ran = peer::dial(shared.clone(), stream, addr, source, &admitted).await;
        match &ran {
            Err(PeerError::Handshake(e))
                if attempt == Attempt::Plaintext
                    && fallback == Some(Attempt::Encrypted)
                    && hung_up(e) =>
            {
                tracing::debug!(%addr, "hung up on plaintext: dialling encrypted");
                attempt = Attempt::Encrypted;
                fallback = None;
            }
            Err(PeerError::Handshake(e)) => {
                if attempt == Attempt::Plaintext && hung_up(e) {
                    refused_plaintext(shared, addr);
                }
                return (Ok(ran), None);
            }
            _ => return (Ok(ran), Some(attempt)),
        }
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
