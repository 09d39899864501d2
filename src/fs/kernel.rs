//! Mounting and unmounting, and noticing when the kernel side ends on its own.
//!
//! How fuser 0.18 ends a session, which this file builds on:
//! - `Session::run` serves requests on `n_threads` threads until a read of `/dev/fuse` says
//!   `ENODEV`: the kernel aborted the connection (our unmount, `fusermount3 -u`, `umount`).
//!   It then calls `Filesystem::destroy` and returns. We run it on our own thread and flip the
//!   `ended` watch when it returns, whoever caused it.
//! - fuser's unmount is a plain `umount(2)` (a lazy `fusermount3 -u -z` when not root). With a
//!   file still open it fails with `EBUSY` and gives up its handle, so we detach lazily
//!   ourselves. A detached mount keeps its connection, and our threads, until its last file
//!   closes, so we then abort the connection through fusectl where it is mounted.
//! - `BackgroundSession` is not used: an unmount error there drops the join handle, and its
//!   drop only unmounts without waiting for the threads.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use tokio::runtime::Handle;
use tokio::sync::watch;

use super::fuse::FuseFs;
use super::inode::Ownership;
use super::tree::Tree;
use super::{Backend, FsError};

/// How long `unmount` waits for the session threads once the kernel side is gone: they end
/// within milliseconds unless a lazily detached mount still has open files...
const SESSION_QUICK_END: Duration = Duration::from_millis(200);
/// ...and how long it waits after aborting the connection before leaving them running.
const SESSION_END_GRACE: Duration = Duration::from_secs(2);

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Source name shown by `mount` and `df`, e.g. `btfs:<torrent name>`.
    pub fsname: String,
    /// Let users other than the mounter in (non-root needs `user_allow_other` in fuse.conf).
    pub allow_other: bool,
    /// Owner and time shown on every file.
    pub owner: Ownership,
    /// Kernel readahead for the mount in KiB (the sysfs bdi knob); 0 leaves the default.
    pub read_ahead_kb: u32,
    /// FUSE request threads; reads never hold one, so a few keep lookups flowing.
    pub threads: usize,
}

impl MountOptions {
    /// Defaults: owned by the calling user, dated now, 4 MiB readahead, 4 threads.
    pub fn new(fsname: impl Into<String>) -> MountOptions {
        MountOptions {
            fsname: fsname.into(),
            allow_other: false,
            owner: Ownership {
                // SAFETY: geteuid and getegid cannot fail and touch no memory.
                uid: unsafe { libc::geteuid() },
                gid: unsafe { libc::getegid() },
                time: SystemTime::now(),
            },
            read_ahead_kb: 4096,
            threads: 4,
        }
    }
}

/// A live mount. Dropping it unmounts (errors are only logged); prefer [`Mounted::unmount`].
#[derive(Debug)]
pub struct Mounted {
    mountpoint: PathBuf,
    /// `None` once unmounted.
    unmounter: Option<SessionUnmounter>,
    session: Option<JoinHandle<io::Result<()>>>,
    ended: watch::Receiver<bool>,
    /// Kernel device number of the connection (its fusectl directory name).
    conn: Option<u64>,
}

/// Mounts `table` read-only at `mountpoint`, serving data from `backend`; reads run on `rt`;
/// the tree is given the session's notifier to tell the kernel of its changes. Blocks while
/// the kernel handshakes: call it outside async code or in `spawn_blocking`.
pub fn mount<B: Backend, T: Tree>(
    backend: Arc<B>,
    table: Arc<T>,
    mountpoint: &Path,
    opts: MountOptions,
    rt: Handle,
) -> Result<Mounted, FsError> {
    let mountpoint = preflight(mountpoint)?;
    let fs = FuseFs::new(backend, table.clone(), opts.owner, rt);
    let mut session = Session::new(fs, &mountpoint, &session_config(&opts))
        .map_err(|e| mount_error(&mountpoint, e))?;
    table.attach(session.notifier());
    let unmounter = session.unmount_callable();
    let (ended_tx, ended) = watch::channel(false);
    let session = std::thread::Builder::new()
        .name("btfs-fuse".into())
        .spawn(move || {
            // Flips `ended` even if `run` panics.
            let _ended = EndSignal(ended_tx);
            let result = session.run();
            if let Err(e) = &result {
                tracing::warn!(error = %e, "FUSE session ended with an error");
            }
            result
        })
        .map_err(|e| mount_error(&mountpoint, e))?;
    // The mount's device names the connection. Read from mountinfo, not by a stat of the
    // mountpoint: that waits for the session threads to answer, and while it waits the mount
    // is busy, so a `fusermount3 -u` just after mounting would fail.
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let conn = fuse_mount_dev(&info, &mountpoint);
    if conn.is_none() {
        tracing::warn!("the new mount is not in /proc/self/mountinfo");
    }
    if let Some(dev) = conn
        && opts.read_ahead_kb > 0
    {
        raise_read_ahead(dev, opts.read_ahead_kb);
    }
    tracing::info!(mountpoint = %mountpoint.display(), fsname = %opts.fsname, "mounted");
    Ok(Mounted {
        mountpoint,
        unmounter: Some(unmounter),
        session: Some(session),
        ended,
        conn: conn.map(kernel_dev),
    })
}

impl Mounted {
    /// The canonical path of the mount.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Becomes `true` when the kernel side is gone, whoever unmounted it
    /// (e.g. a user ran `fusermount3 -u`).
    pub fn ended(&self) -> watch::Receiver<bool> {
        self.ended.clone()
    }

    /// Still attached at its mountpoint? False once someone detached it lazily
    /// (`fusermount3 -u -z`): the connection then lives on until every open file closes, so the
    /// caller should fail pending reads to let those files close.
    pub fn is_attached(&self) -> bool {
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return true;
        };
        fuse_mount_dev(&info, &self.mountpoint).is_some()
    }

    /// Unmounts and waits for the session threads (blocking, normally milliseconds; in async
    /// code use `spawn_blocking`). Make the backend fail pending reads first. A file still
    /// open makes the mount busy: it is then detached lazily and its connection aborted
    /// where fusectl allows, so the process can still exit. Fine after an external unmount.
    pub fn unmount(mut self) -> Result<(), FsError> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<(), FsError> {
        let Some(mut unmounter) = self.unmounter.take() else {
            return Ok(());
        };
        match unmounter.unmount() {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                tracing::info!(mountpoint = %self.mountpoint.display(), "mount busy, detaching");
                lazy_unmount(&self.mountpoint).map_err(|source| FsError::Unmount {
                    path: self.mountpoint.clone(),
                    source,
                })?;
            }
            // Not a mount point any more (someone detached it) or already gone: what is
            // left of the connection is ended below.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) || *self.ended.borrow() => {}
            Err(source) => {
                return Err(FsError::Unmount {
                    path: self.mountpoint.clone(),
                    source,
                });
            }
        }
        self.join_session();
        Ok(())
    }

    /// Joins the session thread. If it lingers (a detached mount with files still open keeps
    /// the connection alive), aborts the connection; if it still lingers, leaves it running.
    fn join_session(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        if !finishes_within(&session, SESSION_QUICK_END) {
            if let Some(conn) = self.conn {
                abort_connection(conn);
            }
            if !finishes_within(&session, SESSION_END_GRACE) {
                tracing::warn!(
                    mountpoint = %self.mountpoint.display(),
                    "FUSE session still serving open files of the detached mount; leaving it"
                );
                return;
            }
        }
        if session.join().is_err() {
            tracing::warn!("FUSE session thread panicked");
        }
    }
}

/// The device number (`st_dev`) of the FUSE mount at `mountpoint` in a mountinfo text, the
/// newest if several are stacked there.
fn fuse_mount_dev(info: &str, mountpoint: &Path) -> Option<u64> {
    let want = mountinfo_escape(mountpoint);
    (info.lines().rev()).find_map(|line| {
        // "id parent major:minor root mountpoint options... - fstype source super-options"
        let fields: Vec<&str> = line.split(' ').collect();
        let fstype = fields.iter().skip_while(|f| **f != "-").nth(1)?;
        if fields.get(4) != Some(&want.as_str()) || !fstype.starts_with("fuse") {
            return None;
        }
        let (major, minor) = fields.get(2)?.split_once(':')?;
        Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
    })
}

/// A path as /proc/self/mountinfo writes it: space, tab, newline and backslash in octal.
fn mountinfo_escape(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn finishes_within<T>(thread: &JoinHandle<T>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !thread.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    thread.is_finished()
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            tracing::warn!(error = %e, "unmount on drop failed");
        }
    }
}

/// Sends `true` on drop, so the watch flips however the session thread ends.
struct EndSignal(watch::Sender<bool>);

impl Drop for EndSignal {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

fn session_config(opts: &MountOptions) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(clean_fsname(&opts.fsname)),
        // As a plain option, not `MountOption::Subtype`: fuser hands that only to fusermount,
        // while the kernel (root's direct mount) and fusermount3 both take `subtype=`.
        MountOption::CUSTOM("subtype=btfs".into()),
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::DefaultPermissions,
    ];
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.max(1));
    config
}

/// Mount options are comma-separated and fusermount unescapes backslashes, so neither may
/// reach it from a torrent's name.
fn clean_fsname(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| match c {
            ',' | '\\' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect();
    match cleaned.char_indices().nth(200) {
        Some((cut, _)) => cleaned[..cut].to_owned(),
        None => cleaned,
    }
}

/// Checks what can be checked before mounting, so a user gets a named reason (callers may
/// run it early, before any network work). Returns the canonical mountpoint.
pub fn preflight(mountpoint: &Path) -> Result<PathBuf, FsError> {
    let unreadable = |source: io::Error| FsError::MountpointUnreadable {
        path: mountpoint.to_owned(),
        source,
    };
    let meta = match std::fs::metadata(mountpoint) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(FsError::MountpointMissing(mountpoint.to_owned()));
        }
        // A dead FUSE mount answers "transport endpoint is not connected". It is left for the
        // user to clear: it may be another program's, and unmounting is their call.
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(FsError::MountpointDead(mountpoint.to_owned()));
        }
        Err(e) => return Err(unreadable(e)),
    };
    if !meta.is_dir() {
        return Err(FsError::MountpointNotDir(mountpoint.to_owned()));
    }
    let canonical = mountpoint.canonicalize().map_err(unreadable)?;
    let parent_dev = match canonical.parent() {
        Some(parent) => std::fs::metadata(parent).map_err(unreadable)?.dev(),
        None => return Err(FsError::MountpointBusy(canonical)),
    };
    if parent_dev != meta.dev() {
        // The kernel may answer a stat of a dead FUSE mount from its cache; listing it asks
        // the (gone) filesystem.
        if std::fs::read_dir(&canonical).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN)) {
            return Err(FsError::MountpointDead(canonical));
        }
        return Err(FsError::MountpointBusy(canonical));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(FsError::NoFuseDevice);
    }
    // SAFETY: geteuid cannot fail and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && fusermount().is_none() {
        return Err(FsError::FusermountMissing);
    }
    Ok(canonical)
}

fn mount_error(path: &Path, source: io::Error) -> FsError {
    let text = source.to_string();
    if source.kind() == io::ErrorKind::PermissionDenied && text.contains("user_allow_other") {
        return FsError::AllowOtherDenied;
    }
    if source.kind() == io::ErrorKind::NotFound && !Path::new("/dev/fuse").exists() {
        return FsError::NoFuseDevice;
    }
    FsError::Mount {
        path: path.to_owned(),
        source,
    }
}

/// The fusermount binary fuser would use, if any.
fn fusermount() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FUSERMOUNT_PATH") {
        return Some(PathBuf::from(path));
    }
    let dirs = std::env::var_os("PATH")?;
    ["fusermount3", "fusermount"].iter().find_map(|name| {
        std::env::split_paths(&dirs)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// Detaches the mount now; the kernel drops it when its last open file closes.
fn lazy_unmount(mountpoint: &Path) -> io::Result<()> {
    let path = CString::new(mountpoint.as_os_str().as_bytes())?;
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // Not mounted any more: someone beat us to it.
        Some(libc::EINVAL) => Ok(()),
        // Not root: the setuid helper may unmount our own mount.
        Some(libc::EPERM) => {
            let helper = fusermount().ok_or(err)?;
            let status = Command::new(helper)
                .args(["-u", "-z", "-q", "--"])
                .arg(mountpoint)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if status.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "fusermount -u -z exited with {status}"
                )))
            }
        }
        _ => Err(err),
    }
}

/// Aborts the FUSE connection through fusectl (writable by the mounting user), failing every
/// request still pending and ending the session threads even while files stay open. Best
/// effort: fusectl (/sys/fs/fuse/connections) is often not mounted.
fn abort_connection(conn: u64) {
    let path = format!("/sys/fs/fuse/connections/{conn}/abort");
    if let Err(e) = std::fs::write(&path, "1") {
        tracing::debug!(%path, error = %e, "cannot abort the FUSE connection");
    }
}

/// The kernel's own encoding of a device number (`MKDEV`), as fusectl names connections.
fn kernel_dev(dev: u64) -> u64 {
    (u64::from(libc::major(dev)) << 20) | u64::from(libc::minor(dev))
}

/// The kernel offers FUSE only its default readahead (128 KiB) at init; the mount's bdi knob
/// raises it for files opened afterwards.
fn raise_read_ahead(dev: u64, kb: u32) {
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    if let Err(e) = std::fs::write(&path, kb.to_string()) {
        tracing::warn!(%path, error = %e, "cannot raise the mount's readahead");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsname_loses_option_separators() {
        assert_eq!(clean_fsname("btfs:a,b\\c\nd"), "btfs:a_b_c_d");
        assert_eq!(clean_fsname("btfs:ok name"), "btfs:ok name");
        assert_eq!(clean_fsname(&"é".repeat(300)).chars().count(), 200);
    }

    #[test]
    fn the_mount_device_is_read_from_mountinfo() {
        let info = "\
            22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/root rw\n\
            40 22 0:39 / /tmp/a\\040b rw,nosuid - fuse btfs:x rw,user_id=0\n\
            41 22 0:41 / /tmp/c rw - tmpfs tmpfs rw\n\
            42 40 0:44 / /tmp/a\\040b rw,nosuid - fuse btfs:y rw,user_id=0\n";
        let dev = fuse_mount_dev(info, Path::new("/tmp/a b"));
        assert_eq!(dev, Some(libc::makedev(0, 44)), "the newest of the two");
        assert_eq!(fuse_mount_dev(info, Path::new("/tmp/c")), None, "not FUSE");
        assert_eq!(fuse_mount_dev(info, Path::new("/tmp/a")), None);
    }

    #[test]
    fn preflight_names_the_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        assert!(matches!(
            preflight(&missing),
            Err(FsError::MountpointMissing(_))
        ));
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        assert!(matches!(
            preflight(&file),
            Err(FsError::MountpointNotDir(_))
        ));
        assert!(matches!(
            preflight(Path::new("/")),
            Err(FsError::MountpointBusy(_))
        ));
        if Path::new("/dev/fuse").exists() {
            let ok = preflight(dir.path()).expect("a plain directory passes");
            assert_eq!(ok, dir.path().canonicalize().expect("canonical"));
        }
    }
}
