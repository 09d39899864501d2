//! uTP (BEP 29) against real peers: libtorrent seeders and a libtorrent leecher that speak
//! uTP and no TCP, on loopback. btfs speaks both by default, on one port number.

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use common::netns::Background;
use common::{
    Swarm, SwarmOptions, Tracker, assert_all_files_match, free_port, mount_btfs, python, sha1_file,
};

fn swarm(transport: &'static str, seeders: usize) -> Swarm {
    Swarm::start(SwarmOptions {
        transport,
        ..SwarmOptions::multi(vec![Tracker::Http], seeders)
    })
}

fn utp_only_swarm(seeders: usize) -> Swarm {
    swarm("utp", seeders)
}

/// Waits (a hang detector, not a timing threshold) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_file_reads_right_from_seeders_that_speak_only_utp() {
    let swarm = utp_only_swarm(3);
    let m = mount_btfs(swarm.torrent(), &[]);
    // The first file, while the seeders are still connected (they leave a seed).
    let (first, _) = swarm.files()[0].clone();
    assert_eq!(
        sha1_file(&m.path().join(&first)),
        sha1_file(&swarm.data_parent().join(&first))
    );
    eventually("status shows the uTP peers", || {
        m.status_u64("peers_utp") >= 1
    });
    assert_eq!(m.status_u64("peers_tcp"), 0, "{:?}", m.status());
    assert_all_files_match(&m, &swarm);
}

#[test]
fn with_no_utp_a_utp_only_swarm_cannot_be_read() {
    let swarm = utp_only_swarm(1);
    let m = mount_btfs(swarm.torrent(), &["--no-utp", "--read-timeout", "3"]);
    let (first, _) = swarm.files()[0].clone();
    let read = std::fs::read(m.path().join(&first));
    let err = read.expect_err("no peer reachable over TCP");
    assert_eq!(
        err.raw_os_error(),
        Some(5),
        "EIO after --read-timeout: {err}"
    );
    assert_eq!(m.status_u64("downloaded_bytes"), 0);
}

#[test]
fn a_libtorrent_leecher_that_speaks_only_utp_downloads_from_us() {
    let swarm = utp_only_swarm(2);
    let m = mount_btfs(swarm.torrent(), &[]);
    assert_all_files_match(&m, &swarm);
    let port = m.status_u64("listen_port") as u16;
    let us = SocketAddr::from(([127, 0, 0, 1], port));
    let leech = swarm.leech_utp(
        [127, 0, 99, 1].into(),
        &[us],
        Duration::from_secs(60),
        false,
    );
    assert!(
        leech.complete,
        "leecher finished from btfs alone, over uTP: {leech:?}\n{}",
        m.stderr()
    );
    assert_eq!(leech.hash_failures, 0, "{leech:?}");
    assert!(m.status_u64("uploaded_bytes") > 0);
}

#[test]
fn with_no_tcp_a_utp_only_swarm_reads_right() {
    let swarm = utp_only_swarm(2);
    let m = mount_btfs(swarm.torrent(), &["--no-tcp"]);
    assert_all_files_match(&m, &swarm);
    // Datagrams the kernel dropped on our UDP port are counted for the user (a number, not
    // "off": the port is there).
    let s = m.status();
    assert!(s["udp_drops"].parse::<u64>().is_ok(), "{s:?}");
}

#[test]
fn seeders_that_speak_both_are_read_over_one_connection_each() {
    // We dial both transports at once; each seeder sees two connections, we keep one.
    let swarm = swarm("both", 3);
    let m = mount_btfs(swarm.torrent(), &[]);
    let (first, _) = swarm.files()[0].clone();
    assert_eq!(
        sha1_file(&m.path().join(&first)),
        sha1_file(&swarm.data_parent().join(&first))
    );
    eventually("all three seeders connected", || m.status_u64("peers") == 3);
    // One snapshot: every connection counted under one transport, one per seeder.
    let s = m.status();
    let n = |k: &str| s[k].parse::<u64>().unwrap_or_else(|_| panic!("{k}: {s:?}"));
    assert_eq!(n("peers_tcp") + n("peers_utp"), n("peers"), "{s:?}");
    assert!(n("peers") <= 3, "one connection per seeder: {s:?}");
    assert_all_files_match(&m, &swarm);
}

#[test]
fn utp_only_seeders_that_require_encryption_read_right_encrypted() {
    // Our plaintext handshake over uTP is hung up on; we dial again encrypted, over uTP.
    let swarm = Swarm::start(SwarmOptions {
        transport: "utp",
        forced_encryption: true,
        ..SwarmOptions::multi(vec![Tracker::Http], 2)
    });
    let m = mount_btfs(swarm.torrent(), &[]);
    let (first, _) = swarm.files()[0].clone();
    assert_eq!(
        sha1_file(&m.path().join(&first)),
        sha1_file(&swarm.data_parent().join(&first))
    );
    eventually("an encrypted uTP peer", || {
        let s = m.status();
        let n = |k: &str| s[k].parse::<u64>().unwrap_or(0);
        n("peers_utp") >= 1 && n("encrypted_peers") >= 1
    });
    assert_eq!(m.status_u64("peers_tcp"), 0);
    assert_all_files_match(&m, &swarm);
}

#[test]
fn a_leecher_that_speaks_only_encrypted_utp_downloads_from_us() {
    let swarm = utp_only_swarm(1);
    let m = mount_btfs(swarm.torrent(), &[]);
    assert_all_files_match(&m, &swarm);
    let port = m.status_u64("listen_port") as u16;
    let us = SocketAddr::from(([127, 0, 0, 1], port));
    let leech = swarm.leech_utp([127, 0, 98, 1].into(), &[us], Duration::from_secs(60), true);
    assert!(
        leech.complete,
        "leecher finished from btfs alone, encrypted over uTP: {leech:?}\n{}",
        m.stderr()
    );
    assert_eq!(leech.hash_failures, 0, "{leech:?}");
}

#[test]
fn a_magnet_link_gets_its_metadata_from_seeders_that_speak_only_utp() {
    let swarm = utp_only_swarm(2);
    let tr: String = (swarm.http_tracker_url().bytes())
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let magnet = format!("magnet:?xt=urn:btih:{}&dn=multi&tr={tr}", swarm.info_hash());
    let cache = tempfile::tempdir().expect("tempdir");
    let cache_arg = cache.path().display().to_string();
    let m = mount_btfs(
        std::path::Path::new(&magnet),
        &["--metadata-cache", &cache_arg, "--metadata-timeout", "60"],
    );
    assert_all_files_match(&m, &swarm);
}

/// `scripts/udp_relay.py` in front of each seeder of `swarm`, on 127.0.(101 + i).1: its
/// listening addresses, the relay, and the file its counters go to.
fn lossy_relay(swarm: &Swarm, args: &[&str]) -> (Vec<SocketAddr>, Background, std::path::PathBuf) {
    let mut cmd = std::process::Command::new(python());
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/udp_relay.py"))
        .args(args);
    let mut listen = Vec::new();
    for (i, seeder) in swarm.seeders().iter().enumerate() {
        let ip = Ipv4Addr::new(127, 0, 101 + i as u8, 1);
        let at = SocketAddr::from((ip, free_port(ip)));
        cmd.args(["--route", &format!("{at}={seeder}")]);
        listen.push(at);
    }
    let (ready, stats) = (
        swarm.dir().join("relay.ready"),
        swarm.dir().join("relay.json"),
    );
    cmd.arg("--ready-file")
        .arg(&ready)
        .arg("--stats-file")
        .arg(&stats);
    let relay = Background::spawn("udp relay", &mut cmd, swarm.dir().join("relay.log"));
    eventually("the relay listens", || ready.exists());
    (listen, relay, stats)
}

/// Mounts `swarm` told only `relays`, reads every file, and checks what a user would: right
/// bytes, all over uTP, no bad piece; and that the path did lose datagrams both ways while
/// carrying the torrent. Returns the mount's status after the reads.
fn assert_reads_right_across(
    swarm: &Swarm,
    relays: &[SocketAddr],
    relay: &Background,
    stats: &Path,
) -> HashMap<String, String> {
    let peers: Vec<String> = relays.iter().map(|a| a.to_string()).collect();
    // A stall ends the read with EIO (the test fails) instead of hanging it.
    let mut args = vec!["--read-timeout", "120"];
    for p in &peers {
        args.extend(["--peer", p.as_str()]);
    }
    let m = mount_btfs(swarm.torrent(), &args);
    assert_all_files_match(&m, swarm);
    let s = m.status();
    assert_eq!(s["peers_tcp"], "0", "{s:?}");
    assert_eq!(s["hash_failures"], "0", "{s:?}");
    let counts: serde_json::Value = serde_json::from_slice(&std::fs::read(stats).unwrap())
        .unwrap_or_else(|e| panic!("{e}\n{}", relay.log_text()));
    let n = |k: &str| counts[k].as_u64().unwrap_or(0);
    assert!(
        n("dropped_to_client") > 0 && n("dropped_to_target") > 0,
        "{counts}"
    );
    assert!(n("to_client") * 1400 > 3 << 20, "{counts}");
    s
}

/// The internet as uTP meets it: 30 ms each way plus up to 10 ms of jitter, and 2 % of
/// datagrams lost each way (what follows a lost one arrives before its resend).
const LOSSY_PATH: &[&str] = &["--delay-ms", "30", "--jitter-ms", "10", "--loss", "0.02"];

#[test]
fn utp_seeders_across_a_slow_lossy_path_read_right() {
    // No tracker: we are told only the relay's addresses, so every byte crosses it.
    let swarm = Swarm::start(SwarmOptions {
        transport: "utp",
        ..SwarmOptions::multi(vec![], 2)
    });
    let (relays, relay, stats) = lossy_relay(&swarm, LOSSY_PATH);
    assert_reads_right_across(&swarm, &relays, &relay, &stats);
}

#[test]
fn encrypted_utp_across_a_slow_lossy_path_reads_right() {
    // Seeders that require RC4: our plaintext handshake is hung up on (a lost datagram may
    // be what ends it instead), and the encrypted one crosses the same lossy path.
    let swarm = Swarm::start(SwarmOptions {
        transport: "utp",
        forced_encryption: true,
        ..SwarmOptions::multi(vec![], 2)
    });
    let (relays, relay, stats) = lossy_relay(&swarm, LOSSY_PATH);
    let s = assert_reads_right_across(&swarm, &relays, &relay, &stats);
    assert_ne!(s["encrypted_peers"], "0", "{s:?}");
}

/// Where users meet uTP peers: most addresses answer nothing, and a seeder that was sending
/// vanishes mid-read without a word (`common::vanish`).
#[test]
fn a_utp_seeder_that_vanishes_mid_read_behind_silent_peers_is_read_around() {
    common::vanish::read_around_a_vanishing_seeder("utp");
}
