//! Library mounts (several torrents, each a folder under the mountpoint): mounting one, a swarm
//! of one seeder with data of its own per torrent, where a torrent's files appear in its
//! folder, and reading a folder back.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{
    Layout, MOUNT_ARGS, Mount, Swarm, SwarmOptions, Tracker, assert_tree_matches, btfs,
    files_under, run,
};

/// `btfs mount <sources...> <mnt>` with the test flags and `extra`, waiting until mounted.
/// The torrents it keeps (`--state-dir`) go in the mount's scratch directory, never the user's.
pub fn mount_library(sources: &[&Path], extra: &[&str]) -> Mount {
    Mount::with_args(btfs(), |mnt, scratch| {
        let mut args: Vec<OsString> = vec!["mount".into()];
        args.extend(sources.iter().map(|s| s.as_os_str().to_owned()));
        args.push(mnt.into());
        args.extend(MOUNT_ARGS.iter().chain(extra).map(OsString::from));
        args.extend(["--state-dir".into(), scratch.join("state").into()]);
        args
    })
}

/// One seeder behind its own HTTP tracker; `seed` makes the data differ between swarms.
pub fn library_swarm(
    layout: Layout,
    size: u64,
    piece_length: u32,
    seed: u64,
    upload_limit: Option<u64>,
) -> Swarm {
    Swarm::start(SwarmOptions {
        layout,
        size,
        piece_length,
        seeders: 1,
        trackers: vec![Tracker::Http],
        data_seed: seed,
        upload_limit,
        ..SwarmOptions::default()
    })
}

/// Where a swarm's files are relative to, and the files, as its folder holds them: a
/// multi-file torrent's root folder is the library's folder; a single file is inside it.
pub fn folder_files(swarm: &Swarm) -> (PathBuf, Vec<(PathBuf, u64)>) {
    let parent = match swarm.options().layout {
        Layout::Single => swarm.data_parent(),
        _ => swarm.data_path().to_path_buf(),
    };
    let files = files_under(swarm.data_path(), &parent);
    (parent, files)
}

/// Every file of `swarm` read through `folder` of the mount, compared with its source.
pub fn assert_folder_reads(m: &Mount, folder: &str, swarm: &Swarm, deadline: Duration) {
    let (parent, files) = folder_files(swarm);
    assert_tree_matches(&m.path().join(folder), &parent, &files, deadline, || {
        format!("{folder}\n{}\nthe swarm:\n{}", m.stderr(), swarm.logs())
    });
}

/// The names in the mount's root, sorted.
pub fn root_names(m: &Mount) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(m.path())
        .expect("list the root")
        .map(|e| e.expect("an entry").file_name().to_string_lossy().into())
        .collect();
    names.sort();
    names
}

/// `btfs status --json MOUNT`.
pub fn status_json(m: &Mount) -> serde_json::Value {
    let out = run(Command::new(btfs())
        .args(["status", "--json"])
        .arg(m.path()));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON: {e}: {out}"))
}

/// Each torrent's (state, peers) in a library's status report, in folder order.
pub fn torrent_states(report: &serde_json::Value) -> Vec<(String, u64)> {
    (report["torrents"]
        .as_array()
        .expect("a torrents list")
        .iter())
    .map(|t| {
        let state = t["state"].as_str().expect("a state").to_string();
        (state, t["peers"].as_u64().expect("peers"))
    })
    .collect()
}

/// Polls `btfs status` until `cond` holds for the torrents' (state, peers); fails with the
/// report and the mount's log after `deadline` (a hang detector, not a timing check).
pub fn wait_for_states(
    m: &Mount,
    what: &str,
    deadline: Duration,
    cond: impl Fn(&[(String, u64)]) -> bool,
) {
    let start = Instant::now();
    loop {
        let report = status_json(m);
        if cond(&torrent_states(&report)) {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "{what}: not after {deadline:?}: {report:#}\n{}",
            m.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two one-seeder swarms, `(layout, size, seed)` each, started at once (each seeder hashes its
/// data first).
pub fn two_swarms(
    a: (Layout, u64, u64),
    b: (Layout, u64, u64),
    piece_length: u32,
) -> (Swarm, Swarm) {
    std::thread::scope(|s| {
        let start = |(layout, size, seed): (Layout, u64, u64)| {
            s.spawn(move || library_swarm(layout, size, piece_length, seed, None))
        };
        let (a, b) = (start(a), start(b));
        (a.join().expect("a swarm"), b.join().expect("a swarm"))
    })
}
