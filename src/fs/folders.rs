//! The tree of a library mount: a root whose folders come and go while mounted, each folder an
//! immutable [`InodeTable`] (one torrent's files) placed in the mount's numbering.
//!
//! Invariants (the FUSE adapter and the kernel's caches rely on them):
//! - inode 1 is the root. A folder's table is numbered from its `base`: table inode `n` is
//!   mount inode `base + n` (the folder itself is `base + 1`). Bases only grow, so an inode
//!   number is never given twice in a mount: an inode the kernel still holds after its folder
//!   went answers ENOENT, never another file's attributes.
//! - file ids likewise: a folder's file `i` is mount file id `first_file + i`, never reused, so
//!   a handle or read of a removed folder's file never reaches another torrent.
//! - the root lists its folders sorted by name; readdir offsets are positions, as in
//!   [`InodeTable`] (a listing read while folders change may skip or repeat one; the kernel is
//!   told of every change, so the next listing is right).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::{OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use fuser::{FileAttr, FileType, INodeNo, Notifier};

use super::TableError;
use super::inode::{DirEntry, FileSpec, InodeTable, LookupError, NodeKind, Ownership, ROOT};
use super::tree::Tree;

/// Why a folder cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FolderError {
    #[error("a folder named {0:?} is mounted already")]
    Taken(String),
    #[error("{0:?} cannot be a folder name")]
    BadName(String),
    #[error(transparent)]
    Table(#[from] TableError),
}

/// A folder just added: its inode and the mount file id of its first file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Added {
    pub ino: INodeNo,
    pub first_file: usize,
}

struct Folder {
    table: InodeTable,
    first_file: usize,
}

struct State {
    /// Folder name -> its base.
    names: BTreeMap<String, u64>,
    /// Base -> folder; a mount inode belongs to the folder of the greatest base below it.
    folders: BTreeMap<u64, Folder>,
    /// The base the next folder gets: past every inode ever given.
    next_base: u64,
    next_file: usize,
    total_size: u64,
    inodes: usize,
}

/// The root and its folders. Read by FUSE threads, changed by whoever adds and removes
/// torrents; the lock is held for a lookup or one change, never while telling the kernel.
pub struct Folders {
    state: RwLock<State>,
    /// An empty table: the root's attributes are its root's, with the folders counted.
    empty: InodeTable,
    notifier: OnceLock<Notifier>,
}

impl Default for Folders {
    fn default() -> Self {
        Folders::new()
    }
}

impl Folders {
    /// An empty root.
    pub fn new() -> Folders {
        Folders {
            state: RwLock::new(State {
                names: BTreeMap::new(),
                folders: BTreeMap::new(),
                next_base: 1,
                next_file: 0,
                total_size: 0,
                inodes: 1,
            }),
            empty: InodeTable::new(&[]).expect("an empty list is a tree"),
            notifier: OnceLock::new(),
        }
    }

    /// Adds folder `name` holding `files` (paths below the folder). `before` runs with the
    /// folder's numbers just before it becomes visible (to serve its file ids by then). Tells
    /// a mounted kernel, which may block briefly: call it off the async workers.
    pub fn add(
        &self,
        name: &str,
        files: &[FileSpec],
        before: impl FnOnce(Added),
    ) -> Result<Added, FolderError> {
        if !usable(name) {
            return Err(FolderError::BadName(name.to_string()));
        }
        let table = InodeTable::new(files)?;
        let added = {
            let mut s = write(&self.state);
            if s.names.contains_key(name) {
                return Err(FolderError::Taken(name.to_string()));
            }
            let base = s.next_base;
            s.next_base += table.len() as u64;
            let first_file = s.next_file;
            s.next_file += files.len();
            let added = Added {
                ino: INodeNo(base + ROOT.0),
                first_file,
            };
            before(added);
            s.total_size = s.total_size.saturating_add(table.total_size());
            s.inodes += table.len();
            s.names.insert(name.to_string(), base);
            s.folders.insert(base, Folder { table, first_file });
            added
        };
        if let Some(n) = self.notifier.get() {
            tell(n.inval_entry(ROOT, OsStr::new(name)), "new entry");
            tell(n.inval_inode(ROOT, 0, 0), "root");
        }
        Ok(added)
    }

    /// Removes folder `name` and its subtree; false if there is none. Its inodes answer
    /// ENOENT from now on. Tells a mounted kernel, which may block briefly.
    pub fn remove(&self, name: &str) -> bool {
        let ino = {
            let mut s = write(&self.state);
            let Some(base) = s.names.remove(name) else {
                return false;
            };
            let folder = s.folders.remove(&base).expect("every name has its folder");
            s.total_size = s.total_size.saturating_sub(folder.table.total_size());
            s.inodes -= folder.table.len();
            INodeNo(base + ROOT.0)
        };
        if let Some(n) = self.notifier.get() {
            tell(n.delete(ROOT, ino, OsStr::new(name)), "removed entry");
            tell(n.inval_inode(ROOT, 0, 0), "root");
        }
        true
    }

    /// The folders' names, sorted.
    pub fn names(&self) -> Vec<String> {
        read(&self.state).names.keys().cloned().collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        read(&self.state).names.contains_key(name)
    }
}

fn read(state: &RwLock<State>) -> RwLockReadGuard<'_, State> {
    state.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(state: &RwLock<State>) -> RwLockWriteGuard<'_, State> {
    state.write().unwrap_or_else(PoisonError::into_inner)
}

/// A name the kernel takes in a directory entry, as the table checks its files' names.
fn usable(name: &str) -> bool {
    InodeTable::new(&[FileSpec {
        path: vec![name.to_string()],
        length: 0,
    }])
    .is_ok()
}

/// A refused notification only means the kernel keeps an entry until its TTL ends.
fn tell(result: std::io::Result<()>, what: &str) {
    if let Err(e) = result {
        tracing::debug!("cannot tell the kernel of a changed {what}: {e}");
    }
}

impl State {
    /// The folder holding mount inode `ino` (not the root), its base, and `ino` in its table.
    fn locate(&self, ino: INodeNo) -> Option<(&Folder, u64, INodeNo)> {
        let (&base, folder) = self.folders.range(..ino.0).next_back()?;
        let local = ino.0 - base;
        (local as usize <= folder.table.len()).then_some((folder, base, INodeNo(local)))
    }
}

fn global(base: u64, local: INodeNo) -> INodeNo {
    INodeNo(base + local.0)
}

impl Tree for Folders {
    fn kind(&self, ino: INodeNo) -> Option<NodeKind> {
        if ino == ROOT {
            return Some(NodeKind::Dir);
        }
        let s = read(&self.state);
        let (folder, _, local) = s.locate(ino)?;
        Some(match folder.table.kind(local)? {
            NodeKind::File { id, length } => NodeKind::File {
                id: folder.first_file + id,
                length,
            },
            NodeKind::Dir => NodeKind::Dir,
        })
    }

    fn attr(&self, ino: INodeNo, owner: &Ownership) -> Option<FileAttr> {
        let s = read(&self.state);
        if ino == ROOT {
            return self.attr_locked(&s, owner);
        }
        let (folder, _, local) = s.locate(ino)?;
        let mut attr = folder.table.attr(local, owner)?;
        attr.ino = ino;
        Some(attr)
    }

    fn lookup(&self, parent: INodeNo, name: &str) -> Result<INodeNo, LookupError> {
        let s = read(&self.state);
        if parent == ROOT {
            let base = s.names.get(name).ok_or(LookupError::NotFound)?;
            return Ok(global(*base, ROOT));
        }
        let (folder, base, local) = s.locate(parent).ok_or(LookupError::NoParent)?;
        folder.table.lookup(local, name).map(|i| global(base, i))
    }

    fn readdir(
        &self,
        ino: INodeNo,
        offset: u64,
        owner: &Ownership,
        add: &mut dyn FnMut(&DirEntry<'_>, &FileAttr) -> bool,
    ) -> bool {
        let s = read(&self.state);
        if ino == ROOT {
            let Some(root) = self.attr_locked(&s, owner) else {
                return false;
            };
            let skip = usize::try_from(offset).unwrap_or(usize::MAX);
            let dots = [(".", ROOT), ("..", ROOT)].map(|(n, i)| (n, i, Some(root)));
            let folders = s.names.iter().map(|(name, &base)| {
                let attr = s.folders[&base].table.attr(ROOT, owner).map(|mut a| {
                    a.ino = global(base, ROOT);
                    a
                });
                (name.as_str(), global(base, ROOT), attr)
            });
            for ((name, ino, attr), i) in dots.into_iter().chain(folders).zip(0..).skip(skip) {
                let Some(attr) = attr else { continue };
                let entry = DirEntry {
                    ino,
                    next_offset: i as u64 + 1,
                    kind: FileType::Directory,
                    name,
                };
                if add(&entry, &attr) {
                    break;
                }
            }
            return true;
        }
        let Some((folder, base, local)) = s.locate(ino) else {
            return false;
        };
        let Some(entries) = folder.table.readdir(local, offset) else {
            return false;
        };
        for mut entry in entries {
            let up = entry.name == ".." && local == ROOT;
            let attr = if up {
                self.attr_locked(&s, owner)
            } else {
                folder.table.attr(entry.ino, owner)
            };
            let Some(mut attr) = attr else { continue };
            entry.ino = if up { ROOT } else { global(base, entry.ino) };
            attr.ino = entry.ino;
            if add(&entry, &attr) {
                break;
            }
        }
        true
    }

    fn total_size(&self) -> u64 {
        read(&self.state).total_size
    }

    fn inodes(&self) -> usize {
        read(&self.state).inodes
    }

    fn listing_fixed(&self, ino: INodeNo) -> bool {
        ino != ROOT
    }

    fn attach(&self, notifier: Notifier) {
        let _ = self.notifier.set(notifier);
    }
}

impl Folders {
    /// The root's attributes, the lock already held.
    fn attr_locked(&self, s: &State, owner: &Ownership) -> Option<FileAttr> {
        let mut attr = self.empty.attr(ROOT, owner)?;
        attr.nlink = u32::try_from(s.names.len() + 2).unwrap_or(u32::MAX);
        Some(attr)
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn spec(path: &str, length: u64) -> FileSpec {
        FileSpec {
            path: path.split('/').map(str::to_owned).collect(),
            length,
        }
    }

    fn owner() -> Ownership {
        Ownership {
            uid: 1,
            gid: 2,
            time: UNIX_EPOCH,
        }
    }

    fn listing(f: &Folders, ino: INodeNo) -> Vec<(String, INodeNo)> {
        let mut out = Vec::new();
        let mut add = |e: &DirEntry<'_>, a: &FileAttr| {
            assert_eq!(e.ino, a.ino);
            out.push((e.name.to_string(), e.ino));
            false
        };
        assert!(f.readdir(ino, 0, &owner(), &mut add), "a directory");
        out
    }

    fn names(f: &Folders, ino: INodeNo) -> Vec<String> {
        listing(f, ino).into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn folders_appear_with_their_subtrees_and_go() {
        let f = Folders::new();
        assert_eq!(names(&f, ROOT), [".", ".."]);
        let mut seen = None;
        let a = f
            .add("b-movie", &[spec("x/y.bin", 5), spec("z", 7)], |a| {
                seen = Some(a)
            })
            .expect("added");
        assert_eq!(seen, Some(a));
        let b = f
            .add("a-show", &[spec("e1.mkv", 3)], |_| {})
            .expect("added");
        assert_eq!(names(&f, ROOT), [".", "..", "a-show", "b-movie"]);
        assert_eq!(f.attr(ROOT, &owner()).expect("root").nlink, 4);
        assert_eq!((f.total_size(), f.inodes()), (15, 1 + 4 + 2));

        let dir = f.lookup(ROOT, "b-movie").expect("folder");
        assert_eq!(dir, a.ino);
        let x = f.lookup(dir, "x").expect("x");
        let y = f.lookup(x, "y.bin").expect("y");
        assert_eq!(f.kind(y), Some(NodeKind::File { id: 0, length: 5 }));
        let e1 = f.lookup(b.ino, "e1.mkv").expect("e1");
        assert_eq!(f.kind(e1), Some(NodeKind::File { id: 2, length: 3 }));
        assert_eq!(f.attr(e1, &owner()).expect("attr").ino, e1);
        // `..` of a folder is the root; `.` is the folder.
        let dots = listing(&f, dir);
        assert_eq!(dots[0], (".".to_string(), dir));
        assert_eq!(dots[1], ("..".to_string(), ROOT));
        assert_eq!(listing(&f, x)[1], ("..".to_string(), dir));

        assert!(f.remove("b-movie"));
        assert!(!f.remove("b-movie"));
        assert_eq!(names(&f, ROOT), [".", "..", "a-show"]);
        for gone in [dir, x, y] {
            assert_eq!(f.kind(gone), None);
            assert_eq!(f.attr(gone, &owner()), None);
        }
        assert_eq!(f.lookup(x, "y.bin"), Err(LookupError::NoParent));
        assert_eq!(f.lookup(ROOT, "b-movie"), Err(LookupError::NotFound));
        assert_eq!((f.total_size(), f.inodes()), (3, 1 + 2));
        // The other folder is untouched.
        assert_eq!(f.lookup(b.ino, "e1.mkv"), Ok(e1));
    }

    #[test]
    fn numbers_are_never_given_twice() {
        let f = Folders::new();
        let first = f
            .add("t", &[spec("a", 1), spec("d/b", 2)], |_| {})
            .expect("added");
        let old_file = f.lookup(first.ino, "a").expect("a");
        f.remove("t");
        let again = f
            .add("t", &[spec("a", 1), spec("d/b", 2)], |_| {})
            .expect("added");
        assert!(again.ino.0 > old_file.0, "{again:?} reuses an inode");
        assert_eq!(again.first_file, 2);
        assert_eq!(f.kind(old_file), None, "the old inode stays gone");
        let new_file = f.lookup(again.ino, "a").expect("a");
        assert_ne!(new_file, old_file);
        assert_eq!(f.kind(new_file), Some(NodeKind::File { id: 2, length: 1 }));
    }

    #[test]
    fn bad_and_taken_names_are_refused() {
        let f = Folders::new();
        f.add("t", &[spec("a", 1)], |_| {}).expect("added");
        let taken = f.add("t", &[spec("b", 1)], |_| panic!("not visible"));
        assert_eq!(taken, Err(FolderError::Taken("t".into())));
        for bad in ["", ".", "..", "a/b", &"n".repeat(256)] {
            let r = f.add(bad, &[spec("a", 1)], |_| panic!("not visible"));
            assert_eq!(r, Err(FolderError::BadName(bad.into())));
        }
        let dup = f.add("u", &[spec("a", 1), spec("a", 2)], |_| {
            panic!("not visible")
        });
        assert!(matches!(dup, Err(FolderError::Table(_))), "{dup:?}");
        assert_eq!(f.names(), ["t"]);
        // An empty torrent is an empty folder.
        f.add("empty", &[], |_| {}).expect("added");
        let dir = f.lookup(ROOT, "empty").expect("folder");
        assert_eq!(names(&f, dir), [".", ".."]);
    }

    #[test]
    fn the_root_listing_resumes_and_is_never_cached() {
        let f = Folders::new();
        for name in ["c", "a", "b"] {
            f.add(name, &[spec("x", 1)], |_| {}).expect("added");
        }
        let mut rest = Vec::new();
        let mut add = |e: &DirEntry<'_>, _: &FileAttr| {
            rest.push((e.name.to_string(), e.next_offset));
            false
        };
        f.readdir(ROOT, 3, &owner(), &mut add);
        assert_eq!(rest, [("b".to_string(), 4), ("c".to_string(), 5)]);
        assert!(!f.listing_fixed(ROOT));
        let a = f.lookup(ROOT, "a").expect("a");
        assert!(f.listing_fixed(a));
    }
}
