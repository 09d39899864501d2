//! The live set of torrents of a library mount: each a folder of [`Folders`] and a session on
//! the process's one [`Host`]; torrents are added (`btfs add`, the watch directory, the mount's
//! own sources) and removed (`btfs remove`, a watched file deleted) while mounted.
//!
//! Adding: the source is resolved as at mount time (a file, URL or magnet link; failures are
//! one line naming the source), a torrent already mounted is refused, its session starts,
//! then its folder appears (the backend serves its file ids before the folder is visible).
//! Removing: the session stops first (every read waiting on it fails at once), then the
//! folder goes and the kernel is told; the session's goodbyes (trackers hear `stopped`) finish
//! in the background. Changes are made one at a time; resolving a source is not part of one.
//! At the mount's end, [`Library::settle`] waits for a change in flight and the goodbyes, so
//! that a torrent added or removed meanwhile still tells its trackers `stopped`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::app::backend::{LibraryBackend, TorrentFiles};
use crate::app::mount::add_torrent_nodes;
use crate::app::saved::Saved;
use crate::app::source::{self, ResolveOptions, Target};
use crate::app::status::request::{Command, Control, Reply, Request};
use crate::app::status::{LibraryLive, Live};
use crate::dht::Dht;
use crate::fs::{FileSpec, Folders};
use crate::metainfo::paths::MAX_COMPONENT_BYTES;
use crate::metainfo::{InfoHash, Torrent};
use crate::session::{self, Host, Session};

/// How long the mount's end waits for a torrent being added (a name lookup of its DHT nodes,
/// its disk cache opened) before going on without it.
const SETTLE_WAIT: Duration = Duration::from_secs(5);

/// Where a torrent of the library came from: a watched file is removed when the file goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A source given to `btfs mount`.
    Mount,
    /// `btfs add`.
    Added,
    /// A file of the watch directory.
    Watched(PathBuf),
}

struct Entry {
    folder: String,
    info_hash: InfoHash,
    session: Session,
    first_file: usize,
    origin: Origin,
}

/// What a library needs to start torrents: the process's shared parts and settings.
pub struct Shared {
    pub host: Host,
    pub dht: Option<Dht>,
    /// The process's totals (`--cache-size`, one memory pool; `--max-peers` and the rate
    /// caps, one [`session::SharedCaps`]; see [`split_budgets`]).
    pub session: session::Config,
    pub read_timeout: Option<Duration>,
    pub resolve: Arc<ResolveOptions>,
    /// The canonical mountpoint, as reports name it.
    pub mountpoint: PathBuf,
    /// Where torrents added with `btfs add` are kept for the next mount (`--state-dir`).
    pub saved: Option<Saved>,
}

/// The torrents of a library mount and the tree, backend and report that show them.
pub struct Library {
    pub folders: Arc<Folders>,
    pub backend: Arc<LibraryBackend<LibraryLive>>,
    pub live: Arc<LibraryLive>,
    shared: Shared,
    /// The torrents; locked to read or change the list only, never across an `.await`.
    entries: Mutex<Vec<Entry>>,
    /// Held through a whole change (duplicate check, session start, folder), so two changes
    /// never pick the same name or both mount one torrent.
    changing: tokio::sync::Mutex<()>,
    /// Set when the mount ends: no more torrents start.
    closed: AtomicBool,
    /// Torrents the budgets are split between at least (the mount's sources).
    expected: usize,
    /// Sessions of removed torrents still saying goodbye (trackers, disk writes), by
    /// info-hash: the same torrent added again waits for its old session to be gone, so two
    /// never share its disk cache. Locked for a map operation only.
    stopping: Mutex<HashMap<InfoHash, tokio::task::JoinHandle<()>>>,
}

impl Library {
    /// `expected`: how many torrents are about to be added (their budgets are split as one).
    pub fn new(mut shared: Shared, live: Arc<LibraryLive>, expected: usize) -> Library {
        // One pool for every torrent, however late it comes.
        if shared.session.memory.is_none() {
            let pool = crate::store::MemoryPool::new(shared.session.cache_bytes);
            shared.session.memory = Some(pool);
        }
        if shared.session.caps.is_none() {
            shared.session.caps = Some(shared_caps(&shared.session));
        }
        Library {
            folders: Arc::new(Folders::new()),
            backend: Arc::new(LibraryBackend::new(live.clone())),
            live,
            shared,
            entries: Mutex::new(Vec::new()),
            changing: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
            expected,
            stopping: Mutex::new(HashMap::new()),
        }
    }

    /// Every torrent's session, as they are now.
    pub fn sessions(&self) -> Vec<Session> {
        (crate::sync::lock(&self.entries).iter())
            .map(|e| e.session.clone())
            .collect()
    }

    /// The folders, in the order they were added.
    pub fn folder_names(&self) -> Vec<String> {
        (crate::sync::lock(&self.entries).iter())
            .map(|e| e.folder.clone())
            .collect()
    }

    /// No torrent starts from now on; call before stopping the sessions.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Resolves `source` (a .torrent path, URL or magnet link) and mounts it; the folder's
    /// name, or one line saying why not (also logged and kept in the report).
    pub async fn add_source(&self, source: &str, origin: Origin) -> Result<String, String> {
        let (_never, interrupt) = tokio::sync::watch::channel(false);
        let resolved = match Target::parse(source) {
            Ok(t) => source::resolve(&t, &self.shared.resolve, interrupt).await,
            Err(e) => Err(e),
        };
        match resolved {
            Ok((torrent, peers)) => self.add(source, torrent, peers, origin).await,
            Err(e) => Err(self.refused(source, &e)),
        }
    }

    /// Mounts `torrent` (from `source`, as messages name it) in a folder of its own.
    pub async fn add(
        &self,
        source: &str,
        torrent: Torrent,
        peers: Vec<SocketAddr>,
        origin: Origin,
    ) -> Result<String, String> {
        let _changing = self.changing.lock().await;
        if self.closed.load(Ordering::SeqCst) {
            return Err(format!("{source}: the mount is shutting down"));
        }
        let (count, same) = {
            let entries = crate::sync::lock(&self.entries);
            let same = (entries.iter())
                .find(|e| e.info_hash == torrent.info_hash)
                .map(|e| e.folder.clone());
            (entries.len(), same)
        };
        if let Some(folder) = same {
            let why = format!(
                "the same torrent as folder {folder:?} (info-hash {}), mounted once",
                torrent.info_hash
            );
            return Err(self.refused(source, &why));
        }
        let old = crate::sync::lock(&self.stopping).remove(&torrent.info_hash);
        if let Some(old) = old {
            let _ = old.await;
        }
        if let Some(d) = &self.shared.dht {
            add_torrent_nodes(d, &torrent).await;
        }
        let mut cfg = split_budgets(&self.shared.session, (count + 1).max(self.expected));
        cfg.dht = self.shared.dht.clone();
        cfg.peers.extend(peers);
        let files = folder_files(&torrent);
        let info_hash = torrent.info_hash;
        // Named before it starts (changes are made one at a time): its log lines carry it.
        let folder = free_name(&torrent.info.name, &self.folders.names());
        cfg.log_name = Some(folder.clone());
        let session = match Session::start(Arc::new(torrent), cfg, &self.shared.host).await {
            Ok(s) => s,
            Err(e) => return Err(self.refused(source, &e)),
        };
        let (folders, backend) = (self.folders.clone(), self.backend.clone());
        let serve = TorrentFiles::visible(session.clone(), self.shared.read_timeout);
        let name = folder.clone();
        let added = tokio::task::spawn_blocking(move || {
            folders.add(&name, &files, |a| backend.insert(a.first_file, serve))
        })
        .await
        .expect("adding a folder does not panic");
        let added = match added {
            Ok(a) => a,
            Err(e) => {
                session.shutdown().await;
                return Err(self.refused(source, &e));
            }
        };
        let live = Live::new(session.clone(), self.shared.mountpoint.clone());
        self.live.add(folder.clone(), live);
        crate::sync::lock(&self.entries).push(Entry {
            folder: folder.clone(),
            info_hash,
            session,
            first_file: added.first_file,
            origin,
        });
        tracing::info!("mounted {source} as {folder}");
        Ok(folder)
    }

    /// Unmounts the torrent in `folder`: its waiting reads fail at once, the folder goes.
    pub async fn remove(&self, folder: &str) -> Result<(), String> {
        let _changing = self.changing.lock().await;
        let entry = {
            let mut entries = crate::sync::lock(&self.entries);
            match entries.iter().position(|e| e.folder == folder) {
                Some(i) => entries.remove(i),
                None => {
                    let names: Vec<&str> = entries.iter().map(|e| e.folder.as_str()).collect();
                    return Err(format!(
                        "no torrent in folder {folder:?} (mounted: {})",
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    ));
                }
            }
        };
        entry.session.stop();
        if let (Origin::Added, Some(saved)) = (&entry.origin, &self.shared.saved) {
            saved.forget(&entry.info_hash);
        }
        self.backend.remove(entry.first_file);
        let (folders, name) = (self.folders.clone(), entry.folder.clone());
        tokio::task::spawn_blocking(move || folders.remove(&name))
            .await
            .expect("removing a folder does not panic");
        self.live.remove(&entry.folder);
        tracing::info!("unmounted {}", entry.folder);
        let session = entry.session;
        let goodbye = tokio::spawn(async move { session.shutdown().await });
        let mut stopping = crate::sync::lock(&self.stopping);
        stopping.retain(|_, h| !h.is_finished());
        stopping.insert(entry.info_hash, goodbye);
        Ok(())
    }

    /// At the mount's end, after [`Library::close`] and the shutdown of the sessions then
    /// mounted: waits for a change in flight (bounded), shuts down every session mounted now
    /// (a torrent whose add was under way at the close; the others are done at once) and waits
    /// for removed torrents' goodbyes, so every tracker that heard `started` hears `stopped`.
    pub async fn settle(&self) {
        let changing = tokio::time::timeout(SETTLE_WAIT, self.changing.lock()).await;
        if changing.is_err() {
            tracing::debug!("a torrent still being added at exit is left as it is");
        }
        crate::app::mount::shutdown_all(&self.sessions()).await;
        let goodbyes: Vec<_> = crate::sync::lock(&self.stopping).drain().collect();
        for (_, goodbye) in goodbyes {
            let _ = goodbye.await;
        }
    }

    /// Keeps the torrent just added in `folder` from `source` for the next mount.
    fn keep(&self, folder: &str, source: &str) {
        let Some(saved) = &self.shared.saved else {
            return;
        };
        let hash = (crate::sync::lock(&self.entries).iter())
            .find(|e| e.folder == folder)
            .map(|e| e.info_hash);
        if let Some(hash) = hash
            && let Err(e) = saved.save(&hash, source)
        {
            tracing::warn!("{source}: cannot keep it for the next mount (--state-dir): {e}");
        }
    }

    /// Adds the torrents `btfs add` added at an earlier mount of this mountpoint, one after
    /// the other (a refusal is said as any other).
    pub async fn restore(&self) {
        let Some(saved) = &self.shared.saved else {
            return;
        };
        for source in saved.load() {
            let _ = self.add_source(&source, Origin::Added).await;
        }
    }

    /// The folder of the torrent that came from `origin`, if one is mounted.
    pub fn folder_of(&self, origin: &Origin) -> Option<String> {
        (crate::sync::lock(&self.entries).iter())
            .find(|e| e.origin == *origin)
            .map(|e| e.folder.clone())
    }

    /// A source that could not be mounted: said on the log and in every report; the line.
    pub fn refused(&self, source: &str, why: &dyn std::fmt::Display) -> String {
        let line = format!("{source}: {why}");
        tracing::warn!("{line} (left out of the mount)");
        self.live.leave_out(format!("not mounted: {line}"));
        line
    }

    /// Takes `add` and `remove` requests from the status socket, each in a task of its own (a
    /// magnet's metadata may take minutes; a removal meanwhile is not held up by it).
    pub fn control(self: &Arc<Self>) -> Control {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Command>(16);
        let library = self.clone();
        tokio::spawn(async move {
            while let Some((request, reply)) = rx.recv().await {
                let library = library.clone();
                tokio::spawn(async move {
                    let _ = reply.send(library.answer(request).await);
                });
            }
        });
        tx
    }

    async fn answer(&self, request: Request) -> Reply {
        let mnt = self.shared.mountpoint.display();
        match request {
            Request::Status => Reply::Error("ask for the report with an empty request".into()),
            Request::Add { source } => match self.add_source(&source, Origin::Added).await {
                Ok(folder) => {
                    self.keep(&folder, &source);
                    Reply::Ok(format!("{source}: mounted at {mnt}/{folder}"))
                }
                Err(line) => Reply::Error(line),
            },
            Request::Remove { name } => match self.remove(&name).await {
                Ok(()) => Reply::Ok(format!("{mnt}/{name}: unmounted")),
                Err(line) => Reply::Error(line),
            },
        }
    }
}

/// Each torrent's share of the process's budgets: `--cache-size` is one memory pool every
/// torrent's pieces share, least recently used across torrents (a torrent's readers' windows
/// kept from the others); `--max-peers` (already cut to what the descriptor limit allows) and
/// the rate caps are totals for the process, shared as the torrents need them (one
/// [`session::SharedCaps`]: a sleeping torrent holds no peer, one being read gets at least
/// its fair share, every peer of every torrent waits in one queue per rate cap), so the
/// process stays within them however many there are. `--disk-cache-size` is one disk pool
/// every clone of the config's `DiskCacheConfig` shares. Shares of one `config` share its
/// pool and caps: give it them first when shares are taken more than once ([`Library::new`]
/// does).
pub fn split_budgets(config: &session::Config, _n: usize) -> session::Config {
    let mut share = config.clone();
    if share.memory.is_none() {
        share.memory = Some(crate::store::MemoryPool::new(config.cache_bytes));
    }
    if share.caps.is_none() {
        share.caps = Some(shared_caps(config));
    }
    share
}

/// The process's peer slots and rate caps, from `config`'s totals.
fn shared_caps(config: &session::Config) -> session::SharedCaps {
    let c = config;
    session::SharedCaps::new(c.max_peers, c.max_download_rate, c.max_upload_rate)
}

/// A folder name for a torrent named `wanted` (already safe as a file name) beside `taken`:
/// the name itself if free, else the first free ` (2)`, ` (3)`..., cut where needed so that
/// name and suffix fit in a file name.
pub fn free_name(wanted: &str, taken: &[String]) -> String {
    let free = |f: &str| !taken.iter().any(|t| t == f);
    if free(wanted) {
        return wanted.to_string();
    }
    (2..)
        .map(|k| with_suffix(wanted, &format!(" ({k})")))
        .find(|f| free(f))
        .expect("some suffix is free")
}

/// `name` + `suffix`, `name` cut at a char boundary so the whole fits in a file name.
pub fn with_suffix(name: &str, suffix: &str) -> String {
    let mut end = name.len().min(MAX_COMPONENT_BYTES - suffix.len());
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &name[..end])
}

/// A torrent's visible files (padding files hidden, in the order of
/// [`TorrentFiles::visible`]) as its folder holds them: a multi-file torrent's paths without
/// its root folder (the library's folder takes its place); a single file as it is.
pub fn folder_files(t: &Torrent) -> Vec<FileSpec> {
    (t.info.files.iter())
        .filter(|f| !f.padding)
        .map(|f| FileSpec {
            path: match f.path.len() {
                1 => f.path.clone(),
                _ => f.path[1..].to_vec(),
            },
            length: f.length,
        })
        .collect()
}

#[cfg(test)]
mod tests;
