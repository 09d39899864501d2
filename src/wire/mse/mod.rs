//! Message Stream Encryption (MSE, also called PE): the obfuscation layer many BitTorrent
//! clients put under the peer protocol. A Diffie-Hellman exchange gives both sides a secret
//! `S`; the info-hash (`SKEY`), which only peers of the torrent know, keys RC4 for each
//! direction; the two sides then agree on RC4 or plaintext for the rest of the stream.
//!
//! [`initiate`] and [`accept`] run the two sides over any `AsyncRead + AsyncWrite` stream
//! (TCP, uTP, an in-memory pipe) and return an [`MseStream`], which reads and writes as the
//! plain BitTorrent stream and splits into halves like the stream under it. `keys` holds the
//! key material, `rc4` the cipher, `handshake` the exchange, `stream` the cipher layer.

mod handshake;
mod keys;
mod rc4;
mod stream;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

pub use handshake::Accepted;
pub use keys::req2;
pub use stream::{MseReader, MseStream, MseWriter};

/// The longest pad (PadA to PadD) the spec allows, and so how far each side searches.
pub const MAX_PAD: usize = 512;

/// A crypto method of `crypto_provide`/`crypto_select`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// The handshake is obfuscated, the payload after it is not.
    Plaintext,
    Rc4,
}

impl Method {
    pub fn bits(self) -> u32 {
        match self {
            Method::Plaintext => 0x01,
            Method::Rc4 => 0x02,
        }
    }

    /// The method a `crypto_select` names: exactly one known bit.
    fn from_bits(bits: u32) -> Option<Method> {
        match bits {
            0x01 => Some(Method::Plaintext),
            0x02 => Some(Method::Rc4),
            _ => None,
        }
    }
}

/// A set of methods, as `crypto_provide` carries it (unknown bits are kept and ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Methods(pub u32);

impl Methods {
    pub const RC4: Methods = Methods(0x02);
    pub const BOTH: Methods = Methods(0x03);

    pub fn contains(self, m: Method) -> bool {
        self.0 & m.bits() != 0
    }
}

/// What a receiver accepts for a torrent, and which it picks when offered both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selection {
    pub allowed: Methods,
    pub prefer: Method,
}

impl Selection {
    /// Our pick among what the initiator provides: the preferred method if both allow it,
    /// else any other both allow.
    pub fn choose(self, provided: Methods) -> Option<Method> {
        let ok = |m| self.allowed.contains(m) && provided.contains(m);
        [self.prefer, Method::Rc4, Method::Plaintext]
            .into_iter()
            .find(|&m| ok(m))
    }
}

/// A torrent the receiver serves, as its lookup names it: the info-hash, and the methods
/// accepted for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Serving {
    pub skey: [u8; 20],
    pub selection: Selection,
}

/// Where in the handshake something failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Sending ours or reading their Diffie-Hellman public key.
    PublicKey,
    /// Looking for the end of the peer's pad.
    Sync,
    /// The encrypted part: methods, pads, the initial payload.
    Negotiation,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::PublicKey => "exchanging public keys",
            Stage::Sync => "finding the end of the peer's padding",
            Stage::Negotiation => "negotiating the crypto method",
        })
    }
}

/// Why an MSE handshake failed; after any of these the stream is unusable.
#[derive(Debug, thiserror::Error)]
pub enum MseError {
    #[error("encryption handshake: peer closed the connection while {stage}")]
    Closed { stage: Stage },
    #[error("encryption handshake: i/o while {stage}: {source}")]
    Io {
        stage: Stage,
        source: std::io::Error,
    },
    #[error("encryption handshake timed out while {stage}")]
    Timeout { stage: Stage },
    #[error("encryption handshake: the peer's public key is degenerate")]
    BadPublicKey,
    /// The pad went on past 512 bytes, or the peer is not speaking MSE at all.
    #[error("encryption handshake: nothing recognisable within 512 bytes while {stage}")]
    NotFound { stage: Stage },
    #[error("encryption handshake: the peer asks for a torrent we do not serve")]
    UnknownTorrent,
    #[error("encryption handshake: wrong verification constant")]
    BadVerification,
    #[error("encryption handshake: a pad of {len} bytes (at most 512)")]
    PadTooLong { len: usize },
    #[error("encryption handshake: no crypto method in common (the peer provides {provided:#x})")]
    NoCommonMethod { provided: u32 },
    #[error("encryption handshake: the peer selected {select:#x}, which we did not provide")]
    BadSelect { select: u32 },
    #[error("encryption handshake: an initial payload over 65535 bytes")]
    InitialPayloadTooLong,
}

impl MseError {
    /// The peer hung up before sending a whole public key: most likely it does not speak MSE
    /// (a plaintext-only client reads our key as a bad handshake and closes).
    pub fn peer_does_not_speak_mse(&self) -> bool {
        use std::io::ErrorKind::*;
        match self {
            MseError::Closed { stage } => *stage == Stage::PublicKey,
            MseError::Io { stage, source } => {
                *stage == Stage::PublicKey
                    && matches!(
                        source.kind(),
                        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
                    )
            }
            _ => false,
        }
    }
}

/// Runs the initiator's side over `stream` for the torrent `skey`, offering `provide`, with
/// `ia` as the initial payload (e.g. our BitTorrent handshake; may be empty). Fails unless
/// done `within`.
pub async fn initiate<S>(
    stream: S,
    skey: &[u8; 20],
    provide: Methods,
    ia: &[u8],
    within: Duration,
) -> Result<MseStream<S>, MseError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = Instant::now() + within;
    handshake::initiate(
        stream,
        skey,
        provide,
        ia,
        handshake::Pads::random(),
        deadline,
    )
    .await
}

/// Runs the receiver's side over `stream`, whose first bytes (`already`) were read to tell an
/// encrypted connection from a plaintext one. `lookup` maps `HASH('req2', SKEY)` to the
/// torrent it names (see [`req2`]); `None` refuses. Fails unless done `within`. The initial payload, if any, is the first thing read
/// from the returned stream.
pub async fn accept<S, F>(
    stream: S,
    already: &[u8],
    lookup: F,
    within: Duration,
) -> Result<Accepted<S>, MseError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&[u8; 20]) -> Option<Serving>,
{
    let deadline = Instant::now() + within;
    handshake::accept(stream, already, lookup, handshake::Pads::random(), deadline).await
}
