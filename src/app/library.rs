//! A mount of several torrents (`btfs mount A.torrent B.torrent 'magnet:…' /mnt/x`): each
//! torrent is a folder under the mountpoint, named after the torrent; one session per torrent,
//! all on the process's one [`crate::session::Host`] (one listen port, one peer id, incoming
//! connections routed by info-hash) and one DHT node. The FUSE layer sees one tree and one
//! [`LibraryBackend`], and nothing of the sessions behind it.
//!
//! The sources are resolved at once, concurrently. One that cannot be loaded (a bad magnet
//! link, a malformed or missing file, an unreachable URL, a magnet whose metadata does not come
//! within `--metadata-timeout`), or that names the same torrent as an earlier one, is left out
//! with one line naming it and why, and the others are mounted; only when none is left does
//! the mount fail. The set of torrents is fixed once mounted.
//!
//! Inside a torrent's folder: a multi-file torrent's files without its own root folder (the
//! library's folder takes its place); a single-file torrent's one file.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::app::backend::{LibraryBackend, Place, TorrentFiles};
use crate::app::mount::{
    self, Daemon, MountConfig, MountError, Served, Signals, add_torrent_nodes, start_net,
};
use crate::app::source::{self, ResolveOptions, SourceError, Target};
use crate::app::status::socket::canonical_mountpoint;
use crate::app::status::{LibraryLive, Live};
use crate::fs::{FileSpec, InodeTable};
use crate::metainfo::Torrent;
use crate::metainfo::paths::MAX_COMPONENT_BYTES;
use crate::session::{self, Session};

/// A source's torrent and the peers found on the way, or why it cannot be had.
type Resolved = Result<(Torrent, Vec<SocketAddr>), String>;

/// Mounts every source that loads, each in its folder, and serves until Ctrl-C, SIGTERM or an
/// external unmount.
pub async fn run(
    sources: Vec<String>,
    mut config: MountConfig,
    ready: Option<Daemon>,
) -> Result<(), MountError> {
    let mut signals = Signals::new()?;
    let net = start_net(&mut config).await?;
    let opts = Arc::new(mount::resolve_options(&config, &net, false));
    let resolved = tokio::select! {
        r = resolve_all(&sources, opts) => r,
        () = signals.recv() => return Err(MountError::Interrupted),
    };
    let mut left_out = Vec::new();
    let mut loaded = Vec::new();
    for (i, (torrent, peers)) in keep_first_of_each(&sources, resolved, &mut left_out) {
        if let Some(d) = &net.dht {
            add_torrent_nodes(d, &torrent).await;
        }
        loaded.push((i, torrent, peers));
    }
    config.session.dht = net.dht.clone();
    let share = split_budgets(&config.session, loaded.len());
    let mut started: Vec<Session> = Vec::new();
    for (i, torrent, peers) in loaded {
        let mut cfg = share.clone();
        cfg.peers.extend(peers);
        match Session::start(Arc::new(torrent), cfg, &net.host).await {
            Ok(s) => started.push(s),
            Err(e) => leave_out(&mut left_out, &sources[i], &e),
        }
    }
    if started.is_empty() {
        return Err(MountError::NothingToMount(sources.len()));
    }

    let names: Vec<&str> = (started.iter())
        .map(|s| s.torrent().info.name.as_str())
        .collect();
    let folders = folder_names(&names);
    let files: Vec<Vec<FileSpec>> = started.iter().map(|s| visible_files(s.torrent())).collect();
    let (specs, places) = layout(&folders, &files);
    let table = InodeTable::new(&specs)?;
    let canonical = canonical_mountpoint(&config.mountpoint).unwrap_or(config.mountpoint.clone());
    let lives = (folders.iter().zip(&started))
        .map(|(f, s)| (f.clone(), Live::new(s.clone(), canonical.clone())))
        .collect();
    let live = Arc::new(LibraryLive::new(lives, left_out, canonical));
    let torrents = (started.iter())
        .map(|s| TorrentFiles::visible(s.clone(), config.read_timeout))
        .collect();
    tracing::info!(torrents = started.len(), "mounting {}", folders.join(", "));
    let served = Served {
        backend: Arc::new(LibraryBackend::new(torrents, places, live.clone())),
        sessions: started,
        table,
        live,
        fsname: "btfs:library".to_string(),
        time: None,
    };
    mount::serve(&config, net, signals, served, ready).await
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

fn leave_out(left_out: &mut Vec<String>, source: &str, e: &dyn std::fmt::Display) {
    tracing::warn!("{source}: {e} (left out of the mount)");
    left_out.push(format!("not mounted: {source}: {e}"));
}

/// Each torrent's share of the process's budgets: `--cache-size` is one memory pool every
/// torrent's pieces share, least recently used across torrents (a torrent's readers' windows
/// kept from the others); `--max-peers` (already cut to what the descriptor limit allows) and
/// the rate caps are totals for the process, split evenly between the `n` torrents, so the
/// process stays within them however many there are (a torrent gets at least one peer and one
/// byte per second). `--disk-cache-size` is per torrent already (its own subdirectory of
/// `--cache-dir`).
pub fn split_budgets(config: &session::Config, n: usize) -> session::Config {
    let n64 = n.max(1) as u64;
    let mut share = config.clone();
    if share.memory.is_none() {
        share.memory = Some(crate::store::MemoryPool::new(config.cache_bytes));
    }
    share.max_peers = (config.max_peers / n.max(1)).max(1);
    share.max_download_rate = config.max_download_rate.map(|r| (r / n64).max(1));
    share.max_upload_rate = config.max_upload_rate.map(|r| (r / n64).max(1));
    share
}

/// A folder name for each torrent name (already safe as a file name), in order: the first
/// torrent of a name keeps it, a later one gets the first free ` (2)`, ` (3)`... A name some
/// torrent has is never given to another as a suffixed name. Cut where needed so that name
/// and suffix fit in a file name.
pub fn folder_names(names: &[&str]) -> Vec<String> {
    let mut taken: HashSet<String> = names.iter().map(|n| n.to_string()).collect();
    let mut seen = HashSet::new();
    names
        .iter()
        .map(|&name| {
            if seen.insert(name) {
                return name.to_string();
            }
            let folder = (2..)
                .map(|k| with_suffix(name, &format!(" ({k})")))
                .find(|f| !taken.contains(f))
                .expect("some suffix is free");
            taken.insert(folder.clone());
            folder
        })
        .collect()
}

/// `name` + `suffix`, `name` cut at a char boundary so the whole fits in a file name.
fn with_suffix(name: &str, suffix: &str) -> String {
    let mut end = name.len().min(MAX_COMPONENT_BYTES - suffix.len());
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &name[..end])
}

/// A torrent's visible files (padding files hidden) as it names them, in the order of
/// [`TorrentFiles::visible`].
fn visible_files(t: &Torrent) -> Vec<FileSpec> {
    (t.info.files.iter())
        .filter(|f| !f.padding)
        .map(|f| FileSpec {
            path: f.path.clone(),
            length: f.length,
        })
        .collect()
}

/// The mount's file list and where each file is: torrent `t`'s files under `folders[t]`. A
/// multi-file torrent's paths start with its root folder, which the library's folder
/// replaces; a single file (a path of one component) goes into it.
pub fn layout(folders: &[String], files: &[Vec<FileSpec>]) -> (Vec<FileSpec>, Vec<Place>) {
    let mut specs = Vec::new();
    let mut places = Vec::new();
    for (torrent, (folder, own)) in folders.iter().zip(files).enumerate() {
        for (file, spec) in own.iter().enumerate() {
            let rest = match spec.path.len() {
                1 => &spec.path[..],
                _ => &spec.path[1..],
            };
            let mut path = Vec::with_capacity(rest.len() + 1);
            path.push(folder.clone());
            path.extend(rest.iter().cloned());
            specs.push(FileSpec {
                path,
                length: spec.length,
            });
            places.push(Place { torrent, file });
        }
    }
    (specs, places)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::inode::NodeKind;

    fn spec(path: &[&str], length: u64) -> FileSpec {
        FileSpec {
            path: path.iter().map(|s| s.to_string()).collect(),
            length,
        }
    }

    #[test]
    fn folders_are_named_after_their_torrent_with_a_suffix_on_collision() {
        assert_eq!(folder_names(&["a", "b"]), ["a", "b"]);
        assert_eq!(
            folder_names(&["a", "a", "b", "a"]),
            ["a", "a (2)", "b", "a (3)"]
        );
        // A torrent really named "a (2)" keeps that name; the second "a" goes past it.
        assert_eq!(folder_names(&["a", "a", "a (2)"]), ["a", "a (3)", "a (2)"]);
    }

    #[test]
    fn a_suffixed_name_still_fits_in_a_file_name() {
        // 'é' is two bytes: the cut must not split it.
        let long = "é".repeat(MAX_COMPONENT_BYTES / 2);
        let names = folder_names(&[&long, &long]);
        assert_eq!(names[0], long);
        assert!(names[1].len() <= MAX_COMPONENT_BYTES, "{}", names[1].len());
        assert!(names[1].ends_with(" (2)"));
        assert!(names[1].starts_with("éé"));
    }

    #[test]
    fn each_torrent_is_a_folder_and_each_file_maps_back_to_its_torrent() {
        let folders = vec![
            "multi".to_string(),
            "one.bin".to_string(),
            "multi (2)".into(),
        ];
        let files = vec![
            vec![
                spec(&["multi", "a.bin"], 3),
                spec(&["multi", "sub", "b"], 0),
            ],
            vec![spec(&["one.bin"], 7)],
            vec![spec(&["multi", "a.bin"], 5)],
        ];
        let (specs, places) = layout(&folders, &files);
        let paths: Vec<String> = specs.iter().map(|s| s.path.join("/")).collect();
        assert_eq!(
            paths,
            [
                "multi/a.bin",
                "multi/sub/b",
                "one.bin/one.bin",
                "multi (2)/a.bin"
            ]
        );
        let at = |torrent, file| Place { torrent, file };
        assert_eq!(places, [at(0, 0), at(0, 1), at(1, 0), at(2, 0)]);
        // The inode table takes it, and its file ids are the mount's.
        let table = InodeTable::new(&specs).expect("a valid tree");
        assert_eq!(table.total_size(), 15);
        for (id, s) in specs.iter().enumerate() {
            let ino = table.file_ino(id).expect("each file has an inode");
            assert_eq!(
                table.kind(ino),
                Some(NodeKind::File {
                    id,
                    length: s.length
                })
            );
        }
    }

    #[test]
    fn budgets_are_split_or_shared_never_given_whole_to_each() {
        let total = session::Config {
            cache_bytes: 300,
            max_peers: 80,
            max_download_rate: Some(1000),
            max_upload_rate: None,
            ..session::Config::default()
        };
        let share = split_budgets(&total, 3);
        // One pool of the whole budget, shared: a clone of the share is the same pool.
        let pool = share.memory.clone().expect("a shared memory pool");
        assert_eq!(pool.budget(), 300);
        let other = share.clone().memory.unwrap();
        let mut a = crate::store::Store::join(&pool);
        let b = crate::store::Store::join(&other);
        let p = crate::piece::Geometry::new(100, 1000)
            .unwrap()
            .piece(0)
            .unwrap();
        a.insert(p, bytes::Bytes::from(vec![0; 200]), false, |_| false);
        assert!(
            b.has_room_for(100) && !b.has_room_for(101),
            "one budget for both"
        );
        assert_eq!(share.max_peers, 26);
        assert_eq!(share.max_download_rate, Some(333));
        assert_eq!(share.max_upload_rate, None);
        let many = split_budgets(&total, 1000);
        assert_eq!((many.max_peers, many.max_download_rate), (1, Some(1)));
    }
}
