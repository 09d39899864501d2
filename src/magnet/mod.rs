//! Magnet links, from the text of the link to a verified info dictionary:
//! - [`link`]: parses the `magnet:` link (info-hash, trackers, peers, web seeds).
//! - [`hints`]: the link's trackers and web seeds added to the torrent's own.
//! - [`metadata`]: the BEP 9 state machine, no I/O, that assembles the info dictionary from
//!   peers' pieces (and cuts ours into pieces for peers that ask).
//! - [`fetch`]: the short phase before a session starts that finds peers and asks them for the
//!   info dictionary, over the wire protocol's handshake and extension messages.
//!
//! Unit tests of the state machine are in `tests/`.

pub mod fetch;
pub mod hints;
pub mod link;
pub mod metadata;
#[cfg(test)]
mod tests;

pub use fetch::{FetchStatus, MagnetFetchError, fetch_info};
pub use link::Magnet;
