//! One disk budget for a library mount (`--cache-dir` with `--disk-cache-size` a total for the
//! directory, least recently used across torrents), on a real mount served by libtorrent
//! seeders on loopback: three torrents whose sum is more than the budget, read one after the
//! other with ordinary tools, every byte right; the piece files under the cache directory never
//! add up to more than the budget; and a remount with every seeder gone reads the torrent read
//! last from the disk alone. Two mounts sharing one cache directory leave each other's torrents
//! alone.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::library::{assert_folder_reads, library_swarm, mount_library, status_json, two_swarms};
use common::{Layout, Mount, Swarm, assert_all_files_match, mount_btfs};

const READ_DEADLINE: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;
/// Three torrents of 3 MiB and a bit under a budget of two of them.
const BUDGET: u64 = 6 * MIB;
const FOLDERS: [&str; 3] = ["single.bin", "single.bin (2)", "single.bin (3)"];

/// Three one-seeder swarms of one file each, started at once.
fn three_swarms() -> Vec<Swarm> {
    std::thread::scope(|s| {
        let started: Vec<_> = (0..3u64)
            .map(|i| {
                s.spawn(move || {
                    library_swarm(Layout::Single, 3 * MIB + 1000 * i, 64 * 1024, 70 + i, None)
                })
            })
            .collect();
        (started.into_iter())
            .map(|h| h.join().expect("a swarm started"))
            .collect()
    })
}

/// Bytes of the piece files under `dir`, as one moment saw them: every name is listed first,
/// then each file measured, so a file counted existed from the last listing to its
/// measurement (a piece evicted before the listing ended, or written after it, is not
/// counted), and all of them together at the end of the listing.
fn piece_bytes(dir: &Path) -> u64 {
    let list = |d: &Path| -> Vec<PathBuf> {
        fs::read_dir(d)
            .map(|it| it.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let files: Vec<PathBuf> = (list(dir).iter())
        .flat_map(|d| list(d))
        .filter(|p| p.extension().is_some_and(|e| e == "piece"))
        .collect();
    files
        .iter()
        .filter_map(|f| fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

fn mount(swarms: &[Swarm], cache: &Path) -> Mount {
    let torrents: Vec<&Path> = swarms.iter().map(|s| s.torrent()).collect();
    let cache = cache.to_str().expect("utf-8 temp path");
    let args = ["--cache-dir", cache, "--disk-cache-size", "6M"];
    mount_library(&torrents, &args)
}

/// The `disk_cache` object of a report, and each torrent's disk bytes.
fn disk(report: &serde_json::Value) -> (serde_json::Value, Vec<u64>) {
    let per_torrent = (report["torrents"].as_array().expect("torrents").iter())
        .map(|t| t["disk_cache_used_bytes"].as_u64().expect("disk bytes"))
        .collect();
    (report["disk_cache"].clone(), per_torrent)
}

#[test]
fn three_torrents_share_one_disk_budget_and_the_last_read_survives_a_remount() {
    let mut swarms = three_swarms();
    let total: u64 = swarms.iter().flat_map(|s| s.files()).map(|(_, l)| l).sum();
    assert!(total > BUDGET, "the torrents must not fit together");
    let cache = tempfile::tempdir().expect("tempdir");
    let m = mount(&swarms, cache.path());

    let done = AtomicBool::new(false);
    let (polls, worst) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let (mut polls, mut worst) = (0u32, 0u64);
            while !done.load(Ordering::Relaxed) {
                let bytes = piece_bytes(cache.path());
                assert!(bytes <= BUDGET, "{bytes} bytes of pieces, over {BUDGET}");
                worst = worst.max(bytes);
                polls += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            (polls, worst)
        });
        let reads = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for (folder, swarm) in FOLDERS.iter().zip(&swarms) {
                assert_folder_reads(&m, folder, swarm, READ_DEADLINE);
            }
        }));
        // What is queued for the disk is written by now, or soon: watch a while longer.
        std::thread::sleep(Duration::from_millis(500));
        done.store(true, Ordering::Relaxed);
        let watched = watcher.join();
        reads.unwrap_or_else(|e| std::panic::resume_unwind(e));
        watched.unwrap_or_else(|e| std::panic::resume_unwind(e))
    });
    eprintln!("{polls} polls, at most {worst} of {BUDGET} bytes of pieces on disk");
    assert!(polls >= 3, "the cache directory watched {polls} times only");

    let report = status_json(&m);
    let (pool, per_torrent) = disk(&report);
    assert_eq!(pool["budget"].as_u64(), Some(BUDGET), "{report:#}");
    let dir_used = pool["dir_used"].as_u64().expect("dir_used");
    assert!(dir_used <= BUDGET, "{report:#}");
    assert_eq!(
        per_torrent.iter().sum::<u64>(),
        dir_used,
        "every piece on disk is a mounted torrent's: {per_torrent:?}"
    );
    // The torrent read last is whole on disk; the first gave up the most.
    let last = swarms[2].files()[0].1;
    assert_eq!(per_torrent[2], last, "{per_torrent:?}");
    assert!(per_torrent[0] < per_torrent[1], "{per_torrent:?}");
    assert_eq!(pool["errors"].as_u64(), Some(0), "{report:#}");
    assert!(m.unmount().is_some_and(|s| s.success()));
    assert!(piece_bytes(cache.path()) <= BUDGET);

    // Every seeder gone: the torrent read last comes from the disk alone, every byte right.
    for s in &mut swarms {
        s.stop_seeder(0);
    }
    let m = mount(&swarms, cache.path());
    assert_folder_reads(&m, FOLDERS[2], &swarms[2], READ_DEADLINE);
    let report = status_json(&m);
    let third = &report["torrents"][2];
    assert_eq!(third["downloaded_bytes"].as_u64(), Some(0), "{report:#}");
    assert_eq!(third["verified_bytes"].as_u64(), Some(last), "{report:#}");
    assert!(m.unmount().is_some_and(|s| s.success()));
}

/// Waits (a hang detector only) until `m`'s status says `key` is `want`.
fn wait_status(m: &Mount, key: &str, want: u64) {
    let deadline = std::time::Instant::now() + READ_DEADLINE;
    while m.status_u64(key) != want {
        assert!(
            std::time::Instant::now() < deadline,
            "{key} never reached {want}: {:?}",
            m.status()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two single-torrent mounts share a cache directory whose budget holds one of them: the
/// second leaves the first's pieces alone (it neither counts nor deletes a torrent another
/// mount holds), and each is whole on disk.
#[test]
fn a_torrent_another_mount_holds_is_left_alone() {
    let (a, b) = two_swarms(
        (Layout::Single, 3 * MIB, 81),
        (Layout::Single, 3 * MIB + 500, 82),
        64 * 1024,
    );
    let cache = tempfile::tempdir().expect("tempdir");
    let dir = cache.path().to_str().expect("utf-8 temp path");
    let args = ["--cache-dir", dir, "--disk-cache-size", "4M"];
    let (size_a, size_b) = (a.files()[0].1, b.files()[0].1);

    let ma = mount_btfs(a.torrent(), &args);
    assert_all_files_match(&ma, &a);
    wait_status(&ma, "disk_cache_used_bytes", size_a);
    let mb = mount_btfs(b.torrent(), &args);
    assert_all_files_match(&mb, &b);
    wait_status(&mb, "disk_cache_used_bytes", size_b);
    assert_eq!(mb.status_u64("disk_cache_dir_used_bytes"), size_b);
    assert_eq!(piece_bytes(cache.path()), size_a + size_b, "both whole");
    assert!(ma.unmount().is_some_and(|s| s.success()));
    assert!(mb.unmount().is_some_and(|s| s.success()));
}
