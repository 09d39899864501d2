//! Tests of the tokio side, and property tests of the codecs; the codecs' unit cases sit beside
//! each codec.

mod conn;
mod exchange;
mod props;
