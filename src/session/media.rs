//! Media files as players read them: the head, then the index, then the seek target. mpv and
//! VLC open an MP4 by reading its first bytes, then jump to the `moov` box (the index: where
//! every frame is) before they can show a frame. In a file written without "faststart" the
//! `moov` sits after the media data, at the end; its offset is written in the head, as the size
//! of the box before it. `find_index` reads that from the head, so the session fetches exactly
//! the index instead of guessing at the tail.
//!
//! Pure functions over bytes; the session decides what to fetch (`read.rs`).

/// Files players open: they read the header, then the index at the end (mp4 `moov`, mkv cues),
/// then the first frames.
pub(crate) fn is_media(path: &[String]) -> bool {
    const EXTENSIONS: &[&str] = &[
        "mkv", "mp4", "m4v", "avi", "webm", "mov", "wmv", "flv", "ts", "m2ts", "mpg", "mpeg",
        "ogv", "3gp", "mp3", "flac", "m4a", "ogg", "opus", "wav", "aac",
    ];
    path.last()
        .and_then(|name| name.rsplit_once('.'))
        .is_some_and(|(_, ext)| EXTENSIONS.iter().any(|e| ext.eq_ignore_ascii_case(e)))
}

/// Where a media file's index is, as far as its head tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Index {
    /// The `moov` box starts at this offset, inside the bytes given: the player reads it with
    /// the head, nothing at the end of the file is needed first (a "faststart" file).
    InHead(u64),
    /// A top-level box (typically `mdat`) starts inside the bytes given and ends here, past
    /// them: the boxes after it, `moov` among them, run from here to the end of the file.
    After(u64),
    /// Not an ISO-BMFF file (MP4, MOV, M4A, 3GP), or the bytes ran out before a box that says.
    Unknown,
}

/// At most this many top-level boxes are walked: real files have a handful before `mdat`.
const MAX_BOXES: usize = 1024;

/// Walks the top-level ISO-BMFF boxes (ISO/IEC 14496-12 §4.2) in `head`, the first bytes of a
/// file `file_len` bytes long, and says where its `moov` is. An ISO-BMFF file starts with an
/// `ftyp` box. Each box is a 32-bit big-endian size and a 4-byte type; size 1 means a 64-bit
/// size follows the type, size 0 that the box runs to the end of the file. A size smaller than
/// its header, or a box running past the end of the file, means this is no such file.
///
/// Never panics, whatever the bytes; at most [`MAX_BOXES`] steps.
pub(crate) fn find_index(head: &[u8], file_len: u64) -> Index {
    let avail = (head.len() as u64).min(file_len);
    let mut pos = 0u64;
    for n in 0..MAX_BOXES {
        let Some(header) = box_header(head, pos, avail) else {
            return Index::Unknown;
        };
        let end = match header.size {
            0 => Some(file_len),
            size => pos.checked_add(size),
        };
        let Some(end) = end.filter(|&e| e <= file_len && e - pos >= header.len) else {
            return Index::Unknown;
        };
        if n == 0 && &header.kind != b"ftyp" {
            return Index::Unknown;
        }
        if &header.kind == b"moov" {
            return Index::InHead(pos);
        }
        if end >= file_len {
            // The last box, and no index: nothing after it to fetch first.
            return Index::Unknown;
        }
        if end > avail {
            return Index::After(end);
        }
        pos = end;
    }
    Index::Unknown
}

struct BoxHeader {
    /// The box's whole size in bytes (0: to the end of the file).
    size: u64,
    kind: [u8; 4],
    /// Header bytes: 8, or 16 with a 64-bit size.
    len: u64,
}

/// The box header at `pos`, if all of it is within the first `avail` bytes of `head`.
fn box_header(head: &[u8], pos: u64, avail: u64) -> Option<BoxHeader> {
    let bytes = |from: u64, n: u64| -> Option<&[u8]> {
        let to = from.checked_add(n).filter(|&t| t <= avail)?;
        head.get(usize::try_from(from).ok()?..usize::try_from(to).ok()?)
    };
    let h = bytes(pos, 8)?;
    let size32 = u32::from_be_bytes(h[0..4].try_into().ok()?);
    let kind: [u8; 4] = h[4..8].try_into().ok()?;
    if size32 != 1 {
        return Some(BoxHeader {
            size: u64::from(size32),
            kind,
            len: 8,
        });
    }
    let large = bytes(pos.checked_add(8)?, 8)?;
    let size = u64::from_be_bytes(large.try_into().ok()?);
    // A 64-bit size of 0 is no "to the end of the file"; it is too small, like any below 16.
    Some(BoxHeader {
        size: size.max(1),
        kind,
        len: 16,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A box header: 32-bit size and type.
    fn boxed(size: u32, kind: &[u8; 4]) -> Vec<u8> {
        let mut b = size.to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b
    }

    /// A whole box of `len` bytes (header included), zero-filled.
    fn whole(len: u32, kind: &[u8; 4]) -> Vec<u8> {
        let mut b = boxed(len, kind);
        b.resize(len as usize, 0);
        b
    }

    fn ftyp() -> Vec<u8> {
        let mut b = boxed(24, b"ftyp");
        b.extend_from_slice(b"isom\0\0\x02\0isomiso2");
        b
    }

    #[test]
    fn media_files_by_extension() {
        let p = |s: &str| vec!["dir".to_string(), s.to_string()];
        assert!(is_media(&p("a.mp4")));
        assert!(is_media(&p("A.MKV")));
        assert!(!is_media(&p("a.txt")));
        assert!(!is_media(&p("mp4")));
        assert!(!is_media(&[]));
    }

    #[test]
    fn faststart_moov_after_ftyp_is_in_the_head() {
        let mut head = ftyp();
        head.extend(boxed(5000, b"moov"));
        assert_eq!(find_index(&head, 1_000_000), Index::InHead(24));
    }

    #[test]
    fn moov_after_mdat_is_at_the_end_of_mdat() {
        let mut head = ftyp();
        head.extend(whole(8, b"free"));
        head.extend(boxed(900_000, b"mdat"));
        head.resize(4096, 0xAB);
        assert_eq!(find_index(&head, 1_000_000), Index::After(32 + 900_000));
    }

    #[test]
    fn a_64_bit_mdat_size_is_read() {
        let mut head = ftyp();
        head.extend(boxed(1, b"mdat"));
        head.extend((5u64 << 32).to_be_bytes());
        let len = (5u64 << 32) + 24 + 10_000;
        assert_eq!(find_index(&head, len), Index::After(24 + (5 << 32)));
    }

    #[test]
    fn moov_found_after_small_boxes_inside_the_head() {
        let mut head = ftyp();
        head.extend(whole(100, b"mdat"));
        head.extend(boxed(50, b"moov"));
        assert_eq!(find_index(&head, 10_000), Index::InHead(124));
    }

    #[test]
    fn not_an_mp4() {
        // Matroska's EBML magic; a file that does not start with ftyp; an empty head.
        assert_eq!(
            find_index(&[0x1A, 0x45, 0xDF, 0xA3, 0, 0, 0, 0], 1000),
            Index::Unknown
        );
        let mut head = boxed(5000, b"moov");
        head.extend(ftyp());
        assert_eq!(find_index(&head, 1_000_000), Index::Unknown);
        assert_eq!(find_index(&[], 1000), Index::Unknown);
    }

    #[test]
    fn truncated_headers_are_unknown() {
        let head = ftyp();
        for cut in 0..8 {
            assert_eq!(find_index(&head[..cut], 1000), Index::Unknown);
        }
        // The second box's header cut short, and a 64-bit size cut short.
        let mut head = ftyp();
        head.extend(boxed(1, b"mdat"));
        head.extend([0, 0, 0]);
        for cut in 24..head.len() {
            assert_eq!(find_index(&head[..cut], 1 << 40), Index::Unknown, "{cut}");
        }
    }

    #[test]
    fn size_zero_runs_to_the_end_of_the_file() {
        let mut head = ftyp();
        head.extend(boxed(0, b"mdat"));
        assert_eq!(find_index(&head, 1_000_000), Index::Unknown);
        let mut head = ftyp();
        head.extend(boxed(0, b"moov"));
        assert_eq!(find_index(&head, 1_000_000), Index::InHead(24));
        // A first box to the end of the file that is not ftyp.
        assert_eq!(find_index(&boxed(0, b"mdat"), 1000), Index::Unknown);
    }

    #[test]
    fn sizes_below_the_header_are_not_mp4() {
        for size in 2..8 {
            let mut head = ftyp();
            head.extend(boxed(size, b"mdat"));
            head.resize(4096, 0);
            assert_eq!(find_index(&head, 1_000_000), Index::Unknown, "{size}");
        }
        // A 64-bit size below 16, zero included.
        for large in [0u64, 1, 8, 15] {
            let mut head = ftyp();
            head.extend(boxed(1, b"mdat"));
            head.extend(large.to_be_bytes());
            head.resize(4096, 0);
            assert_eq!(find_index(&head, 1_000_000), Index::Unknown, "{large}");
        }
    }

    #[test]
    fn huge_sizes_never_overflow() {
        let mdat = |large: u64| {
            let mut head = ftyp();
            head.extend(boxed(1, b"mdat"));
            head.extend(large.to_be_bytes());
            head
        };
        for large in [u64::MAX, u64::MAX - 8, u64::MAX - 23, 1 << 63] {
            assert_eq!(
                find_index(&mdat(large), 1_000_000),
                Index::Unknown,
                "{large}"
            );
        }
        // Past u64: no box.
        for large in [u64::MAX, u64::MAX - 8, u64::MAX - 23] {
            assert_eq!(
                find_index(&mdat(large), u64::MAX),
                Index::Unknown,
                "{large}"
            );
        }
        // Big but within a file that big.
        assert_eq!(
            find_index(&mdat(1 << 63), u64::MAX),
            Index::After((1 << 63) + 24)
        );
        // A 32-bit size past the end of the file.
        let mut head = ftyp();
        head.extend(boxed(u32::MAX, b"mdat"));
        assert_eq!(find_index(&head, 1_000_000), Index::Unknown);
        // The file is shorter than the bytes given: only the file's bytes count.
        let mut head = ftyp();
        head.extend(boxed(5000, b"moov"));
        assert_eq!(find_index(&head, 30), Index::Unknown);
    }

    #[test]
    fn a_box_ending_exactly_at_eof_leaves_nothing_after() {
        let mut head = ftyp();
        head.extend(boxed(1000 - 24, b"mdat"));
        assert_eq!(find_index(&head, 1000), Index::Unknown);
    }

    #[test]
    fn many_tiny_boxes_stop_at_the_bound() {
        let mut head = ftyp();
        for _ in 0..MAX_BOXES - 2 {
            head.extend(whole(8, b"free"));
        }
        let moov = head.len() as u64;
        head.extend(boxed(100, b"moov"));
        let len = head.len() as u64 + 1000;
        assert_eq!(
            find_index(&head, len),
            Index::InHead(moov),
            "within the bound"
        );
        // More boxes than that before the moov: the walk gives up.
        let mut head = ftyp();
        for _ in 0..MAX_BOXES {
            head.extend(whole(8, b"free"));
        }
        head.extend(boxed(100, b"moov"));
        assert_eq!(
            find_index(&head, len + 100),
            Index::Unknown,
            "past the bound"
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic generator; every prefix of every buffer.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for round in 0..200 {
            let mut head = ftyp();
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Small sizes often, so the walk goes deep; any bytes otherwise.
                let b = if round % 2 == 0 {
                    (x % 4) as u8
                } else {
                    x as u8
                };
                head.push(b);
            }
            for cut in 0..head.len() {
                let _ = find_index(&head[..cut], x % 100_000);
                let _ = find_index(&head[..cut], u64::MAX);
            }
        }
    }
}
