//! Bounded resources, end to end: the real `btfs` binary under a tight file-descriptor limit
//! (`ulimit -n 256`) with a flood of connections that never handshake, libtorrent seeders
//! behind opentracker, the disk cache in use. Running short of descriptors means fewer peers,
//! never a failed read. Deadlines are hang detectors only.

mod common;

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Layout, MOUNT_ARGS, Mount, Reaped, Swarm, SwarmOptions, Tracker, assert_all_files_match, btfs,
    mount_btfs, python, sha1_file,
};

/// Connections opened to btfs that never send a byte: more than the 256 descriptors allow.
const SILENT: usize = 300;

/// `btfs mount` with `extra` flags under `prlimit --nofile=256:256` (soft and hard, so btfs
/// cannot raise it), which execs btfs: the mount's PID is btfs's.
fn mount_limited(torrent: &Path, extra: &[&str]) -> Mount {
    Mount::with_args(Path::new("/usr/bin/prlimit"), |mnt, _scratch| {
        let mut args: Vec<OsString> = vec!["--nofile=256:256".into(), "--".into()];
        args.extend([btfs().into(), "mount".into(), torrent.into(), mnt.into()]);
        args.extend(MOUNT_ARGS.iter().chain(extra).map(OsString::from));
        args
    })
}

#[test]
fn few_file_descriptors_and_a_connection_flood_mean_fewer_peers_not_failed_reads() {
    let swarm = Swarm::start(SwarmOptions::multi(vec![Tracker::Http], 3));
    let cache = tempfile::tempdir().expect("tempdir");
    let cache_dir = cache.path().to_str().expect("utf-8 path");
    // A small memory cache with a disk cache behind it: reading twice loads pieces from disk.
    let m = mount_limited(
        swarm.torrent(),
        &[
            "--cache-size",
            "1M",
            "--cache-dir",
            cache_dir,
            "--disk-cache-size",
            "64M",
        ],
    );
    let port: u16 = m.status_u64("listen_port") as u16;
    let at = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    // Kept open for the whole test: each holds one of btfs's descriptors, or is refused.
    let flood: Vec<TcpStream> = (0..SILENT)
        .filter_map(|_| TcpStream::connect_timeout(&at, Duration::from_secs(5)).ok())
        .collect();
    assert!(!flood.is_empty(), "btfs accepted no connection at all");

    assert_all_files_match(&m, &swarm);
    // Again: pieces the 1 MiB of memory dropped come back from the disk cache.
    assert_all_files_match(&m, &swarm);
    // Disk-cache reads and writes never failed for want of a descriptor.
    assert_eq!(m.status_u64("disk_cache_errors"), 0, "{:?}", m.status());
    assert_eq!(m.status_u64("hash_failures"), 0);
    drop(flood);
    let status = m.unmount();
    assert!(status.is_some_and(|s| s.success()), "btfs exited badly");
}

/// 80 leechers downloading from btfs over and over while two readers stream a file through
/// the mount: btfs's peak memory stays within its cache plus 64 MiB, and the readers get
/// every byte right.
#[test]
fn eighty_leechers_and_two_readers_stay_within_the_memory_budget() {
    const CACHE_MIB: u64 = 32;
    let swarm = Swarm::start(SwarmOptions {
        layout: Layout::Single,
        size: 96 * 1024 * 1024,
        piece_length: 256 * 1024,
        seeders: 3,
        trackers: vec![Tracker::Http],
        ..SwarmOptions::default()
    });
    let m = mount_btfs(swarm.torrent(), &["--cache-size", &format!("{CACHE_MIB}M")]);
    let port = m.status_u64("listen_port");
    let info_hash = m.status()["info_hash"].clone();
    let (rel, total) = swarm.files().into_iter().next().expect("one file");
    let piece = 256 * 1024u64;
    let ready = tempfile::NamedTempFile::new().expect("tempfile");
    let _ = std::fs::remove_file(ready.path());
    let leechers = Reaped(
        Command::new(python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/leechers.py"))
            .arg(format!("127.0.0.1:{port}"))
            .arg(&info_hash)
            .args(["--pieces", &total.div_ceil(piece).to_string()])
            .args(["--piece-length", &piece.to_string()])
            .args(["--total", &total.to_string()])
            .args(["--count", "80"])
            .arg("--ready-file")
            .arg(ready.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("scripts/leechers.py"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.path().exists() {
        assert!(Instant::now() < deadline, "the leechers never connected");
        std::thread::sleep(Duration::from_millis(50));
    }

    let file = m.path().join(&rel);
    let want = sha1_file(&swarm.data_parent().join(&rel));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let file = file.clone();
            std::thread::spawn(move || sha1_file(&file))
        })
        .collect();
    for r in readers {
        assert_eq!(r.join().expect("reader"), want, "content of {rel:?}");
    }
    assert!(
        m.status_u64("uploaded_bytes") > 0,
        "nobody downloaded from us"
    );
    let hwm = vm_hwm(m.pid());
    eprintln!("btfs peak RSS: {} MiB", hwm >> 20);
    let budget = (CACHE_MIB + 64) * 1024 * 1024;
    assert!(
        hwm <= budget,
        "peak RSS {} MiB over the cache ({CACHE_MIB} MiB) plus 64 MiB",
        hwm >> 20
    );
    drop(leechers);
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn vm_hwm(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib * 1024
}
