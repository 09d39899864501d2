//! `btfs mount`: a session and a FUSE mount glued together, run until a signal or an external
//! unmount, then taken down in the order that never leaves a reader hanging: fail pending reads,
//! unmount, tell the trackers.

use std::io::{IsTerminal, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::signal::unix::{SignalKind, signal};

use crate::app::limits;
use crate::app::source::{self, ResolveOptions, SourceError, Target};
use crate::app::status::Live;
use crate::app::status::socket::{StatusSocket, canonical_mountpoint};
use crate::dht::{Dht, DhtConfig, SavedState};
use crate::fs::{self, Backend, FileSpec, FsError, InodeTable, MountOptions};
use crate::metainfo::Torrent;
use crate::net::Family;
use crate::net::udp::Protocol;
use crate::session::{self, Host, HostOptions, ReadError, ReadHandle, Session, SessionError};

#[derive(Debug, Error)]
pub enum MountError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("the torrent's file tree cannot be mounted: {0}")]
    Tree(#[from] fs::TableError),
    #[error("cannot listen for signals: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("interrupted")]
    Interrupted,
    #[error("cannot start the DHT: {0}")]
    Dht(String),
}

pub struct MountConfig {
    pub mountpoint: PathBuf,
    /// `--bind`: the addresses to listen on, with the port of `session.listen`; empty: every
    /// IPv4 and IPv6 address (IPv6 only where the machine has it).
    pub bind: Vec<std::net::IpAddr>,
    pub allow_other: bool,
    /// Draw the one-line live status on stderr (when it is a terminal).
    pub status_line: bool,
    pub session: session::Config,
    /// How long a magnet link may take to yield its metadata.
    pub metadata_timeout: Duration,
    /// Where magnet metadata is kept between mounts.
    pub metadata_cache: Option<std::path::PathBuf>,
    /// `None`: no DHT (`--no-dht`).
    pub dht: Option<DhtSettings>,
    /// Local service discovery (BEP 14); false with `--no-lsd`.
    pub lsd: bool,
    /// `--read-timeout`: a read fails with EIO after this long without data; `None` waits.
    pub read_timeout: Option<Duration>,
    /// Peer transports: TCP (off with `--no-tcp`), uTP (off with `--no-utp`).
    pub tcp: bool,
    pub utp: bool,
}

pub struct DhtSettings {
    /// `host:port` nodes to bootstrap from; empty: the well-known public routers.
    pub bootstrap: Vec<String>,
    /// The routing table saved at the last unmount, loaded at the next mount.
    pub state_file: Option<std::path::PathBuf>,
}

/// `$XDG_STATE_HOME/btfs/dht.state`, else `~/.local/state/btfs/dht.state`.
pub fn default_dht_state() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("btfs").join("dht.state"))
}

/// The DHT node on the UDP ports with the TCP listener's number (BEP 5; BEP 32 on IPv6),
/// shared with uTP, bootstrapped from the saved table first, then the configured nodes or the
/// public routers. `None` without a UDP port.
fn start_dht(settings: &DhtSettings, host: &Host) -> Result<Option<Dht>, MountError> {
    let channels: Vec<_> = (Family::ALL.iter())
        .filter_map(|f| host.udp(*f))
        .map(|p| p.channel(Protocol::Dht))
        .collect();
    if channels.is_empty() {
        return Ok(None);
    }
    let mut dht_config = DhtConfig::default();
    if !settings.bootstrap.is_empty() {
        dht_config.bootstrap = settings.bootstrap.clone();
    }
    if let Some(path) = &settings.state_file {
        match SavedState::load(path) {
            Ok(saved) => saved.apply(&mut dht_config),
            Err(e) => tracing::debug!("no saved DHT table: {e}"),
        }
    }
    Dht::start_all(channels, dht_config)
        .map(Some)
        .map_err(|e| MountError::Dht(e.to_string()))
}

/// Local service discovery on the interfaces of the addresses listened on; a machine where it
/// cannot run (no multicast interface, the port refused) mounts without it.
fn start_lsd(host: &Host) -> Option<crate::lsd::Lsd> {
    let ips: Vec<std::net::IpAddr> = host.local_addrs().iter().map(|a| a.ip()).collect();
    match crate::lsd::Lsd::start(&ips) {
        Ok(lsd) => Some(lsd),
        Err(e) => {
            tracing::warn!("no local service discovery: {e}");
            None
        }
    }
}

/// A torrent's `nodes` (BEP 5) join the routing table once the torrent is known.
async fn add_torrent_nodes(dht: &Dht, torrent: &Torrent) {
    for (host, port) in &torrent.nodes {
        if let Ok(addrs) = tokio::net::lookup_host((host.as_str(), *port)).await {
            for a in addrs {
                dht.add_node(a);
            }
        }
    }
}

/// Checks the mountpoint before any network work, so a typo fails at once.
pub fn check_mountpoint(path: &Path) -> Result<(), FsError> {
    fs::preflight(path).map(|_| ())
}

/// Serves FUSE reads from the session: file ids of the table map to torrent file indices
/// (padding files are hidden, so the two numberings differ).
struct SessionBackend {
    session: Session,
    files: Vec<usize>,
    live: Arc<Live>,
    /// `--read-timeout`: fail a read with EIO once no data arrived for this long.
    read_timeout: Option<Duration>,
}

impl Backend for SessionBackend {
    fn open(&self, file: usize) -> u64 {
        self.session.open_reader(self.files[file]).as_raw()
    }

    fn release(&self, handle: u64) {
        self.session.close_reader(ReadHandle::from_raw(handle));
    }

    fn read(
        &self,
        handle: u64,
        file: usize,
        offset: u64,
        len: u32,
    ) -> impl std::future::Future<Output = Result<bytes::Bytes, fuser::Errno>> + Send + 'static
    {
        let session = self.session.clone();
        let file = self.files[file];
        let timeout = self.read_timeout;
        async move {
            let read = session.read(ReadHandle::from_raw(handle), file, offset, len);
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
        }
    }

    fn status(&self) -> String {
        self.live.report().to_text()
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

/// Mounts, then serves until Ctrl-C, SIGTERM or an external `fusermount3 -u`. `preloaded` is
/// the torrent when the target was a local file (already read to fail early).
pub async fn run(
    target: Target,
    preloaded: Option<Torrent>,
    mut config: MountConfig,
    ready: Option<Daemon>,
) -> Result<(), MountError> {
    let mut sigint = signal(SignalKind::interrupt()).map_err(MountError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(MountError::Signals)?;
    let fds = limits::budget(limits::raise_fd_limit(), config.session.max_peers);
    if fds.peers < config.session.max_peers {
        tracing::warn!(
            limit = fds.limit,
            peers = fds.peers,
            "few file descriptors (ulimit -n): connecting to fewer peers than --max-peers"
        );
        config.session.max_peers = fds.peers;
    }
    let host_options = HostOptions {
        handshake: config.session.peer_timeouts.handshake,
        pending: fds.pending,
        tcp: config.tcp,
        utp: config.utp,
        udp: config.dht.is_some(),
    };
    let port = config.session.listen.port();
    let host = Host::bind_all(&config.bind, port, host_options).await?;
    let dht = match &config.dht {
        Some(settings) => start_dht(settings, &host)?,
        None => None,
    };
    if config.lsd {
        config.session.lsd = start_lsd(&host);
    }
    let torrent = match preloaded {
        Some(t) => t,
        None => {
            let opts = ResolveOptions {
                peers: config.session.peers.clone(),
                listen_port: host.port(),
                metadata_timeout: config.metadata_timeout,
                cache_dir: config.metadata_cache.clone(),
                dht: dht.clone(),
                utp: host.utp(),
            };
            let (_never, interrupt) = tokio::sync::watch::channel(false);
            let (torrent, peers) = tokio::select! {
                r = source::resolve(&target, &opts, interrupt) => r?,
                _ = sigint.recv() => return Err(MountError::Interrupted),
                _ = sigterm.recv() => return Err(MountError::Interrupted),
            };
            config.session.peers.extend(peers);
            torrent
        }
    };
    if let Some(d) = &dht {
        add_torrent_nodes(d, &torrent).await;
    }
    config.session.dht = dht.clone();
    let (specs, files): (Vec<FileSpec>, Vec<usize>) = torrent
        .info
        .files
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.padding)
        .map(|(i, f)| {
            (
                FileSpec {
                    path: f.path.clone(),
                    length: f.length,
                },
                i,
            )
        })
        .unzip();
    let table = InodeTable::new(&specs)?;

    let name = torrent.info.name.clone();
    let time = torrent
        .creation_date
        .and_then(|d| u64::try_from(d).ok())
        .map(|d| std::time::UNIX_EPOCH + Duration::from_secs(d));
    let session = Session::start(Arc::new(torrent), config.session, &host).await?;
    let mut opts = MountOptions::new(format!("btfs:{name}"));
    opts.allow_other = config.allow_other;
    if let Some(t) = time {
        opts.owner.time = t;
    }
    // The status socket exists before the mount appears, so whoever sees the mount can ask it.
    let canonical = canonical_mountpoint(&config.mountpoint).unwrap_or(config.mountpoint.clone());
    let live = Arc::new(Live::new(session.clone(), canonical.clone()));
    let (status_stop, status_stopped) = tokio::sync::watch::channel(false);
    let _status_socket = match StatusSocket::bind(&canonical) {
        Ok(mut socket) => {
            socket.serve(live.clone(), status_stopped);
            Some(socket)
        }
        Err(e) => {
            tracing::warn!("`btfs status` will not see this mount: {e}");
            None
        }
    };
    let backend = Arc::new(SessionBackend {
        session: session.clone(),
        files,
        live: live.clone(),
        read_timeout: config.read_timeout,
    });
    let rt = tokio::runtime::Handle::current();
    let mountpoint = config.mountpoint.clone();
    let mounted =
        tokio::task::spawn_blocking(move || fs::mount(backend, table, &mountpoint, opts, rt))
            .await
            .expect("mount task panicked");
    let mounted = match mounted {
        Ok(m) => m,
        Err(e) => {
            session.shutdown().await;
            return Err(e.into());
        }
    };
    tracing::info!(
        port = session.listen_port(),
        "ready: {}",
        config.mountpoint.display()
    );
    if let Some(d) = ready {
        d.ready();
    }

    let mut ended = mounted.ended();
    let status = config.status_line && std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = ended.wait_for(|e| *e) => {
                tracing::info!("unmounted from outside");
                break;
            }
            _ = tick.tick() => {
                if !mounted.is_attached() {
                    // Detached lazily (`fusermount3 -u -z`): pending reads must fail so that
                    // the files they hold open close and the connection can end.
                    tracing::info!("detached from outside");
                    break;
                }
                live.tick();
                if status {
                    draw_status(&live.report().summary_line());
                }
            }
        }
    }
    if status {
        eprint!("\r\x1b[K");
    }
    // Blocked reads fail first, so no open file keeps the mount busy; then unmount; then the
    // trackers hear `stopped` (bounded wait).
    session.stop();
    status_stop.send_replace(true);
    let unmounted = tokio::task::spawn_blocking(move || mounted.unmount())
        .await
        .expect("unmount task panicked");
    session.shutdown().await;
    if let (Some(d), Some(settings)) = (&dht, &config.dht)
        && let Some(path) = &settings.state_file
        && let Err(e) = SavedState::of(d).save(path)
    {
        tracing::warn!("cannot save the DHT table: {e}");
    }
    if let Some(d) = &dht {
        d.shutdown();
    }
    unmounted?;
    Ok(())
}

/// The live status line on stderr, redrawn in place.
fn draw_status(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[K{line}");
    let _ = err.flush();
}

/// The child's end of `--daemon`: tells the waiting parent that the mount is ready.
pub struct Daemon {
    pipe: OwnedFd,
}

impl Daemon {
    /// The mount is up: the parent exits 0 and we stop writing to the terminal.
    fn ready(self) {
        let mut f = std::fs::File::from(self.pipe);
        let _ = f.write_all(b"ok");
        drop(f);
        if let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            for fd in 0..3 {
                // SAFETY: dup2 onto the standard descriptors; `null` stays open until after.
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
        }
    }
}

/// Forks; the parent waits until the child says the mount is ready (exit 0) or the child dies
/// first (exit 1: the child printed why). Must run before any thread exists.
pub fn daemonize() -> std::io::Result<Daemon> {
    let mut fds = [0; 2];
    // SAFETY: pipe fills two descriptors we then own.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptors were just created and are owned here only.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other thread exists yet (called before the runtime starts).
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            drop(rd);
            // SAFETY: setsid has no memory effects.
            unsafe { libc::setsid() };
            Ok(Daemon { pipe: wr })
        }
        _ => {
            drop(wr);
            let mut buf = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::fs::File::from(rd), &mut buf);
            std::process::exit(if buf == b"ok" { 0 } else { 1 });
        }
    }
}
