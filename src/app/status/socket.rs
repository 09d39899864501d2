//! The status socket: each running mount listens on a unix socket in the user's runtime
//! directory, named after its mountpoint, and answers a connection that asks nothing with its
//! [`Report`] as one line of JSON; a library mount also takes `add` and `remove` requests
//! ([`super::request`]). `btfs status` finds a mount's socket from the mountpoint (or lists
//! them all), so it needs no other registry of mounts.
//!
//! A socket whose process was killed stays behind as a file nobody listens on: connecting is
//! refused at once, and the asker removes it. A process that accepts but never answers is cut
//! off by [`ANSWER_TIMEOUT`]; `btfs status` never hangs.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha1::{Digest, Sha1};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream as AsyncStream};
use tokio::sync::{oneshot, watch};

use super::request::{self, Control, MAX_REQUEST, Reply, Request};
use super::{Report, Reporter};

/// How long `btfs status` waits for a mount's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may take to send its request (or to close its side, as `btfs
/// status` does at once) before it is taken to ask for the report: a client that sends
/// nothing and keeps its side open (btfs before requests existed) waits this long.
const REQUEST_WAIT: Duration = Duration::from_millis(500);

#[derive(Debug, Error)]
pub enum StatusError {
    #[error("cannot resolve {path}: {source}")]
    Resolve { path: PathBuf, source: io::Error },
    #[error("{path} is not a running btfs mount (no status socket {socket})")]
    NotAMount { path: PathBuf, socket: PathBuf },
    #[error(
        "the btfs process of {path} is gone (killed?): removed its stale status socket {socket}"
    )]
    Stale { path: PathBuf, socket: PathBuf },
    #[error("the btfs mount {path} did not answer on {socket}: {source}")]
    NoAnswer {
        path: PathBuf,
        socket: PathBuf,
        source: io::Error,
    },
    #[error("the btfs mount {path} answered something unreadable on {socket}: {source}")]
    Malformed {
        path: PathBuf,
        socket: PathBuf,
        source: serde_json::Error,
    },
    #[error("no btfs mount is running (no status socket in {0})")]
    NoMounts(PathBuf),
    #[error("runtime directory {path}: {reason}")]
    RuntimeDir { path: PathBuf, reason: String },
    #[error("cannot listen on the status socket {socket}: {source}")]
    Bind { socket: PathBuf, source: io::Error },
}

/// The user's directory for status sockets: `$XDG_RUNTIME_DIR/btfs`, else
/// `/run/user/$UID/btfs` when `/run/user/$UID` exists, else `/tmp/btfs-$UID`.
pub fn runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir).join("btfs");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let run = PathBuf::from(format!("/run/user/{uid}"));
    if run.is_dir() {
        return run.join("btfs");
    }
    PathBuf::from(format!("/tmp/btfs-{uid}"))
}

/// Creates [`runtime_dir`] (mode 0700) if needed and checks that it is ours and private:
/// in /tmp another user could have made it first, to read or replace our sockets.
fn ensure_runtime_dir() -> Result<PathBuf, StatusError> {
    let dir = runtime_dir();
    let err = |reason: String| StatusError::RuntimeDir {
        path: dir.clone(),
        reason,
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // The base ($XDG_RUNTIME_DIR) is missing: make it too, private.
            std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(&dir)
                .map_err(|e| err(e.to_string()))?;
        }
        Err(e) => return Err(err(e.to_string())),
    }
    let meta = std::fs::symlink_metadata(&dir).map_err(|e| err(e.to_string()))?;
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    if !meta.is_dir() || meta.uid() != uid {
        return Err(err("not a directory of ours".into()));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| err(format!("cannot make it private: {e}")))?;
    }
    Ok(dir)
}

/// The mountpoint as both sides name it: its parent resolved, its own name kept. Resolving
/// the mountpoint itself would ask the filesystem mounted there, which fails (or waits) when
/// its process is dead or stuck.
pub fn canonical_mountpoint(path: &Path) -> io::Result<PathBuf> {
    match path.file_name() {
        Some(name) if name != ".." => {
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            Ok(parent.canonicalize()?.join(name))
        }
        _ => path.canonicalize(),
    }
}

/// The socket of the mount at `mountpoint` (already canonical): a hash of the path, so any
/// path fits in a socket address and no character of it needs escaping.
fn socket_path(dir: &Path, mountpoint: &Path) -> PathBuf {
    let digest = Sha1::digest(mountpoint.as_os_str().as_encoded_bytes());
    let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{hex}.sock"))
}

/// Where the status socket of the mount at `mountpoint` is (whether or not it exists).
pub fn socket_for(mountpoint: &Path) -> io::Result<PathBuf> {
    Ok(socket_path(
        &runtime_dir(),
        &canonical_mountpoint(mountpoint)?,
    ))
}

/// A bound status socket; the file is removed when this is dropped (unmount, or a mount that
/// failed), so only a killed process leaves one behind.
pub struct StatusSocket {
    path: PathBuf,
    listener: Option<UnixListener>,
}

impl StatusSocket {
    /// Binds the socket of `mountpoint` (canonical). A leftover socket of a killed process is
    /// replaced; a live one (another mount claims this mountpoint) is an error.
    pub fn bind(mountpoint: &Path) -> Result<StatusSocket, StatusError> {
        let dir = ensure_runtime_dir()?;
        let path = socket_path(&dir, mountpoint);
        let bind_err = |source| StatusError::Bind {
            socket: path.clone(),
            source,
        };
        if path.exists() {
            match UnixStream::connect(&path) {
                Ok(_) => {
                    return Err(bind_err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "another btfs process answers for this mountpoint",
                    )));
                }
                Err(_) => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let listener = UnixListener::bind(&path).map_err(bind_err)?;
        Ok(StatusSocket {
            path,
            listener: Some(listener),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers every connection until `shutdown` turns true: with a report, or for `add` and
    /// `remove` with what `control` (a library's; `None` refuses them) replies. The socket file
    /// stays until this `StatusSocket` is dropped.
    pub fn serve<R: Reporter>(
        &mut self,
        live: Arc<R>,
        control: Option<Control>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            tokio::spawn(answer(stream, live.clone(), control.clone()));
                        }
                        Err(e) => {
                            tracing::debug!("status socket: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                    _ = shutdown.changed() => return,
                }
            }
        });
    }
}

/// Reads what the connection asks and answers it.
async fn answer<R: Reporter>(mut stream: AsyncStream, live: Arc<R>, control: Option<Control>) {
    let mut line = Vec::new();
    let (rd, mut wr) = stream.split();
    let mut rd = BufReader::new(rd.take(MAX_REQUEST as u64 + 1));
    let read = rd.read_until(b'\n', &mut line);
    let request = match tokio::time::timeout(REQUEST_WAIT, read).await {
        Ok(Err(_)) => return,
        Ok(Ok(_)) | Err(_) => request::parse(&line),
    };
    let mut out = match request {
        Ok(Request::Status) => serde_json::to_vec(&live.report()),
        Ok(r) => serde_json::to_vec(&ask_control(r, control).await),
        Err(e) => serde_json::to_vec(&Reply::Error(e.to_string())),
    }
    .expect("an answer always serializes");
    out.push(b'\n');
    let write = async {
        wr.write_all(&out).await?;
        wr.shutdown().await
    };
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, write).await;
}

async fn ask_control(request: Request, control: Option<Control>) -> Reply {
    let Some(control) = control else {
        return Reply::Error(
            "this mount serves one torrent: mount with --library (or several torrents) to add \
             and remove torrents"
                .into(),
        );
    };
    let gone = || Reply::Error("the mount is shutting down".into());
    let (tx, rx) = oneshot::channel();
    if control.send((request, tx)).await.is_err() {
        return gone();
    }
    rx.await.unwrap_or_else(|_| gone())
}

impl Drop for StatusSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Asks the mount at `mountpoint` for its report.
pub fn query(mountpoint: &Path) -> Result<Report, StatusError> {
    let socket = locate(mountpoint)?;
    ask(&socket, mountpoint)
}

/// The status socket of the mount at `mountpoint`, which must exist.
fn locate(mountpoint: &Path) -> Result<PathBuf, StatusError> {
    let canonical = canonical_mountpoint(mountpoint).map_err(|source| StatusError::Resolve {
        path: mountpoint.to_path_buf(),
        source,
    })?;
    let socket = socket_path(&runtime_dir(), &canonical);
    if !socket.exists() {
        return Err(StatusError::NotAMount {
            path: mountpoint.to_path_buf(),
            socket,
        });
    }
    Ok(socket)
}

/// How long an `add` may take to be answered: resolving a magnet waits up to
/// `--metadata-timeout` (2 minutes by default) for its metadata.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Sends `request` (`add`, `remove`) to the mount at `mountpoint` and waits for its reply.
pub fn send(mountpoint: &Path, request: &Request) -> Result<Reply, StatusError> {
    let socket = locate(mountpoint)?;
    let buf = exchange(
        &socket,
        mountpoint,
        &request::encode(request),
        CHANGE_TIMEOUT,
    )?;
    serde_json::from_slice(&buf).map_err(|source| StatusError::Malformed {
        path: mountpoint.to_path_buf(),
        socket,
        source,
    })
}

/// Every running mount of this user, each with its report or why it has none (stale sockets
/// are removed). `NoMounts` when there is no socket at all.
pub fn query_all() -> Result<Vec<Result<Report, StatusError>>, StatusError> {
    let dir = runtime_dir();
    let mut sockets: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "sock"))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(StatusError::RuntimeDir {
                path: dir,
                reason: e.to_string(),
            });
        }
    };
    if sockets.is_empty() {
        return Err(StatusError::NoMounts(dir));
    }
    sockets.sort();
    Ok(sockets.iter().map(|s| ask(s, s)).collect())
}

/// Connects, reads one JSON report. `name` is what errors call the mount.
fn ask(socket: &Path, name: &Path) -> Result<Report, StatusError> {
    let buf = exchange(socket, name, b"", ANSWER_TIMEOUT)?;
    serde_json::from_slice(&buf).map_err(|source| StatusError::Malformed {
        path: name.to_path_buf(),
        socket: socket.to_path_buf(),
        source,
    })
}

/// Connects, sends `request` and closes our side, reads the answer (waiting at most `limit`
/// for each read). `name` is what errors call the mount.
fn exchange(
    socket: &Path,
    name: &Path,
    request: &[u8],
    limit: Duration,
) -> Result<Vec<u8>, StatusError> {
    let no_answer = |source| StatusError::NoAnswer {
        path: name.to_path_buf(),
        socket: socket.to_path_buf(),
        source,
    };
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            let _ = std::fs::remove_file(socket);
            return Err(StatusError::Stale {
                path: name.to_path_buf(),
                socket: socket.to_path_buf(),
            });
        }
        Err(e) => return Err(no_answer(e)),
    };
    stream.write_all(request).map_err(no_answer)?;
    // Closing our side says the request is whole (an empty one asks for the report).
    stream.shutdown(Shutdown::Write).map_err(no_answer)?;
    stream.set_read_timeout(Some(limit)).map_err(no_answer)?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).map_err(no_answer)?;
    if buf.is_empty() {
        // The process is going away (or is not btfs): it closed without a word.
        return Err(no_answer(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed the connection without answering",
        )));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mountpoint_is_named_the_same_from_any_relative_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).expect("mkdir");
        let a = canonical_mountpoint(&mnt).expect("resolve");
        let b = canonical_mountpoint(&sub.join("../mnt")).expect("resolve");
        assert_eq!(a, b);
        assert_eq!(socket_path(dir.path(), &a), socket_path(dir.path(), &b));
        assert_ne!(
            socket_path(dir.path(), &a),
            socket_path(dir.path(), &canonical_mountpoint(&sub).expect("resolve"))
        );
    }

    #[test]
    fn a_socket_nobody_listens_on_is_stale_and_removed_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.sock");
        // A bound and closed listener leaves exactly what a killed process leaves.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        assert!(path.exists());
        let err = ask(&path, Path::new("/mnt/x")).expect_err("nobody listens");
        assert!(matches!(err, StatusError::Stale { .. }), "{err}");
        assert!(!path.exists(), "the stale socket is removed");
    }

    /// What the mount answers on a connection where the client sends `request` (closing its
    /// side after, unless `None`: a client that sends nothing and never closes).
    async fn answered(control: Option<Control>, request: Option<&Request>) -> Vec<u8> {
        use crate::app::status::LibraryLive;
        let live = Arc::new(LibraryLive::new(vec![], vec![], "/mnt/x".into()));
        let (server, mut client) = AsyncStream::pair().expect("a socket pair");
        tokio::spawn(answer(server, live, control));
        if let Some(r) = request {
            client.write_all(&request::encode(r)).await.expect("send");
            client.shutdown().await.expect("close our side");
        }
        let mut buf = Vec::new();
        client.read_to_end(&mut buf).await.expect("an answer");
        buf
    }

    #[tokio::test]
    async fn a_client_that_sends_nothing_gets_the_report() {
        for request in [None, Some(&Request::Status)] {
            let buf = answered(None, request).await;
            let report: Report = serde_json::from_slice(&buf).expect("a report");
            assert_eq!(report.mountpoint, Path::new("/mnt/x"));
        }
    }

    #[tokio::test]
    async fn requests_reach_the_control_and_its_reply_comes_back() {
        let remove = Request::Remove { name: "a".into() };
        let refused = answered(None, Some(&remove)).await;
        let refused: Reply = serde_json::from_slice(&refused).expect("a reply");
        assert!(
            matches!(&refused, Reply::Error(e) if e.contains("--library")),
            "{refused:?}"
        );

        let (tx, mut rx) = tokio::sync::mpsc::channel::<request::Command>(1);
        let asked = tokio::spawn(async move {
            let (request, reply) = rx.recv().await.expect("a request");
            let _ = reply.send(Reply::Ok("gone".into()));
            request
        });
        let reply = answered(Some(tx), Some(&remove)).await;
        let reply: Reply = serde_json::from_slice(&reply).expect("a reply");
        assert_eq!(reply, Reply::Ok("gone".into()));
        assert_eq!(asked.await.expect("the control ran"), remove);

        // Not a request: said, on a line of its own (the client's side still open).
        let (server, mut client) = AsyncStream::pair().expect("a socket pair");
        let live = Arc::new(crate::app::status::LibraryLive::new(
            vec![],
            vec![],
            "/m".into(),
        ));
        tokio::spawn(answer(server, live, None));
        client.write_all(b"hello\n").await.expect("send");
        let mut buf = Vec::new();
        client.read_to_end(&mut buf).await.expect("an answer");
        let bad: Reply = serde_json::from_slice(&buf).expect("a reply");
        assert!(
            matches!(&bad, Reply::Error(e) if e.contains("not a request")),
            "{bad:?}"
        );
    }

    #[test]
    fn a_listener_that_never_answers_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let started = std::time::Instant::now();
        let err = ask(&path, Path::new("/mnt/x")).expect_err("no answer");
        assert!(matches!(err, StatusError::NoAnswer { .. }), "{err}");
        assert!(started.elapsed() >= ANSWER_TIMEOUT);
    }
}
