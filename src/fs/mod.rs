//! The read-only FUSE filesystem: a torrent's files as a directory tree.
//!
//! - [`inode`]: the immutable tree (inode numbers, attributes, directory listings); pure.
//! - [`folders`]: a library's tree, a root whose folders (each an inode table) come and go
//!   while mounted; [`tree`]: what the adapter asks of either.
//! - `fuse`: the fuser adapter; answers metadata from the table, hands reads to the [`Backend`].
//! - `mount`: mounting, unmounting, noticing an unmount done by someone else.
//!
//! This layer knows nothing of peers or pieces: it sees a list of files and a [`Backend`] that
//! turns `(file, offset, len)` into verified bytes. Metadata calls never wait on the backend's
//! data; a read hands its reply to a task on the tokio runtime and the FUSE thread moves on.

use std::io;
use std::path::PathBuf;

pub mod folders;
mod fuse;
pub mod inode;
mod kernel;
#[cfg(test)]
mod tests;
pub mod tree;

pub use folders::{Added, FolderError, Folders};
pub use inode::{FileSpec, InodeTable, Ownership, TableError};
pub use kernel::{MountOptions, Mounted, mount, preflight};
pub use tree::Tree;

/// Where file data comes from. Called from FUSE threads: `open`, `release` and `status` must
/// return quickly; anything slow belongs in the future `read` returns.
pub trait Backend: Send + Sync + 'static {
    /// A file was opened: returns a reader handle, one per open file handle (it carries that
    /// reader's position and readahead).
    fn open(&self, file: usize) -> u64;
    fn release(&self, handle: u64);
    /// Resolves when `len` bytes at `offset` of `file` are verified and copied (shorter only at
    /// EOF), or fails (e.g. EIO when the mount is shutting down). The adapter never asks past
    /// the end of a file.
    fn read(
        &self,
        handle: u64,
        file: usize,
        offset: u64,
        len: u32,
    ) -> impl std::future::Future<Output = Result<bytes::Bytes, fuser::Errno>> + Send + 'static;
    /// Text for the `user.btfs.status` xattr on the root (may be empty).
    fn status(&self) -> String;
}

/// Why mounting or unmounting failed; each message is one line a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("mountpoint {0} does not exist")]
    MountpointMissing(PathBuf),
    #[error("mountpoint {0} is not a directory")]
    MountpointNotDir(PathBuf),
    #[error("mountpoint {0} is already mounted (if stale, run `fusermount3 -u {0}`)")]
    MountpointBusy(PathBuf),
    #[error(
        "mountpoint {0} is a dead FUSE mount (the process serving it is gone): run `fusermount3 -u {0}`, then mount again"
    )]
    MountpointDead(PathBuf),
    #[error("cannot inspect mountpoint {path}: {source}")]
    MountpointUnreadable { path: PathBuf, source: io::Error },
    #[error("/dev/fuse is missing: load the fuse module (`modprobe fuse`) or pass the device in")]
    NoFuseDevice,
    #[error("fusermount3 is not installed (package fuse3); it is needed to mount without root")]
    FusermountMissing,
    #[error("allow_other is refused: add `user_allow_other` to /etc/fuse.conf")]
    AllowOtherDenied,
    #[error("mounting {path} failed: {source}")]
    Mount { path: PathBuf, source: io::Error },
    #[error("unmounting {path} failed: {source}")]
    Unmount { path: PathBuf, source: io::Error },
}
