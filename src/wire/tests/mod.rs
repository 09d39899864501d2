//! Tests by topic of the tokio side ([`conn`], [`exchange`]) and of the extension payloads
//! ([`extension`]), and property tests of the codecs ([`props`]). The byte cases of the handshake
//! and message codecs sit in `handshake.rs` and `message.rs`.

mod conn;
mod exchange;
mod extension;
mod props;
