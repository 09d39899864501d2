//! Real mounts read with ordinary std::fs calls, served by a fake backend.
//!
//! These need `/dev/fuse` and the right to mount. Without the device they say so and pass;
//! with it, a mount that fails is a test failure.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use fuser::Errno;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::runtime::Runtime;
use tokio::sync::watch;

use super::fuse::STATUS_XATTR;
use super::{Backend, FileSpec, FsError, InodeTable, MountOptions, Mounted, Ownership, mount};

const GATED: [usize; 2] = [4, 5];

fn files() -> Vec<FileSpec> {
    let spec = |path: &str, length| FileSpec {
        path: path.split('/').map(str::to_owned).collect(),
        length,
    };
    vec![
        spec("a.bin", (1 << 20) + 123),
        spec("dir/b.txt", 0),
        spec("dir/sub/c.dat", 300_000),
        spec("dir/sub/d.dat", 5_000),
        spec("gated/slow1", 200_000),
        spec("gated/slow2", 200_000),
    ]
}

/// Byte `offset` of file `file`: varies with both, and not periodic at page sizes.
fn expected(file: usize, offset: u64, len: u64) -> Vec<u8> {
    (offset..offset + len)
        .map(|o| ((o * 31 + o / 4099 + file as u64 * 7) % 251) as u8)
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Gate {
    Closed,
    Open,
    Failing,
}

/// Reads of a gated file wait until the test opens or fails its gate.
struct GatedFile {
    gate: watch::Sender<Gate>,
    /// Reads currently waiting at the gate.
    waiting: Arc<watch::Sender<usize>>,
}

struct FakeBackend {
    gates: HashMap<usize, GatedFile>,
    /// Open handles and their file; std Mutex, held only to insert, check or remove.
    handles: Mutex<HashMap<u64, usize>>,
    next_handle: Mutex<u64>,
    status_calls: Mutex<usize>,
}

/// How the fake backend's status report starts.
const STATUS_HEAD: &str = "peers: 3\npieces: 10/20\n";

impl FakeBackend {
    fn new() -> Arc<FakeBackend> {
        let gates = GATED
            .iter()
            .map(|&file| {
                let gated = GatedFile {
                    gate: watch::Sender::new(Gate::Closed),
                    waiting: Arc::new(watch::Sender::new(0)),
                };
                (file, gated)
            })
            .collect();
        Arc::new(FakeBackend {
            gates,
            handles: Mutex::new(HashMap::new()),
            next_handle: Mutex::new(100),
            status_calls: Mutex::new(0),
        })
    }

    fn set_gate(&self, file: usize, state: Gate) {
        self.gates[&file].gate.send_replace(state);
    }

    /// What the session does before unmounting: every pending and future read fails.
    fn fail_all(&self) {
        for gated in self.gates.values() {
            gated.gate.send_replace(Gate::Failing);
        }
    }
}

impl Backend for FakeBackend {
    fn open(&self, file: usize) -> u64 {
        let mut next = self.next_handle.lock().expect("lock");
        *next += 1;
        self.handles.lock().expect("lock").insert(*next, file);
        *next
    }

    fn release(&self, handle: u64) {
        self.handles.lock().expect("lock").remove(&handle);
    }

    fn read(
        &self,
        handle: u64,
        file: usize,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Bytes, Errno>> + Send + 'static {
        let known = self.handles.lock().expect("lock").get(&handle) == Some(&file);
        let gate = self
            .gates
            .get(&file)
            .map(|g| (g.gate.subscribe(), g.waiting.clone()));
        async move {
            if !known {
                return Err(Errno::EBADF);
            }
            if let Some((mut gate, waiting)) = gate {
                waiting.send_modify(|n| *n += 1);
                let state = gate.wait_for(|g| *g != Gate::Closed).await.map(|g| *g).ok();
                waiting.send_modify(|n| *n -= 1);
                if state != Some(Gate::Open) {
                    return Err(Errno::EIO);
                }
            }
            Ok(Bytes::from(expected(file, offset, u64::from(len))))
        }
    }

    /// Grows by a line at every call, as a live report does when a reader opens.
    fn status(&self) -> String {
        let mut calls = self.status_calls.lock().expect("lock");
        *calls += 1;
        format!("{STATUS_HEAD}{}", "call\n".repeat(*calls))
    }
}

/// Lazily unmounts with fusermount3 on drop, so a failed test leaves no mount behind.
struct UnmountGuard(PathBuf);

impl Drop for UnmountGuard {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z", "--"])
                .arg(&self.0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Fields drop in order: the mount goes before the guard, the directory and the runtime.
struct Fixture {
    mounted: Option<Mounted>,
    _guard: UnmountGuard,
    dir: tempfile::TempDir,
    backend: Arc<FakeBackend>,
    rt: Runtime,
    owner: Ownership,
}

impl Fixture {
    /// `None` (after saying so) only when this machine has no `/dev/fuse`.
    fn mount(name: &str, threads: usize) -> Option<Fixture> {
        if !Path::new("/dev/fuse").exists() {
            eprintln!("SKIPPED {name}: no /dev/fuse on this machine");
            return None;
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonical tempdir");
        let guard = UnmountGuard(root.clone());
        let backend = FakeBackend::new();
        let mut opts = MountOptions::new("btfs:test,name");
        opts.owner.time = UNIX_EPOCH + Duration::from_secs(1_500_000_000);
        opts.threads = threads;
        let owner = opts.owner;
        let table = InodeTable::new(&files()).expect("table");
        let mounted = mount(
            backend.clone(),
            Arc::new(table),
            &root,
            opts,
            rt.handle().clone(),
        )
        .unwrap_or_else(|e| panic!("/dev/fuse exists but mounting failed: {e}"));
        assert_eq!(mounted.mountpoint(), root);
        Some(Fixture {
            mounted: Some(mounted),
            _guard: guard,
            dir,
            backend,
            rt,
            owner,
        })
    }

    fn root(&self) -> PathBuf {
        self.dir.path().canonicalize().expect("canonical")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    fn mounted(&self) -> &Mounted {
        self.mounted.as_ref().expect("still mounted")
    }

    /// Blocks until `rx` satisfies `pred`; a generous limit turns a hang into a failure.
    fn wait_for<T>(&self, what: &str, mut rx: watch::Receiver<T>, pred: impl FnMut(&T) -> bool) {
        let wait = async move { rx.wait_for(pred).await.map(|_| ()) };
        self.rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), wait).await })
            .unwrap_or_else(|_| panic!("gave up waiting: {what}"))
            .unwrap_or_else(|_| panic!("channel closed while waiting: {what}"));
    }

    fn wait_for_blocked_read(&self, file: usize) {
        let rx = self.backend.gates[&file].waiting.subscribe();
        self.wait_for("a read to reach the gate", rx, |n| *n > 0);
    }
}

/// Runs `f` on its own thread; a generous limit turns a hang into a failure.
fn finishes<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("did not finish: {what}"))
}

fn is_mounted(path: &Path) -> bool {
    mount_entry(path).is_some()
}

/// `(fstype, source)` of the mount at `path`, from /proc/self/mountinfo.
fn mount_entry(path: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let want = path.to_str().expect("utf-8 path");
    info.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let dash = fields.iter().position(|f| *f == "-")?;
        (fields.get(4) == Some(&want))
            .then(|| (fields[dash + 1].to_owned(), fields[dash + 2].to_owned()))
    })
}

/// `(relative path, size)` of every entry below `root`, directories with size `None`.
fn listing(root: &Path) -> BTreeMap<String, Option<u64>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let entry = entry.expect("entry");
            let meta = entry.metadata().expect("metadata");
            let rel = entry
                .path()
                .strip_prefix(root)
                .expect("below root")
                .to_owned();
            let rel = rel.to_str().expect("utf-8").to_owned();
            if meta.is_dir() {
                stack.push(entry.path());
                out.insert(rel, None);
            } else {
                out.insert(rel, Some(meta.len()));
            }
        }
    }
    out
}

fn getxattr(path: &Path, name: &str, size: usize) -> io::Result<(isize, Vec<u8>)> {
    let cpath = CString::new(path.as_os_str().as_bytes()).expect("path");
    let cname = CString::new(name).expect("name");
    let mut buf = vec![0u8; size];
    // SAFETY: valid C strings and a buffer of exactly `size` bytes.
    let n = unsafe {
        libc::getxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            buf.as_mut_ptr().cast(),
            size,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(if size == 0 { 0 } else { n as usize });
    Ok((n, buf))
}

fn listxattr(path: &Path) -> Vec<u8> {
    let cpath = CString::new(path.as_os_str().as_bytes()).expect("path");
    let mut buf = vec![0u8; 1024];
    // SAFETY: valid C string and a buffer of exactly 1024 bytes.
    let n = unsafe { libc::listxattr(cpath.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "listxattr: {}", io::Error::last_os_error());
    buf.truncate(n as usize);
    buf
}

#[test]
fn mounted_tree_lists_and_reads_like_files() {
    let Some(fx) = Fixture::mount("mounted_tree_lists_and_reads_like_files", 4) else {
        return;
    };
    let specs = files();
    let mut want = BTreeMap::new();
    for spec in &specs {
        for depth in 1..spec.path.len() {
            want.insert(spec.path[..depth].join("/"), None);
        }
        want.insert(spec.path.join("/"), Some(spec.length));
    }
    assert_eq!(listing(&fx.root()), want);

    for (id, spec) in specs.iter().enumerate() {
        if GATED.contains(&id) {
            continue;
        }
        let path = fx.path(&spec.path.join("/"));
        let data = std::fs::read(&path).expect("read whole file");
        assert!(data == expected(id, 0, spec.length), "{path:?} differs");
    }

    let mut rng = StdRng::seed_from_u64(7);
    let big = std::fs::File::open(fx.path("a.bin")).expect("open");
    let big_len = specs[0].length;
    for _ in 0..200 {
        let offset = rng.random_range(0..big_len);
        let len = rng.random_range(1..=(200_000u64).min(big_len - offset));
        let mut buf = vec![0u8; len as usize];
        big.read_exact_at(&mut buf, offset).expect("read_at");
        assert!(
            buf == expected(0, offset, len),
            "bytes at {offset}+{len} differ"
        );
    }
    let mut past_end = [0u8; 10];
    assert_eq!(big.read_at(&mut past_end, big_len).expect("read at EOF"), 0);
    assert_eq!(
        big.read_at(&mut past_end, big_len - 3)
            .expect("read over EOF"),
        3
    );

    let meta = std::fs::metadata(fx.path("dir/sub/c.dat")).expect("metadata");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o444);
    assert_eq!((meta.uid(), meta.gid()), (fx.owner.uid, fx.owner.gid));
    assert_eq!(meta.modified().expect("mtime"), fx.owner.time);
    assert_eq!(meta.blocks(), 300_000u64.div_ceil(512));
    let dir = std::fs::metadata(fx.path("dir")).expect("metadata");
    assert_eq!(dir.permissions().mode() & 0o7777, 0o555);

    let rofs = Some(libc::EROFS);
    let write = std::fs::OpenOptions::new()
        .write(true)
        .open(fx.path("a.bin"));
    assert_eq!(write.expect_err("opened for writing").raw_os_error(), rofs);
    let create = std::fs::write(fx.path("new.txt"), b"x");
    assert_eq!(create.expect_err("created a file").raw_os_error(), rofs);
    let missing = std::fs::metadata(fx.path("dir/nope")).expect_err("found a missing name");
    assert_eq!(missing.kind(), io::ErrorKind::NotFound);

    // getfattr's two steps: the size, then a buffer of that size. The report grows in
    // between, yet the value comes whole, exactly as long as the probe said.
    let (size, _) = getxattr(&fx.root(), STATUS_XATTR, 0).expect("size probe");
    let (got, value) = getxattr(&fx.root(), STATUS_XATTR, size as usize).expect("value");
    assert_eq!(got, size);
    assert!(value.starts_with(STATUS_HEAD.as_bytes()), "{value:?}");
    let short = getxattr(&fx.root(), STATUS_XATTR, 3).expect_err("fit in 3 bytes");
    assert_eq!(short.raw_os_error(), Some(libc::ERANGE));
    let on_file = getxattr(&fx.path("a.bin"), STATUS_XATTR, 100).expect_err("xattr on file");
    assert_eq!(on_file.raw_os_error(), Some(libc::ENODATA));
    // Namespaces with no attribute at all say so, on the root and on files.
    for path in [fx.root(), fx.path("a.bin")] {
        let label = getxattr(&path, "security.selinux", 100).expect_err("a label");
        assert_eq!(label.raw_os_error(), Some(libc::EOPNOTSUPP), "{path:?}");
    }
    assert_eq!(listxattr(&fx.root()), b"user.btfs.status\0");
    assert_eq!(listxattr(&fx.path("a.bin")), b"");

    let root = CString::new(fx.root().as_os_str().as_bytes()).expect("path");
    // SAFETY: an all-zero statvfs is valid, and statvfs fills it from a valid C string path.
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(root.as_ptr(), &mut vfs) }, 0);
    let total: u64 = specs.iter().map(|s| s.length).sum();
    assert!(vfs.f_blocks * vfs.f_frsize >= total);
    assert!(vfs.f_flag & libc::ST_RDONLY != 0);

    let (fstype, source) = mount_entry(&fx.root()).expect("listed in mountinfo");
    assert_eq!(
        (fstype.as_str(), source.as_str()),
        ("fuse.btfs", "btfs:test_name")
    );
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let dev = std::fs::metadata(fx.root()).expect("stat").dev();
        let knob = format!(
            "/sys/class/bdi/{}:{}/read_ahead_kb",
            libc::major(dev),
            libc::minor(dev)
        );
        let kb = std::fs::read_to_string(&knob).expect("bdi readahead");
        assert_eq!(kb.trim(), "4096");
    }

    let again = mount(
        fx.backend.clone(),
        Arc::new(InodeTable::new(&specs).expect("table")),
        &fx.root(),
        MountOptions::new("btfs:again"),
        fx.rt.handle().clone(),
    );
    assert!(
        matches!(again, Err(FsError::MountpointBusy(_))),
        "{again:?}"
    );
}

#[test]
fn blocked_read_stalls_nothing_else_and_unmount_fails_it() {
    // One FUSE thread: if a waiting read held it, nothing below could be answered.
    let name = "blocked_read_stalls_nothing_else_and_unmount_fails_it";
    let Some(mut fx) = Fixture::mount(name, 1) else {
        return;
    };
    let slow1 = fx.path("gated/slow1");
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        std::fs::File::open(slow1)?.read_exact_at(&mut buf, 8192)?;
        io::Result::Ok(buf)
    });
    fx.wait_for_blocked_read(4);

    // While that read waits, metadata, listings and other reads still get answers.
    let (a, dir, d) = (fx.path("a.bin"), fx.path("dir"), fx.path("dir/sub/d.dat"));
    let (size, entries, data) = finishes("metadata and reads while a read blocks", move || {
        let meta = std::fs::metadata(a).expect("metadata while a read blocks");
        let data = std::fs::read(d).expect("read while a read blocks");
        (meta.len(), listing(&dir).len(), data)
    });
    assert_eq!((size, entries), (files()[0].length, 4));
    assert!(data == expected(3, 0, 5_000));
    assert!(
        !reader.is_finished(),
        "the gated read finished before its gate opened"
    );

    fx.backend.set_gate(4, Gate::Open);
    let got = reader
        .join()
        .expect("reader thread")
        .expect("read after the gate opened");
    assert!(got == expected(4, 8192, 4096));

    let slow2 = fx.path("gated/slow2");
    let stuck = std::thread::spawn(move || {
        let mut file = std::fs::File::open(slow2)?;
        let mut buf = vec![0u8; 4096];
        file.read_exact(&mut buf)
    });
    fx.wait_for_blocked_read(5);
    let ended = fx.mounted().ended();
    assert!(!*ended.borrow());

    fx.backend.fail_all();
    let mounted = fx.mounted.take().expect("mounted");
    mounted.unmount().expect("unmount while a read was pending");
    let outcome = stuck.join().expect("stuck thread");
    assert!(outcome.is_err(), "the pending read succeeded");
    assert!(!is_mounted(&fx.root()));
    fx.wait_for("the session to end", ended, |e| *e);
}

#[test]
fn unmount_with_a_file_open_detaches() {
    let Some(mut fx) = Fixture::mount("unmount_with_a_file_open_detaches", 4) else {
        return;
    };
    let held = std::fs::File::open(fx.path("dir/sub/d.dat")).expect("open");
    let ended = fx.mounted().ended();
    let mounted = fx.mounted.take().expect("mounted");
    mounted.unmount().expect("unmount while busy");
    assert!(!is_mounted(&fx.root()), "still attached after unmount");
    drop(held);
    fx.wait_for("the detached mount to end", ended, |e| *e);
}

#[test]
fn external_unmount_is_noticed() {
    let Some(mut fx) = Fixture::mount("external_unmount_is_noticed", 4) else {
        return;
    };
    let ended = fx.mounted().ended();
    assert!(!*ended.borrow());
    let status = Command::new("fusermount3")
        .args(["-u", "--"])
        .arg(fx.root())
        .status()
        .expect("run fusermount3");
    assert!(status.success(), "fusermount3 -u failed: {status}");
    fx.wait_for("ended after fusermount3 -u", ended, |e| *e);
    fx.mounted
        .take()
        .expect("mounted")
        .unmount()
        .expect("unmount after an external unmount");
}
