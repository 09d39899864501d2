//! Protocol encryption (MSE/PE) against real peers: libtorrent seeders and a leecher that
//! accept and make only RC4-encrypted connections (libtorrent's `forced` policy both ways,
//! `allowed_enc_level` rc4), Debian's transmission-daemon with encryption required, and btfs
//! mounts with each `--encryption` policy that matters.

mod common;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::netns::{Background, in_loopback_netns, swarm_py};
use common::{Mount, Swarm, SwarmOptions, Tracker, assert_all_files_match, free_port, mount_btfs};

/// A hang detector, not a timing threshold: what is waited for happens in about a second.
const DEADLINE: Duration = Duration::from_secs(60);

fn forced_swarm(seeders: usize) -> Swarm {
    Swarm::start(SwarmOptions {
        forced_encryption: true,
        ..SwarmOptions::multi(vec![Tracker::Http], seeders)
    })
}

/// Waits until `cond` holds for the mount's status; panics (with its log) at the deadline.
fn wait_status(m: &Mount, what: &str, cond: impl Fn(&Mount) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond(m) {
        assert!(
            Instant::now() < deadline,
            "{what} never happened: {:?}\n{}",
            m.status(),
            m.stderr()
        );
        sleep(Duration::from_millis(100));
    }
}

/// The default policy dials plaintext first; the seeders hang up on it and are dialled again,
/// encrypted, at once. While the files are read, the status counts the encrypted peers.
#[test]
fn every_file_reads_right_from_seeders_that_require_encryption() {
    let swarm = Swarm::start(SwarmOptions {
        forced_encryption: true,
        // Slow enough that the seeders are still connected while the status is looked at.
        upload_limit: Some(1024 * 1024),
        ..SwarmOptions::multi(vec![Tracker::Http], 2)
    });
    let m = mount_btfs(swarm.torrent(), &[]);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| assert_all_files_match(&m, &swarm));
        wait_status(&m, "an encrypted peer", |m| {
            let s = m.status();
            let n = |k: &str| s.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let encrypted = n("encrypted_peers");
            assert_eq!(encrypted, n("peers"), "every peer is encrypted: {s:?}");
            encrypted >= 1
        });
        reader.join().expect("every file reads right");
    });
    assert!(m.status_u64("downloaded_bytes") > 0);
}

/// btfs requiring encryption reads from the seeders, and then serves a libtorrent leecher
/// that requires it too, alone.
#[test]
fn a_leecher_that_requires_encryption_downloads_the_whole_torrent_from_us() {
    let swarm = forced_swarm(2);
    let m = mount_btfs(swarm.torrent(), &["--encryption", "require"]);
    assert_all_files_match(&m, &swarm);
    let port = m.status_u64("listen_port") as u16;
    let us = SocketAddr::from(([127, 0, 0, 1], port));
    let leech = swarm.leech_encrypted([127, 0, 99, 1].into(), &[us], Duration::from_secs(120));
    assert!(
        leech.complete,
        "leecher finished from btfs alone: {leech:?}\n{}",
        m.stderr()
    );
    assert_eq!(leech.hash_failures, 0, "{leech:?}");
    assert!(m.status_u64("uploaded_bytes") > 0);
}

/// With encryption disabled, seeders that require it refuse every connection: nothing is
/// downloaded, the read waits, and the status and the log say why.
#[test]
fn with_encryption_disabled_seeders_that_require_it_give_nothing() {
    let swarm = forced_swarm(2);
    let m = mount_btfs(swarm.torrent(), &["--encryption", "disable"]);
    let (big, _) = swarm.files().into_iter().max_by_key(|(_, l)| *l).unwrap();
    let path = m.path().join(&big);
    // A reader that would finish if any data came; left waiting, it ends with the unmount.
    let reader = std::thread::spawn(move || fs::read(path).map(|d| d.len()));
    // Both seeders were dialled and hung up on our plaintext handshake.
    wait_status(&m, "two refusals", |m| {
        m.status_u64("refused_plaintext") >= 2
    });
    assert_eq!(m.status_u64("peers"), 0);
    assert_eq!(m.status_u64("encrypted_peers"), 0);
    assert_eq!(m.status_u64("downloaded_bytes"), 0);
    assert!(!reader.is_finished(), "the read cannot have completed");
    assert!(
        m.stderr().contains("may require encryption"),
        "the log says why: {}",
        m.stderr()
    );
    drop(m);
    let read = reader.join().expect("reader thread");
    assert!(read.is_err(), "the read fails at unmount: {read:?}");
}

/// Transmission (a second independent client) with encryption required, told to us as a
/// `--peer`. It runs in a loopback-only network namespace: whatever it would try beyond what
/// its settings turn off stays there.
#[test]
fn every_file_reads_right_from_transmission_requiring_encryption() {
    let name = "every_file_reads_right_from_transmission_requiring_encryption";
    in_loopback_netns(name, &[], || {
        // Small: Transmission unchokes a new peer only at its next rechoke (every 10 s) and
        // then answers requests in half-second rounds.
        let swarm = Swarm::start(SwarmOptions {
            size: 256 * 1024,
            ..SwarmOptions::multi(vec![], 0)
        });
        let ip = Ipv4Addr::new(127, 0, 50, 1);
        let port = free_port(ip);
        let ready = swarm.dir().join("transmission.ready");
        let mut cmd = swarm_py();
        cmd.arg("transmission-seed")
            .arg(swarm.torrent())
            .arg(swarm.data_parent())
            .args(["--bind", &ip.to_string(), "--port", &port.to_string()])
            .args(["--rpc-port", &free_port(Ipv4Addr::LOCALHOST).to_string()])
            .args(["--encryption", "required", "--ready-file"])
            .arg(&ready);
        let log = swarm.dir().join("transmission.log");
        let mut transmission = Background::spawn("transmission", &mut cmd, log);
        let deadline = Instant::now() + DEADLINE;
        while !ready.exists() {
            let gone = transmission.exited().is_some();
            assert!(
                !gone && Instant::now() < deadline,
                "transmission never seeded:\n{}",
                transmission.log_text()
            );
            sleep(Duration::from_millis(100));
        }
        let peer = format!("{ip}:{port}");
        let m = mount_btfs(swarm.torrent(), &["--peer", &peer]);
        assert_all_files_match(&m, &swarm);
        assert_eq!(m.status_u64("refused_plaintext"), 0, "retried encrypted");
        drop(m);
        transmission.stop();
    });
}
