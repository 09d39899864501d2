//! http:// announces without reqwest: one GET over one TCP connection, by hyper's HTTP/1
//! client (which reqwest itself runs on).
//!
//! Why: a reqwest client cannot be built without a TLS context, and building one loads the
//! system's root certificates, about 60 ms of CPU that the first announce of every mount
//! waited for. Most trackers are http:// (or UDP) and need none of it. An https:// tracker,
//! an http:// one that redirects, and any announce while the environment names an HTTP
//! proxy go through reqwest (`clients`), which follows redirects and uses the proxy.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use url::Url;

use super::types::TrackerError;

/// Tracker replies are a few kilobytes; anything this large is not a tracker reply.
pub(super) const MAX_REPLY: usize = 1 << 20;
/// As long as reqwest's connect timeout for trackers.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// As long as reqwest's whole-request timeout for trackers.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Whether the environment names a proxy for http:// (reqwest's clients honour it, as curl
/// does; the plain GET does not, so it steps aside).
pub(super) fn proxied() -> bool {
    static PROXIED: OnceLock<bool> = OnceLock::new();
    *PROXIED.get_or_init(|| {
        ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
            .iter()
            .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
    })
}

/// What a plain GET came back with.
#[derive(Debug)]
pub(super) enum Got {
    /// The status and the whole body.
    Reply(StatusCode, Vec<u8>),
    /// A redirect: reqwest follows it (it may lead to https).
    Redirect,
}

/// GETs `url` (http://, the announce parameters in its query) from the first of `addrs` that
/// takes the connection. The `Host` header names the URL's host, as reqwest's would.
pub(super) async fn get(url: &Url, addrs: &[SocketAddr]) -> Result<Got, TrackerError> {
    match tokio::time::timeout(TIMEOUT, get_inner(url, addrs)).await {
        Ok(r) => r,
        Err(_) => Err(TrackerError::Timeout),
    }
}

async fn get_inner(url: &Url, addrs: &[SocketAddr]) -> Result<Got, TrackerError> {
    let stream = connect(addrs).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| request_error("HTTP handshake", e))?;
    // Drives the connection; ends when the reply is read or the sender is dropped.
    let driver = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::trace!("tracker connection: {e}");
        }
    });
    let result = exchange(&mut sender, url).await;
    driver.abort();
    result
}

async fn exchange(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    url: &Url,
) -> Result<Got, TrackerError> {
    let host = url.host_str().unwrap_or_default();
    let host = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let req = hyper::Request::get(target)
        .header(hyper::header::HOST, host)
        .header(
            hyper::header::USER_AGENT,
            concat!("btfs/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| TrackerError::InvalidUrl(format!("{url}: {e}")))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| request_error("request", e))?;
    let status = resp.status();
    if status.is_redirection() {
        return Ok(Got::Redirect);
    }
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| request_error("reply", e))?;
        if let Ok(chunk) = frame.into_data() {
            if bytes.len() + chunk.len() > MAX_REPLY {
                return Err(TrackerError::Malformed(format!(
                    "reply larger than {MAX_REPLY} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
    }
    Ok(Got::Reply(status, bytes))
}

/// A connection to the first address that takes one, each tried for [`CONNECT_TIMEOUT`].
async fn connect(addrs: &[SocketAddr]) -> Result<TcpStream, TrackerError> {
    let mut last = None;
    for addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = Some(format!("{addr}: {e}")),
            Err(_) => last = Some(format!("{addr}: connect timed out")),
        }
    }
    Err(TrackerError::Request(format!(
        "cannot connect: {}",
        last.unwrap_or_else(|| "no address".to_string())
    )))
}

fn request_error(what: &str, e: hyper::Error) -> TrackerError {
    TrackerError::Request(format!("{what}: {}", with_causes(&e)))
}

/// An error's message followed by its causes': the top one alone is often generic ("error
/// sending request"), and the cause ("connection refused") is what a user needs.
pub(super) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
