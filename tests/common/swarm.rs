//! `Swarm`: opentracker plus libtorrent seeders on loopback, all ended by PID on drop.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{POLL, Proc, free_port, run, swarm_cmd, terminate_all};

/// Seeders hash their data before they are ready; generous so slow CI still passes.
const READY_DEADLINE: Duration = Duration::from_secs(180);
/// Tries at a process whose port another test may have taken in the meantime (libtorrent's
/// peers take any free TCP port and the same UDP one, which may be taken: they exit then).
const PORT_TRIES: usize = 3;

/// What the data looks like (see `swarm.py make-data`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One file of `size` bytes.
    Single,
    /// A folder of awkward sizes: 0 and 1 byte, exactly a block, a block plus one,
    /// a nested subfolder, names with spaces and unicode; its last file has `size` bytes.
    Multi,
    /// 1,000 small files in 100 nested folders.
    Many,
}

/// One announce URL in the torrent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracker {
    Http,
    Udp,
    /// HTTP on a loopback port nobody listens on (connection refused).
    DeadHttp,
    /// UDP on a loopback port the swarm holds and never reads (no answer).
    DeadUdp,
}

#[derive(Clone, Debug)]
pub struct SwarmOptions {
    pub layout: Layout,
    /// Single: the file; Multi: the last file; Many: ignored.
    pub size: u64,
    pub piece_length: u32,
    /// Seeders in all, the corrupt ones included.
    pub seeders: usize,
    /// The last `corrupt_seeders` seeders send a wrong byte in every 16 KiB block.
    pub corrupt_seeders: usize,
    /// Announce URLs in the torrent, in order; empty for a torrent without trackers.
    pub trackers: Vec<Tracker>,
    /// All trackers in one tier instead of one tier each.
    pub one_tier: bool,
    /// Bytes per second per seeder.
    pub upload_limit: Option<u64>,
    /// Seed of the pseudo-random content.
    pub data_seed: u64,
    /// Skip the seeders' startup hash check (faster start on big data).
    pub seed_mode: bool,
    /// Seed a copy of this file (e.g. a video a test made) instead of generated data.
    pub data: Option<PathBuf>,
    /// Seeders keep connections to peers that want nothing (see `start_pex_hub`).
    pub keep_redundant: bool,
    /// What seeders speak in and out: "tcp", "utp" (uTP only) or "both" (`swarm.py
    /// --transport`).
    pub transport: &'static str,
    /// Seeders accept and make only RC4-encrypted connections (libtorrent's forced policy).
    pub forced_encryption: bool,
}

impl SwarmOptions {
    /// A multi-file torrent of about 3 MiB in 64 KiB pieces (file edges inside pieces).
    pub fn multi(trackers: Vec<Tracker>, seeders: usize) -> SwarmOptions {
        SwarmOptions {
            layout: Layout::Multi,
            size: 3 * 1024 * 1024 + 12345,
            piece_length: 64 * 1024,
            seeders,
            trackers,
            ..SwarmOptions::default()
        }
    }
}

impl Default for SwarmOptions {
    fn default() -> Self {
        SwarmOptions {
            layout: Layout::Single,
            size: (1 << 20) + 17,
            piece_length: 32 * 1024,
            seeders: 1,
            corrupt_seeders: 0,
            trackers: vec![Tracker::Http],
            one_tier: false,
            upload_limit: None,
            data_seed: 1,
            seed_mode: false,
            data: None,
            keep_redundant: false,
            transport: "tcp",
            forced_encryption: false,
        }
    }
}

/// A running swarm: opentracker on 127.0.0.1 plus seeders on 127.0.x.1 (x = 1..=N).
pub struct Swarm {
    opts: SwarmOptions,
    tracker: Option<Proc>,
    seeders: Vec<(SocketAddr, Option<Proc>)>,
    torrent: PathBuf,
    data_path: PathBuf,
    info_hash: String,
    http_port: u16,
    udp_port: u16,
    tracker_urls: Vec<String>,
    /// Sockets behind the `DeadUdp` URLs.
    silent_udp: Vec<UdpSocket>,
    /// Other libtorrent peers a test started (`start_pex_hub`).
    others: Vec<Proc>,
    // Last, so it is removed after the processes are gone.
    dir: TempDir,
}

/// What `swarm.py leech` reported.
pub struct LeechOutcome {
    pub status: ExitStatus,
    pub complete: bool,
    pub hash_failures: u64,
    pub stdout: String,
    pub stderr: String,
}

/// Leads with a crash of the leecher (a signal: libtorrent's own fault, or a packet of ours
/// it could not take), so a failure says it and is not read as a slow download.
impl std::fmt::Debug for LeechOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = self.status.signal() {
            writeln!(
                f,
                "THE LEECHER CRASHED: python3-libtorrent was killed by signal {sig} ({})",
                self.status
            )?;
        }
        f.debug_struct("LeechOutcome")
            .field("status", &format_args!("{}", self.status))
            .field("complete", &self.complete)
            .field("hash_failures", &self.hash_failures)
            .field("stdout", &self.stdout)
            .field("stderr", &self.stderr)
            .finish()
    }
}

impl Swarm {
    /// Makes data and torrent, starts tracker and seeders, and returns once every seeder
    /// is a seed and (if the torrent has a live tracker) the tracker counts them all.
    pub fn start(opts: SwarmOptions) -> Swarm {
        assert!(
            opts.corrupt_seeders <= opts.seeders,
            "more corrupt seeders than seeders"
        );
        assert!(opts.seeders <= 254, "one 127.0.x.1 address per seeder");
        let dir = tempfile::Builder::new()
            .prefix("btfs-swarm-")
            .tempdir()
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        let data_parent = dir.path().join("data");
        let layout = match opts.layout {
            Layout::Single => "single",
            Layout::Multi => "multi",
            Layout::Many => "many",
        };
        let data_path = match &opts.data {
            Some(src) => {
                let name = src
                    .file_name()
                    .unwrap_or_else(|| panic!("no file name: {src:?}"));
                fs::create_dir_all(&data_parent).unwrap_or_else(|e| panic!("mkdir: {e}"));
                let dst = data_parent.join(name);
                fs::copy(src, &dst).unwrap_or_else(|e| panic!("copy {src:?}: {e}"));
                dst
            }
            None => {
                let made = run(swarm_cmd()
                    .arg("make-data")
                    .arg(&data_parent)
                    .args(["--layout", layout])
                    .args(["--seed", &opts.data_seed.to_string()])
                    .args(["--size", &opts.size.to_string()]));
                PathBuf::from(made.trim())
            }
        };

        let mut swarm = Swarm {
            opts,
            tracker: None,
            seeders: Vec::new(),
            torrent: dir.path().join("test.torrent"),
            data_path,
            info_hash: String::new(),
            http_port: 0,
            udp_port: 0,
            tracker_urls: Vec::new(),
            silent_udp: Vec::new(),
            others: Vec::new(),
            dir,
        };
        // From here on a panic drops `swarm`, which ends whatever was started.
        swarm.start_tracker();
        for i in 1..=swarm.opts.seeders {
            let seeder = swarm.spawn_seeder(i);
            swarm.seeders.push(seeder);
        }
        swarm.wait_seeders_ready();
        if swarm.has_live_tracker() {
            swarm.wait_tracker_counts(swarm.opts.seeders);
        }
        swarm
    }

    /// Writes the torrent naming the tracker's ports, then starts the tracker; on a port
    /// taken meanwhile, again with new ports (the info-hash does not depend on them).
    fn start_tracker(&mut self) {
        for attempt in 1..=PORT_TRIES {
            self.http_port = free_port(Ipv4Addr::LOCALHOST);
            self.udp_port = free_port(Ipv4Addr::LOCALHOST);
            self.make_torrent();
            let mut cmd = self.tracker_cmd();
            let log = self.dir.path().join("tracker.log");
            let mut p = Proc::spawn("opentracker", &mut cmd, log);
            let deadline = Instant::now() + READY_DEADLINE;
            loop {
                if TcpStream::connect(("127.0.0.1", self.http_port)).is_ok() {
                    self.tracker = Some(p);
                    return;
                }
                if p.exited().is_some() || Instant::now() >= deadline {
                    let text = p.log_text();
                    terminate_all(&mut [&mut p.child]);
                    assert!(attempt < PORT_TRIES, "opentracker never listened:\n{text}");
                    break;
                }
                sleep(POLL);
            }
        }
    }

    fn make_torrent(&mut self) {
        let (http, udp) = (self.http_port, self.udp_port);
        self.silent_udp.clear();
        let trackers = self.opts.trackers.clone();
        self.tracker_urls = (trackers.iter())
            .map(|t| match t {
                Tracker::Http => format!("http://127.0.0.1:{http}/announce"),
                Tracker::Udp => format!("udp://127.0.0.1:{udp}/announce"),
                Tracker::DeadHttp => {
                    format!(
                        "http://127.0.0.1:{}/announce",
                        free_port(Ipv4Addr::LOCALHOST)
                    )
                }
                Tracker::DeadUdp => {
                    // Held open and never read: silent for as long as the swarm lives.
                    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                        .unwrap_or_else(|e| panic!("bind udp: {e}"));
                    let port = sock.local_addr().map(|a| a.port()).unwrap_or(0);
                    self.silent_udp.push(sock);
                    format!("udp://127.0.0.1:{port}/announce")
                }
            })
            .collect();
        let mut mk = swarm_cmd();
        mk.arg("make-torrent")
            .arg(&self.data_path)
            .arg(&self.torrent)
            .args(["--piece-length", &self.opts.piece_length.to_string()]);
        for url in &self.tracker_urls {
            mk.args(["--tracker", url]);
        }
        if self.opts.one_tier {
            mk.arg("--one-tier");
        }
        self.info_hash = run(&mut mk).trim().to_string();
        assert_eq!(
            self.info_hash.len(),
            40,
            "make-torrent printed {:?}",
            self.info_hash
        );
    }

    /// Starts seeder `i` (1-based) on 127.0.i.1, on a port it picks itself (bound, never
    /// raced for): its address is known once it is ready (`seeder_ready`).
    fn spawn_seeder(&self, i: usize) -> (SocketAddr, Option<Proc>) {
        self.spawn_seeder_at(i, 0)
    }

    /// Where seeder `i` (1-based) listens, once it is ready: what it wrote to its ready file.
    fn seeder_ready(&self, i: usize) -> Option<SocketAddr> {
        ready_addr(&self.dir.path().join(format!("seeder{i}.ready")))
    }

    /// Starts seeder `i` (1-based) on 127.0.i.1:`port` (0: any).
    fn spawn_seeder_at(&self, i: usize, port: u16) -> (SocketAddr, Option<Proc>) {
        let ip = Ipv4Addr::new(127, 0, i as u8, 1);
        // Seeders added later (`add_seeder`) are honest.
        let corrupt =
            (self.opts.seeders - self.opts.corrupt_seeders..self.opts.seeders).contains(&(i - 1));
        let ready = self.dir.path().join(format!("seeder{i}.ready"));
        let _ = fs::remove_file(&ready);
        let log = self.dir.path().join(format!("seeder{i}.log"));
        let mut cmd = swarm_cmd();
        cmd.arg("seed")
            .arg(&self.torrent)
            .arg(self.data_parent())
            .args(["--bind", &ip.to_string()])
            .args(["--port", &port.to_string()])
            .arg("--ready-file")
            .arg(&ready);
        if corrupt {
            cmd.arg("--corrupt")
                .arg("--work-dir")
                .arg(self.dir.path().join(format!("seeder{i}-corrupt")));
        }
        if let Some(limit) = self.opts.upload_limit {
            cmd.args(["--upload-limit", &limit.to_string()]);
        }
        if self.opts.seed_mode {
            cmd.arg("--seed-mode");
        }
        if self.opts.keep_redundant {
            cmd.arg("--keep-redundant");
        }
        cmd.args(["--transport", self.opts.transport]);
        if self.opts.forced_encryption {
            cmd.args(["--encryption", "forced"]);
        }
        if !self.has_live_tracker() {
            cmd.arg("--no-wait-announce");
        }
        let name = format!("seeder{i}{}", if corrupt { " (corrupt)" } else { "" });
        let p = Proc::spawn(&name, &mut cmd, log);
        (SocketAddr::from((ip, port)), Some(p))
    }

    fn wait_seeders_ready(&mut self) {
        let deadline = Instant::now() + READY_DEADLINE;
        for idx in 0..self.seeders.len() {
            let mut tries = 1;
            loop {
                if let Some(addr) = self.seeder_ready(idx + 1) {
                    self.seeders[idx].0 = addr;
                    break;
                }
                let exited = match &mut self.seeders[idx].1 {
                    Some(p) => p.exited().is_some(),
                    None => true,
                };
                if exited && tries < PORT_TRIES {
                    // Most likely the UDP port next to its TCP one was taken (its log says).
                    tries += 1;
                    eprintln!(
                        "seeder {} exited before it was ready; again:\n{}",
                        idx + 1,
                        self.logs()
                    );
                    self.seeders[idx] = self.spawn_seeder(idx + 1);
                    continue;
                }
                assert!(
                    !exited && Instant::now() < deadline,
                    "seeder {} never became ready:\n{}",
                    idx + 1,
                    self.logs()
                );
                sleep(POLL);
            }
        }
    }

    fn has_live_tracker(&self) -> bool {
        self.opts
            .trackers
            .iter()
            .any(|t| matches!(t, Tracker::Http | Tracker::Udp))
    }

    /// Scrapes the tracker (HTTP) until it counts `n` seeds; panics after the deadline.
    pub fn wait_tracker_counts(&self, n: usize) {
        let deadline = Instant::now() + READY_DEADLINE;
        let mut last = None;
        while Instant::now() < deadline {
            last = self.scrape_complete();
            if last == Some(n as u64) {
                return;
            }
            sleep(Duration::from_millis(100));
        }
        panic!("tracker counts {last:?} seeds, want {n}:\n{}", self.logs());
    }

    /// The tracker's `complete` count for our torrent, from an HTTP scrape.
    pub fn scrape_complete(&self) -> Option<u64> {
        let mut s = TcpStream::connect(("127.0.0.1", self.http_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let req = format!(
            "GET /scrape?info_hash={} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
            percent_encode_hex(&self.info_hash)
        );
        s.write_all(req.as_bytes()).ok()?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).ok()?;
        let key = b"8:completei";
        let at = body.windows(key.len()).position(|w| w == key)? + key.len();
        let digits: String = body[at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .map(|&b| b as char)
            .collect();
        digits.parse().ok()
    }

    /// The .torrent file.
    pub fn torrent(&self) -> &Path {
        &self.torrent
    }

    /// The original content (the file for Single, the folder otherwise) to compare against.
    pub fn data_path(&self) -> &Path {
        &self.data_path
    }

    /// The folder holding `data_path`: torrent paths are relative to it.
    pub fn data_parent(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Every file in the torrent as (path relative to `data_parent`, length), sorted.
    pub fn files(&self) -> Vec<(PathBuf, u64)> {
        super::files_under(&self.data_path, &self.data_parent())
    }

    /// The v1 info-hash, lowercase hex.
    pub fn info_hash(&self) -> &str {
        &self.info_hash
    }

    /// The announce URLs in the torrent, in order.
    pub fn tracker_urls(&self) -> &[String] {
        &self.tracker_urls
    }

    /// The live tracker's HTTP announce URL (served whether or not the torrent names it).
    pub fn http_tracker_url(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.http_port)
    }

    /// The live tracker's UDP announce URL.
    pub fn udp_tracker_url(&self) -> String {
        format!("udp://127.0.0.1:{}/announce", self.udp_port)
    }

    /// Every seeder's listen address, seeder 1 first (stopped ones included).
    pub fn seeders(&self) -> Vec<SocketAddr> {
        self.seeders.iter().map(|(a, _)| *a).collect()
    }

    pub fn honest_seeders(&self) -> Vec<SocketAddr> {
        let honest = self.opts.seeders - self.opts.corrupt_seeders;
        self.seeders()[..honest].to_vec()
    }

    pub fn corrupt_seeders(&self) -> Vec<SocketAddr> {
        let honest = self.opts.seeders - self.opts.corrupt_seeders;
        self.seeders()[honest..].to_vec()
    }

    /// The swarm's temp dir, removed on drop; a place for a test's own files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn options(&self) -> &SwarmOptions {
        &self.opts
    }

    /// Stops the seeder at `index` in `seeders()` (0-based) and waits for it to exit; it
    /// tells the tracker "stopped" on the way out.
    pub fn stop_seeder(&mut self, index: usize) {
        let count = self.seeders.len();
        let seeder = self.seeders.get_mut(index);
        let seeder = seeder.unwrap_or_else(|| panic!("no seeder {index}: {count} seeders"));
        if let Some(mut p) = seeder.1.take() {
            terminate_all(&mut [&mut p.child]);
        }
    }

    /// Freezes the seeder at `index` in `seeders()` (SIGSTOP): a peer that vanished without
    /// a word, as one behind a NAT that forgot us or a laptop put to sleep does. It sends
    /// nothing more, not even a reset; it is ended (let go first) with the swarm.
    pub fn freeze_seeder(&mut self, index: usize) {
        let p = self.seeders[index].1.as_ref();
        let p = p.unwrap_or_else(|| panic!("seeder {index} is not running"));
        super::signal(p.child.id(), super::SIGSTOP);
    }

    /// Starts the seeder at `index` (stopped by `stop_seeder`) again at the same address and
    /// waits until it is a seed (and, with a live tracker, announced).
    pub fn restart_seeder(&mut self, index: usize) {
        let addr = self.seeders[index].0;
        assert!(self.seeders[index].1.is_none(), "seeder {index} is running");
        self.seeders[index] = self.spawn_seeder_at(index + 1, addr.port());
        let deadline = Instant::now() + READY_DEADLINE;
        while self.seeder_ready(index + 1).is_none() {
            let exited = self.seeders[index]
                .1
                .as_mut()
                .is_none_or(|p| p.exited().is_some());
            assert!(
                !exited && Instant::now() < deadline,
                "seeder {} did not come back at {addr}:\n{}",
                index + 1,
                self.logs()
            );
            sleep(POLL);
        }
    }

    /// Starts one more honest seeder, on the next address 127.0.x.1 and a new port, and waits
    /// until it is a seed (and, with a live tracker, announced); returns its address.
    pub fn add_seeder(&mut self) -> SocketAddr {
        let i = self.seeders.len() + 1;
        assert!(i <= 254, "one 127.0.x.1 address per seeder");
        let seeder = self.spawn_seeder(i);
        self.seeders.push(seeder);
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(addr) = self.seeder_ready(i) {
                self.seeders[i - 1].0 = addr;
                return addr;
            }
            let exited = self.seeders[i - 1]
                .1
                .as_mut()
                .is_none_or(|p| p.exited().is_some());
            assert!(
                !exited && Instant::now() < deadline,
                "seeder {i} never became ready:\n{}",
                self.logs()
            );
            sleep(POLL);
        }
    }

    /// Starts a libtorrent leecher on `ip` with nothing of the torrent (an empty download
    /// folder) that dials `peers` (again whenever it has no peer) and is dialled at the
    /// address returned, once it listens there. It downloads from whoever has pieces and
    /// runs until it has everything or the swarm ends.
    pub fn start_leecher(&mut self, ip: Ipv4Addr, peers: &[SocketAddr]) -> SocketAddr {
        let n = self.others.len();
        let ready = self.dir.path().join(format!("leecher{n}.ready"));
        let out = self.dir.path().join(format!("leecher{n}"));
        fs::create_dir_all(&out).unwrap_or_else(|e| panic!("mkdir {out:?}: {e}"));
        for attempt in 1..=PORT_TRIES {
            let mut cmd = swarm_cmd();
            cmd.arg("leech")
                .arg(&self.torrent)
                .arg(&out)
                .args(["--bind", &ip.to_string()])
                .args(["--port", "0"])
                .args(["--timeout", "3600"])
                .arg("--ready-file")
                .arg(&ready);
            for p in peers {
                cmd.args(["--peer", &p.to_string()]);
            }
            let log = self.dir.path().join(format!("leecher{n}.log"));
            let mut p = Proc::spawn(&format!("leecher{n}"), &mut cmd, log);
            let deadline = Instant::now() + READY_DEADLINE;
            loop {
                if let Some(addr) = ready_addr(&ready) {
                    self.others.push(p);
                    return addr;
                }
                if p.exited().is_some() || Instant::now() >= deadline {
                    terminate_all(&mut [&mut p.child]);
                    let text = p.log_text();
                    // Most likely the UDP port next to its TCP one was taken (its log says).
                    assert!(attempt < PORT_TRIES, "leecher never listened:\n{text}");
                    break;
                }
                sleep(POLL);
            }
        }
        unreachable!("every attempt returned or panicked")
    }

    /// Stops the tracker (both its ports then refuse or ignore announces).
    pub fn stop_tracker(&mut self) {
        if let Some(mut p) = self.tracker.take() {
            terminate_all(&mut [&mut p.child]);
        }
    }

    /// opentracker on this swarm's ports, serving only its torrent (Debian's whitelist).
    fn tracker_cmd(&self) -> std::process::Command {
        let mut cmd = swarm_cmd();
        cmd.arg("tracker")
            .arg("--dir")
            .arg(self.dir.path().join("tracker"))
            .args(["--http-port", &self.http_port.to_string()])
            .args(["--udp-port", &self.udp_port.to_string()])
            .args(["--whitelist", &self.info_hash]);
        cmd
    }

    /// Starts the tracker again on the same ports (it knows no peers until they announce).
    pub fn restart_tracker(&mut self) {
        assert!(self.tracker.is_none(), "the tracker is running");
        let mut cmd = self.tracker_cmd();
        let log = self.dir.path().join("tracker2.log");
        let mut p = Proc::spawn("opentracker (again)", &mut cmd, log);
        let deadline = Instant::now() + READY_DEADLINE;
        while TcpStream::connect(("127.0.0.1", self.http_port)).is_err() {
            if p.exited().is_some() || Instant::now() >= deadline {
                let text = p.log_text();
                terminate_all(&mut [&mut p.child]);
                panic!("opentracker did not come back:\n{text}");
            }
            sleep(POLL);
        }
        self.tracker = Some(p);
    }

    /// Every process's log, for a failing test to print.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in (self.tracker.iter())
            .chain(self.seeders.iter().filter_map(|s| s.1.as_ref()))
            .chain(self.others.iter())
        {
            out.push_str(&p.log_text());
            out.push('\n');
        }
        out
    }

    /// Starts a libtorrent peer on `ip` that has no data, downloads nothing, keeps its
    /// connections to `peers` and does PEX (`swarm.py pex-hub`); returns its address once it
    /// is connected to all of them. Ended with the swarm. Seeders among `peers` need
    /// `keep_redundant`, or they drop the hub at once as upload-only.
    pub fn start_pex_hub(&mut self, ip: Ipv4Addr, peers: &[SocketAddr]) -> SocketAddr {
        let n = self.others.len();
        let ready = self.dir.path().join(format!("pex-hub{n}.ready"));
        let log = self.dir.path().join(format!("pex-hub{n}.log"));
        let mut cmd = swarm_cmd();
        cmd.arg("pex-hub")
            .arg(&self.torrent)
            .args(["--bind", &ip.to_string()])
            .args(["--port", "0"])
            .arg("--ready-file")
            .arg(&ready);
        for p in peers {
            cmd.args(["--peer", &p.to_string()]);
        }
        self.others
            .push(Proc::spawn(&format!("pex-hub{n}"), &mut cmd, log));
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(addr) = ready_addr(&ready) {
                return addr;
            }
            let exited = self.others[n].exited().is_some();
            assert!(
                !exited && Instant::now() < deadline,
                "PEX hub never connected to {peers:?}:\n{}",
                self.logs()
            );
            sleep(POLL);
        }
    }

    /// Downloads the torrent with libtorrent from `peers` only, bound to `bind`, into a
    /// temp folder removed on return (libtorrent checked every piece against the torrent,
    /// so `complete` means correct data). `stop_after_hash_fails` > 0 ends it early.
    pub fn leech(
        &self,
        bind: Ipv4Addr,
        peers: &[SocketAddr],
        timeout: Duration,
        stop_after_hash_fails: u32,
    ) -> LeechOutcome {
        self.leech_with(bind, peers, timeout, stop_after_hash_fails, &[])
    }

    /// `leech` that also takes the peers named in PEX messages; `peers` in the outcome's
    /// stdout lists every address it connected to.
    pub fn leech_pex(
        &self,
        bind: Ipv4Addr,
        peers: &[SocketAddr],
        timeout: Duration,
    ) -> LeechOutcome {
        self.leech_with(bind, peers, timeout, 0, &["--pex"])
    }

    /// `leech` by a libtorrent that speaks uTP only (and with `encrypted`, RC4 only).
    pub fn leech_utp(
        &self,
        bind: Ipv4Addr,
        peers: &[SocketAddr],
        timeout: Duration,
        encrypted: bool,
    ) -> LeechOutcome {
        let mut extra = vec!["--transport", "utp"];
        if encrypted {
            extra.extend(["--encryption", "forced"]);
        }
        self.leech_with(bind, peers, timeout, 1, &extra)
    }

    /// `leech` by a leecher that accepts and makes only RC4-encrypted connections.
    pub fn leech_encrypted(
        &self,
        bind: Ipv4Addr,
        peers: &[SocketAddr],
        timeout: Duration,
    ) -> LeechOutcome {
        self.leech_with(bind, peers, timeout, 0, &["--encryption", "forced"])
    }

    fn leech_with(
        &self,
        bind: Ipv4Addr,
        peers: &[SocketAddr],
        timeout: Duration,
        stop_after_hash_fails: u32,
        extra: &[&str],
    ) -> LeechOutcome {
        let out = tempfile::Builder::new()
            .prefix("leech-")
            .tempdir_in(self.dir.path())
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut cmd = swarm_cmd();
        cmd.arg("leech")
            .arg(&self.torrent)
            .arg(out.path())
            .args(["--bind", &bind.to_string()])
            .args(["--timeout", &timeout.as_secs_f64().to_string()])
            .args([
                "--stop-after-hash-fails",
                &stop_after_hash_fails.to_string(),
            ]);
        for p in peers {
            cmd.args(["--peer", &p.to_string()]);
        }
        cmd.args(extra);
        let o = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        LeechOutcome {
            status: o.status,
            complete: stdout.contains("\"complete\": true"),
            hash_failures: json_u64(&stdout, "hash_failures").unwrap_or(0),
            stdout,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let mut children: Vec<&mut Child> = Vec::new();
        for (_, p) in self.seeders.iter_mut() {
            if let Some(p) = p {
                children.push(&mut p.child);
            }
        }
        if let Some(t) = &mut self.tracker {
            children.push(&mut t.child);
        }
        for p in &mut self.others {
            children.push(&mut p.child);
        }
        terminate_all(&mut children);
        // `dir` (a TempDir) is removed when the fields drop, after this.
    }
}

/// The "IP:PORT" a swarm.py process wrote to its ready file (at once, by a rename), once it
/// has.
fn ready_addr(path: &Path) -> Option<SocketAddr> {
    let text = fs::read_to_string(path).ok()?;
    let addr = text.trim().parse();
    Some(addr.unwrap_or_else(|e| panic!("{path:?} holds {text:?}: {e}")))
}

fn percent_encode_hex(hex: &str) -> String {
    hex.as_bytes()
        .chunks(2)
        .map(|p| format!("%{}", String::from_utf8_lossy(p)))
        .collect()
}

/// Reads `"key": 123` from swarm.py's one-line JSON summary.
fn json_u64(json: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\": ");
    let at = json.find(&pat)? + pat.len();
    json[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}
