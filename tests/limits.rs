//! Bounded resources, end to end: the real `btfs` binary under a tight file-descriptor limit
//! (`ulimit -n 256`) with a flood of connections that never handshake, libtorrent seeders
//! behind opentracker, the disk cache in use. Running short of descriptors means fewer peers,
//! never a failed read. Deadlines are hang detectors only.

mod common;

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::{MOUNT_ARGS, Mount, Swarm, SwarmOptions, Tracker, assert_all_files_match, btfs};

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
