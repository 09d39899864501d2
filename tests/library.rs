//! Several torrents in one mount (`btfs mount A B C /mnt/x`): each a folder named after its
//! torrent, all served by one btfs process from libtorrent seeders (one swarm, tracker and
//! seeder per torrent, on loopback), read at once with ordinary tools; bad sources left out
//! with a clear line while the others mount.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::library::{folder_files, library_swarm, mount_library, root_names, status_json};
use common::{Layout, MOUNT_ARGS, Mount, Swarm, assert_tree_matches, btfs, run};

/// Reading a few MiB from loopback seeders; generous for slow CI (a hang detector only).
const READ_DEADLINE: Duration = Duration::from_secs(120);

/// Starts the swarms at once (each seeder hashes its data first).
fn swarms(specs: &[(Layout, u64, u64)]) -> Vec<Swarm> {
    std::thread::scope(|s| {
        let started: Vec<_> = (specs.iter())
            .map(|&(layout, size, seed)| {
                s.spawn(move || library_swarm(layout, size, 32 * 1024, seed, None))
            })
            .collect();
        (started.into_iter())
            .map(|h| h.join().expect("a swarm started"))
            .collect()
    })
}

/// Reads every file of every `(folder, swarm)` through the mount, one thread per torrent, all
/// at once, each compared with its source by sha1sum.
fn read_all_at_once(m: &Mount, torrents: &[(&str, &Swarm)]) {
    std::thread::scope(|s| {
        for &(folder, swarm) in torrents {
            let dir = m.path().join(folder);
            s.spawn(move || {
                let (parent, files) = folder_files(swarm);
                assert_tree_matches(&dir, &parent, &files, READ_DEADLINE, || {
                    format!("{folder}\n{}", m.stderr())
                });
            });
        }
    });
}

/// `ls -lR` of the mount as (directory, file name, size) of every regular file.
fn ls_lr(mnt: &Path) -> BTreeSet<(PathBuf, String, u64)> {
    let out = run(Command::new("ls")
        .args(["-lRN", "-n", "--time-style=+%s"])
        .arg(mnt));
    let mut files = BTreeSet::new();
    let mut dir = mnt.to_path_buf();
    for line in out.lines() {
        if let Some(header) = line.strip_suffix(':').filter(|l| l.starts_with('/')) {
            dir = PathBuf::from(header);
        } else if line.starts_with('-') {
            // mode, links, uid, gid, size, time, then the name (which may hold spaces).
            let mut rest = line;
            let mut fields = Vec::new();
            for _ in 0..6 {
                let (field, after) = rest.trim_start().split_once(' ').expect("an ls line");
                fields.push(field);
                rest = after;
            }
            let size = fields[4].parse().expect("a size");
            files.insert((dir.clone(), rest.to_string(), size));
        }
    }
    files
}

/// The regular files a swarm's torrent must show in `folder`, as `ls_lr` lists them.
fn listed(mnt: &Path, folder: &str, swarm: &Swarm) -> BTreeSet<(PathBuf, String, u64)> {
    let (_, files) = folder_files(swarm);
    (files.into_iter())
        .map(|(rel, len)| {
            let path = mnt.join(folder).join(rel);
            let name = path.file_name().expect("a name").to_string_lossy().into();
            (path.parent().expect("a parent").to_path_buf(), name, len)
        })
        .collect()
}

/// Two single-file torrents of the same name and a multi-file one: three folders (the second
/// single file's with a suffix), every file listed with its size and read right at once, and
/// `btfs status` lists each torrent besides the sum.
#[test]
fn three_torrents_in_one_mount_are_read_at_once() {
    let all = swarms(&[
        (Layout::Single, (1 << 20) + 17, 21),
        (Layout::Multi, 1 << 20, 22),
        (Layout::Single, 700_001, 23),
    ]);
    let sources: Vec<&Path> = all.iter().map(|s| s.torrent()).collect();
    let m = mount_library(&sources, &[]);
    let folders = ["single.bin", "multi", "single.bin (2)"];
    assert_eq!(
        root_names(&m),
        ["multi", "single.bin", "single.bin (2)"],
        "{}",
        m.stderr()
    );
    let want: BTreeSet<_> = (folders.iter().zip(&all))
        .flat_map(|(f, s)| listed(m.path(), f, s))
        .collect();
    assert_eq!(ls_lr(m.path()), want, "{}", m.stderr());

    let torrents: Vec<(&str, &Swarm)> = folders.iter().copied().zip(&all).collect();
    read_all_at_once(&m, &torrents);

    let report = status_json(&m);
    let listed = report["torrents"].as_array().expect("a torrents list");
    assert_eq!(listed.len(), 3, "{report:#}");
    let mut pieces = 0;
    for ((folder, swarm), t) in torrents.iter().zip(listed) {
        assert_eq!(t["folder"], *folder, "{report:#}");
        assert_eq!(t["info_hash"], swarm.info_hash(), "{report:#}");
        // Every file was read whole: every piece is verified.
        assert_eq!(t["verified_pieces"], t["total_pieces"], "{report:#}");
        assert!(t["peers"].as_u64().is_some(), "{report:#}");
        assert!(t["download_rate"].as_u64().is_some(), "{report:#}");
        pieces += t["total_pieces"].as_u64().expect("pieces");
    }
    assert_eq!(report["total_pieces"].as_u64(), Some(pieces), "{report:#}");
    assert_eq!(report["mountpoint"].as_str(), m.path().to_str());
    let text = run(Command::new(btfs()).arg("status").arg(m.path()));
    assert!(
        !text.contains("info_hash: \n"),
        "an empty info_hash line:\n{text}"
    );
    for (folder, swarm) in &torrents {
        let block = format!("torrent: {folder}\n  name: ");
        assert!(text.contains(&block), "{text}");
        assert!(
            text.contains(&format!("  info_hash: {}\n", swarm.info_hash())),
            "{text}"
        );
    }
    // The root's attribute tells the same.
    let attr = m.status();
    assert_eq!(
        attr.get("total_pieces"),
        Some(&pieces.to_string()),
        "{attr:?}"
    );
    assert!(
        m.unmount().is_some_and(|s| s.success()),
        "btfs exits cleanly after fusermount3 -u"
    );
}

/// A malformed .torrent file, a bad magnet link and a magnet whose metadata never comes,
/// among two good torrents: each bad one is named on stderr with why, as soon as it is known
/// (sources load at once: the broken file is said before the magnet given before it times
/// out), and the two good ones mount and read right.
#[test]
fn bad_sources_are_left_out_and_the_others_mount() {
    let all = swarms(&[(Layout::Multi, 1 << 20, 31), (Layout::Single, 300_000, 32)]);
    let scratch = tempfile::tempdir().expect("tempdir");
    let broken = scratch.path().join("broken.torrent");
    fs::write(&broken, b"d8:announce5:nope").expect("write a broken torrent");
    let bad_magnet = Path::new("magnet:?xt=urn:btih:nothex");
    let silent = Path::new("magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567");
    let cache = scratch.path().join("metadata");
    let cache = cache.to_str().expect("a UTF-8 path");
    let sources = [
        all[0].torrent(),
        silent,
        &broken,
        bad_magnet,
        all[1].torrent(),
    ];
    let extra = ["--metadata-timeout", "2", "--metadata-cache", cache];
    let m = mount_library(&sources, &extra);
    let err = m.stderr();
    assert_eq!(root_names(&m), ["multi", "single.bin"], "{err}");
    let said = |source: &Path| {
        let source = source.to_string_lossy();
        (err.lines())
            .position(|l| l.contains(&*source) && l.contains("left out of the mount"))
            .unwrap_or_else(|| panic!("no line for {source}:\n{err}"))
    };
    assert!(said(&broken) < said(silent), "{err}");
    assert!(said(bad_magnet) < said(silent), "{err}");
    assert!(err.contains("no metadata after 2 s"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    read_all_at_once(&m, &[("multi", &all[0]), ("single.bin", &all[1])]);

    let report = status_json(&m);
    let warnings = report["warnings"].as_array().expect("warnings");
    let named =
        |needle: &str| (warnings.iter()).any(|w| w.as_str().is_some_and(|w| w.contains(needle)));
    assert!(named(&broken.to_string_lossy()), "{report:#}");
    assert_eq!(report["torrents"].as_array().map(Vec::len), Some(2));
    assert!(m.unmount().is_some_and(|s| s.success()));
}

/// Nothing loads: `btfs mount` fails with a line per source and one saying nothing mounted.
#[test]
fn a_mount_of_only_bad_sources_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir");
    let broken = dir.path().join("broken.torrent");
    fs::write(&broken, b"not a torrent").expect("write");
    let missing = dir.path().join("missing.torrent");
    let out = Command::new(btfs())
        .arg("mount")
        .args([&broken, &missing, &mnt])
        .args(MOUNT_ARGS)
        .output()
        .expect("run btfs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("none of the 2 torrents could be mounted"),
        "{err}"
    );
    for source in [&broken, &missing] {
        assert!(err.contains(&*source.to_string_lossy()), "{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(!common::is_fuse_mount(&mnt));
}

/// The same torrent twice, once as a file and once as a magnet link (its metadata fetched
/// from the seeder): one folder, and a line saying the second was the same torrent.
#[test]
fn the_same_torrent_twice_is_mounted_once() {
    let s = library_swarm(Layout::Single, 500_000, 32 * 1024, 41, None);
    let magnet = format!(
        "magnet:?xt=urn:btih:{}&tr={}",
        s.info_hash(),
        s.http_tracker_url().replace(':', "%3A").replace('/', "%2F")
    );
    let scratch = tempfile::tempdir().expect("tempdir");
    let cache = scratch.path().join("metadata");
    let cache = cache.to_str().expect("a UTF-8 path");
    let sources = [s.torrent(), Path::new(&magnet)];
    let m = mount_library(&sources, &["--metadata-cache", cache]);
    let err = m.stderr();
    assert_eq!(root_names(&m), ["single.bin"], "{err}");
    let line = (err.lines())
        .find(|l| l.contains("the same torrent as"))
        .unwrap_or_else(|| panic!("no line for the duplicate:\n{err}"));
    assert!(line.contains(&magnet), "{line}");
    assert!(line.contains(s.info_hash()), "{line}");
    read_all_at_once(&m, &[("single.bin", &s)]);
    assert!(m.unmount().is_some_and(|s| s.success()));
}
