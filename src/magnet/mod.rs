//! Magnet links, from the text of the link to a verified info dictionary: [`link`] parses the
//! link, [`metadata`] is the BEP 9 state machine that assembles (and serves) the info dictionary,
//! and [`fetch`] is the short phase before a session starts that asks peers for it.

pub mod fetch;
pub mod link;
pub mod metadata;
#[cfg(test)]
mod tests;

pub use fetch::{FetchStatus, MagnetFetchError, fetch_info};
pub use link::Magnet;
