//! File names from a torrent made safe to show under the mountpoint.
//!
//! Names are hostile input: whoever made the torrent chose them. Each component becomes exactly
//! one directory level that cannot climb out of the torrent's root, so a path can never be
//! absolute or reach a parent. Unsafe components are neutralised rather than refused, as
//! libtorrent does, so a torrent with one odd name still mounts:
//! - `""` and `"."` are dropped (they add no level);
//! - `".."` becomes `"_"`;
//! - `/`, `\` and NUL inside a component become `_` (a component never makes a level, and Linux
//!   names cannot hold NUL);
//! - a component longer than 255 bytes (Linux `NAME_MAX`) is cut at a char boundary.
//!
//! What cannot be neutralised is refused: a path left empty, and two files whose sanitized
//! paths are equal or where one file would also have to be a directory of another.

use super::{FileEntry, MetainfoError};

/// Linux `NAME_MAX`: longer names cannot be created or looked up.
pub const MAX_COMPONENT_BYTES: usize = 255;

/// The safe form of one component, `None` when it adds no level and is dropped.
pub fn sanitize_component(raw: &str) -> Option<String> {
    match raw {
        "" | "." => return None,
        ".." => return Some("_".to_owned()),
        _ => {}
    }
    let mut out: String = raw
        .chars()
        .map(|c| {
            if matches!(c, '/' | '\\' | '\0') {
                '_'
            } else {
                c
            }
        })
        .collect();
    if out.len() > MAX_COMPONENT_BYTES {
        let mut end = MAX_COMPONENT_BYTES;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    Some(out)
}

/// `root` (already sanitized) followed by the sanitized `components`, and how many components
/// had to be changed or dropped (for one warning per torrent, not one per file).
pub fn file_path(root: &str, components: &[String]) -> (Vec<String>, usize) {
    let mut path = Vec::with_capacity(components.len() + 1);
    path.push(root.to_owned());
    let mut changed = 0;
    for raw in components {
        match sanitize_component(raw) {
            Some(safe) => {
                if safe != *raw {
                    changed += 1;
                }
                path.push(safe);
            }
            None => changed += 1,
        }
    }
    (path, changed)
}

/// Refuses two visible files with the same path, or a file that is a directory of another.
/// Padding files are hidden by the filesystem, so they may collide (libtorrent names them all
/// `.pad/<size>`).
pub fn check_collisions(files: &[FileEntry]) -> Result<(), MetainfoError> {
    let mut visible: Vec<&Vec<String>> = files
        .iter()
        .filter(|f| !f.padding)
        .map(|f| &f.path)
        .collect();
    visible.sort_unstable();
    // In component-wise sorted order, every path that has `a` as a prefix directly follows `a`,
    // so comparing neighbours finds every collision.
    for pair in visible.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.starts_with(a) {
            return Err(MetainfoError::PathCollision {
                first: a.join("/"),
                second: b.join("/"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &[&str], padding: bool) -> FileEntry {
        FileEntry {
            path: path.iter().map(|s| s.to_string()).collect(),
            length: 1,
            offset: 0,
            padding,
        }
    }

    fn strings(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn components_that_could_escape_are_neutralised() {
        assert_eq!(sanitize_component(".."), Some("_".into()));
        assert_eq!(sanitize_component("."), None);
        assert_eq!(sanitize_component(""), None);
        assert_eq!(
            sanitize_component("/etc/passwd"),
            Some("_etc_passwd".into())
        );
        assert_eq!(sanitize_component("..\\..\\x"), Some(".._.._x".into()));
        assert_eq!(sanitize_component("a\0b"), Some("a_b".into()));
        assert_eq!(sanitize_component("..."), Some("...".into()));
        assert_eq!(
            sanitize_component("ok name.txt"),
            Some("ok name.txt".into())
        );
    }

    #[test]
    fn long_components_are_cut_at_a_char_boundary() {
        let ascii = "a".repeat(300);
        assert_eq!(sanitize_component(&ascii).unwrap().len(), 255);
        // 'é' is 2 bytes: 127 of them make 254 bytes, the 128th would cross 255.
        let accents = "é".repeat(200);
        let cut = sanitize_component(&accents).unwrap();
        assert_eq!(cut.len(), 254);
        assert_eq!(cut.chars().count(), 127);
    }

    #[test]
    fn file_path_keeps_every_level_below_the_root() {
        let (path, changed) = file_path("root", &strings(&["", "..", "etc", ".", "passwd"]));
        assert_eq!(path, ["root", "_", "etc", "passwd"]);
        assert_eq!(changed, 3);
        let (path, changed) = file_path("root", &strings(&["a", "b.txt"]));
        assert_eq!(path, ["root", "a", "b.txt"]);
        assert_eq!(changed, 0);
    }

    #[test]
    fn duplicate_paths_collide() {
        let files = [entry(&["t", "a"], false), entry(&["t", "a"], false)];
        let err = check_collisions(&files).unwrap_err();
        assert_eq!(err.to_string(), "file paths collide: 't/a' and 't/a'");
    }

    #[test]
    fn a_file_cannot_also_be_a_directory() {
        let files = [
            entry(&["t", "a", "b", "c"], false),
            entry(&["t", "z"], false),
            entry(&["t", "a"], false),
            entry(&["t", "a0"], false),
        ];
        match check_collisions(&files).unwrap_err() {
            MetainfoError::PathCollision { first, second } => {
                assert_eq!((first.as_str(), second.as_str()), ("t/a", "t/a/b/c"));
            }
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn distinct_paths_and_padding_files_pass() {
        let files = [
            entry(&["t", "a", "x"], false),
            entry(&["t", ".pad", "16"], true),
            entry(&["t", "a", "y"], false),
            entry(&["t", ".pad", "16"], true),
            entry(&["t", "ab"], false),
        ];
        assert!(check_collisions(&files).is_ok());
    }
}
