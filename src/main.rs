//! The `btfs` command: clap -> runtime -> library. No logic lives here.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use btfs::app::library;
use btfs::app::mount::{self, MountConfig};
use btfs::app::source::{self, Target};
use btfs::app::status;
use btfs::metainfo::Torrent;
use btfs::session;
use btfs::units::parse_size;

#[derive(Parser)]
#[command(
    name = "btfs",
    version,
    about = "Mount a torrent read-only and stream its files from the swarm"
)]
struct Cli {
    /// More log output (-v: debug, -vv: trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount a torrent (a .torrent file, an http(s) URL of one, or a magnet link) at a
    /// directory; its files appear at once and download as they are read. Several torrents:
    /// each is a folder under the directory.
    Mount(Box<MountArgs>),
    /// Show what running mounts are doing: peers by source, rates, pieces, cache, trackers,
    /// readers. Without MOUNTPOINT: every mount of this user.
    Status {
        /// The mountpoint of a running `btfs mount`.
        mountpoint: Option<PathBuf>,
        /// One torrent of a library mount: its folder's name.
        #[arg(requires = "mountpoint")]
        name: Option<String>,
        /// One JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Add a torrent to a running library mount (one of several torrents, or mounted with
    /// --library or --watch): it appears as a folder. Exits non-zero, saying why, if it
    /// cannot be mounted (a bad source, a torrent already mounted).
    Add {
        /// The mountpoint of a running library mount.
        mountpoint: PathBuf,
        /// A .torrent file, an http(s):// URL of one, or a magnet: link; read by the mount.
        #[arg(value_name = "TORRENT|MAGNET|URL")]
        source: String,
    },
    /// Remove a torrent from a running library mount: its folder goes, reads still waiting on
    /// it fail, the others are not disturbed.
    Remove {
        /// The mountpoint of a running library mount.
        mountpoint: PathBuf,
        /// The torrent's folder under the mountpoint.
        name: String,
    },
    /// Print what a .torrent file holds: name, info-hash, sizes, trackers and files.
    Info {
        /// The .torrent file.
        torrent: PathBuf,
    },
}

#[derive(Args)]
struct MountArgs {
    /// A .torrent file, an http(s):// URL of one, or a magnet: link. With several (or with
    /// --library or --watch), each torrent is a folder named after it; one that cannot be
    /// loaded is left out (said on stderr) and the others are mounted.
    #[arg(value_name = "TORRENT", required_unless_present_any = ["library", "watch"])]
    torrents: Vec<String>,
    /// An existing, empty directory to mount at.
    mountpoint: PathBuf,
    /// Port for incoming peers, TCP and UDP, on every --bind address (0: any free port).
    #[arg(long, default_value_t = 6881)]
    port: u16,
    /// Address to listen on for incoming peers, IPv4 or IPv6 (repeatable) [default: every
    /// IPv4 and every IPv6 address; IPv4 alone where the machine has no IPv6].
    #[arg(long = "bind", value_name = "IP")]
    bind: Vec<IpAddr>,
    /// Most peers connected at once.
    #[arg(long, default_value_t = 80)]
    max_peers: usize,
    /// Memory for verified pieces (e.g. 256M, 1G); with several torrents, one budget shared by
    /// all, least recently used across them (a torrent's readers keep their windows).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    cache_size: u64,
    /// Also keep verified pieces on disk here (a subdirectory per torrent), so a remount or a
    /// second viewing need not download them again. Off by default.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Disk space for the whole --cache-dir, shared by the mount's torrents (e.g. 4G): least
    /// recently used pieces go first, those of torrents not mounted now before any other.
    #[arg(long, default_value = "4G", value_parser = parse_size, requires = "cache_dir")]
    disk_cache_size: u64,
    /// Largest readahead window a sequential reader grows to (e.g. 64M); the window covers
    /// about 20 s of the rate the reader consumes.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    max_readahead: u64,
    /// Cap on download, bytes per second (e.g. 2M); unlimited by default.
    #[arg(long, value_parser = parse_size, value_name = "RATE")]
    max_download_rate: Option<u64>,
    /// Cap on upload, bytes per second (e.g. 500K); unlimited by default.
    #[arg(long, value_parser = parse_size, value_name = "RATE")]
    max_upload_rate: Option<u64>,
    /// Never upload to other peers.
    #[arg(long)]
    no_upload: bool,
    /// Protocol encryption (MSE/PE). allow: accept both; dial plaintext, and encrypted if the
    /// peer hangs up on that. prefer: dial encrypted first. require: encrypted (RC4) only, both
    /// ways. disable: plaintext only.
    #[arg(long, default_value = "allow", value_name = "POLICY", value_parser = encryption_policy())]
    encryption: session::Encryption,
    /// What to fetch when no read waits. open-files: the rest of files being watched (read
    /// 16 MiB or half their size), then the files next to them, until 2 minutes after the last
    /// read; a probe (thumbnailer, `file`) fetches only what it reads. torrent: everything,
    /// rarest first, while the cache has room. off: only what is read.
    #[arg(long, default_value = "open-files", value_name = "POLICY", value_parser = background_policy())]
    background: session::Background,
    /// A torrent with no read for this long sleeps: no peers, no announces, no background
    /// fetching, until the next read wakes it (e.g. 90s, 5m, 1h; 0: never). Default: 5m in a
    /// mount of several torrents; never for a single torrent, which seeds as long as it is
    /// mounted.
    #[arg(long, value_name = "DURATION", value_parser = btfs::units::parse_duration)]
    idle_after: Option<std::time::Duration>,
    /// Never let a torrent sleep: keep its peers and keep seeding while mounted.
    #[arg(long, conflicts_with = "idle_after")]
    seed: bool,
    /// Connect to this peer as well as those trackers find (repeatable).
    #[arg(long = "peer", value_name = "IP:PORT")]
    peers: Vec<SocketAddr>,
    /// Let other users read the mount (needs user_allow_other in /etc/fuse.conf for non-root).
    #[arg(long)]
    allow_other: bool,
    /// Where magnet metadata is kept between mounts [default: ~/.cache/btfs/metadata].
    #[arg(long, value_name = "DIR")]
    metadata_cache: Option<PathBuf>,
    /// Seconds a magnet link may take to yield its metadata.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    metadata_timeout: u64,
    /// Do not use the Mainline DHT (find peers through trackers and --peer only).
    #[arg(long)]
    no_dht: bool,
    /// Do not look for peers on the local network, nor announce the torrent there (local
    /// service discovery, BEP 14: multicast on 239.192.152.143:6771).
    #[arg(long)]
    no_lsd: bool,
    /// Speak TCP only: no uTP (BEP 29) in or out. By default both, on the same port number.
    #[arg(long, conflicts_with = "no_tcp")]
    no_utp: bool,
    /// Speak uTP only: no TCP in or out.
    #[arg(long)]
    no_tcp: bool,
    /// Do not download from the torrent's web seeds (HTTP servers in its url-list, BEP 19).
    #[arg(long)]
    no_web_seeds: bool,
    /// Bootstrap the DHT from this node instead of the public routers (repeatable; an IPv6
    /// node as [ADDR]:PORT).
    #[arg(long = "dht-bootstrap", value_name = "HOST:PORT")]
    dht_bootstrap: Vec<String>,
    /// The DHT routing table kept between mounts [default: ~/.local/state/btfs/dht.state].
    #[arg(long, value_name = "FILE")]
    dht_state: Option<PathBuf>,
    /// Fail a read with "Input/output error" once it waited this long with no data arriving
    /// from any peer; by default a read waits (players prefer waiting).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    read_timeout: Option<u64>,
    /// Mount a library even of one torrent or none: each torrent a folder, and `btfs add` and
    /// `btfs remove` change the set while mounted.
    #[arg(long)]
    library: bool,
    /// Mount every *.torrent file (and every *.magnet file holding one magnet link) in DIR as
    /// a folder, following the directory while mounted (implies --library).
    #[arg(long, value_name = "DIR")]
    watch: Option<PathBuf>,
    /// Where a library keeps the torrents added with `btfs add`, to mount them again at the
    /// next mount of the same mountpoint [default: ~/.local/state/btfs].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Detach once the mount is ready and keep serving in the background.
    #[arg(long)]
    daemon: bool,
    /// No live status line.
    #[arg(short, long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("btfs: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line. Our error messages already include their source's text
/// (so a log line alone is complete); a cause repeated by its parent is left out. Line breaks
/// from untrusted text (a file name, a peer's message) are escaped to keep it one line.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', "\\n").replace('\r', "\\r")
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info { torrent } => {
            init_logging(cli.verbose);
            let t = Torrent::from_file(&torrent)?;
            print!("{}", t.summary());
            Ok(())
        }
        Command::Status {
            mountpoint,
            name,
            json,
        } => match name {
            Some(name) => status_of_one(&mountpoint.expect("clap requires it"), &name, json),
            None => status(mountpoint, json),
        },
        Command::Add { mountpoint, source } => {
            // A relative path names a file from here; the mount process has its own directory.
            let source = match Target::parse(&source)? {
                Target::File(p) => std::path::absolute(&p)
                    .with_context(|| format!("cannot resolve {}", p.display()))?
                    .to_string_lossy()
                    .into_owned(),
                _ => source,
            };
            change(&mountpoint, status::request::Request::Add { source })
        }
        Command::Remove { mountpoint, name } => {
            change(&mountpoint, status::request::Request::Remove { name })
        }
        Command::Mount(args) => {
            let mut args = *args;
            let library = library::LibraryOptions {
                explicit: args.library,
                watch: match args.watch.take() {
                    Some(dir) => Some(watch_dir(&dir)?),
                    None => None,
                },
                state_dir: args
                    .state_dir
                    .take()
                    .or_else(btfs::app::saved::default_state_dir),
            };
            let as_library = library.explicit || library.watch.is_some();
            // One source: its files at the top, and a bad one fails at once.
            let single = match args.torrents.as_slice() {
                [one] if !as_library => {
                    let target = Target::parse(one)?;
                    let preloaded = target.load_local()?;
                    Some((target, preloaded))
                }
                _ => None,
            };
            let sources = std::mem::take(&mut args.torrents);
            mount::check_mountpoint(&args.mountpoint)?;
            if let Some(dir) = &args.cache_dir {
                btfs::store::disk::check_dir(dir)?;
            }
            let first_bind = args.bind.first().copied();
            let idle_after = idle_after(&args, single.is_none());
            let config = MountConfig {
                mountpoint: args.mountpoint,
                bind: args.bind,
                allow_other: args.allow_other,
                status_line: !args.quiet && !args.daemon,
                session: session::Config {
                    listen: SocketAddr::new(
                        first_bind.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
                        args.port,
                    ),
                    max_peers: args.max_peers,
                    cache_bytes: args.cache_size,
                    peers: args.peers,
                    max_readahead_bytes: args.max_readahead,
                    max_download_rate: args.max_download_rate,
                    max_upload_rate: args.max_upload_rate,
                    no_upload: args.no_upload,
                    encryption: args.encryption,
                    background: args.background,
                    idle_after,
                    disk_cache: (args.cache_dir)
                        .map(|dir| session::DiskCacheConfig::new(dir, args.disk_cache_size)),
                    web_seeds: session::WebSeedConfig {
                        enabled: !args.no_web_seeds,
                        ..Default::default()
                    },
                    ..session::Config::default()
                },
                metadata_timeout: std::time::Duration::from_secs(args.metadata_timeout),
                metadata_cache: args.metadata_cache.or_else(source::default_cache_dir),
                dht: (!args.no_dht).then(|| mount::DhtSettings {
                    bootstrap: args.dht_bootstrap,
                    state_file: args.dht_state.or_else(mount::default_dht_state),
                }),
                read_timeout: args.read_timeout.map(std::time::Duration::from_secs),
                lsd: !args.no_lsd,
                tcp: !args.no_tcp,
                utp: !args.no_utp,
            };
            // Forking must happen before the runtime starts threads.
            let ready = if args.daemon {
                Some(mount::daemonize().context("cannot detach into the background")?)
            } else {
                None
            };
            init_logging(cli.verbose);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("btfs")
                .build()
                .context("cannot start the async runtime")?;
            let result = match single {
                Some((target, preloaded)) => {
                    runtime.block_on(mount::run(target, preloaded, config, ready))
                }
                None => runtime.block_on(library::run(sources, config, library, ready)),
            };
            runtime.shutdown_timeout(std::time::Duration::from_millis(500));
            result.map_err(Into::into)
        }
    }
}

/// `btfs status`: one mount in full, or every mount in short. A stale socket is reported
/// (and removed); no mount at all is an error.
fn status(mountpoint: Option<PathBuf>, json: bool) -> Result<()> {
    if let Some(m) = mountpoint {
        let report = status::socket::query(&m)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.to_text());
        }
        return Ok(());
    }
    let mut reports = Vec::new();
    for r in status::socket::query_all()? {
        match r {
            Ok(report) => reports.push(report),
            Err(e) => eprintln!("btfs: {e}"),
        }
    }
    if reports.is_empty() {
        anyhow::bail!("no btfs mount is running");
    }
    if json {
        let all = serde_json::json!({ "mounts": reports });
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        for r in &reports {
            print!("{}", r.to_short());
        }
    }
    Ok(())
}

/// When an idle torrent sleeps (`None`: never). A library sleeps what is not read after 5
/// minutes by default; a single torrent is the whole mount and keeps seeding, as before.
fn idle_after(args: &MountArgs, library: bool) -> Option<std::time::Duration> {
    const LIBRARY_IDLE: std::time::Duration = std::time::Duration::from_secs(5 * 60);
    if args.seed {
        return None;
    }
    args.idle_after
        .or(library.then_some(LIBRARY_IDLE))
        .filter(|d| !d.is_zero())
}

/// `btfs status MOUNT NAME`: one torrent of a library mount.
fn status_of_one(mountpoint: &std::path::Path, name: &str, json: bool) -> Result<()> {
    let report = status::socket::query(mountpoint)?;
    let Some((torrent, readers)) = status::library::one_torrent(&report, name) else {
        if report.torrents.is_empty() && !report.info_hash.is_empty() {
            anyhow::bail!(
                "{} serves one torrent ({}): `btfs status {}` shows it",
                mountpoint.display(),
                report.name,
                mountpoint.display()
            );
        }
        let names: Vec<&str> = report.torrents.iter().map(|t| t.folder.as_str()).collect();
        anyhow::bail!(
            "no torrent in folder {name:?} of {} (its torrents: {})",
            mountpoint.display(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    };
    if json {
        let mut value = serde_json::to_value(&torrent)?;
        value["readers"] = serde_json::to_value(&readers)?;
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", status::library::one_torrent_text(&torrent, &readers));
    }
    Ok(())
}

/// `btfs add` and `btfs remove`: the mount's answer on stdout, or its refusal as the error.
fn change(mountpoint: &std::path::Path, request: status::request::Request) -> Result<()> {
    match status::socket::send(mountpoint, &request)? {
        status::request::Reply::Ok(line) => {
            println!("{line}");
            Ok(())
        }
        status::request::Reply::Error(line) => Err(anyhow::anyhow!(line)),
    }
}

/// The watch directory, checked now (a typo fails at once) and made absolute.
fn watch_dir(dir: &std::path::Path) -> Result<PathBuf> {
    let canonical = dir
        .canonicalize()
        .with_context(|| format!("watch directory {}", dir.display()))?;
    anyhow::ensure!(
        canonical.is_dir(),
        "watch directory {} is not a directory",
        dir.display()
    );
    Ok(canonical)
}

fn encryption_policy() -> impl clap::builder::TypedValueParser<Value = session::Encryption> {
    use clap::builder::TypedValueParser;
    let names = session::Encryption::ALL.map(|e| e.name());
    clap::builder::PossibleValuesParser::new(names).try_map(|s| s.parse::<session::Encryption>())
}

fn background_policy() -> impl clap::builder::TypedValueParser<Value = session::Background> {
    use clap::builder::TypedValueParser;
    let names = session::Background::ALL.map(|b| b.name());
    clap::builder::PossibleValuesParser::new(names).try_map(|s| s.parse::<session::Background>())
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "btfs=info",
        1 => "btfs=debug",
        _ => "btfs=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal (a log file or journald gets plain text), and never with
    // NO_COLOR set (no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
}
