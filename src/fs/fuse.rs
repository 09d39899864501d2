//! The fuser adapter: each callback asks the inode table (or the backend) through a helper
//! returning `Result<_, Errno>` and replies exactly once.
//!
//! Nothing here blocks a FUSE thread on data: `read` hands its `ReplyData` to a task on the
//! tokio runtime, so lookups, getattr and reads of cached data keep flowing while a read waits
//! for the swarm. A torrent's files never change while mounted, hence the long TTLs and
//! `KEEP_CACHE`; a library's root does, and its tree tells the kernel of each change.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr,
    Request,
};
use tokio::runtime::Handle;

use super::Backend;
use super::inode::{self, DirEntry, LookupError, NodeKind, Ownership};
use super::tree::Tree;

/// How long the kernel may cache names and attributes: a file never changes while mounted,
/// and a folder that goes is invalidated in the kernel by its tree.
const TTL: Duration = Duration::from_secs(3600);
/// The one extended attribute, on the root only.
pub(super) const STATUS_XATTR: &str = "user.btfs.status";
/// Block size reported by statfs (`df` multiplies the block count by it).
const STATFS_BLOCK: u32 = 4096;
/// Background requests (readahead) the kernel may have in flight at once; reads can wait on
/// the network, so allow more than the kernel's default of 12.
const MAX_BACKGROUND: u16 = 64;

pub(super) struct FuseFs<B, T> {
    backend: Arc<B>,
    table: Arc<T>,
    owner: Ownership,
    rt: Handle,
    /// The status text each process's size probe (`getxattr` with size 0) was answered with:
    /// its read that follows gets the same text, so a report that grew in between (a reader
    /// opened, a counter gained a digit) is not an `ERANGE`. Held only for a map operation.
    status_probes: Mutex<HashMap<u32, Vec<u8>>>,
}

/// Probes remembered at most; past that the map starts over (a probe never followed by a
/// read would otherwise stay forever).
const MAX_STATUS_PROBES: usize = 64;

impl<B: Backend, T: Tree> FuseFs<B, T> {
    pub(super) fn new(backend: Arc<B>, table: Arc<T>, owner: Ownership, rt: Handle) -> Self {
        FuseFs {
            backend,
            table,
            owner,
            rt,
            status_probes: Mutex::default(),
        }
    }

    fn attr(&self, ino: INodeNo) -> Result<FileAttr, Errno> {
        self.table.attr(ino, &self.owner).ok_or(Errno::ENOENT)
    }

    fn lookup_attr(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr, Errno> {
        // Every name in the table is UTF-8, so a name that is not cannot be there.
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        let ino = self.table.lookup(parent, name).map_err(|e| match e {
            LookupError::NotDir => Errno::ENOTDIR,
            LookupError::NoParent | LookupError::NotFound => Errno::ENOENT,
        })?;
        self.attr(ino)
    }

    /// File id and length of a file inode.
    fn file(&self, ino: INodeNo) -> Result<(usize, u64), Errno> {
        match self.table.kind(ino) {
            Some(NodeKind::File { id, length }) => Ok((id, length)),
            Some(NodeKind::Dir) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn open_file(&self, ino: INodeNo, flags: OpenFlags) -> Result<u64, Errno> {
        let (id, _) = self.file(ino)?;
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return Err(Errno::EROFS);
        }
        Ok(self.backend.open(id))
    }

    fn open_dir(&self, ino: INodeNo) -> Result<(), Errno> {
        match self.table.kind(ino) {
            Some(NodeKind::Dir) => Ok(()),
            Some(NodeKind::File { .. }) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn check_access(&self, ino: INodeNo, mask: AccessFlags) -> Result<(), Errno> {
        self.table.kind(ino).ok_or(Errno::ENOENT)?;
        if mask.contains(AccessFlags::W_OK) {
            return Err(Errno::EROFS);
        }
        Ok(())
    }

    fn xattr_value(
        &self,
        ino: INodeNo,
        name: &OsStr,
        pid: u32,
        size: u32,
    ) -> Result<Vec<u8>, Errno> {
        self.table.kind(ino).ok_or(Errno::ENOENT)?;
        if !name.as_encoded_bytes().starts_with(b"user.") {
            // Only `user.` attributes exist here. "Not supported" for the others lets `ls -l`
            // (SELinux label, ACLs, capabilities) stop asking after the first file, where "no
            // such attribute" costs a round trip per file: seconds on a 100,000-file folder.
            return Err(Errno::ENOTSUP);
        }
        if ino != inode::ROOT || name != STATUS_XATTR {
            return Err(Errno::NO_XATTR);
        }
        let mut probes = crate::sync::lock(&self.status_probes);
        if size == 0 {
            let status = self.backend.status().into_bytes();
            if probes.len() >= MAX_STATUS_PROBES {
                probes.clear();
            }
            probes.insert(pid, status.clone());
            Ok(status)
        } else {
            let probed = probes.remove(&pid);
            drop(probes);
            Ok(probed.unwrap_or_else(|| self.backend.status().into_bytes()))
        }
    }

    fn xattr_names(&self, ino: INodeNo) -> Result<Vec<u8>, Errno> {
        self.table.kind(ino).ok_or(Errno::ENOENT)?;
        let mut names = Vec::new();
        if ino == inode::ROOT {
            names.extend_from_slice(STATUS_XATTR.as_bytes());
            names.push(0);
        }
        Ok(names)
    }
}

/// How often a waiting read checks that the process that asked for it is still there.
const REQUESTER_CHECK: Duration = Duration::from_secs(1);

/// Resolves once the thread that sent a read is gone or being killed.
///
/// fuser 0.18 answers `FUSE_INTERRUPT` itself with `ENOSYS` (the kernel then sends no more),
/// so a filesystem never hears that a reader was interrupted. Readers blocked on the page
/// cache wait killably, so SIGKILL (or any signal whose default action kills) ends them at
/// once; but the kernel's readahead request, which holds the open file, stays with us, and the
/// file's RELEASE comes only once it is answered. Without this check a killed player would
/// leave its reader (and its wanted pieces) behind until the data arrived. A thread killed in a
/// synchronous read waits in the kernel for our answer; it shows SIGKILL pending meanwhile.
async fn requester_gone(pid: u32) {
    if pid == 0 {
        // Outside our PID namespace: nothing to check.
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(REQUESTER_CHECK).await;
        if !alive(pid) {
            return;
        }
    }
}

/// The thread exists, is not a zombie, and has no SIGKILL pending. Existence comes from
/// `kill(pid, 0)`, which only a thread that is really gone answers `ESRCH`: `/proc` may be
/// unreadable for a thread that is there (`hidepid`, another user's reader under
/// `--allow-other`), and such a thread counts as alive.
fn alive(pid: u32) -> bool {
    alive_reading(pid, |path| std::fs::read_to_string(path))
}

/// [`alive`], reading `/proc` through `read` (tests make it fail).
fn alive_reading(pid: u32, read: impl Fn(&str) -> std::io::Result<String>) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    // SAFETY: signal 0 sends nothing; kill only checks that the thread exists.
    let gone = unsafe { libc::kill(pid, 0) } != 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    if gone {
        return false;
    }
    match read(&format!("/proc/{pid}/status")) {
        Ok(status) => status_alive(&status),
        Err(_) => true,
    }
}

/// What `/proc/PID/status` says: not a zombie, no SIGKILL pending.
fn status_alive(status: &str) -> bool {
    const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "State" if value.starts_with('Z') || value.starts_with('X') => return false,
            "SigPnd" | "ShdPnd"
                if u64::from_str_radix(value, 16).is_ok_and(|m| m & SIGKILL_BIT != 0) =>
            {
                return false;
            }
            _ => {}
        }
    }
    true
}

/// The xattr size-probe protocol: size 0 asks for the length, a short buffer is `ERANGE`.
fn reply_xattr(value: Result<Vec<u8>, Errno>, size: u32, reply: ReplyXattr) {
    match value {
        Err(e) => reply.error(e),
        Ok(value) => match u32::try_from(value.len()) {
            Err(_) => reply.error(Errno::E2BIG),
            Ok(len) if size == 0 => reply.size(len),
            Ok(len) if len > size => reply.error(Errno::ERANGE),
            Ok(_) => reply.data(&value),
        },
    }
}

impl<B: Backend, T: Tree> Filesystem for FuseFs<B, T> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // The kernel offers its bdi readahead (128 KiB) and only lets us lower it; take all
        // of it here and raise the bdi through sysfs after mounting.
        if let Err(max) = config.set_max_readahead(u32::MAX) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(MAX_BACKGROUND);
        // fuser derives the kernel's max_pages (the largest single read) from max_write; 1 MiB
        // reads cut FUSE round trips eightfold for a streaming reader. We never accept writes.
        if let Err(max) = config.set_max_write(1024 * 1024) {
            let _ = config.set_max_write(max);
        }
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS;
        let _ = config.add_capabilities(wanted & config.capabilities());
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup_attr(parent, name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.open_file(ino, flags) {
            // Verified data never changes, so the page cache may outlive this open.
            Ok(handle) => reply.opened(FileHandle(handle), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (id, length) = match self.file(ino) {
            Ok(file) => file,
            Err(e) => return reply.error(e),
        };
        if offset >= length || size == 0 {
            return reply.data(&[]);
        }
        let len = u32::try_from(length - offset).map_or(size, |rest| rest.min(size));
        let read = self.backend.read(fh.0, id, offset, len);
        let requester = req.pid();
        // If the runtime is gone the task is dropped with the reply, which fuser answers EIO.
        self.rt.spawn(async move {
            let result = tokio::select! {
                r = read => r,
                () = requester_gone(requester) => {
                    tracing::debug!(pid = requester, "reader gone; dropping its read");
                    Err(Errno::EINTR)
                }
            };
            match result {
                Ok(data) => reply.data(&data[..data.len().min(len as usize)]),
                Err(e) => reply.error(e),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.backend.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.open_dir(ino) {
            // A listing that never changes: let the kernel cache it across opens.
            Ok(()) if self.table.listing_fixed(ino) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut add = |entry: &DirEntry<'_>, _: &FileAttr| {
            reply.add(entry.ino, entry.next_offset, entry.kind, entry.name)
        };
        if !self.table.readdir(ino, offset, &self.owner, &mut add) {
            return reply.error(Errno::ENOTDIR);
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let mut add = |entry: &DirEntry<'_>, attr: &FileAttr| {
            let (ino, next) = (entry.ino, entry.next_offset);
            reply.add(ino, next, entry.name, &TTL, attr, Generation(0))
        };
        if !self.table.readdir(ino, offset, &self.owner, &mut add) {
            return reply.error(Errno::ENOTDIR);
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.table.total_size().div_ceil(u64::from(STATFS_BLOCK));
        let files = self.table.inodes() as u64;
        reply.statfs(blocks, 0, 0, files, 0, STATFS_BLOCK, 255, STATFS_BLOCK);
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_xattr(self.xattr_value(ino, name, req.pid(), size), size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(self.xattr_names(ino), size, reply);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.check_access(ino, mask) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_is_gone_only_when_it_really_is() {
        assert!(alive(std::process::id()));
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        child.wait().expect("reaped");
        assert!(!alive(pid), "a reaped process is gone");
    }

    #[test]
    fn an_unreadable_proc_is_not_a_gone_reader() {
        use std::io::{Error, ErrorKind};
        let me = std::process::id();
        // hidepid=1 refuses, hidepid=2 hides: either way the reader is still there.
        for kind in [ErrorKind::PermissionDenied, ErrorKind::NotFound] {
            assert!(alive_reading(me, |_| Err(Error::from(kind))), "{kind:?}");
        }
    }

    #[test]
    fn zombies_and_pending_sigkill_are_gone_an_ordinary_status_is_not() {
        let status = |state: &str, pending: &str| {
            format!("Name:\tmpv\nState:\t{state}\nSigPnd:\t{pending}\nShdPnd:\t0000000000000000\n")
        };
        assert!(status_alive(&status("S (sleeping)", "0000000000000000")));
        assert!(!status_alive(&status("Z (zombie)", "0000000000000000")));
        assert!(!status_alive(&status("S (sleeping)", "0000000000000100")));
    }
}
