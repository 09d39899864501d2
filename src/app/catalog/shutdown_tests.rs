//! A torrent whose add is under way when the mount ends still tells its trackers `stopped`:
//! the add is held at a known point (waiting for an earlier session of the same torrent to
//! say goodbye) while the mount closes, as `mount::serve` does, then let go.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
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

/// A one-piece torrent announced to `url`.
fn torrent(url: &str) -> Torrent {
    let b = |s: &str| format!("{}:{s}", s.len());
    let text = format!(
        "d8:announce{}4:infod6:lengthi1000e4:name{}12:piece lengthi16384e6:pieces20:{}ee",
        b(url),
        b("late.bin"),
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
    let t = torrent(&url);
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
