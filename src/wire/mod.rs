//! The peer wire protocol (BEP 3 messages, BEP 6 Fast, BEP 10 extension framing).
//!
//! Two layers, kept apart so the bytes can be tested without sockets:
//! - Pure encode/decode, no I/O: [`handshake`] (the 68-byte greeting and its reserved bits),
//!   [`message`] (one length-prefixed message) and [`extension`] (the payloads of BEP 10
//!   messages: extended handshake, `ut_metadata`, `ut_pex`, and our ids in them).
//! - [`mse`]: Message Stream Encryption, the optional obfuscation layer under all of this
//!   (Diffie-Hellman, RC4, the choice of crypto method), over any byte stream.
//! - [`conn`]: the tokio side: [`exchange_handshakes`] for either side of a connection, a
//!   cancel-safe [`MessageReader`] (the session polls it inside `tokio::select!`) and a batching
//!   [`MessageWriter`].
//!
//! Tests by topic and property tests are in `tests/`; the byte cases of the handshake and message
//! codecs sit in their own files.
//!
//! The protocol knows nothing of the engine: piece indices are raw `u32` here, exactly as a peer
//! sent them, and the session checks them against the torrent's `Geometry`. Likewise the
//! `Bitfield` payload and the bencoded BEP 10 payloads are handed up as bytes for the layers that
//! know their meaning.

pub mod conn;
pub mod extension;
pub mod handshake;
pub mod message;
pub mod mse;
#[cfg(test)]
mod tests;

pub use conn::{
    HandshakeError, MessageReader, MessageWriter, Role, WantHint, exchange_handshakes,
    read_handshake, write_handshake,
};
pub use handshake::new_peer_id;
pub use message::{BlockRef, Handshake, Message, PROTOCOL};

/// What went wrong while reading or writing peer messages. Any of these ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("peer connection i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection between two frames (or before sending a handshake).
    #[error("peer closed the connection")]
    Closed,
    /// The peer closed the connection in the middle of a frame or handshake.
    #[error("peer closed the connection inside a message")]
    Truncated,
    /// The length prefix announced a frame bigger than the caller allows.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge { len: u32, max: u32 },
    /// A message whose frame length (id byte included) does not fit its id.
    #[error("message id {id} with a frame of {len} bytes")]
    BadLength { id: u8, len: u32 },
    /// The handshake does not start with `\x13BitTorrent protocol`.
    #[error("handshake is not the BitTorrent protocol")]
    BadHandshake,
}
