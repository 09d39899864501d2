//! IPv6 against real peers: libtorrent seeders, leechers and PEX hubs that listen on ::1 only,
//! and btfs listening on ::1 only, so every connection is IPv6 (the IPv6 DHT is tested in
//! tests/dht.rs). Each test runs in its own loopback-only network namespace
//! (common::netns): there ::1 exists once `lo` is up, whatever the machine's own IPv6
//! settings, and no traffic can leave.
//!
//! btfs logs at debug level (unless RUST_LOG says otherwise), and a failing test shows its
//! log with those of every libtorrent process.

mod common;

use std::ffi::OsString;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::netns::{Background, in_loopback_netns, swarm_py};
use common::{Mount, assert_tree_matches, btfs, files_under, free_port, run, sha1_file};

/// Hang detectors only: no test expects anything to take this long.
const READY: Duration = Duration::from_secs(120);
const LEECH_SECS: u64 = 120;
const READ_DEADLINE: Duration = Duration::from_secs(180);

/// `body` inside a loopback-only network namespace, with btfs logging at debug level.
fn in_netns(test: &str, body: impl FnOnce()) {
    let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "btfs=debug".to_string());
    in_loopback_netns(test, &[("RUST_LOG", &log)], body);
}

/// A torrent without trackers, its data, and the libtorrent processes of one test, all on
/// ::1.
struct World {
    peers: Vec<(String, Background)>,
    torrent: PathBuf,
    data_path: PathBuf,
    // Last, so it is removed after the processes are gone.
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let dir = tempfile::Builder::new()
            .prefix("btfs-ipv6-")
            .tempdir()
            .expect("tempdir");
        let made = run(swarm_py()
            .arg("make-data")
            .arg(dir.path().join("data"))
            .args(["--layout", "multi", "--seed", "6", "--size", "3000000"]));
        let data_path = PathBuf::from(made.trim());
        let torrent = dir.path().join("test.torrent");
        run(swarm_py()
            .arg("make-torrent")
            .arg(&data_path)
            .arg(&torrent)
            .args(["--piece-length", "65536"]));
        World {
            peers: Vec::new(),
            torrent,
            data_path,
            dir,
        }
    }

    /// Starts `swarm.py <cmd> ... --bind ::1 --port P --ready-file F <extra>` and waits for F;
    /// returns [::1]:P.
    fn start(&mut self, cmd: &str, data: bool, extra: &[&str]) -> SocketAddr {
        let n = self.peers.len();
        let name = format!("{cmd}{n}");
        let ready = self.dir.path().join(format!("{name}.ready"));
        let addr = SocketAddr::from((Ipv6Addr::LOCALHOST, free_port(Ipv6Addr::LOCALHOST)));
        let mut c = swarm_py();
        c.arg(cmd).arg(&self.torrent);
        if data {
            c.arg(self.dir.path().join("data"));
        }
        c.args(["--bind", "::1", "--port", &addr.port().to_string()])
            .arg("--ready-file")
            .arg(&ready)
            .args(extra);
        let log = self.dir.path().join(format!("{name}.log"));
        self.peers
            .push((name.clone(), Background::spawn(&name, &mut c, log)));
        let deadline = Instant::now() + READY;
        while !ready.exists() {
            let exited = self.peers[n].1.exited();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "{name} never became ready ({exited:?}):\n{}",
                self.logs()
            );
            sleep(Duration::from_millis(50));
        }
        addr
    }

    /// A libtorrent seeder listening on ::1 only, speaking `transport`.
    fn seeder(&mut self, transport: &str) -> SocketAddr {
        let extra = ["--transport", transport, "--keep-redundant"];
        self.start("seed", true, &extra)
    }

    /// btfs listening on [::1] only (no DHT, no LSD), with `extra` flags.
    fn mount(&self, extra: &[&str]) -> Mount {
        let torrent = self.torrent.clone();
        Mount::with_args(btfs(), |mnt, _scratch| {
            let mut args: Vec<OsString> = vec!["mount".into(), torrent.into(), mnt.into()];
            let ours = ["--port", "0", "--bind", "::1", "-q", "--no-dht", "--no-lsd"];
            args.extend(ours.iter().chain(extra).map(OsString::from));
            args
        })
    }

    /// `swarm.py leech` bound to ::1, given `peers` only; panics unless it completed with no
    /// hash failure. Returns its stdout (a JSON summary).
    fn leech(&self, m: &Mount, peers: &[SocketAddr], extra: &[&str]) -> String {
        let out = self.dir.path().join("leech");
        let mut cmd = swarm_py();
        cmd.arg("leech")
            .arg(&self.torrent)
            .arg(&out)
            .args(["--bind", "::1", "--timeout", &LEECH_SECS.to_string()])
            .args(extra);
        for p in peers {
            cmd.args(["--peer", &p.to_string()]);
        }
        let o = cmd
            .stdin(Stdio::null())
            .output()
            .expect("run swarm.py leech");
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        let report = format!(
            "leech {}: {stdout}\n--- leech stderr\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr),
            self.failure(m)
        );
        assert!(o.status.success(), "{report}");
        assert!(stdout.contains("\"complete\": true"), "{report}");
        assert!(stdout.contains("\"hash_failures\": 0,"), "{report}");
        for (rel, _) in self.files() {
            let parent = self.data_path.parent().expect("data parent");
            assert_eq!(
                sha1_file(&out.join(&rel)),
                sha1_file(&parent.join(&rel)),
                "{rel:?}"
            );
        }
        stdout
    }

    /// Every file of the torrent as (path relative to the data folder's parent, length).
    fn files(&self) -> Vec<(PathBuf, u64)> {
        files_under(
            &self.data_path,
            self.data_path.parent().expect("data parent"),
        )
    }

    fn total_size(&self) -> u64 {
        self.files().iter().map(|(_, len)| len).sum()
    }

    /// Reads every file through the mount with `sha1sum` and compares it with the source.
    fn assert_files_match(&self, m: &Mount) {
        let files = self.files();
        assert!(files.len() > 5, "{files:?}");
        let parent = self.data_path.parent().expect("data parent");
        assert_tree_matches(m.path(), parent, &files, READ_DEADLINE, || self.failure(m));
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (_, p) in &self.peers {
            out.push_str(&p.log_text());
            out.push('\n');
        }
        out
    }

    /// btfs's log, then every other one: what a failing assertion shows.
    fn failure(&self, m: &Mount) -> String {
        format!(
            "--- btfs (pid {})\n{}\n{}",
            m.pid(),
            m.stderr(),
            self.logs()
        )
    }
}

/// Waits (a hang detector, not a timing threshold) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        sleep(Duration::from_millis(100));
    }
}

/// btfs dials a seeder that listens on [::1] only, over uTP (the seeder speaks nothing else),
/// and every file reads right; then, with that seeder gone, a libtorrent leecher bound to
/// [::1], given only btfs's [::1]:port, downloads all of it from btfs over TCP.
#[test]
fn an_ipv6_only_libtorrent_peer_seeds_to_btfs_and_downloads_from_it() {
    in_netns(
        "an_ipv6_only_libtorrent_peer_seeds_to_btfs_and_downloads_from_it",
        || {
            let mut world = World::new();
            let seeder = world.seeder("utp");
            let m = world.mount(&["--peer", &seeder.to_string()]);
            world.assert_files_match(&m);
            eventually("the seeder is a uTP peer", || {
                m.status_u64("peers_utp") >= 1
            });

            world.peers[0].1.stop();
            let port = m.status_u64("listen_port") as u16;
            let us = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            world.leech(&m, &[us], &[]);
            let uploaded = m.status_u64("uploaded_bytes");
            assert!(
                uploaded >= world.total_size(),
                "uploaded {uploaded} of {} bytes\n{}",
                world.total_size(),
                world.failure(&m)
            );
            let failure = world.failure(&m);
            let exit = m.unmount();
            assert!(exit.is_some_and(|e| e.success()), "{exit:?}\n{failure}");
        },
    );
}

/// btfs is connected to seeder S on [::1] and uploads nothing; a libtorrent leecher whose only
/// peer is btfs still downloads everything: it can only have found S in our PEX message's
/// `added6`.
#[test]
fn a_leecher_finds_an_ipv6_seeder_in_our_pex_added6() {
    in_netns("a_leecher_finds_an_ipv6_seeder_in_our_pex_added6", || {
        let mut world = World::new();
        let seeder = world.seeder("tcp");
        let m = world.mount(&["--peer", &seeder.to_string(), "--no-upload"]);
        // A read needs a connection to S, so btfs has one to name.
        let (first, _) = world.files()[0].clone();
        let parent = world.data_path.parent().expect("data parent").to_path_buf();
        assert_eq!(
            sha1_file(&m.path().join(&first)),
            sha1_file(&parent.join(&first))
        );
        let us = SocketAddr::from((Ipv6Addr::LOCALHOST, m.status_u64("listen_port") as u16));
        let stdout = world.leech(&m, &[us], &["--pex"]);
        assert!(
            stdout.contains(&format!("\"{seeder}\"")),
            "the leecher connected to the seeder: {stdout}"
        );
        assert_eq!(m.status_u64("uploaded_bytes"), 0, "we uploaded nothing");
    });
}

/// btfs's only peer is a libtorrent peer on [::1] with no data that downloads nothing but is
/// connected to seeder S on [::1]: every file still reads right, so btfs learned S from that
/// peer's PEX `added6`.
#[test]
fn we_find_an_ipv6_seeder_in_a_libtorrent_peers_pex_added6() {
    in_netns(
        "we_find_an_ipv6_seeder_in_a_libtorrent_peers_pex_added6",
        || {
            let mut world = World::new();
            let seeder = world.seeder("tcp");
            let hub = world.start("pex-hub", false, &["--peer", &seeder.to_string()]);
            let m = world.mount(&["--peer", &hub.to_string()]);
            world.assert_files_match(&m);
            // "peers_pex: N connected, M known": S came from PEX.
            let pex = m.status().get("peers_pex").cloned().unwrap_or_default();
            let known: u64 = (pex.rsplit(", ").next())
                .and_then(|k| k.strip_suffix(" known")?.parse().ok())
                .unwrap_or(0);
            assert!(known >= 1, "peers_pex: {pex}\n{}", world.failure(&m));
        },
    );
}
