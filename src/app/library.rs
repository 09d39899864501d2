//! A library mount (`btfs mount A.torrent B.torrent 'magnet:…' /mnt/x`, or any number of
//! sources with `--library` or `--watch DIR`): each torrent is a folder under the mountpoint,
//! named after the torrent; one session per torrent, all on the process's one
//! [`crate::session::Host`] (one listen port, one peer id, incoming connections routed by
//! info-hash) and one DHT node. The FUSE layer sees one tree ([`crate::fs::Folders`]) and one
//! [`crate::app::backend::LibraryBackend`], and nothing of the sessions behind them; the set
//! of torrents changes while mounted ([`crate::app::catalog`]: `btfs add`, `btfs remove`, the
//! watch directory of [`crate::app::watch`]).
//!
//! The sources are resolved at once, concurrently. One that cannot be loaded (a bad magnet
//! link, a malformed or missing file, an unreachable URL, a magnet whose metadata does not come
//! within `--metadata-timeout`), or that names the same torrent as an earlier one, is left out
//! with one line naming it and why, and the others are mounted; only when none is left (and
//! the mount is no explicit library) does the mount fail.
//!
//! Inside a torrent's folder: a multi-file torrent's files without its own root folder (the
//! library's folder takes its place); a single-file torrent's one file.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::app::catalog::{Library, Origin, Shared};
use crate::app::mount::{self, Daemon, MountConfig, MountError, Served, Signals, start_net};
use crate::app::saved::Saved;
use crate::app::source::{self, ResolveOptions, SourceError, Target};
use crate::app::status::LibraryLive;
use crate::app::status::socket::canonical_mountpoint;
use crate::metainfo::Torrent;

pub use crate::app::catalog::split_budgets;

/// A source's torrent and the peers found on the way, or why it cannot be had.
type Resolved = Result<(Torrent, Vec<SocketAddr>), String>;

/// How a library mount was asked for, beyond its sources.
#[derive(Clone, Debug, Default)]
pub struct LibraryOptions {
    /// `--library`: mounted even with no torrent (one is added later).
    pub explicit: bool,
    /// `--watch DIR`: its `.torrent` and `.magnet` files are the library's too.
    pub watch: Option<PathBuf>,
    /// `--state-dir`: where torrents added with `btfs add` are kept between mounts.
    pub state_dir: Option<PathBuf>,
}

/// Mounts every source that loads, each in its folder, and serves until Ctrl-C, SIGTERM or an
/// external unmount, adding and removing torrents as asked meanwhile.
pub async fn run(
    sources: Vec<String>,
    mut config: MountConfig,
    options: LibraryOptions,
    ready: Option<Daemon>,
) -> Result<(), MountError> {
    let mut signals = Signals::new()?;
    let net = start_net(&mut config).await?;
    let opts = Arc::new(mount::resolve_options(&config, &net, false));
    let resolved = tokio::select! {
        r = resolve_all(&sources, opts.clone()) => r,
        () = signals.recv() => return Err(MountError::Interrupted),
    };
    let mut left_out = Vec::new();
    let kept = keep_first_of_each(&sources, resolved, &mut left_out);
    let canonical = canonical_mountpoint(&config.mountpoint).unwrap_or(config.mountpoint.clone());
    // One pool for every torrent, however late it comes.
    let pool = (config
        .session
        .memory
        .get_or_insert_with(|| crate::store::MemoryPool::new(config.session.cache_bytes)))
    .clone();
    let live = LibraryLive::new(Vec::new(), left_out, canonical.clone());
    let live = Arc::new(live.with_listen_port(net.host.port()).with_memory(pool));
    let shared = Shared {
        host: net.host.clone(),
        dht: net.dht.clone(),
        session: config.session.clone(),
        read_timeout: config.read_timeout,
        resolve: opts,
        saved: (options.state_dir.as_deref()).map(|d| Saved::new(d, &canonical)),
        mountpoint: canonical,
    };
    let library = Arc::new(Library::new(shared, live.clone(), kept.len()));
    for (i, (torrent, peers)) in kept {
        // A refusal is said (log and report) by the library.
        let _ = library
            .add(&sources[i], torrent, peers, Origin::Mount)
            .await;
    }
    let folders = library.folder_names();
    let keep_empty = options.explicit || options.watch.is_some();
    if folders.is_empty() && !keep_empty {
        return Err(MountError::NothingToMount(sources.len()));
    }
    let restoring = library.clone();
    tokio::spawn(async move { restoring.restore().await });
    if let Some(dir) = options.watch {
        tokio::spawn(crate::app::watch::run(library.clone(), dir));
    }
    tracing::info!(torrents = folders.len(), "mounting {}", folders.join(", "));
    let all = library.clone();
    let served = Served {
        sessions: Arc::new(move || {
            all.close();
            all.sessions()
        }),
        backend: library.backend.clone(),
        table: library.folders.clone(),
        control: Some(library.control()),
        live,
        fsname: "btfs:library".to_string(),
        time: None,
    };
    let served = mount::serve(&config, net, signals, served, ready).await;
    // A torrent added or removed while the mount ended says its goodbyes too.
    library.settle().await;
    served
}

/// Every source resolved at once, each result in its source's place; a failure is said as
/// soon as it is known (a magnet may take minutes).
async fn resolve_all(sources: &[String], opts: Arc<ResolveOptions>) -> Vec<Resolved> {
    // Held until every fetch ended: a fetch takes a closed channel for an interrupt.
    let (_never, interrupt) = tokio::sync::watch::channel(false);
    let mut tasks = JoinSet::new();
    for (i, s) in sources.iter().enumerate() {
        let (s, opts, interrupt) = (s.clone(), opts.clone(), interrupt.clone());
        tasks.spawn(async move {
            let r = match Target::parse(&s) {
                Ok(t) => source::resolve(&t, &opts, interrupt).await,
                Err(e) => Err(e),
            };
            (i, r.map_err(|e: SourceError| e.to_string()))
        });
    }
    let mut out: Vec<Option<Resolved>> = sources.iter().map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        // A task that panicked leaves its place empty, said below.
        if let Ok((i, r)) = joined {
            if let Err(e) = &r {
                tracing::warn!("{}: {e} (left out of the mount)", sources[i]);
            }
            out[i] = Some(r);
        }
    }
    (out.into_iter().zip(sources))
        .map(|(r, s)| {
            r.unwrap_or_else(|| {
                let reason = "loading it failed unexpectedly".to_string();
                tracing::warn!("{s}: {reason} (left out of the mount)");
                Err(reason)
            })
        })
        .collect()
}

/// The torrents that loaded, with their source's index, the first of each info-hash only;
/// every source left out is added to `left_out` (a failure to load was said already, a
/// duplicate is said here).
fn keep_first_of_each(
    sources: &[String],
    resolved: Vec<Resolved>,
    left_out: &mut Vec<String>,
) -> Vec<(usize, (Torrent, Vec<SocketAddr>))> {
    let mut first: HashMap<[u8; 20], usize> = HashMap::new();
    let mut kept = Vec::new();
    for (i, r) in resolved.into_iter().enumerate() {
        match r {
            Err(e) => left_out.push(format!("not mounted: {}: {e}", sources[i])),
            Ok((t, peers)) => match first.get(&t.info_hash.0) {
                Some(&earlier) => {
                    let line = format!(
                        "{}: the same torrent as {} (info-hash {}), mounted once",
                        sources[i], sources[earlier], t.info_hash
                    );
                    tracing::warn!("{line}");
                    left_out.push(format!("not mounted: {line}"));
                }
                None => {
                    first.insert(t.info_hash.0, i);
                    kept.push((i, (t, peers)));
                }
            },
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::catalog::folder_files;
    use crate::fs::inode::{NodeKind, ROOT};
    use crate::fs::{Folders, Tree};

    /// A torrent of `files` (`(path, length)`; one file named `name`: a single-file one).
    fn torrent(name: &str, files: &[(&str, u64)]) -> Torrent {
        let b = |s: &str| format!("{}:{s}", s.len());
        let body = match files {
            [(one, len)] if *one == name => format!("6:lengthi{len}e"),
            _ => {
                let list: String = (files.iter())
                    .map(|(path, len)| {
                        let parts: String = path.split('/').map(b).collect();
                        format!("d6:lengthi{len}e4:pathl{parts}ee")
                    })
                    .collect();
                format!("5:filesl{list}e")
            }
        };
        let text = format!(
            "d4:infod{body}4:name{}12:piece lengthi16384e6:pieces20:{}ee",
            b(name),
            "x".repeat(20)
        );
        Torrent::from_bytes(text.as_bytes()).expect("a torrent")
    }

    #[test]
    fn each_torrent_is_a_folder_and_each_file_maps_back_to_its_torrent() {
        let multi = torrent("multi", &[("a.bin", 3), ("sub/b", 0)]);
        let one = torrent("one.bin", &[("one.bin", 7)]);
        let multi_files = folder_files(&multi);
        let paths: Vec<String> = multi_files.iter().map(|f| f.path.join("/")).collect();
        assert_eq!(paths, ["a.bin", "sub/b"]);
        assert_eq!(folder_files(&one)[0].path, ["one.bin"]);

        let folders = Folders::new();
        let a = folders.add("multi", &multi_files, |_| {}).expect("added");
        let b = folders
            .add("one.bin", &folder_files(&one), |_| {})
            .expect("added");
        assert_eq!((a.first_file, b.first_file), (0, 2));
        assert_eq!(folders.total_size(), 10);
        let dir = folders.lookup(ROOT, "one.bin").expect("a folder");
        let file = folders.lookup(dir, "one.bin").expect("its file");
        assert_eq!(
            folders.kind(file),
            Some(NodeKind::File { id: 2, length: 7 })
        );
    }
}
