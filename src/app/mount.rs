//! `btfs mount`: a session and a FUSE mount glued together, run until a signal or an external
//! unmount, then taken down in the order that never leaves a reader hanging: fail pending reads,
//! unmount, tell the trackers. The steps are public so that a mount of several torrents
//! (`app::library`) takes the same ones: [`start_net`], sessions, [`serve`].

use std::io::{IsTerminal, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::signal::unix::{SignalKind, signal};

use crate::app::backend::{SessionBackend, TorrentFiles};
use crate::app::limits;
use crate::app::source::{self, ResolveOptions, SourceError, Target};
use crate::app::status::request::Control;
use crate::app::status::socket::{StatusSocket, canonical_mountpoint};
use crate::app::status::{Live, Reporter};
use crate::dht::{Dht, DhtConfig, SavedState};
use crate::fs::{self, Backend, FileSpec, FsError, InodeTable, MountOptions, Tree};
use crate::metainfo::Torrent;
use crate::net::Family;
use crate::net::udp::Protocol;
use crate::session::{self, Host, HostOptions, Session, SessionError};

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
    #[error("none of the {0} torrents could be mounted (each is said above)")]
    NothingToMount(usize),
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
pub async fn add_torrent_nodes(dht: &Dht, torrent: &Torrent) {
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

/// Ctrl-C and SIGTERM, listened for from the start so that either ends the mount at any step.
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> Result<Signals, MountError> {
        Ok(Signals {
            int: signal(SignalKind::interrupt()).map_err(MountError::Signals)?,
            term: signal(SignalKind::terminate()).map_err(MountError::Signals)?,
        })
    }

    /// Resolves at the next Ctrl-C or SIGTERM.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// What the torrents of a process share: the listening ports and the DHT node (and the LSD
/// task, set into `config.session.lsd`).
pub struct Net {
    pub host: Host,
    pub dht: Option<Dht>,
}

/// Raises the descriptor limit (fewer peers if it stays low), binds the ports, starts the DHT
/// and local service discovery.
pub async fn start_net(config: &mut MountConfig) -> Result<Net, MountError> {
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
    Ok(Net { host, dht })
}

/// How a URL or magnet link is turned into a torrent in this mount; `progress`: draw the
/// magnet fetch's progress line (one fetch at a time only).
pub fn resolve_options(config: &MountConfig, net: &Net, progress: bool) -> ResolveOptions {
    ResolveOptions {
        peers: config.session.peers.clone(),
        listen_port: net.host.port(),
        metadata_timeout: config.metadata_timeout,
        cache_dir: config.metadata_cache.clone(),
        dht: net.dht.clone(),
        utp: net.host.utp(),
        progress,
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
    let mut signals = Signals::new()?;
    let net = start_net(&mut config).await?;
    let torrent = match preloaded {
        Some(t) => t,
        None => {
            let opts = resolve_options(&config, &net, true);
            let (_never, interrupt) = tokio::sync::watch::channel(false);
            let (torrent, peers) = tokio::select! {
                r = source::resolve(&target, &opts, interrupt) => r?,
                () = signals.recv() => return Err(MountError::Interrupted),
            };
            config.session.peers.extend(peers);
            torrent
        }
    };
    if let Some(d) = &net.dht {
        add_torrent_nodes(d, &torrent).await;
    }
    config.session.dht = net.dht.clone();
    let specs: Vec<FileSpec> = (torrent.info.files.iter())
        .filter(|f| !f.padding)
        .map(|f| FileSpec {
            path: f.path.clone(),
            length: f.length,
        })
        .collect();
    let table = InodeTable::new(&specs)?;

    let name = torrent.info.name.clone();
    let time = creation_time(&torrent);
    let session = Session::start(Arc::new(torrent), config.session.clone(), &net.host).await?;
    let all = session.clone();
    let canonical = canonical_mountpoint(&config.mountpoint).unwrap_or(config.mountpoint.clone());
    let live = Arc::new(Live::new(session.clone(), canonical));
    let backend = Arc::new(SessionBackend {
        torrent: TorrentFiles::visible(session.clone(), config.read_timeout),
        live: live.clone(),
    });
    let served = Served {
        sessions: Arc::new(move || vec![all.clone()]),
        backend,
        table: Arc::new(table),
        live,
        control: None,
        fsname: format!("btfs:{name}"),
        time,
    };
    serve(&config, net, signals, served, ready).await
}

/// A torrent's creation date, shown as every file's time.
pub fn creation_time(torrent: &Torrent) -> Option<std::time::SystemTime> {
    let secs = u64::try_from(torrent.creation_date?).ok()?;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(secs))
}

/// What a mount serves, its sessions started: the tree, the backend reading from them, and
/// what reports on them.
pub struct Served<B, R, T> {
    /// The sessions to stop at the end, as they are then (a library's change while mounted).
    pub sessions: Arc<dyn Fn() -> Vec<Session> + Send + Sync>,
    pub backend: Arc<B>,
    pub table: Arc<T>,
    pub live: Arc<R>,
    /// Where the status socket hands `add` and `remove` (a library's), if anywhere.
    pub control: Option<Control>,
    /// Shown by `mount` and `df`.
    pub fsname: String,
    /// Every inode's time; `None`: now.
    pub time: Option<std::time::SystemTime>,
}

/// Mounts `served` and serves until Ctrl-C, SIGTERM or an external unmount, then takes it down
/// in the order that leaves no reader hanging.
pub async fn serve<B: Backend, R: Reporter, T: Tree>(
    config: &MountConfig,
    net: Net,
    mut signals: Signals,
    served: Served<B, R, T>,
    ready: Option<Daemon>,
) -> Result<(), MountError> {
    let Served {
        sessions,
        backend,
        table,
        live,
        control,
        fsname,
        time,
    } = served;
    let mut opts = MountOptions::new(fsname);
    opts.allow_other = config.allow_other;
    if let Some(t) = time {
        opts.owner.time = t;
    }
    // The status socket exists before the mount appears, so whoever sees the mount can ask it.
    let canonical = canonical_mountpoint(&config.mountpoint).unwrap_or(config.mountpoint.clone());
    let (status_stop, status_stopped) = tokio::sync::watch::channel(false);
    let _status_socket = match StatusSocket::bind(&canonical) {
        Ok(mut socket) => {
            socket.serve(live.clone(), control, status_stopped);
            Some(socket)
        }
        Err(e) => {
            tracing::warn!("`btfs status` will not see this mount: {e}");
            None
        }
    };
    let rt = tokio::runtime::Handle::current();
    let mountpoint = config.mountpoint.clone();
    let mounted =
        tokio::task::spawn_blocking(move || fs::mount(backend, table, &mountpoint, opts, rt))
            .await
            .expect("mount task panicked");
    let mounted = match mounted {
        Ok(m) => m,
        Err(e) => {
            shutdown_all(&sessions()).await;
            return Err(e.into());
        }
    };
    tracing::info!(
        port = net.host.port(),
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
            () = signals.recv() => break,
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
    // No more requests; blocked reads fail first, so no open file keeps the mount busy; then
    // unmount; then the trackers hear `stopped` (bounded wait).
    status_stop.send_replace(true);
    let sessions = sessions();
    for s in &sessions {
        s.stop();
    }
    let unmounted = tokio::task::spawn_blocking(move || mounted.unmount())
        .await
        .expect("unmount task panicked");
    shutdown_all(&sessions).await;
    if let (Some(d), Some(settings)) = (&net.dht, &config.dht)
        && let Some(path) = &settings.state_file
        && let Err(e) = SavedState::of(d).save(path)
    {
        tracing::warn!("cannot save the DHT table: {e}");
    }
    if let Some(d) = &net.dht {
        d.shutdown();
    }
    unmounted?;
    Ok(())
}

/// Every session's `shutdown` at once (each bounded in time).
pub async fn shutdown_all(sessions: &[Session]) {
    let mut all = tokio::task::JoinSet::new();
    for s in sessions {
        let s = s.clone();
        all.spawn(async move { s.shutdown().await });
    }
    while all.join_next().await.is_some() {}
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
