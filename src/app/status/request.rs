//! What a client asks a mount over its status socket: one line of JSON, or nothing at all for
//! the report (what every `btfs status` sends, older ones included, so the protocol stays
//! backward compatible). `btfs add` and `btfs remove` ask a library mount to change its set of
//! torrents; the mount answers one line: `{"ok": "..."}` or `{"error": "..."}`.

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// Longest request accepted: a magnet link with many trackers fits many times over.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// The mount's report (also what an empty request asks).
    Status,
    /// A `.torrent` file (an absolute path, read by the mount), an http(s) URL or a magnet
    /// link, mounted as a new folder.
    Add { source: String },
    /// The torrent in folder `name` unmounted.
    Remove { name: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    Ok(String),
    Error(String),
}

/// A request to the mount's side, with where its reply goes.
pub type Command = (Request, oneshot::Sender<Reply>);
/// Where the status socket hands `add` and `remove`; `None` for a mount of one torrent.
pub type Control = mpsc::Sender<Command>;

/// Why a request cannot be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the request is over {MAX_REQUEST} bytes")]
    TooLong,
    #[error("not a request: {0}")]
    Malformed(String),
}

/// A request as the client sent it: nothing (or blank) asks for the report; otherwise one
/// JSON object on its first line.
pub fn parse(bytes: &[u8]) -> Result<Request, RequestError> {
    if bytes.len() > MAX_REQUEST {
        return Err(RequestError::TooLong);
    }
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(Request::Status);
    }
    serde_json::from_slice(line).map_err(|e| RequestError::Malformed(e.to_string()))
}

/// The line a request is sent as.
pub fn encode(request: &Request) -> Vec<u8> {
    let mut line = serde_json::to_vec(request).expect("a request always serializes");
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_asks_for_the_report() {
        assert_eq!(parse(b""), Ok(Request::Status));
        assert_eq!(parse(b" \n"), Ok(Request::Status));
        assert_eq!(parse(b"{\"op\":\"status\"}\n"), Ok(Request::Status));
    }

    #[test]
    fn requests_read_back_as_sent() {
        for r in [
            Request::Add {
                source: "magnet:?xt=urn:btih:00\n\"x\"".into(),
            },
            Request::Remove {
                name: "a (2)".into(),
            },
        ] {
            assert_eq!(parse(&encode(&r)), Ok(r.clone()));
        }
        let add = br#"{"op":"add","source":"/tmp/a.torrent"}"#;
        assert_eq!(
            parse(add),
            Ok(Request::Add {
                source: "/tmp/a.torrent".into()
            })
        );
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        assert!(matches!(parse(b"hello"), Err(RequestError::Malformed(_))));
        let unknown = parse(br#"{"op":"format","disk":"/"}"#);
        assert!(matches!(unknown, Err(RequestError::Malformed(_))));
        let missing = parse(br#"{"op":"add"}"#);
        assert!(matches!(missing, Err(RequestError::Malformed(_))));
        let long = vec![b' '; MAX_REQUEST + 1];
        assert_eq!(parse(&long), Err(RequestError::TooLong));
    }

    #[test]
    fn replies_are_one_json_object() {
        let ok = serde_json::to_string(&Reply::Ok("added x".into())).expect("serializes");
        assert_eq!(ok, r#"{"ok":"added x"}"#);
        let err: Reply = serde_json::from_str(r#"{"error":"no"}"#).expect("parses");
        assert_eq!(err, Reply::Error("no".into()));
    }
}
