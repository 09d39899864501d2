//! Tests of the tokio side and of the extension payloads by topic, and property tests of the
//! codecs; the unit cases of the handshake and message codecs sit beside them.

mod conn;
mod exchange;
mod extension;
mod props;
