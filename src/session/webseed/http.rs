//! One ranged GET to a web seed and its body, checked: the status, the range the server says
//! it sends, the file's size, and a body of exactly the length asked (more or less is an
//! error). The body comes out chunk by chunk as the socket gives it, never whole.

use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_ENCODING, CONTENT_RANGE, RANGE, RETRY_AFTER};
use thiserror::Error;
use url::Url;

use super::layout::Segment;

/// Redirects followed for one request (a mirror network may bounce once or twice).
const MAX_REDIRECTS: usize = 5;

/// Why a request to a web seed failed; `health` decides what follows from each.
#[derive(Debug, Error)]
pub(crate) enum FetchError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("timed out")]
    Timeout,
    #[error("HTTP {status}")]
    Status {
        status: StatusCode,
        /// `Retry-After` in seconds, when the server named one.
        retry_after: Option<Duration>,
    },
    #[error("too many redirects")]
    Redirects,
    #[error("the server ignores byte ranges (HTTP 200 for part of a file)")]
    RangeIgnored,
    #[error("the server sent range {got:?} for {asked}")]
    WrongRange { asked: String, got: String },
    #[error("the file there has {got} bytes, the torrent's has {want}")]
    WrongSize { got: u64, want: u64 },
    #[error("a body longer than the {asked} bytes asked")]
    TooLong { asked: u64 },
    #[error("the body ended after {got} of {asked} bytes")]
    Short { got: u64, asked: u64 },
    #[error("an encoded body ({0}), not the file's bytes")]
    Encoded(String),
    #[error("{0}")]
    Request(String),
}

/// The client a session's web seeds share: keep-alive connections are pooled per host. Built
/// at the first request, on the blocking pool: its TLS context costs tens of ms of CPU, which
/// the mount should not wait for.
pub(crate) struct Client {
    cell: tokio::sync::OnceCell<reqwest::Client>,
    connect: Duration,
    read: Duration,
}

impl Client {
    pub(crate) fn new(connect: Duration, read: Duration) -> Client {
        Client {
            cell: tokio::sync::OnceCell::new(),
            connect,
            read,
        }
    }

    async fn client(&self) -> Result<&reqwest::Client, FetchError> {
        let (connect, read) = (self.connect, self.read);
        let build = move || build(connect, read);
        crate::net::tls::built_once(&self.cell, build, FetchError::Request).await
    }
}

fn build(connect: Duration, read: Duration) -> Result<reqwest::Client, FetchError> {
    crate::net::tls::client_builder()
        .map_err(FetchError::Request)?
        .user_agent(concat!("btfs/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(connect)
        // Per read, not per request: a large range on a slow server may take long, but a
        // server that sends nothing for this long is stalled.
        .read_timeout(read)
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| FetchError::Request(format!("cannot set up the HTTP client: {e}")))
}

/// The body of a checked ranged response: exactly the segment's bytes, in chunks.
pub(crate) struct RangeBody {
    resp: reqwest::Response,
    asked: u64,
    got: u64,
}

/// Asks `url` for `seg` of a file of `file_len` bytes; `Ok` once the headers say the server
/// sends exactly that.
pub(crate) async fn get(
    client: &Client,
    url: Url,
    seg: &Segment,
    file_len: u64,
) -> Result<RangeBody, FetchError> {
    let resp = client
        .client()
        .await?
        .get(url)
        .header(RANGE, seg.range_header())
        .send()
        .await
        .map_err(request_error)?;
    let status = resp.status();
    if let Some(enc) = resp.headers().get(CONTENT_ENCODING)
        && !enc.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return Err(FetchError::Encoded(
            String::from_utf8_lossy(enc.as_bytes()).into_owned(),
        ));
    }
    match status {
        StatusCode::PARTIAL_CONTENT => {
            let got = resp
                .headers()
                .get(CONTENT_RANGE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            check_content_range(&got, seg, file_len)?;
        }
        // The whole file is what we asked for: a server may answer so without ranges.
        StatusCode::OK if seg.offset == 0 && seg.len == file_len => {}
        StatusCode::OK => return Err(FetchError::RangeIgnored),
        _ => {
            let retry_after = (resp.headers().get(RETRY_AFTER))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(FetchError::Status {
                status,
                retry_after,
            });
        }
    }
    match resp.content_length() {
        Some(n) if n > seg.len => return Err(FetchError::TooLong { asked: seg.len }),
        Some(n) if n < seg.len => {
            return Err(FetchError::Short {
                got: n,
                asked: seg.len,
            });
        }
        _ => {}
    }
    Ok(RangeBody {
        resp,
        asked: seg.len,
        got: 0,
    })
}

impl RangeBody {
    /// The next bytes; `None` once all asked bytes came and the body ended there.
    pub(crate) async fn chunk(&mut self) -> Result<Option<Bytes>, FetchError> {
        loop {
            let next = self.resp.chunk().await.map_err(|e| {
                if e.is_timeout() {
                    FetchError::Timeout
                } else {
                    self.short()
                }
            })?;
            let Some(c) = next else {
                return if self.got == self.asked {
                    Ok(None)
                } else {
                    Err(self.short())
                };
            };
            if c.is_empty() {
                continue;
            }
            self.got += c.len() as u64;
            if self.got > self.asked {
                return Err(FetchError::TooLong { asked: self.asked });
            }
            return Ok(Some(c));
        }
    }

    fn short(&self) -> FetchError {
        FetchError::Short {
            got: self.got,
            asked: self.asked,
        }
    }
}

/// `Content-Range: bytes FIRST-LAST/TOTAL` must name the segment exactly; a TOTAL other than
/// the torrent's file size means another file lives at that URL.
fn check_content_range(value: &str, seg: &Segment, file_len: u64) -> Result<(), FetchError> {
    let wrong = || FetchError::WrongRange {
        asked: seg.range_header(),
        got: value.to_string(),
    };
    let rest = value
        .trim()
        .strip_prefix("bytes")
        .map(str::trim_start)
        .ok_or_else(wrong)?;
    let (span, total) = rest.split_once('/').ok_or_else(wrong)?;
    let (first, last) = span.split_once('-').ok_or_else(wrong)?;
    let num = |s: &str| s.trim().parse::<u64>().map_err(|_| wrong());
    if let Ok(total) = total.trim().parse::<u64>()
        && total != file_len
    {
        return Err(FetchError::WrongSize {
            got: total,
            want: file_len,
        });
    }
    if num(first)? != seg.offset || num(last)? != seg.offset + seg.len - 1 {
        return Err(wrong());
    }
    Ok(())
}

fn request_error(e: reqwest::Error) -> FetchError {
    if e.is_timeout() {
        FetchError::Timeout
    } else if e.is_redirect() {
        FetchError::Redirects
    } else if e.is_connect() {
        FetchError::Connect(error_chain(&e))
    } else {
        FetchError::Request(error_chain(&e))
    }
}

/// reqwest's own message is generic ("error sending request"); the cause is in the chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(offset: u64, len: u64) -> Segment {
        Segment {
            file: 0,
            offset,
            len,
        }
    }

    #[test]
    fn content_range_must_name_the_segment_and_the_files_size() {
        let s = seg(100, 50);
        assert!(check_content_range("bytes 100-149/1000", &s, 1000).is_ok());
        assert!(check_content_range("bytes 100-149/*", &s, 1000).is_ok());
        assert!(check_content_range(" bytes  100-149/1000 ", &s, 1000).is_ok());
        for bad in [
            "bytes 100-150/1000",
            "bytes 0-49/1000",
            "bytes 100-149",
            "bytes */1000",
            "100-149/1000",
            "",
            "bytes x-y/1000",
        ] {
            assert!(
                matches!(
                    check_content_range(bad, &s, 1000),
                    Err(FetchError::WrongRange { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            check_content_range("bytes 100-149/999", &s, 1000),
            Err(FetchError::WrongSize {
                got: 999,
                want: 1000
            })
        ));
    }
}
