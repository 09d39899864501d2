//! The Mainline DHT end to end, with no tracker anywhere: a DHT of libtorrent nodes
//! (scripts/dht_nodes.py), libtorrent seeders that announce the torrent there
//! (`swarm.py seed --dht-node`), and the real `btfs` binary bootstrapped from one of those
//! nodes. Each test runs in its own loopback-only network namespace (common::netns), where
//! the whole DHT lives on 127.0.0.0/8: libtorrent nodes on 127.0.0.10.., seeder i on
//! 127.0.i.1, btfs on 127.0.0.1, a libtorrent leecher on 127.0.0.200. The IPv6 DHT (BEP 32)
//! lives on ::1 alone: nodes on ports 6900.., seeders and btfs on ports of their own.
//!
//! btfs logs at debug level (unless RUST_LOG says otherwise), and a failing test shows its
//! log with those of every libtorrent process.

mod common;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::netns::{Background, in_loopback_netns, swarm_py};
use common::{Mount, assert_tree_matches, btfs, files_under, free_port, run, sha1_file};

/// libtorrent DHT nodes: enough that lookups walk several hops, few enough to start quickly.
const NODES: usize = 5;
const FIRST_NODE_IP: &str = "127.0.0.10";
/// The IPv6 DHT's nodes all live on ::1 (a namespace's only IPv6 address), one port each.
const FIRST_NODE_IP6: &str = "::1";
const NODE_PORT: u16 = 6900;
/// Hang detectors only: no test expects anything to take this long.
/// Seeders hash 3 MB and announce every 10 s (swarm.py DHT_ANNOUNCE_INTERVAL).
const SEEDERS_READY: Duration = Duration::from_secs(120);
const STORED_SECS: u64 = 120;
/// btfs announces at mount, then again after 30 s, 60 s, 120 s while its lookups find nobody.
const OUR_ANNOUNCE_SECS: u64 = 180;
const LEECH_SECS: u64 = 180;

/// `body` inside a loopback-only network namespace, with btfs logging at debug level.
/// How long reading every file may take before the test fails instead of hanging.
const READ_DEADLINE: Duration = Duration::from_secs(180);

fn in_netns(test: &str, body: impl FnOnce()) {
    let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "btfs=debug".to_string());
    in_loopback_netns(test, &[("RUST_LOG", &log)], body);
}

// ---------------------------------------------------------------- libtorrent DHT nodes

/// scripts/dht_nodes.py: `NODES` libtorrent DHT nodes that know each other, and its commands.
struct DhtNodes {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
    addrs: Vec<SocketAddr>,
}

impl DhtNodes {
    /// The nodes from `first_ip` on (IPv4: one address each; IPv6: one port each).
    fn start(dir: &Path, first_ip: &str) -> DhtNodes {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dht_nodes.py");
        let log = dir.join("dht_nodes.log");
        let err = fs::File::create(&log).unwrap_or_else(|e| panic!("create {log:?}: {e}"));
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .args(["--count", &NODES.to_string(), "--first-ip", first_ip])
            .args(["--port", &NODE_PORT.to_string(), "--timeout", "90"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("run /usr/bin/python3 scripts/dht_nodes.py (python3-libtorrent)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut nodes = DhtNodes {
            child,
            stdin,
            lines,
            log,
            addrs: Vec::new(),
        };
        loop {
            let line = nodes.line(120);
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["node", _, addr] => nodes.addrs.push(addr.parse().expect("node address")),
                ["ready"] => break,
                _ => panic!("dht_nodes.py: {line}\n{}", nodes.log_text()),
            }
        }
        assert_eq!(nodes.addrs.len(), NODES);
        nodes
    }

    /// The next line it prints; panics after `secs` seconds of silence.
    fn line(&self, secs: u64) -> String {
        match self.lines.recv_timeout(Duration::from_secs(secs)) {
            Ok(line) => line,
            Err(e) => panic!(
                "dht_nodes.py: no line within {secs} s ({e})\n{}",
                self.log_text()
            ),
        }
    }

    /// Waits (up to `secs`) until some node stored an announce of each of `addrs` for the
    /// torrent; returns every address announced for it so far.
    fn stored(&mut self, info_hash: &str, addrs: &[SocketAddr], secs: u64) -> Vec<SocketAddr> {
        let wanted: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        writeln!(self.stdin, "stored {info_hash} {secs} {}", wanted.join(" "))
            .expect("write to dht_nodes.py");
        let line = self.line(secs + 30);
        let mut words = line.split_whitespace();
        assert_eq!(
            (words.next(), words.next()),
            (Some("stored"), Some(info_hash)),
            "dht_nodes.py: {line}"
        );
        words.map(|w| w.parse().expect("stored address")).collect()
    }

    fn log_text(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        format!("--- dht_nodes.py (pid {})\n{text}", self.child.id())
    }
}

impl Drop for DhtNodes {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            sleep(Duration::from_millis(50));
        }
        // Child::kill signals exactly this PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- the world of one test

/// Data, a torrent without trackers, the DHT nodes, and seeders that announced there.
struct World {
    /// All on ::1, in the IPv6 DHT (else on 127.0.0.0/8).
    ipv6: bool,
    nodes: DhtNodes,
    seeders: Vec<(SocketAddr, Background)>,
    torrent: PathBuf,
    data_path: PathBuf,
    info_hash: String,
    // Last, so it is removed after the processes are gone.
    dir: tempfile::TempDir,
}

impl World {
    fn start(seeders: usize) -> World {
        Self::start_on(false, seeders)
    }

    /// `seeders` seeders announced in the DHT of IPv6 (on ::1) or of IPv4.
    fn start_on(ipv6: bool, seeders: usize) -> World {
        let dir = tempfile::Builder::new()
            .prefix("btfs-dht-")
            .tempdir()
            .expect("tempdir");
        let made = run(swarm_py()
            .arg("make-data")
            .arg(dir.path().join("data"))
            .args(["--layout", "multi", "--seed", "5", "--size", "3000000"]));
        let data_path = PathBuf::from(made.trim());
        let torrent = dir.path().join("test.torrent");
        let info_hash = run(swarm_py()
            .arg("make-torrent")
            .arg(&data_path)
            .arg(&torrent)
            .args(["--piece-length", "65536"]))
        .trim()
        .to_string();
        assert_eq!(info_hash.len(), 40, "make-torrent printed {info_hash:?}");
        let first = if ipv6 { FIRST_NODE_IP6 } else { FIRST_NODE_IP };
        let nodes = DhtNodes::start(dir.path(), first);
        let mut world = World {
            ipv6,
            nodes,
            seeders: Vec::new(),
            torrent,
            data_path,
            info_hash,
            dir,
        };
        // From here on a panic drops `world`, which ends every process.
        for i in 1..=seeders {
            let addr = match ipv6 {
                true => SocketAddr::from((Ipv6Addr::LOCALHOST, free_port(Ipv6Addr::LOCALHOST))),
                false => {
                    let ip = Ipv4Addr::new(127, 0, i as u8, 1);
                    SocketAddr::from((ip, free_port(ip)))
                }
            };
            let mut cmd = swarm_py();
            cmd.arg("seed")
                .arg(&world.torrent)
                .arg(world.dir.path().join("data"))
                .args([
                    "--bind",
                    &addr.ip().to_string(),
                    "--port",
                    &addr.port().to_string(),
                ])
                .arg("--ready-file")
                .arg(world.dir.path().join(format!("seeder{i}.ready")));
            for node in &world.nodes.addrs {
                cmd.args(["--dht-node", &node.to_string()]);
            }
            let log = world.dir.path().join(format!("seeder{i}.log"));
            let p = Background::spawn(&format!("seeder{i}"), &mut cmd, log);
            world.seeders.push((addr, p));
        }
        let deadline = Instant::now() + SEEDERS_READY;
        for i in 1..=seeders {
            let ready = world.dir.path().join(format!("seeder{i}.ready"));
            while !ready.exists() {
                let exited = world.seeders[i - 1].1.exited();
                assert!(
                    exited.is_none() && Instant::now() < deadline,
                    "seeder{i} never became a seed ({exited:?}):\n{}",
                    world.logs()
                );
                sleep(Duration::from_millis(50));
            }
        }
        let addrs: Vec<SocketAddr> = world.seeders.iter().map(|(a, _)| *a).collect();
        let stored = world.nodes.stored(&world.info_hash, &addrs, STORED_SECS);
        assert!(
            addrs.iter().all(|a| stored.contains(a)),
            "the DHT stored {stored:?}, not every seeder of {addrs:?}:\n{}",
            world.logs()
        );
        world
    }

    /// Ends every seeder (by PID), so whatever data there is comes from elsewhere.
    fn stop_seeders(&mut self) {
        for (_, p) in &mut self.seeders {
            p.stop();
        }
    }

    /// `btfs mount TARGET` on loopback (127.0.0.1, or ::1 alone for the IPv6 DHT), its DHT
    /// bootstrapped from the first libtorrent node only (it must learn the others through
    /// it), its table saved in the mount's scratch dir (`dht.state`).
    fn mount(&self, target: &str, extra: &[&str]) -> Mount {
        let bootstrap = self.nodes.addrs[0].to_string();
        let bind = if self.ipv6 { "::1" } else { "127.0.0.1" };
        Mount::with_args(btfs(), |mnt, scratch| {
            let mut args: Vec<OsString> = vec!["mount".into(), target.into(), mnt.into()];
            args.extend(["--port", "0", "--bind", bind, "-q", "--no-lsd"].map(OsString::from));
            args.extend(["--dht-bootstrap".into(), bootstrap.into()]);
            args.extend(["--dht-state".into(), scratch.join("dht.state").into()]);
            args.extend(extra.iter().map(OsString::from));
            args
        })
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

    /// Every libtorrent process's log.
    fn logs(&self) -> String {
        let mut out = self.nodes.log_text();
        for (_, p) in &self.seeders {
            out.push('\n');
            out.push_str(&p.log_text());
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

fn status_u64(s: &HashMap<String, String>, key: &str) -> u64 {
    s.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("status has no number {key}: {s:?}"))
}

// ---------------------------------------------------------------- tests

#[test]
fn a_torrent_without_trackers_streams_through_the_dht() {
    in_netns("a_torrent_without_trackers_streams_through_the_dht", || {
        let world = World::start(2);
        let torrent = world.torrent.to_str().expect("utf-8 path").to_string();
        let m = world.mount(&torrent, &[]);
        world.assert_files_match(&m);
        let s = m.status();
        assert!(
            status_u64(&s, "dht_nodes") >= 1,
            "{s:?}\n{}",
            world.failure(&m)
        );
        let failure = world.failure(&m);
        let exit = m.unmount();
        assert!(exit.is_some_and(|e| e.success()), "{exit:?}\n{failure}");
    });
}

#[test]
fn a_bare_magnet_finds_its_metadata_through_the_dht() {
    in_netns("a_bare_magnet_finds_its_metadata_through_the_dht", || {
        let world = World::start(2);
        let cache = world.dir.path().join("metadata-cache");
        let cache = cache.to_str().expect("utf-8 path");
        let magnet = format!("magnet:?xt=urn:btih:{}", world.info_hash);
        let m = world.mount(
            &magnet,
            &["--metadata-cache", cache, "--metadata-timeout", "120"],
        );
        world.assert_files_match(&m);
        let kept = Path::new(cache).join(format!("{}.torrent", world.info_hash));
        assert!(kept.exists(), "metadata kept at {kept:?}");
        let failure = world.failure(&m);
        let exit = m.unmount();
        assert!(exit.is_some_and(|e| e.success()), "{exit:?}\n{failure}");
    });
}

#[test]
fn a_libtorrent_leecher_finds_us_through_the_dht_and_downloads_from_us() {
    in_netns(
        "a_libtorrent_leecher_finds_us_through_the_dht_and_downloads_from_us",
        || {
            let mut world = World::start(2);
            let torrent = world.torrent.to_str().expect("utf-8 path").to_string();
            let m = world.mount(&torrent, &[]);
            world.assert_files_match(&m);
            let s = m.status();
            assert_eq!(
                status_u64(&s, "verified_pieces"),
                status_u64(&s, "total_pieces"),
                "every piece in the cache: {s:?}"
            );
            let us = SocketAddr::from((Ipv4Addr::LOCALHOST, status_u64(&s, "listen_port") as u16));
            // btfs announced itself at mount: some libtorrent node must hold that announce.
            let stored = world
                .nodes
                .stored(&world.info_hash, &[us], OUR_ANNOUNCE_SECS);
            assert!(
                stored.contains(&us),
                "no libtorrent node stored an announce of {us}: {stored:?}\n{}",
                world.failure(&m)
            );

            // Now btfs is the only source, and the leecher knows only the DHT nodes.
            world.stop_seeders();
            let out = world.dir.path().join("leech");
            let mut cmd = swarm_py();
            cmd.arg("leech").arg(&world.torrent).arg(&out).args([
                "--bind",
                "127.0.0.200",
                "--timeout",
                &LEECH_SECS.to_string(),
            ]);
            for node in &world.nodes.addrs {
                cmd.args(["--dht-node", &node.to_string()]);
            }
            let o = cmd
                .stdin(Stdio::null())
                .output()
                .expect("run swarm.py leech");
            let stdout = String::from_utf8_lossy(&o.stdout);
            let report = format!(
                "leech {}: {stdout}\n--- leech stderr\n{}\n{}",
                o.status,
                String::from_utf8_lossy(&o.stderr),
                world.failure(&m)
            );
            assert!(o.status.success(), "{report}");
            assert!(stdout.contains("\"complete\": true"), "{report}");
            assert!(stdout.contains("\"hash_failures\": 0,"), "{report}");
            assert!(stdout.contains(&format!("\"{us}\"")), "{report}");
            for (rel, _) in world.files() {
                let parent = world.data_path.parent().expect("data parent");
                assert_eq!(
                    sha1_file(&out.join(&rel)),
                    sha1_file(&parent.join(&rel)),
                    "{rel:?}"
                );
            }
            let uploaded = status_u64(&m.status(), "uploaded_bytes");
            assert!(
                uploaded >= world.total_size(),
                "uploaded {uploaded} of {} bytes\n{report}",
                world.total_size()
            );
            let exit = m.unmount();
            assert!(exit.is_some_and(|e| e.success()), "{exit:?}\n{report}");
        },
    );
}

/// BEP 32: the seeders announced only in a DHT of libtorrent nodes on ::1, and btfs listens
/// on [::1] alone, bootstrapped from one of those nodes: it finds them there, every file reads
/// right, `btfs status` counts the nodes as IPv6 ones, and the table saved at unmount holds
/// them as IPv6 nodes.
#[test]
fn a_torrent_without_trackers_streams_through_the_ipv6_dht() {
    in_netns(
        "a_torrent_without_trackers_streams_through_the_ipv6_dht",
        || {
            let world = World::start_on(true, 2);
            let torrent = world.torrent.to_str().expect("utf-8 path").to_string();
            let mut m = world.mount(&torrent, &[]);
            world.assert_files_match(&m);
            let s = m.status();
            let failure = world.failure(&m);
            assert!(status_u64(&s, "dht_nodes_v6") >= 1, "{s:?}\n{failure}");
            assert_eq!(status_u64(&s, "dht_nodes_v4"), 0, "{s:?}");
            assert_eq!(
                status_u64(&s, "dht_nodes"),
                status_u64(&s, "dht_nodes_v6"),
                "{s:?}"
            );
            let exit = m.unmount_in_place();
            assert!(exit.is_some_and(|e| e.success()), "{exit:?}\n{failure}");
            let scratch = m.path().parent().expect("mount dir").join("scratch");
            let state = fs::read(scratch.join("dht.state")).expect("the DHT table saved");
            assert!(
                state.windows(8).any(|w| w == b"6:nodes6"),
                "IPv6 nodes saved: {}",
                String::from_utf8_lossy(&state)
            );
        },
    );
}
