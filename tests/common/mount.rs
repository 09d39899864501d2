//! `Mount`: a FUSE filesystem process and its mountpoint, both gone on drop.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{POLL, terminate_all, wait_until};

/// Mounting a torrent needs no download, only the metadata; generous for slow CI.
const MOUNT_DEADLINE: Duration = Duration::from_secs(60);
/// After unmount a client may still say goodbye to its trackers (libtorrent waits up to
/// its `stop_tracker_timeout`, 5 s by default, per tracker tier).
const EXIT_AFTER_UNMOUNT: Duration = Duration::from_secs(30);

/// A FUSE filesystem process and its mountpoint, unmounted and removed on drop.
pub struct Mount {
    child: Child,
    mnt: PathBuf,
    stderr_path: PathBuf,
    dir: TempDir,
}

impl Mount {
    /// `btfs mount <torrent> <mnt> <extra_args...>`, waiting until it is mounted.
    pub fn new(btfs: &Path, torrent: &Path, extra_args: &[&str]) -> Mount {
        Mount::with_args(btfs, |mnt, _scratch| {
            let mut args: Vec<OsString> = vec!["mount".into(), torrent.into(), mnt.into()];
            args.extend(extra_args.iter().map(OsString::from));
            args
        })
    }

    /// Runs `program` with the arguments `args(mountpoint, scratch_dir)` makes (the
    /// scratch dir is for the program's own data) and waits until the mountpoint is a
    /// FUSE mount. Panics with the program's stderr if it exits first or never mounts.
    pub fn with_args(program: &Path, args: impl FnOnce(&Path, &Path) -> Vec<OsString>) -> Mount {
        Mount::with_env(program, args, &[])
    }

    /// [`Mount::with_args`], with `env` set for the program.
    pub fn with_env(
        program: &Path,
        args: impl FnOnce(&Path, &Path) -> Vec<OsString>,
        env: &[(&str, &Path)],
    ) -> Mount {
        let dir = tempfile::Builder::new()
            .prefix("btfs-mount-")
            .tempdir()
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        let root = dir
            .path()
            .canonicalize()
            .unwrap_or_else(|e| panic!("canonicalize: {e}"));
        let mnt = root.join("mnt");
        let scratch = root.join("scratch");
        for d in [&mnt, &scratch] {
            fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {d:?}: {e}"));
        }
        let stderr_path = root.join("stderr.log");
        let err = fs::File::create(&stderr_path).unwrap_or_else(|e| panic!("create log: {e}"));
        let args = args(&mnt, &scratch);
        let child = Command::new(program)
            .args(&args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program:?} {args:?}: {e}"));
        // From here on a panic drops the Mount, which ends the process.
        let mut m = Mount {
            child,
            mnt,
            stderr_path,
            dir,
        };
        let deadline = Instant::now() + MOUNT_DEADLINE;
        while !is_fuse_mount(&m.mnt) {
            if let Ok(Some(status)) = m.child.try_wait() {
                panic!(
                    "{program:?} {args:?} exited ({status}) before mounting:\n{}",
                    m.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{program:?} {args:?} did not mount within {MOUNT_DEADLINE:?}:\n{}",
                m.stderr()
            );
            sleep(POLL);
        }
        m
    }

    /// The mountpoint.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to the filesystem process (not yet reaped: `Mount` owns it).
    pub fn signal(&self, sig: i32) {
        super::signal(self.pid(), sig);
    }

    /// What the filesystem process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The mount's `user.btfs.status` attribute, read with the ordinary `getfattr` tool. The
    /// text may grow between getfattr's size probe and its read (ERANGE, e.g. a reader
    /// opened): then it asks again.
    pub fn status_text(&self) -> String {
        for _ in 0..10 {
            let out = Command::new("getfattr")
                .args(["--only-values", "-n", "user.btfs.status"])
                .arg(&self.mnt)
                .stdin(Stdio::null())
                .output()
                .expect("getfattr");
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        super::run(
            Command::new("getfattr")
                .args(["--only-values", "-n", "user.btfs.status"])
                .arg(&self.mnt),
        )
    }

    /// [`Mount::status_text`] as `key: value` pairs (a key that repeats keeps its last value).
    pub fn status(&self) -> HashMap<String, String> {
        let out = self.status_text();
        out.lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The first value of `key` in [`Mount::status_text`]; panics (with the text) if missing.
    pub fn status_value(&self, key: &str) -> String {
        let text = self.status_text();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("status has no {key}:\n{text}"))
            .to_string()
    }

    /// One number of [`Mount::status`]; panics (with our stderr) if it is missing.
    pub fn status_u64(&self, key: &str) -> u64 {
        let s = self.status();
        s.get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("status has no number {key}: {s:?}\n{}", self.stderr()))
    }

    /// Still mounted (per /proc/self/mountinfo)?
    pub fn is_mounted(&self) -> bool {
        is_fuse_mount(&self.mnt)
    }

    /// Kills the process with SIGKILL and reaps it: the mount is left dead behind it.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process, for a test to signal or wait on.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Runs `program args` (its own mountpoint already in `args`) in place of the process
    /// that died, waiting until the mountpoint is a FUSE mount again. The old process must be
    /// gone (`kill_hard`).
    pub fn restart(&mut self, program: &Path, args: &[OsString]) {
        assert!(
            matches!(self.child.try_wait(), Ok(Some(_))),
            "the old process still runs"
        );
        let err = fs::File::create(&self.stderr_path).unwrap_or_else(|e| panic!("log: {e}"));
        self.child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program:?} {args:?}: {e}"));
        let deadline = Instant::now() + MOUNT_DEADLINE;
        while !(is_fuse_mount(&self.mnt) && fs::metadata(&self.mnt).is_ok()) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{program:?} {args:?} exited ({status}):\n{}", self.stderr());
            }
            assert!(Instant::now() < deadline, "no mount:\n{}", self.stderr());
            sleep(POLL);
        }
    }

    /// Unmounts the way a user does (`fusermount3 -u`) and returns the process's exit
    /// status, or None if it has not exited within `EXIT_AFTER_UNMOUNT` (drop then kills
    /// it and unmounts lazily).
    pub fn unmount(mut self) -> Option<ExitStatus> {
        self.unmount_in_place()
    }

    /// `unmount`, keeping the (now empty) mountpoint directory until drop, so a test can look
    /// at what is left there.
    pub fn unmount_in_place(&mut self) -> Option<ExitStatus> {
        let umount = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mnt)
            .stdin(Stdio::null())
            .output();
        // Who keeps it busy, looked at right away: a holder may be gone by the deadline.
        let refused = match &umount {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(format!(
                "`fusermount3 -u` failed ({}): {}files open in the mount:\n{}",
                o.status,
                String::from_utf8_lossy(&o.stderr),
                holders(&self.mnt)
            )),
            Err(e) => Some(format!("`fusermount3 -u` did not run: {e}")),
        };
        let deadline = Instant::now() + EXIT_AFTER_UNMOUNT;
        if wait_until(&mut self.child, deadline) {
            self.child.try_wait().ok().flatten()
        } else {
            // Printed with the failing test's output: where the process is stuck.
            eprintln!(
                "pid {} has not exited {EXIT_AFTER_UNMOUNT:?} after `fusermount3 -u` (still \
                 mounted: {}); {}its threads wait in:\n{}\nits stderr:\n{}",
                self.pid(),
                self.is_mounted(),
                refused.map(|r| r + "\n").unwrap_or_default(),
                thread_waits(self.pid()),
                self.stderr()
            );
            None
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        terminate_all(&mut [&mut self.child]);
        if is_fuse_mount(&self.mnt) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mnt)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        // `dir` is removed when the fields drop.
    }
}

/// Is `path` a mountpoint of a FUSE filesystem (fstype `fuse` or `fuse.*`)?
pub fn is_fuse_mount(path: &Path) -> bool {
    // Bytes, not str: a mountpoint need not be UTF-8.
    let Ok(info) = fs::read("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.as_os_str().as_encoded_bytes();
    info.split(|&b| b == b'\n').any(|line| {
        // "id parent major:minor root mountpoint options... - fstype source super-options"
        let Some(dash) = line.windows(3).position(|w| w == b" - ") else {
            return false;
        };
        let mount_point = line[..dash]
            .split(|&b| b == b' ')
            .nth(4)
            .map(unescape_mountinfo);
        let fstype = line[dash + 3..].split(|&b| b == b' ').next().unwrap_or(b"");
        mount_point.as_deref() == Some(want) && (fstype == b"fuse" || fstype.starts_with(b"fuse."))
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = (oct[0] - b'0') as u32 * 64
                    + (oct[1] - b'0') as u32 * 8
                    + (oct[2] - b'0') as u32;
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// `name: wchan` of every thread of `pid` (from /proc), to tell where a process hangs.
fn thread_waits(pid: u32) -> String {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return "(gone)".into();
    };
    let mut out = String::new();
    for t in tasks.flatten() {
        let read = |f: &str| fs::read_to_string(t.path().join(f)).unwrap_or_default();
        out.push_str(&format!(
            "  {}: {}\n",
            read("comm").trim(),
            read("wchan").trim()
        ));
    }
    out
}

/// `pid (comm): file` for every process's open file, working or root directory under `mnt`
/// (from /proc, without touching the mount): what keeps an unmount busy.
fn holders(mnt: &Path) -> String {
    let mut out = String::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return "(no /proc)".into();
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let dir = p.path();
        let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let fds = fs::read_dir(dir.join("fd")).into_iter().flatten().flatten();
        let links = (fds.map(|f| f.path()))
            .chain(["cwd", "root"].map(|l| dir.join(l)))
            .filter_map(|l| Some((fs::read_link(&l).ok()?, l)));
        for (target, link) in links.filter(|(target, _)| target.starts_with(mnt)) {
            let comm = comm.trim();
            out.push_str(&format!("  {pid} ({comm}): {link:?} -> {target:?}\n"));
        }
    }
    if out.is_empty() {
        out.push_str("  (none found)\n");
    }
    out
}
