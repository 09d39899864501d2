//! What the FUSE adapter asks of a directory tree: the immutable [`InodeTable`] of one
//! torrent, or a tree whose root changes while mounted ([`super::folders::Folders`]).

use fuser::{FileAttr, INodeNo, Notifier};

use super::inode::{DirEntry, InodeTable, LookupError, NodeKind, Ownership};

/// A directory tree served read-only. Called from FUSE threads: every method returns quickly.
pub trait Tree: Send + Sync + 'static {
    fn kind(&self, ino: INodeNo) -> Option<NodeKind>;
    fn attr(&self, ino: INodeNo, owner: &Ownership) -> Option<FileAttr>;
    fn lookup(&self, parent: INodeNo, name: &str) -> Result<INodeNo, LookupError>;
    /// Hands `add` each entry of directory `ino` from position `offset` on, with its
    /// attributes, until `add` returns true (the reply is full). False if `ino` is not a
    /// directory.
    fn readdir(
        &self,
        ino: INodeNo,
        offset: u64,
        owner: &Ownership,
        add: &mut dyn FnMut(&DirEntry<'_>, &FileAttr) -> bool,
    ) -> bool;
    /// Sum of all file lengths.
    fn total_size(&self) -> u64;
    /// Number of inodes.
    fn inodes(&self) -> usize;
    /// May the kernel keep this directory's listing across opens? Only if it never changes.
    fn listing_fixed(&self, _ino: INodeNo) -> bool {
        true
    }
    /// Mounted: where to tell the kernel that a cached name or inode changed.
    fn attach(&self, _notifier: Notifier) {}
}

impl Tree for InodeTable {
    fn kind(&self, ino: INodeNo) -> Option<NodeKind> {
        InodeTable::kind(self, ino)
    }

    fn attr(&self, ino: INodeNo, owner: &Ownership) -> Option<FileAttr> {
        InodeTable::attr(self, ino, owner)
    }

    fn lookup(&self, parent: INodeNo, name: &str) -> Result<INodeNo, LookupError> {
        InodeTable::lookup(self, parent, name)
    }

    fn readdir(
        &self,
        ino: INodeNo,
        offset: u64,
        owner: &Ownership,
        add: &mut dyn FnMut(&DirEntry<'_>, &FileAttr) -> bool,
    ) -> bool {
        let Some(entries) = InodeTable::readdir(self, ino, offset) else {
            return false;
        };
        for entry in entries {
            let Some(attr) = InodeTable::attr(self, entry.ino, owner) else {
                continue;
            };
            if add(&entry, &attr) {
                break;
            }
        }
        true
    }

    fn total_size(&self) -> u64 {
        InodeTable::total_size(self)
    }

    fn inodes(&self) -> usize {
        InodeTable::len(self)
    }
}
