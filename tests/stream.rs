//! End to end: the real `btfs` binary mounts torrents served by libtorrent seeders behind
//! opentracker on loopback, and ordinary tools read the mount.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Layout, MOUNT_ARGS, Mount, Swarm, SwarmOptions, Tracker, assert_all_files_match, btfs,
    mount_btfs, run, sha1_file, signal,
};

/// Where a swarm file appears under the mount: torrent paths (relative to the swarm's data
/// folder) keep a multi-file torrent's top folder, as Debian's btfs shows them.
fn mounted(m: &Mount, _swarm: &Swarm, rel: &Path) -> PathBuf {
    m.path().join(rel)
}

fn source(swarm: &Swarm, rel: &Path) -> PathBuf {
    swarm.data_parent().join(rel)
}

#[test]
fn every_file_matches_its_source_over_an_http_tracker() {
    let swarm = Swarm::start(SwarmOptions::multi(vec![Tracker::Http], 3));
    let m = mount_btfs(swarm.torrent(), &[]);
    assert_all_files_match(&m, &swarm);
    assert!(m.status_u64("verified_pieces") > 0);
    // Our log went to a file: plain text, no terminal colour codes.
    let log = m.stderr();
    assert!(log.contains("ready: "), "{log}");
    assert!(!log.contains('\x1b'), "colour codes in a log file: {log:?}");
    assert!(
        m.unmount().is_some_and(|s| s.success()),
        "btfs exits cleanly after fusermount3 -u"
    );
}

#[test]
fn every_file_matches_its_source_over_a_udp_tracker() {
    let swarm = Swarm::start(SwarmOptions::multi(vec![Tracker::Udp], 3));
    let m = mount_btfs(swarm.torrent(), &[]);
    assert_all_files_match(&m, &swarm);
    // (Seeders drop us once we hold every piece, so count what the tracker gave, not who stays.)
    let s = m.status();
    let tracker = &s["tracker"];
    assert!(
        tracker.starts_with("udp://") && tracker.contains("(ok, "),
        "{s:?}"
    );
    assert!(
        m.status_u64("known_peers") >= 3,
        "the three seeders came from UDP: {s:?}"
    );
}

#[test]
fn a_dead_tracker_in_its_own_tier_does_not_stop_the_live_one() {
    let swarm = Swarm::start(SwarmOptions::multi(
        vec![Tracker::DeadUdp, Tracker::DeadHttp, Tracker::Http],
        2,
    ));
    let m = mount_btfs(swarm.torrent(), &[]);
    assert_all_files_match(&m, &swarm);
}

#[test]
fn reads_at_random_offsets_across_file_and_piece_boundaries_are_exact() {
    let swarm = Swarm::start(SwarmOptions::multi(vec![Tracker::Http], 3));
    let m = mount_btfs(swarm.torrent(), &["--cache-size", "1M"]);
    let files = swarm.files();
    let mut rng = 0x2545f4914f6cdd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let piece = 64 * 1024u64;
    for (rel, len) in files.iter().filter(|(_, l)| *l > 0) {
        let src = source(&swarm, rel);
        let dst = mounted(&m, &swarm, rel);
        // Offsets on and around piece edges, the file's end, and random ones.
        let mut offsets = vec![0, len.saturating_sub(1), len / 2];
        for k in 1..4 {
            offsets.push((k * piece).saturating_sub(1).min(len - 1));
        }
        for _ in 0..6 {
            offsets.push(next() % len);
        }
        for off in offsets {
            let want_len = (next() % (3 * piece)).max(1);
            let want = read_at(&src, off, want_len);
            // dd is the ordinary tool a user would reach for.
            let out = Command::new("dd")
                .arg(format!("if={}", dst.display()))
                .args(["iflag=skip_bytes,count_bytes", "bs=64K", "status=none"])
                .arg(format!("skip={off}"))
                .arg(format!("count={want_len}"))
                .stderr(Stdio::piped())
                .output()
                .expect("dd");
            assert!(
                out.status.success(),
                "dd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.stdout == want,
                "{rel:?} at {off}+{want_len}: bytes differ\n{}",
                m.stderr()
            );
        }
    }
    // A read that starts in one file and continues past its end gets only that file's bytes.
    let (rel, len) = files.iter().find(|(_, l)| *l > 10).expect("a file");
    let mut f = fs::File::open(mounted(&m, &swarm, rel)).expect("open");
    f.seek(SeekFrom::Start(len - 5)).expect("seek");
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).expect("read to end");
    assert_eq!(tail, read_at(&source(&swarm, rel), len - 5, 5));
}

fn read_at(path: &Path, off: u64, len: u64) -> Vec<u8> {
    let mut f = fs::File::open(path).expect("open source");
    f.seek(SeekFrom::Start(off)).expect("seek source");
    let mut buf = Vec::new();
    f.take(len).read_to_end(&mut buf).expect("read source");
    buf
}

#[test]
fn two_files_read_at_once_both_complete() {
    let mut opts = SwarmOptions::multi(vec![Tracker::Http], 3);
    opts.size = 8 * 1024 * 1024;
    // Slow seeders, so that the two reads overlap for a while.
    opts.upload_limit = Some(2 * 1024 * 1024);
    let swarm = Swarm::start(opts);
    let m = mount_btfs(swarm.torrent(), &[]);
    let mut files = swarm.files();
    files.sort_by_key(|(_, l)| std::cmp::Reverse(*l));
    let picked: Vec<_> = files.into_iter().take(2).collect();
    let handles: Vec<_> = picked
        .iter()
        .map(|(rel, _)| {
            let dst = mounted(&m, &swarm, rel);
            std::thread::spawn(move || sha1_file(&dst))
        })
        .collect();
    for ((rel, _), h) in picked.iter().zip(handles) {
        let got = h.join().expect("reader thread");
        assert_eq!(got, sha1_file(&source(&swarm, rel)), "{rel:?}");
    }
}

#[test]
fn a_libtorrent_leecher_downloads_the_whole_torrent_from_us_alone() {
    let swarm = Swarm::start(SwarmOptions::multi(vec![Tracker::Http], 2));
    let m = mount_btfs(swarm.torrent(), &[]);
    assert_all_files_match(&m, &swarm);
    let port = m.status_u64("listen_port") as u16;
    let us = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let leech = swarm.leech([127, 0, 99, 1].into(), &[us], Duration::from_secs(120), 1);
    assert!(
        leech.complete,
        "leecher finished from btfs alone: {leech:?}\n{}",
        m.stderr()
    );
    assert_eq!(leech.hash_failures, 0, "{leech:?}");
    assert!(m.status_u64("uploaded_bytes") > 0);
}

#[test]
fn listing_a_thousand_files_downloads_nothing() {
    let swarm = Swarm::start(SwarmOptions {
        layout: Layout::Many,
        piece_length: 16 * 1024,
        ..SwarmOptions::default()
    });
    let m = mount_btfs(swarm.torrent(), &[]);
    let listing = run(Command::new("ls").arg("-lR").arg(m.path()));
    let find = run(Command::new("find").arg(m.path()).args(["-type", "f"]));
    assert_eq!(find.lines().count(), swarm.files().len());
    // Every size in the listing is right.
    for (rel, len) in swarm.files().iter().take(50) {
        let meta = fs::metadata(mounted(&m, &swarm, rel)).expect("stat");
        assert_eq!(meta.len(), *len);
    }
    assert!(listing.lines().count() > 1000);
    assert_eq!(
        m.status_u64("downloaded_bytes"),
        0,
        "ls -lR must not download"
    );
    assert_eq!(m.status_u64("verified_pieces"), 0);

    // `ls -l` asks each file for its SELinux label and ACLs unless the filesystem says it
    // has no such attributes at all: then it stops asking, and a big folder lists in one
    // round trip per file less.
    let traced = Command::new("strace")
        .args(["-f", "-c", "-e", "trace=getxattr,lgetxattr"])
        .args(["-o", "/dev/stdout", "ls", "-lR"])
        .arg(m.path())
        .stderr(std::process::Stdio::null())
        .output()
        .expect("strace runs");
    let table = String::from_utf8_lossy(&traced.stdout);
    let calls: u64 = table
        .lines()
        .filter(|l| l.trim_end().ends_with("getxattr"))
        .filter_map(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
        .sum();
    assert!(
        calls < 20,
        "ls -lR made {calls} xattr calls for {} files:\n{table}",
        swarm.files().len()
    );
    // The status attribute stays readable.
    assert_eq!(m.status_u64("verified_pieces"), 0);
}

#[test]
fn a_lying_seeder_never_makes_a_read_return_wrong_bytes() {
    let mut opts = SwarmOptions::multi(vec![Tracker::Http], 3);
    opts.corrupt_seeders = 1;
    let swarm = Swarm::start(opts);
    let bad = swarm.corrupt_seeders()[0].to_string();
    // Connect to the liar directly too, so that it certainly serves us something.
    let m = mount_btfs(swarm.torrent(), &["--peer", &bad]);
    assert_all_files_match(&m, &swarm);
    let s = m.status();
    let failures: u64 = s["hash_failures"].parse().expect("hash_failures");
    let banned: u64 = s["banned_peers"].parse().expect("banned_peers");
    assert!(
        failures >= 1,
        "the corrupt seeder sent something: {s:?}\n{}",
        m.stderr()
    );
    assert_eq!(
        banned,
        1,
        "exactly the liar is banned: {s:?}\n{}",
        m.stderr()
    );
}

/// A mount of a torrent nobody seeds, and a `cat` blocked reading its largest file.
fn blocked_read() -> (Swarm, Mount, std::process::Child) {
    let mut swarm = Swarm::start(SwarmOptions::multi(vec![Tracker::Http], 1));
    swarm.stop_seeder(0);
    let m = mount_btfs(swarm.torrent(), &[]);
    let (rel, _) = swarm
        .files()
        .into_iter()
        .max_by_key(|(_, l)| *l)
        .expect("a file");
    let dst = mounted(&m, &swarm, &rel);
    let cat = Command::new("cat")
        .arg(&dst)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cat");
    // Metadata and listings still answer while the read waits.
    assert!(fs::metadata(&dst).is_ok());
    assert_eq!(fs::read_dir(m.path()).expect("readdir").count(), 1);
    (swarm, m, cat)
}

/// Waits for the blocked `cat` to fail and the mount to go. The deadline is a hang detector,
/// not a timing assertion: the test fails instead of hanging forever.
fn assert_read_fails_and_mount_goes(m: &Mount, cat: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = cat.try_wait().expect("cat status") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "cat still blocked\n{}",
            m.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        !status.success(),
        "the blocked read fails instead of returning wrong data"
    );
    while m.is_mounted() {
        assert!(Instant::now() < deadline, "still mounted\n{}", m.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_while_a_read_is_blocked_unmounts_and_fails_the_read() {
    let (_swarm, m, mut cat) = blocked_read();
    assert!(
        cat.try_wait().expect("cat status").is_none(),
        "the read is blocked"
    );
    m.signal(15);
    assert_read_fails_and_mount_goes(&m, &mut cat);
}

#[test]
fn lazy_unmount_while_a_read_is_blocked_ends_btfs() {
    let (_swarm, m, mut cat) = blocked_read();
    assert!(
        cat.try_wait().expect("cat status").is_none(),
        "the read is blocked"
    );
    // A plain unmount is refused while cat holds the file; a lazy one detaches at once.
    run(Command::new("fusermount3").args(["-u", "-z"]).arg(m.path()));
    assert_read_fails_and_mount_goes(&m, &mut cat);
    assert!(
        m.unmount().is_some_and(|s| s.success()),
        "btfs exits by itself, cleanly"
    );
}

/// PIDs of processes whose command line mentions `needle` (our daemon, found by its mountpoint).
fn pids_with_arg(needle: &Path) -> Vec<u32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == needle))
        })
        .collect()
}

/// Ends what a daemon test started, even when it fails: by PID, then a lazy unmount.
struct DaemonGuard {
    mnt: PathBuf,
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        for pid in pids_with_arg(&self.mnt) {
            // The daemon this test started, found by its unique mountpoint.
            signal(pid, 9);
        }
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.mnt)
            .status();
    }
}

#[test]
fn daemon_detaches_once_mounted_and_exits_on_fusermount_u() {
    let swarm = Swarm::start(SwarmOptions::multi(vec![Tracker::Http], 2));
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir");
    let _guard = DaemonGuard { mnt: mnt.clone() };
    let out = Command::new(btfs())
        .arg("mount")
        .arg(swarm.torrent())
        .arg(&mnt)
        .args(MOUNT_ARGS)
        .arg("--daemon")
        .output()
        .expect("run btfs --daemon");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The parent returned only once the mount was ready.
    assert!(common::is_fuse_mount(&mnt));
    let daemon = pids_with_arg(&mnt);
    assert_eq!(daemon.len(), 1, "one background process serves the mount");
    let (rel, _) = swarm
        .files()
        .into_iter()
        .max_by_key(|(_, l)| *l)
        .expect("a file");
    assert_eq!(sha1_file(&mnt.join(&rel)), sha1_file(&source(&swarm, &rel)));
    run(Command::new("fusermount3").arg("-u").arg(&mnt));
    let deadline = Instant::now() + Duration::from_secs(60);
    while Path::new(&format!("/proc/{}", daemon[0])).exists() {
        assert!(
            Instant::now() < deadline,
            "daemon still running after fusermount3 -u"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_download_cap_is_honoured() {
    let mut opts = SwarmOptions::multi(vec![Tracker::Http], 3);
    opts.size = 2 * 1024 * 1024;
    let swarm = Swarm::start(opts);
    let m = mount_btfs(swarm.torrent(), &["--max-download-rate", "512K"]);
    let (rel, len) = swarm
        .files()
        .into_iter()
        .max_by_key(|(_, l)| *l)
        .expect("a file");
    let start = Instant::now();
    assert_eq!(
        sha1_file(&mounted(&m, &swarm, &rel)),
        sha1_file(&source(&swarm, &rel))
    );
    // A lower bound only: the cap allows one burst (a quarter second of rate) up front, and
    // each peer task takes its tokens after reading a block, so each of the 3 seeders' last
    // block is used before its wait.
    let rate = 512.0 * 1024.0;
    let least = (len as f64 - rate / 4.0 - 3.0 * 16384.0) / rate;
    let took = start.elapsed().as_secs_f64();
    assert!(
        took >= least,
        "{len} bytes at 512 KiB/s took {took:.2} s, less than {least:.2} s"
    );
}

#[test]
fn no_upload_serves_nothing_to_a_leecher() {
    let swarm = Swarm::start(SwarmOptions::multi(vec![Tracker::Http], 2));
    let m = mount_btfs(swarm.torrent(), &["--no-upload"]);
    assert_all_files_match(&m, &swarm);
    let port = m.status_u64("listen_port") as u16;
    let us = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let leech = swarm.leech([127, 0, 98, 1].into(), &[us], Duration::from_secs(10), 1);
    assert!(!leech.complete, "{leech:?}");
    assert_eq!(m.status_u64("uploaded_bytes"), 0);
}

/// `(position, window_start)` of the mount's readers of `path`, from the status attribute.
fn readers_of(m: &Mount, path: &str) -> Vec<(u64, u64)> {
    let out = run(Command::new("getfattr")
        .args(["--only-values", "-n", "user.btfs.status"])
        .arg(m.path()));
    out.lines()
        .filter_map(|l| l.strip_prefix("reader: "))
        .filter(|l| l.starts_with(&format!("{path} ")))
        .map(|l| {
            let field = |k: &str| -> u64 {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{k} in {l}"))
            };
            (field("position="), field("window_start="))
        })
        .collect()
}

#[test]
fn after_a_seek_reads_are_right_and_the_readahead_window_moves_with_them() {
    let swarm = Swarm::start(SwarmOptions {
        layout: Layout::Single,
        size: 16 * 1024 * 1024,
        piece_length: 64 * 1024,
        seeders: 3,
        trackers: vec![Tracker::Http],
        ..SwarmOptions::default()
    });
    let m = mount_btfs(swarm.torrent(), &[]);
    let (rel, len) = swarm.files().into_iter().next().expect("the file");
    let name = rel.to_string_lossy().into_owned();
    let mut f = fs::File::open(mounted(&m, &swarm, &rel)).expect("open");
    let mut head = vec![0; 1024 * 1024];
    f.read_exact(&mut head).expect("read head");
    assert_eq!(head, read_at(&source(&swarm, &rel), 0, head.len() as u64));
    let seek = len * 7 / 10;
    let before = readers_of(&m, &name);
    assert_eq!(before.len(), 1, "one open file, one reader: {before:?}");
    assert!(
        before[0].1 < seek,
        "window still near the start: {before:?}"
    );

    f.seek(SeekFrom::Start(seek)).expect("seek");
    let mut buf = vec![0; 256 * 1024];
    f.read_exact(&mut buf).expect("read after seek");
    assert_eq!(buf, read_at(&source(&swarm, &rel), seek, buf.len() as u64));
    let after = readers_of(&m, &name);
    assert_eq!(after.len(), 1, "{after:?}");
    let (position, window_start) = after[0];
    assert!(
        position > seek,
        "the reader is past the seek target: {after:?}"
    );
    assert!(
        window_start >= seek,
        "the window moved to the new position: {after:?}"
    );
    drop(f);
    // The kernel sends RELEASE after close returns; wait for it (a hang detector only).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !readers_of(&m, &name).is_empty() {
        assert!(
            Instant::now() < deadline,
            "closing the file drops its reader"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
