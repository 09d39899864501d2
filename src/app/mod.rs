//! The commands, above the engine: `btfs mount` ([`mount`]; several torrents in one mount:
//! [`library`], whose set changes while mounted: [`catalog`], with the watch directory of
//! [`watch`] and the torrents kept between mounts of [`saved`]; the FUSE backends over
//! sessions: [`backend`]), `btfs status`, `btfs add` and `btfs remove` ([`status`]),
//! where a torrent comes from ([`source`]: a file, a URL, a magnet link) and the problems said
//! once to the user ([`alerts`]).

pub mod alerts;
pub mod backend;
pub mod catalog;
pub mod library;
pub mod limits;
pub mod mount;
pub mod saved;
pub mod source;
pub mod status;
pub mod watch;
