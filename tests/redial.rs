//! A seeder that found us, not we it: a libtorrent seeder that nobody names to btfs (no
//! tracker, no `--peer`, no DHT or LSD) connects to the mount itself. Its only address btfs
//! can dial is the port its extended handshake names. The torrent sleeps (`--idle-after`),
//! which drops the connection; a read after wakes it, btfs dials the seeder there, and the
//! bytes read are right.

mod common;

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use common::library::status_json;
use common::netns::{Background, swarm_py};
use common::{Swarm, SwarmOptions, assert_tree_matches, free_port, mount_btfs};

const DEADLINE: Duration = Duration::from_secs(60);

/// Polls until `cond` holds for `btfs status --json`; returns that report.
fn wait_status(
    m: &common::Mount,
    what: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let report = status_json(m);
        if cond(&report) {
            return report;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: not after {DEADLINE:?}: {report:#}\n{}",
            m.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The first `len` bytes of `path`, or a panic after [`DEADLINE`] (a read that hangs).
fn read_head(path: &Path, len: usize) -> Vec<u8> {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        let mut head = vec![0; len];
        let read = std::fs::File::open(&p).and_then(|mut f| f.read_exact(&mut head));
        let _ = tx.send(read.map(|()| head).map_err(|e| e.to_string()));
    });
    (rx.recv_timeout(DEADLINE))
        .unwrap_or_else(|_| panic!("reading {path:?} hangs"))
        .unwrap_or_else(|e| panic!("read {path:?}: {e}"))
}

/// Connections the seeder accepted, as its log tells them.
fn accepted(seeder: &Background) -> usize {
    seeder
        .log_text()
        .matches("incoming_connection_alert")
        .count()
}

#[test]
fn a_seeder_that_connected_in_is_dialled_at_its_port_after_sleep() {
    let swarm = Swarm::start(SwarmOptions {
        size: 2 << 20,
        seeders: 0,
        trackers: vec![],
        ..SwarmOptions::default()
    });
    let m = mount_btfs(
        swarm.torrent(),
        &["--idle-after", "2s", "--background", "off"],
    );
    let port = status_json(&m)["listen_port"]
        .as_u64()
        .expect("listen_port");
    let seeder_port = free_port(std::net::Ipv4Addr::new(127, 0, 0, 3));
    let mut cmd = swarm_py();
    cmd.arg("seed")
        .arg(swarm.torrent())
        .arg(swarm.data_parent())
        .args(["--bind", "127.0.0.3", "--port", &seeder_port.to_string()])
        .args(["--peer", &format!("127.0.0.1:{port}")])
        .args(["--seed-mode"]);
    let seeder = Background::spawn("seeder", &mut cmd, swarm.dir().join("seeder.log"));

    // It comes to us: the first bytes of the file arrive over its connection.
    let files = swarm.files();
    let (path, _) = files.first().expect("a file");
    let head = read_head(&m.path().join(path), 64 * 1024);
    let source = std::fs::read(swarm.data_parent().join(path)).expect("the source");
    assert_eq!(head, source[..head.len()], "the first bytes");
    assert_eq!(accepted(&seeder), 0, "{}", seeder.log_text());

    wait_status(&m, "asleep with no peers", |r| {
        r["state"] == "asleep" && r["peers"] == 0
    });
    // The rest of the file needs the seeder: the read wakes the torrent, which dials it.
    let logs = || format!("{}\n{}", m.stderr(), seeder.log_text());
    assert_tree_matches(m.path(), &swarm.data_parent(), &files, DEADLINE, logs);
    assert!(accepted(&seeder) >= 1, "{}", seeder.log_text());
    let report = status_json(&m);
    let handshake = (report["peer_sources"].as_array().expect("peer_sources"))
        .iter()
        .find(|c| c["source"] == "handshake")
        .unwrap_or_else(|| panic!("no handshake source: {report:#}"))
        .clone();
    assert!(handshake["known"].as_u64() >= Some(1), "{report:#}");
}
