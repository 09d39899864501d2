//! Local service discovery (BEP 14) end to end: peers that know nothing of each other (no
//! tracker, no DHT, no `--peer`) find each other through the multicast group, and every file
//! reads right. Each test runs in its own loopback-only network namespace (common::netns),
//! where the group reaches every process of the test and nothing else: announces sent on
//! 127.0.0.1 go out on `lo` only, and nothing outside the namespace hears them.
//!
//! The IPv6 group (ff15::efc0:988f) is tested over IPv6 alone: mounts on ::1, and `lo` made to
//! carry multicast (see [`ipv6_multicast_on_loopback`]).
//!
//! Each test prints how long discovery took (`--nocapture` shows it).

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::netns::{Background, in_loopback_netns, swarm_py};
use common::{Mount, Swarm, SwarmOptions, assert_all_files_match, btfs, free_port, run};

/// Hang detectors only: on loopback, discovery takes moments.
const FOUND: Duration = Duration::from_secs(60);
const READ_TIMEOUT: &str = "60";

/// `body` inside a loopback-only network namespace, with btfs logging at debug level.
fn in_netns(test: &str, body: impl FnOnce()) {
    let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "btfs=debug".to_string());
    in_loopback_netns(test, &[("RUST_LOG", &log)], body);
}

/// A torrent without trackers, and `seeders` libtorrent seeders that do no discovery at all.
fn swarm(seeders: usize) -> Swarm {
    Swarm::start(SwarmOptions::multi(Vec::new(), seeders))
}

/// `btfs mount` on 127.0.0.1 with local service discovery (on by default) as its only source
/// besides `extra` (a read waiting longer than [`READ_TIMEOUT`] fails instead of hanging).
fn mount(torrent: &Path, extra: &[&str]) -> Mount {
    mount_on("127.0.0.1", torrent, extra)
}

/// [`mount`] listening on `bind` alone.
fn mount_on(bind: &str, torrent: &Path, extra: &[&str]) -> Mount {
    let mut args = vec!["--port", "0", "--bind", bind, "-q", "--no-dht"];
    args.extend(["--read-timeout", READ_TIMEOUT]);
    args.extend(extra);
    Mount::new(btfs(), torrent, &args)
}

/// `peers_lsd` of the mount's status: (connected, known).
fn lsd_peers(m: &Mount) -> (u64, u64) {
    let s = m.status();
    let v = s
        .get("peers_lsd")
        .unwrap_or_else(|| panic!("no peers_lsd: {s:?}"));
    let mut n = v
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty());
    let mut next = || n.next().and_then(|w| w.parse().ok());
    match (next(), next()) {
        (Some(c), Some(k)) => (c, k),
        _ => panic!("peers_lsd: {v:?}"),
    }
}

/// Waits until `found` holds of the mount's `peers_lsd` (connected, known); how long that
/// took from `since`.
fn wait_lsd_peer(
    m: &Mount,
    since: Instant,
    found: impl Fn((u64, u64)) -> bool,
    what: &str,
) -> Duration {
    loop {
        if found(lsd_peers(m)) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < FOUND,
            "{what}: no peer from local service discovery\n{}",
            m.stderr()
        );
        sleep(Duration::from_millis(10));
    }
}

#[test]
fn two_mounts_of_one_torrent_find_each_other() {
    in_netns("two_mounts_of_one_torrent_find_each_other", || {
        let mut swarm = swarm(1);
        let seeder = swarm.seeders()[0].to_string();
        // The first mount reads everything from the seeder it is told of, then the seeder
        // goes: whatever the second mount reads comes from the first.
        let first = mount(swarm.torrent(), &["--peer", &seeder]);
        assert_all_files_match(&first, &swarm);
        swarm.stop_seeder(0);

        let mounted = Instant::now();
        // Listening on ::1 too (the IPv6 group has no interface here: loopback does no
        // multicast) leaves the IPv4 announces as they were.
        let second = mount(swarm.torrent(), &["--bind", "::1"]);
        // The only peer there is to connect to is the first mount. Each learns of the other
        // by LSD and dials it; one connection stays (one per peer id), which may be the
        // first mount's: then it is an incoming one here.
        let found = wait_lsd_peer(&second, mounted, |(_, k)| k >= 1, "the second mount");
        eprintln!("the second mount learnt of the first by LSD {found:?} after it was mounted");
        wait_connected(&second, mounted);
        assert_all_files_match(&second, &swarm);
    });
}

/// Waits until `m` has a peer connected (the mount it found by LSD), at most [`FOUND`] from
/// `since`.
fn wait_connected(m: &Mount, since: Instant) {
    while m.status_u64("peers") == 0 {
        assert!(since.elapsed() < FOUND, "not connected\n{}", m.stderr());
        sleep(Duration::from_millis(10));
    }
}

/// Lets the IPv6 group reach every process of the namespace through `lo`, as a LAN's
/// interface carries it: `lo` does no multicast until told to, and the kernel has no route for
/// the group there (sending fails: unreachable); along a route of type `multicast` the datagram
/// is lost, along one of type `local` it comes back in to every member of the group.
fn ipv6_multicast_on_loopback() {
    run(Command::new("ip").args(["link", "set", "lo", "multicast", "on"]));
    run(Command::new("ip").args(["-6", "route", "add", "local", "ff00::/8", "dev", "lo"]));
}

#[test]
fn two_mounts_find_each_other_over_ipv6() {
    in_netns("two_mounts_find_each_other_over_ipv6", || {
        ipv6_multicast_on_loopback();
        let swarm = swarm(0);
        // A libtorrent seeder on ::1 that does no discovery: the first mount is told of it,
        // reads everything, then it goes. Whatever the second mount reads comes from the
        // first, found by LSD over IPv6: both listen on ::1 alone.
        let (addr, mut seeder) = seeder(&swarm, Ipv6Addr::LOCALHOST.into(), "seeder6", &[]);
        wait_seeding(&swarm, "seeder6", &mut seeder);
        let first = mount_on("::1", swarm.torrent(), &["--peer", &addr.to_string()]);
        assert_all_files_match(&first, &swarm);
        seeder.stop();

        let mounted = Instant::now();
        let second = mount_on("::1", swarm.torrent(), &[]);
        let found = wait_lsd_peer(&second, mounted, |(_, k)| k >= 1, "the second mount");
        eprintln!("the second mount learnt of the first by LSD {found:?} after mounting");
        // The address it learnt: the first mount's listening port on ::1.
        let port = first.status()["listen_port"].clone();
        assert!(
            second
                .stderr()
                .contains(&format!("LSD: found a peer peer=[::1]:{port}")),
            "the first mount found on [::1]:{port}\n{}",
            second.stderr()
        );
        wait_connected(&second, mounted);
        assert_all_files_match(&second, &swarm);
    });
}

#[test]
fn btfs_and_a_libtorrent_seeder_find_each_other() {
    in_netns("btfs_and_a_libtorrent_seeder_find_each_other", || {
        let swarm = swarm(0);
        let m = mount(swarm.torrent(), &[]);

        // libtorrent announces when it starts (then every 5 minutes); btfs answers at once.
        let started = Instant::now();
        let (addr, mut seeder) = lsd_seeder(&swarm);
        // libtorrent keeps one of the two connections the peers dial each other with, so
        // the one btfs dialled may be gone already: known, not connected.
        let found = wait_lsd_peer(&m, started, |(_, k)| k >= 1, "btfs");
        eprintln!("btfs knew the libtorrent seeder by LSD {found:?} after the seeder started");
        assert_all_files_match(&m, &swarm);
        assert!(
            m.stderr()
                .contains(&format!("LSD: found a peer peer={addr}")),
            "btfs found the seeder's listening port by LSD\n{}",
            m.stderr()
        );

        // And libtorrent heard btfs's answer.
        wait_heard(&mut seeder, &m, &swarm, started);
        seeder.stop();
    });
}

#[test]
fn a_running_libtorrent_seeder_hears_btfs_arrive() {
    in_netns("a_running_libtorrent_seeder_hears_btfs_arrive", || {
        let swarm = swarm(0);
        let (_, mut seeder) = lsd_seeder(&swarm);
        wait_seeding(&swarm, "lsd-seeder", &mut seeder);
        // Its start-up announces went out to nobody; btfs's own reaches it.
        let mounted = Instant::now();
        let m = mount(swarm.torrent(), &[]);
        let heard = wait_heard(&mut seeder, &m, &swarm, mounted);
        eprintln!("libtorrent heard btfs by LSD {heard:?} after btfs was started");
        assert_all_files_match(&m, &swarm);
        seeder.stop();
    });
}

/// A libtorrent seeder of the swarm's torrent on 127.0.1.1 with local service discovery on
/// (and nothing else to find peers with); it writes `lsd-seeder.ready` once a seed.
fn lsd_seeder(swarm: &Swarm) -> (SocketAddr, Background) {
    seeder(
        swarm,
        Ipv4Addr::new(127, 0, 1, 1).into(),
        "lsd-seeder",
        &["--lsd"],
    )
}

/// A libtorrent seeder of the swarm's torrent on `ip`, with `extra` options; it writes
/// `<name>.ready` in the swarm's folder once a seed.
fn seeder(swarm: &Swarm, ip: IpAddr, name: &str, extra: &[&str]) -> (SocketAddr, Background) {
    let addr = SocketAddr::new(ip, free_port(ip));
    let mut cmd = swarm_py();
    cmd.arg("seed")
        .arg(swarm.torrent())
        .arg(swarm.data_parent())
        .args([
            "--bind",
            &ip.to_string(),
            "--port",
            &addr.port().to_string(),
        ])
        .args(extra)
        .args(["--no-wait-announce", "--ready-file"])
        .arg(swarm.dir().join(format!("{name}.ready")));
    let log = swarm.dir().join(format!("{name}.log"));
    (addr, Background::spawn(name, &mut cmd, log))
}

/// Waits for the `<name>.ready` file of [`seeder`].
fn wait_seeding(swarm: &Swarm, name: &str, seeder: &mut Background) {
    let ready = swarm.dir().join(format!("{name}.ready"));
    let started = Instant::now();
    while !ready.exists() {
        assert!(
            seeder.exited().is_none() && started.elapsed() < FOUND,
            "the seeder never became a seed\n{}",
            seeder.log_text()
        );
        sleep(Duration::from_millis(10));
    }
}

/// Waits until libtorrent's log says it heard the mount's announce ("<== LSD: IP:PORT ih:
/// HASH"); how long that took from `since`.
fn wait_heard(seeder: &mut Background, m: &Mount, swarm: &Swarm, since: Instant) -> Duration {
    let port = m.status()["listen_port"].clone();
    let heard = format!("<== LSD: 127.0.0.1:{port} ih: {}", swarm.info_hash());
    while !seeder.log_text().contains(&heard) {
        assert!(
            since.elapsed() < FOUND && seeder.exited().is_none(),
            "libtorrent never heard btfs's announce {heard:?}\n{}\n{}",
            seeder.log_text(),
            m.stderr()
        );
        sleep(Duration::from_millis(10));
    }
    since.elapsed()
}

#[test]
fn no_lsd_neither_announces_nor_listens() {
    in_netns("no_lsd_neither_announces_nor_listens", || {
        let swarm = swarm(0);
        // A mount with LSD announces; one with --no-lsd must not hear it, nor be heard.
        let quiet = mount(swarm.torrent(), &["--no-lsd"]);
        let loud = mount(swarm.torrent(), &[]);
        let started = Instant::now();
        // The loud one's start-up announces (at once and 3 s later) have gone out once its
        // log says so; give the second a moment to land.
        while loud.stderr().matches("LSD: announced").count() < 2 {
            assert!(started.elapsed() < FOUND, "no announces\n{}", loud.stderr());
            sleep(Duration::from_millis(10));
        }
        assert_eq!(lsd_peers(&quiet), (0, 0), "{}", quiet.stderr());
        assert_eq!(lsd_peers(&loud), (0, 0), "{}", loud.stderr());
        assert!(!quiet.stderr().contains("LSD"), "{}", quiet.stderr());
    });
}
