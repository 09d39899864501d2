//! The [`crate::fs::Backend`]s of a mount: how the FUSE layer's file ids reach sessions. One torrent
//! ([`SessionBackend`]): file ids of the table map to the torrent's file indices (padding files
//! are hidden, so the two numberings differ). A library ([`LibraryBackend`]): each file id maps
//! to a torrent and its file, and each reader handle remembers its torrent.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;

use crate::app::status::Reporter;
use crate::fs::Backend;
use crate::session::{ReadError, ReadHandle, Session};

/// One torrent's visible files, numbered as the mount numbers them.
pub struct TorrentFiles {
    pub session: Session,
    /// The torrent's file index of each of its mount file ids.
    pub files: Vec<usize>,
    /// `--read-timeout`: fail a read with EIO once no data arrived for this long.
    pub read_timeout: Option<Duration>,
}

impl TorrentFiles {
    /// The torrent's files but its padding files, numbered from 0, with where each is.
    pub fn visible(session: Session, read_timeout: Option<Duration>) -> Self {
        let files = (session.torrent().info.files.iter().enumerate())
            .filter(|(_, f)| !f.padding)
            .map(|(i, _)| i)
            .collect();
        TorrentFiles {
            session,
            files,
            read_timeout,
        }
    }

    fn open(&self, file: usize) -> ReadHandle {
        self.session.open_reader(self.files[file])
    }

    fn read(
        &self,
        handle: ReadHandle,
        file: usize,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Bytes, fuser::Errno>> + Send + 'static + use<> {
        let session = self.session.clone();
        let file = self.files[file];
        let timeout = self.read_timeout;
        let span = session.span().clone();
        let read = async move {
            let read = session.read(handle, file, offset, len);
            let result = match timeout {
                None => read.await,
                Some(limit) => tokio::select! {
                    r = read => r,
                    () = no_progress_for(&session, limit) => {
                        tracing::warn!(
                            "a read waited {}s with no data arriving: failing it (--read-timeout)",
                            limit.as_secs()
                        );
                        return Err(fuser::Errno::EIO);
                    }
                },
            };
            result.map_err(|e| match e {
                ReadError::Shutdown => fuser::Errno::EIO,
                ReadError::NoSuchFile => fuser::Errno::ENOENT,
            })
        };
        // A library's reads name their torrent in what they log.
        tracing::Instrument::instrument(read, span)
    }
}

/// Resolves once the session has received no data at all for `limit`: a read waiting then
/// cannot progress (a slow swarm still counts as progress, however long a piece takes).
async fn no_progress_for(session: &Session, limit: Duration) {
    let step = (limit / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut last = session.downloaded_bytes();
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(step).await;
        let now = session.downloaded_bytes();
        if now != last {
            last = now;
            since = tokio::time::Instant::now();
        } else if since.elapsed() >= limit {
            return;
        }
    }
}

/// Serves FUSE reads of a mount of one torrent from its session.
pub struct SessionBackend<R> {
    pub torrent: TorrentFiles,
    pub live: Arc<R>,
}

impl<R: Reporter> Backend for SessionBackend<R> {
    fn open(&self, file: usize) -> u64 {
        self.torrent.open(file).as_raw()
    }

    fn release(&self, handle: u64) {
        (self.torrent.session).close_reader(ReadHandle::from_raw(handle));
    }

    fn read(
        &self,
        handle: u64,
        file: usize,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Bytes, fuser::Errno>> + Send + 'static {
        (self.torrent).read(ReadHandle::from_raw(handle), file, offset, len)
    }

    fn status(&self) -> String {
        self.live.report().to_text()
    }
}

/// Serves FUSE reads of a library mount: each file id goes to its torrent's session. A
/// torrent's files are numbered from its `first_file` on (ids never reused, see
/// [`crate::fs::Folders`]); torrents come and go while mounted. Session reader handles are
/// numbered per session, so the mount hands out its own and keeps which torrent and session
/// handle each stands for.
pub struct LibraryBackend<R> {
    /// First file id -> its torrent. Read by every open and read, changed by add and remove;
    /// held for a map operation only, never across an `.await`, nothing else locked meanwhile.
    torrents: RwLock<BTreeMap<usize, Arc<TorrentFiles>>>,
    /// Open handles: the mount's number -> (its torrent, the session's handle). Locked briefly
    /// by `open`, `release` and `read` (FUSE threads), as `torrents` is.
    handles: Mutex<HashMap<u64, (Arc<TorrentFiles>, ReadHandle)>>,
    next_handle: AtomicU64,
    live: Arc<R>,
}

impl<R> LibraryBackend<R> {
    pub fn new(live: Arc<R>) -> Self {
        LibraryBackend {
            torrents: RwLock::new(BTreeMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            live,
        }
    }

    /// Serves file ids `first_file..` from `torrent` (call before its folder appears).
    pub fn insert(&self, first_file: usize, torrent: TorrentFiles) {
        let mut map = self
            .torrents
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        map.insert(first_file, Arc::new(torrent));
    }

    /// Stops serving the torrent at `first_file`: its files' reads and opens fail with ENOENT
    /// from now on (reads already waiting end when its session stops).
    pub fn remove(&self, first_file: usize) {
        let mut map = self
            .torrents
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        map.remove(&first_file);
    }

    /// The torrent of mount file id `file`, and the file's id within it.
    fn find(&self, file: usize) -> Option<(Arc<TorrentFiles>, usize)> {
        let map = self.torrents.read().unwrap_or_else(PoisonError::into_inner);
        let (&first, torrent) = map.range(..=file).next_back()?;
        let own = file - first;
        (own < torrent.files.len()).then(|| (torrent.clone(), own))
    }
}

impl<R: Reporter> Backend for LibraryBackend<R> {
    fn open(&self, file: usize) -> u64 {
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        // A file whose torrent just went gets a handle that names no reader: reads say ENOENT.
        if let Some((torrent, own)) = self.find(file) {
            let inner = torrent.open(own);
            crate::sync::lock(&self.handles).insert(handle, (torrent, inner));
        }
        handle
    }

    fn release(&self, handle: u64) {
        let removed = crate::sync::lock(&self.handles).remove(&handle);
        if let Some((torrent, inner)) = removed {
            torrent.session.close_reader(inner);
        }
    }

    fn read(
        &self,
        handle: u64,
        file: usize,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Bytes, fuser::Errno>> + Send + 'static {
        let read = self.find(file).map(|(torrent, own)| {
            let inner = crate::sync::lock(&self.handles)
                .get(&handle)
                .filter(|(t, _)| Arc::ptr_eq(t, &torrent))
                .map(|&(_, h)| h)
                // A handle that names no open reader of this torrent reads without readahead.
                .unwrap_or(ReadHandle::from_raw(u64::MAX));
            torrent.read(inner, own, offset, len)
        });
        async move {
            match read {
                Some(read) => read.await,
                None => Err(fuser::Errno::ENOENT),
            }
        }
    }

    fn status(&self) -> String {
        self.live.report().to_text()
    }
}
