//! `--cache-dir`: verified pieces kept on disk between mounts. A remount with the swarm gone
//! reads every file from disk and downloads nothing; a cache file corrupted between mounts is
//! never served; a bad cache directory fails the mount at once.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    Layout, Mount, Swarm, SwarmOptions, Tracker, assert_all_files_match, btfs, mount_btfs,
};

/// A memory cache much smaller than the torrent, so the disk is what keeps it.
fn mount(swarm: &Swarm, cache_dir: &Path) -> Mount {
    let dir = cache_dir.to_str().expect("utf-8 temp path");
    let args = [
        "--cache-size",
        "512K",
        "--cache-dir",
        dir,
        "--disk-cache-size",
        "64M",
    ];
    mount_btfs(swarm.torrent(), &args)
}

fn swarm(seeders: usize) -> Swarm {
    Swarm::start(SwarmOptions {
        layout: Layout::Multi,
        size: 3 * 1024 * 1024 + 12345,
        piece_length: 64 * 1024,
        seeders,
        trackers: vec![Tracker::Http],
        ..SwarmOptions::default()
    })
}

/// The `.piece` files of the one torrent in `cache_dir` (its folder named by the info-hash;
/// `.btfs-mounts` beside it says which torrents a running mount holds).
fn piece_files(cache_dir: &Path) -> Vec<PathBuf> {
    let torrents: Vec<PathBuf> = fs::read_dir(cache_dir)
        .expect("read cache dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n.len() == 40))
        .collect();
    assert_eq!(torrents.len(), 1, "one info-hash directory: {torrents:?}");
    let mut pieces: Vec<PathBuf> = fs::read_dir(&torrents[0])
        .expect("read torrent cache dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "piece"))
        .collect();
    pieces.sort();
    pieces
}

/// Mounts, reads every file, unmounts: afterwards the cache dir holds the whole torrent.
fn first_viewing(swarm: &Swarm, cache_dir: &Path) {
    let m = mount(swarm, cache_dir);
    assert_all_files_match(&m, swarm);
    assert!(m.status_u64("downloaded_bytes") > 0);
    assert_eq!(m.status_u64("disk_cache_budget_bytes"), 64 * 1024 * 1024);
    let stderr = m.stderr();
    assert!(
        m.unmount().is_some_and(|s| s.success()),
        "btfs exits cleanly after fusermount3 -u:\n{stderr}"
    );
    let pieces = piece_files(cache_dir);
    let total: u64 = pieces.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    let size: u64 = swarm.files().iter().map(|(_, l)| l).sum();
    assert_eq!(total, size, "every piece on disk: {pieces:?}");
}

#[test]
fn a_remount_with_the_swarm_gone_reads_everything_from_disk() {
    let mut swarm = swarm(2);
    let cache = tempfile::tempdir().expect("tempdir");
    first_viewing(&swarm, cache.path());
    swarm.stop_seeder(0);
    swarm.stop_seeder(1);

    let m = mount(&swarm, cache.path());
    assert_all_files_match(&m, &swarm);
    let s = m.status();
    assert_eq!(s["downloaded_bytes"], "0", "{s:?}");
    assert_eq!(s["disk_cache_bad_pieces"], "0", "{s:?}");
    assert_eq!(s["disk_cache_errors"], "0", "{s:?}");
    assert_eq!(
        s["rerequested_blocks"], "0",
        "nothing was asked of anyone: {s:?}"
    );
    assert!(m.status_u64("disk_cache_used_bytes") > 0);
    assert!(m.unmount().is_some_and(|s| s.success()));
}

#[test]
fn a_cache_file_corrupted_between_mounts_is_never_served() {
    let swarm = swarm(1);
    let cache = tempfile::tempdir().expect("tempdir");
    first_viewing(&swarm, cache.path());

    // Same size, one byte flipped: only the SHA1 check can tell.
    let pieces = piece_files(cache.path());
    let victim = &pieces[pieces.len() / 2];
    let mut bytes = fs::read(victim).expect("read piece file");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    fs::write(victim, &bytes).expect("corrupt piece file");

    let m = mount(&swarm, cache.path());
    assert_all_files_match(&m, &swarm);
    let s = m.status();
    assert_eq!(s["disk_cache_bad_pieces"], "1", "{s:?}\n{}", m.stderr());
    assert!(
        m.status_u64("downloaded_bytes") >= 64 * 1024,
        "the piece came from the seeder: {s:?}"
    );
    assert!(m.unmount().is_some_and(|s| s.success()));
}

#[test]
fn a_cache_dir_that_is_a_file_fails_the_mount_with_one_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir");
    let file = tmp.path().join("not-a-dir");
    fs::write(&file, b"x").expect("write");
    let torrent = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lt_multi_v1.torrent");
    let out = Command::new(btfs())
        .arg("mount")
        .arg(&torrent)
        .arg(&mnt)
        .args(["--port", "0", "--no-dht", "-q", "--cache-dir"])
        .arg(&file)
        .output()
        .expect("run btfs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        lines[0].starts_with("btfs: ") && lines[0].contains("not a directory"),
        "{err}"
    );
}
