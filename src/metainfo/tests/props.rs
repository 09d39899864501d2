//! Property tests: generated torrents parse to what they describe; any bytes, mutated torrents
//! and magnet links give a value or an error, never a panic.

use proptest::prelude::*;

use super::bad_input::assert_invariants;
use super::*;
use crate::magnet::link::Magnet;

/// Path components, hostile ones included; a per-file prefix keeps paths distinct.
fn component() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b.mkv", "..", ".", "", "x/y", "n\0ul", "\\", "é"])
        .prop_map(str::to_owned)
}

/// `(piece length, [(path, length)])` of a multi-file torrent with at least one byte.
fn layout() -> impl Strategy<Value = (i64, Vec<(Vec<String>, i64)>)> {
    let file = (prop::collection::vec(component(), 0..4), 0i64..100_000);
    (
        prop::sample::select(vec![1i64, 7, 16_384, 1 << 18]),
        prop::collection::vec(file, 1..6),
    )
        .prop_filter("some data", |(_, files)| files.iter().any(|f| f.1 > 0))
        .prop_map(|(pl, files)| {
            let files = files
                .into_iter()
                .enumerate()
                .map(|(i, (mut path, len))| {
                    path.push(format!("f{i}"));
                    (path, len)
                })
                .collect();
            (pl, files)
        })
}

fn info_of(piece_length: i64, files: &[(Vec<String>, i64)]) -> B {
    let total: i64 = files.iter().map(|(_, l)| l).sum();
    let list = files
        .iter()
        .map(|(path, len)| {
            let parts: Vec<&str> = path.iter().map(String::as_str).collect();
            d(&[("length", B::I(*len)), ("path", strs(&parts))])
        })
        .collect();
    d(&[
        ("files", B::L(list)),
        ("name", s("root")),
        ("piece length", B::I(piece_length)),
        ("pieces", hashes(total, piece_length)),
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn generated_torrents_parse_to_what_they_describe((pl, files) in layout()) {
        let info = info_of(pl, &files);
        let raw_info = info.encode();
        let t = Torrent::from_bytes(&torrent(&info, &[])).expect("valid torrent");
        assert_invariants(&t);
        prop_assert_eq!(t.info_hash, InfoHash::of(&raw_info));
        prop_assert_eq!(&t.info.raw, &raw_info);
        let lengths: Vec<u64> = t.info.files.iter().map(|f| f.length).collect();
        let want: Vec<u64> = files.iter().map(|f| f.1 as u64).collect();
        prop_assert_eq!(lengths, want);
        prop_assert_eq!(t.info.geometry.piece_length() as i64, pl);
        // Info parses alone (as from BEP 9 peers) to the same files.
        let alone = Info::from_bytes(&raw_info).expect("valid info");
        prop_assert_eq!(alone.files, t.info.files);
    }

    #[test]
    fn mutated_torrents_parse_or_fail_cleanly(
        (pl, files) in layout(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..5),
    ) {
        let mut bytes = torrent(&info_of(pl, &files), &[("announce", s("http://t/a"))]);
        for (at, byte, op) in edits {
            let at = at.index(bytes.len());
            match op {
                0 => { bytes.remove(at); }
                1 => bytes.insert(at, byte),
                _ => bytes[at] = byte,
            }
        }
        if let Ok(t) = Torrent::from_bytes(&bytes) {
            assert_invariants(&t);
            let _ = t.summary();
        }
    }

    #[test]
    fn arbitrary_bytes_parse_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Torrent::from_bytes(&bytes);
        let _ = Info::from_bytes(&bytes);
    }

    #[test]
    fn arbitrary_magnet_links_parse_or_fail_cleanly(rest in any::<String>(), hash in any::<[u8; 20]>()) {
        let _ = Magnet::parse(&format!("magnet:?{rest}"));
        let hex = InfoHash(hash).to_string();
        let link = format!("magnet:?xt=urn:btih:{hex}&{rest}");
        // Whatever follows, a link with one valid hash parses (unless `rest` adds another hash).
        match Magnet::parse(&link) {
            Ok(m) => prop_assert_eq!(m.info_hash, InfoHash(hash)),
            Err(e) => prop_assert!(rest.contains("xt"), "{e}"),
        }
    }
}
