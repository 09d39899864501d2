//! A library's sessions in-process, with HTTP trackers on loopback: what they log names
//! their folder; a torrent whose add is under way when the mount ends still tells its
//! trackers `stopped`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::super::*;
use crate::app::source::ResolveOptions;
use crate::app::status::LibraryLive;

/// Bounds each wait on something that must happen (a hang detector, not a measure).
const HANG: Duration = Duration::from_secs(60);

/// An HTTP tracker on loopback that answers every announce with no peers and keeps each
/// request's first line.
async fn tracker() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/announce", listener.local_addr().expect("addr"));
    let heard: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = heard.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&buf);
                crate::sync::lock(&log).push(text.lines().next().unwrap_or("").to_string());
                let body = b"d8:intervali1800e5:peers0:e";
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body).await;
            });
        }
    });
    (url, heard)
}

/// A one-piece torrent named `name` announced to `url` (`length` makes its info-hash).
fn torrent(url: &str, name: &str, length: u32) -> Torrent {
    let b = |s: &str| format!("{}:{s}", s.len());
    let text = format!(
        "d8:announce{}4:infod6:lengthi{length}e4:name{}12:piece lengthi16384e6:pieces20:{}ee",
        b(url),
        b(name),
        "x".repeat(20)
    );
    Torrent::from_bytes(text.as_bytes()).expect("a torrent")
}

async fn library() -> Arc<Library> {
    let host = Host::bind("127.0.0.1:0".parse().unwrap(), Duration::from_secs(5))
        .await
        .expect("a host");
    let resolve = ResolveOptions {
        peers: Vec::new(),
        listen_port: host.port(),
        metadata_timeout: Duration::from_secs(1),
        cache_dir: None,
        dht: None,
        utp: None,
        progress: false,
    };
    let shared = Shared {
        host,
        dht: None,
        session: session::Config::default(),
        read_timeout: None,
        resolve: Arc::new(resolve),
        mountpoint: PathBuf::from("/nowhere"),
        saved: None,
    };
    let live = Arc::new(LibraryLive::new(Vec::new(), Vec::new(), "/nowhere".into()));
    Arc::new(Library::new(shared, live, 0))
}

/// Waits until `cond` holds, yielding to the other tasks.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let waited = tokio::time::timeout(HANG, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    waited
        .await
        .unwrap_or_else(|_| panic!("{what}: not after {HANG:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torrent_added_while_the_mount_ends_tells_its_trackers_stopped() {
    let (url, heard) = tracker().await;
    let library = library().await;
    let t = torrent(&url, "late.bin", 1000);
    // An earlier session of the same torrent still saying goodbye: the add waits for it,
    // after its check that the mount is open.
    let (let_go, goodbye) = tokio::sync::oneshot::channel::<()>();
    let old = tokio::spawn(async move {
        let _ = goodbye.await;
    });
    crate::sync::lock(&library.stopping).insert(t.info_hash, old);
    let adding = {
        let library = library.clone();
        tokio::spawn(async move { library.add("late", t, Vec::new(), Origin::Added).await })
    };
    until("the add under way", || library.changing.try_lock().is_err()).await;

    // The mount ends as `mount::serve` ends it: no torrent starts from now on, and the
    // sessions mounted then are shut down (none yet).
    library.close();
    let mounted = library.sessions();
    assert!(mounted.is_empty());
    crate::app::mount::shutdown_all(&mounted).await;

    // The add goes on: its session starts and its tracker hears `started`.
    let _ = let_go.send(());
    let added = tokio::time::timeout(HANG, adding)
        .await
        .expect("the add ends");
    assert_eq!(added.expect("no panic").as_deref(), Ok("late.bin"));
    let sessions = library.sessions();
    let answered = || {
        let trackers = sessions[0].stats().trackers;
        matches!(trackers.first().and_then(|t| t.last.as_ref()), Some(Ok(_)))
    };
    until("the tracker answered `started`", answered).await;

    library.settle().await;
    let heard = crate::sync::lock(&heard).clone();
    assert!(
        heard.iter().any(|l| l.contains("event=started")),
        "{heard:?}"
    );
    assert!(
        heard.iter().any(|l| l.contains("event=stopped")),
        "the tracker never heard `stopped`: {heard:?}"
    );
}

/// What the tests' subscriber wrote, as the CLI's log writes it (no colours, no target).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        crate::sync::lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&crate::sync::lock(&self.0)).into_owned()
    }
}

/// Two torrents of one name whose tracker refuses every connection: each failure is said
/// with the torrent's folder; a session of its own (a mount of one torrent) adds nothing.
#[tokio::test(flavor = "current_thread")]
async fn what_a_library_torrent_logs_names_its_folder() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_target(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // This thread's only: the runtime runs every task on it.
    let _default = tracing::subscriber::set_default(subscriber);
    // Two ports nobody listens on: the library's tracker, and that of the session alone.
    let mut urls = Vec::new();
    for _ in 0..2 {
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        urls.push(format!(
            "http://{}/announce",
            closed.local_addr().expect("addr")
        ));
    }
    let library = library().await;
    for (i, length) in [1000, 2000].into_iter().enumerate() {
        let t = torrent(&urls[0], "same", length);
        let added = library.add("t", t, Vec::new(), Origin::Added).await;
        assert_eq!(added, Ok(["same", "same (2)"][i].to_string()));
    }
    let host = Host::bind("127.0.0.1:0".parse().unwrap(), Duration::from_secs(5))
        .await
        .expect("a host");
    let t = Arc::new(torrent(&urls[1], "alone", 3000));
    let alone = Session::start(t, session::Config::default(), &host)
        .await
        .expect("a session");
    let mut sessions = library.sessions();
    sessions.push(alone.clone());
    let failed = || {
        sessions.iter().all(|s| {
            let trackers = s.stats().trackers;
            matches!(trackers.first().and_then(|t| t.last.as_ref()), Some(Err(_)))
        })
    };
    until("every tracker failed once", failed).await;

    let text = captured.text();
    let failures = |url: &str| -> Vec<String> {
        (text.lines())
            .filter(|l| l.contains("tracker announce failed") && l.contains(url))
            .map(String::from)
            .collect()
    };
    let (library_lines, alone_lines) = (failures(&urls[0]), failures(&urls[1]));
    for folder in ["same", "same (2)"] {
        let named = format!(" WARN torrent{{name={folder}}}: tracker announce failed");
        assert!(library_lines.iter().any(|l| l.contains(&named)), "{text}");
    }
    assert!(
        library_lines.iter().all(|l| l.contains("torrent{")),
        "{text}"
    );
    assert!(!alone_lines.is_empty(), "{text}");
    assert!(
        (alone_lines.iter()).all(|l| l.contains(" WARN tracker announce failed")),
        "a session of its own says no name: {text}"
    );
    alone.shutdown().await;
    library.close();
    library.settle().await;
}
