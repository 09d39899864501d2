//! The inode table: a torrent's file list as a directory tree, built once before mounting.
//!
//! Invariants (the FUSE adapter relies on them, so nothing here changes after `new`):
//! - inode 1 is the root; inode `n` is `nodes[n - 1]`; numbers are dense and never reused.
//! - every directory lists its children sorted by name (byte order), names unique within it.
//! - a directory entry's readdir offset is its position in `[".", "..", children...]` plus one,
//!   so a readdir resumed at the offset of the last entry returned continues right after it.

use std::collections::BTreeMap;
use std::time::SystemTime;

use fuser::{FileAttr, FileType, INodeNo};

/// Inode number of the root directory.
pub const ROOT: INodeNo = INodeNo::ROOT;
/// Preferred I/O size reported by `stat`: tools size their read buffers after it.
pub const BLOCK_SIZE: u32 = 128 * 1024;
/// Longest name the kernel accepts in a directory entry (`FUSE_NAME_MAX`, `NAME_MAX`).
const NAME_MAX: usize = 255;

/// One file of the torrent, as the metainfo layer hands it over. Its position in the slice
/// given to [`InodeTable::new`] is its file id, the number the [`super::Backend`] knows it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// Path components below the mount root; already sanitized by the caller.
    pub path: Vec<String>,
    pub length: u64,
}

/// Why a file list cannot be laid out as a tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("file {file} has an empty path")]
    EmptyPath { file: usize },
    #[error("file {file} has an unusable path component {component:?}")]
    BadComponent { file: usize, component: String },
    #[error("file {file} has the same path as another file: {path}")]
    DuplicatePath { file: usize, path: String },
    #[error("file {file} needs {path} as both a file and a directory")]
    FileDirCollision { file: usize, path: String },
}

/// Owner and timestamps shown on every inode: the tree has no per-file metadata of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
    /// Shown as atime, mtime and ctime (torrent creation date or mount time).
    pub time: SystemTime,
}

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    File { id: usize, length: u64 },
}

/// Why a lookup found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupError {
    /// The parent inode does not exist.
    NoParent,
    /// The parent is a file.
    NotDir,
    /// The parent has no child of that name.
    NotFound,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirEntry<'a> {
    pub ino: INodeNo,
    /// Pass this back to [`InodeTable::readdir`] to continue after this entry.
    pub next_offset: u64,
    pub kind: FileType,
    pub name: &'a str,
}

#[derive(Debug)]
struct Node {
    /// The root is its own parent, as `..` of `/` is `/`.
    parent: INodeNo,
    body: Body,
}

#[derive(Debug)]
enum Body {
    /// Children sorted by name; `subdirs` counts the directories among them (for `nlink`).
    Dir {
        children: Vec<(String, INodeNo)>,
        subdirs: u32,
    },
    File {
        id: usize,
        length: u64,
    },
}

/// The immutable directory tree of one torrent.
#[derive(Debug)]
pub struct InodeTable {
    nodes: Vec<Node>,
    /// Inode of each file id.
    files: Vec<INodeNo>,
    total_size: u64,
}

/// A node while the tree is being built: directories keep a map so inserts stay cheap.
enum Draft {
    Dir {
        parent: usize,
        children: BTreeMap<String, usize>,
    },
    File {
        parent: usize,
        id: usize,
        length: u64,
    },
}

impl InodeTable {
    /// Lays out `files` as a tree; file `i` of the slice gets file id `i`.
    pub fn new(files: &[FileSpec]) -> Result<InodeTable, TableError> {
        // Indices into `drafts`; inode number = index + 1.
        let mut drafts = vec![Draft::Dir {
            parent: 0,
            children: BTreeMap::new(),
        }];
        let mut file_nodes = Vec::with_capacity(files.len());
        let mut total_size = 0u64;
        for (file, spec) in files.iter().enumerate() {
            let Some((leaf, dirs)) = spec.path.split_last() else {
                return Err(TableError::EmptyPath { file });
            };
            if let Some(bad) = spec.path.iter().find(|c| !usable_component(c)) {
                return Err(TableError::BadComponent {
                    file,
                    component: bad.clone(),
                });
            }
            let mut dir = 0usize;
            for (depth, name) in dirs.iter().enumerate() {
                let next = drafts.len();
                let Draft::Dir { children, .. } = &mut drafts[dir] else {
                    unreachable!("`dir` only ever indexes directories");
                };
                match children.get(name) {
                    Some(&child) => {
                        if matches!(drafts[child], Draft::File { .. }) {
                            return Err(TableError::FileDirCollision {
                                file,
                                path: spec.path[..=depth].join("/"),
                            });
                        }
                        dir = child;
                    }
                    None => {
                        children.insert(name.clone(), next);
                        drafts.push(Draft::Dir {
                            parent: dir,
                            children: BTreeMap::new(),
                        });
                        dir = next;
                    }
                }
            }
            let next = drafts.len();
            let Draft::Dir { children, .. } = &mut drafts[dir] else {
                unreachable!("`dir` only ever indexes directories");
            };
            if let Some(&existing) = children.get(leaf) {
                let path = spec.path.join("/");
                return Err(match drafts[existing] {
                    Draft::File { .. } => TableError::DuplicatePath { file, path },
                    Draft::Dir { .. } => TableError::FileDirCollision { file, path },
                });
            }
            children.insert(leaf.clone(), next);
            drafts.push(Draft::File {
                parent: dir,
                id: file,
                length: spec.length,
            });
            file_nodes.push(ino_of(next));
            total_size = total_size.saturating_add(spec.length);
        }
        let is_dir: Vec<bool> = drafts
            .iter()
            .map(|d| matches!(d, Draft::Dir { .. }))
            .collect();
        let nodes = drafts
            .into_iter()
            .map(|draft| match draft {
                Draft::Dir { parent, children } => Node {
                    parent: ino_of(parent),
                    body: Body::Dir {
                        subdirs: u32::try_from(children.values().filter(|&&i| is_dir[i]).count())
                            .unwrap_or(u32::MAX),
                        children: children
                            .into_iter()
                            .map(|(name, i)| (name, ino_of(i)))
                            .collect(),
                    },
                },
                Draft::File { parent, id, length } => Node {
                    parent: ino_of(parent),
                    body: Body::File { id, length },
                },
            })
            .collect();
        Ok(InodeTable {
            nodes,
            files: file_nodes,
            total_size,
        })
    }

    fn node(&self, ino: INodeNo) -> Option<&Node> {
        let index = usize::try_from(ino.0.checked_sub(1)?).ok()?;
        self.nodes.get(index)
    }

    /// Number of inodes, directories included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: the root exists even for an empty file list.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Sum of all file lengths.
    pub fn total_size(&self) -> u64 {
        self.total_size
    }

    pub fn kind(&self, ino: INodeNo) -> Option<NodeKind> {
        Some(match self.node(ino)?.body {
            Body::Dir { .. } => NodeKind::Dir,
            Body::File { id, length } => NodeKind::File { id, length },
        })
    }

    /// File id of a file inode; `None` for directories and unknown inodes.
    pub fn file_id(&self, ino: INodeNo) -> Option<usize> {
        match self.kind(ino)? {
            NodeKind::File { id, .. } => Some(id),
            NodeKind::Dir => None,
        }
    }

    /// Inode of a file id.
    pub fn file_ino(&self, id: usize) -> Option<INodeNo> {
        self.files.get(id).copied()
    }

    /// Parent directory of any inode (the root's parent is the root).
    pub fn parent(&self, ino: INodeNo) -> Option<INodeNo> {
        Some(self.node(ino)?.parent)
    }

    pub fn lookup(&self, parent: INodeNo, name: &str) -> Result<INodeNo, LookupError> {
        let node = self.node(parent).ok_or(LookupError::NoParent)?;
        let Body::Dir { children, .. } = &node.body else {
            return Err(LookupError::NotDir);
        };
        children
            .binary_search_by(|(child, _)| child.as_str().cmp(name))
            .map(|i| children[i].1)
            .map_err(|_| LookupError::NotFound)
    }

    pub fn attr(&self, ino: INodeNo, owner: &Ownership) -> Option<FileAttr> {
        let node = self.node(ino)?;
        let (kind, perm, size, nlink) = match &node.body {
            Body::File { length, .. } => (FileType::RegularFile, 0o444, *length, 1),
            Body::Dir { subdirs, .. } => (FileType::Directory, 0o555, 0, subdirs.saturating_add(2)),
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: owner.time,
            mtime: owner.time,
            ctime: owner.time,
            crtime: owner.time,
            kind,
            perm,
            nlink,
            uid: owner.uid,
            gid: owner.gid,
            rdev: 0,
            blksize: BLOCK_SIZE,
            flags: 0,
        })
    }

    /// Entries of directory `ino` from position `offset` on (0 = from the start, including
    /// `.` and `..`). `None` if `ino` is not a directory.
    pub fn readdir(
        &self,
        ino: INodeNo,
        offset: u64,
    ) -> Option<impl Iterator<Item = DirEntry<'_>> + '_> {
        let node = self.node(ino)?;
        let Body::Dir { children, .. } = &node.body else {
            return None;
        };
        // Slices, not `skip`: each call costs what it returns, so listing a directory of n
        // entries a page at a time is linear in n.
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        let dots = [(".", ino), ("..", node.parent)];
        let rest = children.get(skip.saturating_sub(2)..).unwrap_or_default();
        let all = (dots.into_iter().skip(skip.min(2)))
            .chain(rest.iter().map(|(name, child)| (name.as_str(), *child)));
        Some(all.zip(skip..).map(move |((name, child), i)| DirEntry {
            ino: child,
            next_offset: i as u64 + 1,
            kind: match self.kind(child) {
                Some(NodeKind::File { .. }) => FileType::RegularFile,
                _ => FileType::Directory,
            },
            name,
        }))
    }
}

fn ino_of(index: usize) -> INodeNo {
    INodeNo(index as u64 + 1)
}

/// A name the kernel will accept in a directory entry and that cannot escape its directory.
fn usable_component(c: &str) -> bool {
    !c.is_empty()
        && c != "."
        && c != ".."
        && c.len() <= NAME_MAX
        && !c.bytes().any(|b| b == b'/' || b == 0)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn spec(path: &str, length: u64) -> FileSpec {
        FileSpec {
            path: path.split('/').map(str::to_owned).collect(),
            length,
        }
    }

    fn owner() -> Ownership {
        Ownership {
            uid: 1000,
            gid: 100,
            time: UNIX_EPOCH + Duration::from_secs(1_600_000_000),
        }
    }

    fn names(table: &InodeTable, ino: INodeNo, offset: u64) -> Vec<String> {
        table
            .readdir(ino, offset)
            .expect("a directory")
            .map(|e| e.name.to_owned())
            .collect()
    }

    #[test]
    fn single_file_sits_in_the_root() {
        let table = InodeTable::new(&[spec("movie.mkv", 1000)]).expect("valid");
        let ino = table.lookup(ROOT, "movie.mkv").expect("present");
        assert_eq!(table.file_id(ino), Some(0));
        assert_eq!(table.file_ino(0), Some(ino));
        assert_eq!(table.parent(ino), Some(ROOT));
        assert_eq!(names(&table, ROOT, 0), [".", "..", "movie.mkv"]);
        assert_eq!(table.total_size(), 1000);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn nested_files_build_sorted_directories() {
        let files = [
            spec("album/cd2/b.flac", 5),
            spec("album/cover.jpg", 7),
            spec("album/cd1/a.flac", 3),
            spec("readme.txt", 1),
        ];
        let table = InodeTable::new(&files).expect("valid");
        assert_eq!(names(&table, ROOT, 0), [".", "..", "album", "readme.txt"]);
        let album = table.lookup(ROOT, "album").expect("album");
        assert_eq!(table.kind(album), Some(NodeKind::Dir));
        assert_eq!(
            names(&table, album, 0),
            [".", "..", "cd1", "cd2", "cover.jpg"]
        );
        let cd1 = table.lookup(album, "cd1").expect("cd1");
        let a = table.lookup(cd1, "a.flac").expect("a.flac");
        assert_eq!(table.kind(a), Some(NodeKind::File { id: 2, length: 3 }));
        assert_eq!(table.parent(cd1), Some(album));
        assert_eq!(table.parent(album), Some(ROOT));
        assert_eq!(table.parent(ROOT), Some(ROOT));
        let dotdot = table.readdir(cd1, 1).expect("dir").next().expect("..");
        assert_eq!((dotdot.name, dotdot.ino), ("..", album));
        for (id, file) in files.iter().enumerate() {
            let mut ino = ROOT;
            for name in &file.path {
                ino = table.lookup(ino, name).expect("every path resolves");
            }
            assert_eq!(table.file_id(ino), Some(id));
        }
    }

    #[test]
    fn attributes_follow_sizes_and_owner() {
        let table =
            InodeTable::new(&[spec("d/x", 513), spec("d/e/y", 0), spec("z", 512)]).expect("valid");
        let d = table.lookup(ROOT, "d").expect("d");
        let x = table.lookup(d, "x").expect("x");
        let attr = table.attr(x, &owner()).expect("attr");
        assert_eq!(attr.kind, FileType::RegularFile);
        assert_eq!(
            (attr.size, attr.blocks, attr.perm, attr.nlink),
            (513, 2, 0o444, 1)
        );
        assert_eq!((attr.uid, attr.gid, attr.mtime), (1000, 100, owner().time));
        let z = table.lookup(ROOT, "z").expect("z");
        assert_eq!(table.attr(z, &owner()).expect("attr").blocks, 1);
        let dir = table.attr(d, &owner()).expect("attr");
        assert_eq!(
            (dir.kind, dir.perm, dir.nlink),
            (FileType::Directory, 0o555, 3)
        );
        assert_eq!(table.attr(ROOT, &owner()).expect("attr").nlink, 3);
        assert_eq!(table.attr(INodeNo(99), &owner()), None);
        assert_eq!(table.attr(INodeNo(0), &owner()), None);
    }

    #[test]
    fn readdir_resumes_after_the_last_entry_returned() {
        let files: Vec<_> = (0..10).map(|i| spec(&format!("f{i:02}"), i)).collect();
        let table = InodeTable::new(&files).expect("valid");
        let all: Vec<_> = table.readdir(ROOT, 0).expect("dir").collect();
        assert_eq!(all.len(), 12);
        // Read three at a time, resuming from the last offset seen, as the kernel does.
        let mut offset = 0;
        let mut seen = Vec::new();
        loop {
            let batch: Vec<_> = table.readdir(ROOT, offset).expect("dir").take(3).collect();
            let Some(last) = batch.last() else { break };
            offset = last.next_offset;
            seen.extend(batch);
        }
        assert_eq!(seen, all);
        assert_eq!(table.readdir(ROOT, 12).expect("dir").count(), 0);
        assert_eq!(table.readdir(ROOT, u64::MAX).expect("dir").count(), 0);
        let f00 = table.lookup(ROOT, "f00").expect("f00");
        assert!(table.readdir(f00, 0).is_none());
    }

    #[test]
    fn missing_names_and_bad_parents_are_told_apart() {
        let table = InodeTable::new(&[spec("a/b", 1)]).expect("valid");
        let a = table.lookup(ROOT, "a").expect("a");
        let b = table.lookup(a, "b").expect("b");
        assert_eq!(table.lookup(ROOT, "b"), Err(LookupError::NotFound));
        assert_eq!(table.lookup(ROOT, ""), Err(LookupError::NotFound));
        assert_eq!(table.lookup(b, "x"), Err(LookupError::NotDir));
        assert_eq!(table.lookup(INodeNo(42), "a"), Err(LookupError::NoParent));
        assert_eq!(table.file_id(a), None);
        assert_eq!(table.file_ino(1), None);
    }

    #[test]
    fn colliding_paths_are_refused() {
        let dup = InodeTable::new(&[spec("a/b", 1), spec("a/b", 2)]);
        assert!(matches!(
            dup,
            Err(TableError::DuplicatePath { file: 1, .. })
        ));
        let file_then_dir = InodeTable::new(&[spec("a", 1), spec("a/b", 2)]);
        assert_eq!(
            file_then_dir.err(),
            Some(TableError::FileDirCollision {
                file: 1,
                path: "a".into()
            })
        );
        let dir_then_file = InodeTable::new(&[spec("a/b", 1), spec("a", 2)]);
        assert!(matches!(
            dir_then_file,
            Err(TableError::FileDirCollision { file: 1, .. })
        ));
        let empty = InodeTable::new(&[FileSpec {
            path: vec![],
            length: 0,
        }]);
        assert_eq!(empty.err(), Some(TableError::EmptyPath { file: 0 }));
        for bad in ["..", ".", "", "a/b", "nul\0", &"n".repeat(256)] {
            let spec = FileSpec {
                path: vec!["ok".into(), bad.into()],
                length: 1,
            };
            assert!(
                matches!(
                    InodeTable::new(&[spec]),
                    Err(TableError::BadComponent { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn empty_torrent_has_just_a_root() {
        let table = InodeTable::new(&[]).expect("valid");
        assert_eq!(names(&table, ROOT, 0), [".", ".."]);
        assert_eq!(table.total_size(), 0);
    }

    #[test]
    fn thousand_files_build() {
        let files: Vec<_> = (0..1000)
            .map(|i| spec(&format!("d{}/s{}/file{i:04}.bin", i % 7, i % 13), i))
            .collect();
        let table = InodeTable::new(&files).expect("valid");
        for (id, file) in files.iter().enumerate() {
            let ino = file
                .path
                .iter()
                .try_fold(ROOT, |dir, name| table.lookup(dir, name).ok())
                .expect("resolves");
            assert_eq!(table.file_id(ino), Some(id));
        }
        // 1000 files, 7 top directories, 7 * 13 subdirectories (i % 7, i % 13 cover all pairs).
        assert_eq!(table.len(), 1 + 7 + 91 + 1000);
        assert_eq!(table.total_size(), (0..1000).sum::<u64>());
    }
}
