//! The process's one TLS context, which every HTTP client shares (trackers, web seeds, a
//! torrent's URL).
//!
//! Why one: building a TLS context loads and parses the system's root certificates, about
//! 60 ms of CPU. reqwest builds one per client, and a mount built four (three for trackers,
//! one for web seeds) before it could mount: 150-200 ms of a 256 MiB torrent's mount time.
//! Now it is built at the first https need (http:// trackers need none: `tracker::plain`),
//! on the blocking pool, never on the way to the mount.

use std::sync::OnceLock;

/// A reqwest builder on the shared TLS context; the context is built at the first call.
pub fn client_builder() -> Result<reqwest::ClientBuilder, String> {
    Ok(reqwest::Client::builder().tls_backend_preconfigured(connector()?))
}

/// The shared context: the system's roots, reqwest's defaults (SNI, certificates and host
/// names verified).
fn connector() -> Result<native_tls::TlsConnector, String> {
    static CONNECTOR: OnceLock<Result<native_tls::TlsConnector, String>> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            native_tls::TlsConnector::new().map_err(|e| format!("cannot set up TLS: {e}"))
        })
        .clone()
}
