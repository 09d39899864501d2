//! Where a web seed keeps the torrent's bytes (BEP 19), as pure functions: the URL of each
//! file, and a torrent byte range cut at file edges into one request per file.
//!
//! - Single-file torrent: the URL is the file itself; a URL ending in `/` is a folder holding
//!   a file named as the torrent.
//! - Multi-file torrent: the URL is a folder holding the torrent's folder: `url/name/path...`
//!   (a `/` is put in between when the URL lacks one).
//!
//! Path components are the sanitized ones (`metainfo::paths`): a torrent's `..` never climbs
//! up the server's tree. Each is percent-encoded as one path segment, so a `/`, `?`, `#`, `%`
//! or space inside a name stays part of that name.

use std::ops::Range;

use url::Url;

use crate::metainfo::FileEntry;

/// The URL of `file` (the torrent's file list in order, and whether it has a `files` list)
/// on the web seed at `base`. `None` for a base that cannot carry a path (`mailto:`-like).
pub(crate) fn file_url(base: &Url, files: &[FileEntry], multi: bool, file: usize) -> Option<Url> {
    let entry = files.get(file)?;
    let mut url = base.clone();
    if !multi && !base.path().ends_with('/') {
        return Some(url);
    }
    {
        let mut segments = url.path_segments_mut().ok()?;
        // `http://h/seeds/` has one empty last segment: the files go in its place.
        segments.pop_if_empty();
        for c in &entry.path {
            segments.push(c);
        }
    }
    Some(url)
}

/// One request's worth of a torrent range: `len` bytes of file `file` from `offset` in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    pub(crate) file: usize,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

impl Segment {
    /// The HTTP `Range` value asking for exactly this segment (an inclusive range).
    pub(crate) fn range_header(&self) -> String {
        format!("bytes={}-{}", self.offset, self.offset + self.len - 1)
    }
}

/// The torrent range `range` as consecutive per-file segments, in torrent order; empty files
/// take no segment. `files` are the torrent's, each starting where the previous one ends.
pub(crate) fn segments(files: &[FileEntry], range: Range<u64>) -> Vec<Segment> {
    let mut out = Vec::new();
    if range.is_empty() {
        return out;
    }
    // The first file ending after `range.start`.
    let first = files.partition_point(|f| f.offset + f.length <= range.start);
    for (i, f) in files.iter().enumerate().skip(first) {
        if f.offset >= range.end {
            break;
        }
        let start = range.start.max(f.offset);
        let end = range.end.min(f.offset + f.length);
        if start < end {
            out.push(Segment {
                file: i,
                offset: start - f.offset,
                len: end - start,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(specs: &[(&[&str], u64)]) -> Vec<FileEntry> {
        let mut offset = 0;
        specs
            .iter()
            .map(|(path, length)| {
                let f = FileEntry {
                    path: path.iter().map(|s| s.to_string()).collect(),
                    length: *length,
                    offset,
                    padding: false,
                };
                offset += length;
                f
            })
            .collect()
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn single_file_url_is_the_file_unless_it_is_a_folder() {
        let fs = files(&[(&["movie file.mkv"], 100)]);
        let at = |base: &str| file_url(&url(base), &fs, false, 0).unwrap().to_string();
        assert_eq!(at("http://h/x/data.bin"), "http://h/x/data.bin");
        assert_eq!(at("http://h/x/"), "http://h/x/movie%20file.mkv");
        assert_eq!(at("http://h:8080/"), "http://h:8080/movie%20file.mkv");
        assert_eq!(at("https://h/x/?k=v"), "https://h/x/movie%20file.mkv?k=v");
    }

    #[test]
    fn multi_file_urls_are_name_then_path_each_segment_encoded() {
        let fs = files(&[
            (&["Album", "01 intro.flac"], 10),
            (&["Album", "sub dir", "ünï 名前#1?%.txt"], 10),
        ]);
        let at = |base: &str, i| file_url(&url(base), &fs, true, i).unwrap().to_string();
        assert_eq!(
            at("http://h/seeds/", 0),
            "http://h/seeds/Album/01%20intro.flac"
        );
        // No trailing slash: the folder is still the base (BEP 19 clients add one).
        assert_eq!(
            at("http://h/seeds", 0),
            "http://h/seeds/Album/01%20intro.flac"
        );
        assert_eq!(at("http://h", 0), "http://h/Album/01%20intro.flac");
        assert_eq!(
            at("http://h/s/", 1),
            "http://h/s/Album/sub%20dir/%C3%BCn%C3%AF%20%E5%90%8D%E5%89%8D%231%3F%25.txt"
        );
        assert!(
            file_url(&url("http://h/"), &fs, true, 2).is_none(),
            "no file 2"
        );
    }

    #[test]
    fn a_name_cannot_climb_or_split_into_levels() {
        // Sanitized names never hold `/`; `..` became `_`; a `\` stays one segment.
        let fs = files(&[(&["t", "_", "a\\b"], 1)]);
        let u = file_url(&url("http://h/s/"), &fs, true, 0).unwrap();
        assert_eq!(u.path(), "/s/t/_/a%5Cb");
    }

    #[test]
    fn ranges_split_at_file_edges_and_skip_empty_files() {
        let fs = files(&[
            (&["t", "a"], 10),
            (&["t", "empty"], 0),
            (&["t", "b"], 5),
            (&["t", "c"], 20),
        ]);
        let seg = |file, offset, len| Segment { file, offset, len };
        assert_eq!(segments(&fs, 0..10), [seg(0, 0, 10)]);
        assert_eq!(segments(&fs, 3..7), [seg(0, 3, 4)]);
        assert_eq!(
            segments(&fs, 8..30),
            [seg(0, 8, 2), seg(2, 0, 5), seg(3, 0, 15)]
        );
        assert_eq!(segments(&fs, 10..15), [seg(2, 0, 5)]);
        assert_eq!(segments(&fs, 34..35), [seg(3, 19, 1)]);
        assert_eq!(segments(&fs, 35..40), [], "past the end");
        assert_eq!(segments(&fs, 5..5), []);
    }

    #[test]
    fn segments_cover_any_range_exactly_once() {
        let fs = files(&[
            (&["t", "a"], 7),
            (&["t", "b"], 0),
            (&["t", "c"], 1),
            (&["t", "d"], 30),
            (&["t", "e"], 0),
            (&["t", "f"], 9),
        ]);
        let total = 47;
        for start in 0..total {
            for end in start..=total {
                let segs = segments(&fs, start..end);
                let mut at = start;
                for s in &segs {
                    assert!(s.len > 0);
                    assert_eq!(fs[s.file].offset + s.offset, at, "contiguous");
                    assert!(s.offset + s.len <= fs[s.file].length, "inside its file");
                    at += s.len;
                }
                assert_eq!(at, end, "{start}..{end}: {segs:?}");
            }
        }
    }

    #[test]
    fn range_header_is_inclusive() {
        let s = Segment {
            file: 0,
            offset: 100,
            len: 16384,
        };
        assert_eq!(s.range_header(), "bytes=100-16483");
    }
}
