//! Test harness: a real BitTorrent swarm on loopback and real FUSE mounts.
//!
//! `Swarm` runs libtorrent seeders (`scripts/swarm.py`, an independent implementation)
//! and Debian's opentracker, each seeder on its own address 127.0.x.1 because clients
//! keep one connection per IP. `Mount` runs a FUSE filesystem binary and waits for the
//! kernel to list its mount. Both own every process they start and end them by PID in
//! `Drop`, so a failing test still cleans up; they panic with the processes' logs when
//! something never becomes ready, which is the test failing, never skipping.
//! `mount_btfs` mounts with the binary under test (`btfs()`) and the flags every test mount
//! shares (`MOUNT_ARGS`).
//!
//! `Nginx` (`web.rs`) serves a folder over HTTP for web seeds (BEP 19). `library.rs` mounts
//! several torrents, each a folder (it reads `btfs status --json` with serde_json).
//!
//! Needs `scripts/setup.sh` (python3-libtorrent, opentracker, fuse3, nginx-light) and root
//! (opentracker chroots; mounts). Std only plus `tempfile`, so it compiles without the btfs
//! library.
//! Overrides: `BTFS_TEST_PYTHON` (default /usr/bin/python3, Debian's, which has the
//! libtorrent module), `BTFS_SWARM_PY` (default `$CARGO_MANIFEST_DIR/scripts/swarm.py`).
// Each test binary uses a different part of the harness.
#![allow(dead_code)]

pub mod library;
mod mount;
pub mod netns;
mod swarm;
pub mod vanish;
mod web;

#[allow(unused_imports)]
pub use mount::{Mount, is_fuse_mount};
#[allow(unused_imports)]
pub use swarm::{Layout, LeechOutcome, Swarm, SwarmOptions, Tracker};
#[allow(unused_imports)]
pub use web::{Nginx, WebSeeded, web_seed_url};

use std::ffi::OsString;
use std::fs;
use std::net::{IpAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long a process gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);

// ------------------------------------------------------------------ processes

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}
const SIGTERM: i32 = 15;
/// Freezes a process where it is (`Swarm::freeze_seeder`); SIGCONT lets it go on.
pub const SIGSTOP: i32 = 19;
const SIGCONT: i32 = 18;

/// Sends `sig` to one PID; never a name, never a group. The PID must be of a process the test
/// started and has not reaped yet, so it cannot have been reused by another process.
pub fn signal(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) reads and writes no memory of ours; which process it reaches is the
        // caller's promise above.
        unsafe { kill(pid, sig) };
    }
}

fn sigterm(child: &Child) {
    // The Child is still un-waited, so its PID is still its own. A frozen one (SIGSTOP)
    // would handle SIGTERM only once it runs again.
    signal(child.id(), SIGCONT);
    signal(child.id(), SIGTERM);
}

/// A child process killed (SIGKILL, by PID) and reaped when dropped, even if the test fails.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for `child` until `deadline`; true once it has exited (and is reaped).
fn wait_until(child: &mut Child, deadline: Instant) -> bool {
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= deadline => return false,
            Ok(None) => sleep(POLL),
        }
    }
}

/// SIGTERM all, wait out one shared grace period, SIGKILL the rest, reap everyone.
fn terminate_all(children: &mut [&mut Child]) {
    for c in children.iter_mut() {
        if matches!(c.try_wait(), Ok(None)) {
            sigterm(c);
        }
    }
    let deadline = Instant::now() + GRACE;
    for c in children.iter_mut() {
        if !wait_until(c, deadline) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A child process with its stderr in a log file.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// How it ended, once `exited` reaped it.
    status: Option<ExitStatus>,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Proc {
        let err = fs::File::create(&log).unwrap_or_else(|e| panic!("create {log:?}: {e}"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_string(),
            child,
            log,
            status: None,
        }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Its log, headed by its name and whether it still runs: a helper that ended early (a
    /// seeder gone in the middle of a test) says so in the test's failure output.
    fn log_text(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        format!(
            "--- {} (pid {}, {}) {:?}\n{}",
            self.name,
            self.child.id(),
            match self.status {
                Some(status) => format!("EXITED: {status}"),
                None => run_state(self.child.id()),
            },
            self.log,
            text
        )
    }
}

/// "running", or how a child of ours ended: one not reaped yet is a zombie in /proc that keeps
/// its wait status; "exited" if it was reaped.
fn run_state(pid: u32) -> String {
    use std::os::unix::process::ExitStatusExt;
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return "exited".into();
    };
    // "pid (comm) state ppid ... exit_code" (field 52): fields counted after the comm's ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    if fields.get(1) != Some(&std::process::id().to_string().as_str()) {
        // Reaped, and the PID since taken by a process not ours.
        return "exited".into();
    }
    match (fields.first(), fields.get(49).and_then(|c| c.parse().ok())) {
        (Some(&"Z"), Some(code)) => format!("EXITED: {}", ExitStatus::from_raw(code)),
        (Some(&"Z"), None) => "EXITED".into(),
        _ => "running".into(),
    }
}

// ------------------------------------------------------------------- our btfs

/// The btfs binary cargo built for these tests.
pub fn btfs() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_btfs"))
}

/// Our flags for a test mount: any free port, loopback only, no status line, no DHT, no local
/// service discovery (which would find mounts of the same torrent in other tests).
pub const MOUNT_ARGS: &[&str] = &[
    "--port",
    "0",
    "--bind",
    "127.0.0.1",
    "-q",
    "--no-dht",
    "--no-lsd",
];

/// `btfs mount <torrent> <mnt>` with [`MOUNT_ARGS`], then `extra`, waiting until it is mounted.
/// `torrent` may be a path, a URL or a magnet link.
pub fn mount_btfs(torrent: &Path, extra: &[&str]) -> Mount {
    let args: Vec<&str> = MOUNT_ARGS.iter().chain(extra).copied().collect();
    Mount::new(btfs(), torrent, &args)
}

// ---------------------------------------------------------------------- tools

/// Runs a command to completion; panics with its stderr unless it succeeds. Returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Hex SHA-1 of a file, by the ordinary `sha1sum` tool.
pub fn sha1_file(path: &Path) -> String {
    let out = run(Command::new("sha1sum").arg("--").arg(path));
    // sha1sum marks a line with `\` when the name needed escaping.
    let hash = out.split_whitespace().next().unwrap_or_default();
    hash.trim_start_matches('\\').to_string()
}

pub fn python() -> OsString {
    std::env::var_os("BTFS_TEST_PYTHON").unwrap_or_else(|| "/usr/bin/python3".into())
}

fn swarm_py() -> PathBuf {
    std::env::var_os("BTFS_SWARM_PY")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/swarm.py"))
}

/// `python swarm.py <args>` as a Command.
fn swarm_cmd() -> Command {
    let mut c = Command::new(python());
    c.arg(swarm_py());
    c
}

/// A port free for both TCP and UDP on `ip` right now (the kernel picks it).
pub fn free_port(ip: impl Into<IpAddr>) -> u16 {
    let ip = ip.into();
    for _ in 0..100 {
        let tcp = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
        let port = tcp.local_addr().map(|a| a.port()).unwrap_or(0);
        if port != 0 && UdpSocket::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP on {ip}");
}

/// Every file under `data_path` (a file or a folder) as (path relative to `parent`, length),
/// sorted: a torrent's files as a test's fixtures laid them out.
pub fn files_under(data_path: &Path, parent: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![data_path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = fs::metadata(&p).unwrap_or_else(|e| panic!("stat {p:?}: {e}"));
        if meta.is_dir() {
            for entry in fs::read_dir(&p).unwrap_or_else(|e| panic!("read {p:?}: {e}")) {
                stack.push(entry.unwrap_or_else(|e| panic!("read {p:?}: {e}")).path());
            }
        } else {
            let rel = p.strip_prefix(parent).unwrap_or(&p).to_path_buf();
            out.push((rel, meta.len()));
        }
    }
    out.sort();
    out
}

/// Reads each of `files` (paths relative to `parent`, with lengths) under `mnt` with
/// `sha1sum`, in a thread so that a read that never completes fails the test within
/// `deadline` instead of hanging it, and asserts size and content equal the source under
/// `parent`; `why` says what a failure shows (logs).
pub fn assert_tree_matches(
    mnt: &Path,
    parent: &Path,
    files: &[(PathBuf, u64)],
    deadline: Duration,
    why: impl Fn() -> String,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let (mnt, jobs) = (mnt.to_path_buf(), files.to_vec());
    std::thread::spawn(move || {
        for (rel, len) in jobs {
            let dst = mnt.join(&rel);
            let got = fs::metadata(&dst).map(|meta| (meta.len(), sha1_file(&dst)));
            let _ = tx.send((rel, len, got.map_err(|e| e.to_string())));
        }
    });
    let until = Instant::now() + deadline;
    for _ in files {
        let left = until.saturating_duration_since(Instant::now());
        let (rel, len, got) = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("a read never finished\n{}", why()));
        let src = sha1_file(&parent.join(&rel));
        assert_eq!(got, Ok((len, src)), "{rel:?}\n{}", why());
    }
}

/// Every file of the swarm's torrent, read through the mount with `sha1sum`'s equal, matches
/// its source in size and content.
pub fn assert_all_files_match(m: &Mount, swarm: &Swarm) {
    let files = swarm.files();
    assert!(!files.is_empty());
    for (rel, len) in files {
        let src = swarm.data_parent().join(&rel);
        let dst = m.path().join(&rel);
        let meta =
            fs::metadata(&dst).unwrap_or_else(|e| panic!("stat {dst:?}: {e}\n{}", m.stderr()));
        assert_eq!(meta.len(), len, "size of {dst:?}");
        assert_eq!(
            sha1_file(&dst),
            sha1_file(&src),
            "content of {dst:?}\n{}",
            m.stderr()
        );
    }
}
