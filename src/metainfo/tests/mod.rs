use std::collections::BTreeMap;

use super::*;
use crate::bencode::Encoder;

mod bad_input;
mod props;

/// A bencode value to build fixtures from; the map keeps keys in the order BEP 3 requires.
#[derive(Clone, Debug)]
enum B {
    I(i64),
    S(Vec<u8>),
    L(Vec<B>),
    D(BTreeMap<Vec<u8>, B>),
}

fn s(x: impl AsRef<[u8]>) -> B {
    B::S(x.as_ref().to_vec())
}

fn d(entries: &[(&str, B)]) -> B {
    B::D(
        entries
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
            .collect(),
    )
}

fn strs(parts: &[&str]) -> B {
    B::L(parts.iter().map(s).collect())
}

impl B {
    fn encode(&self) -> Vec<u8> {
        fn go(b: &B, e: &mut Encoder) {
            match b {
                B::I(n) => {
                    e.int(*n);
                }
                B::S(x) => {
                    e.bytes(x);
                }
                B::L(items) => {
                    e.begin_list();
                    items.iter().for_each(|i| go(i, e));
                    e.end();
                }
                B::D(map) => {
                    e.begin_dict();
                    for (k, v) in map {
                        e.bytes(k);
                        go(v, e);
                    }
                    e.end();
                }
            }
        }
        let mut e = Encoder::new();
        go(self, &mut e);
        e.finish()
    }

    fn with(mut self, key: &str, value: B) -> B {
        if let B::D(map) = &mut self {
            map.insert(key.as_bytes().to_vec(), value);
        }
        self
    }

    fn without(mut self, key: &str) -> B {
        if let B::D(map) = &mut self {
            map.remove(key.as_bytes());
        }
        self
    }
}

const PL: i64 = 16384;

fn hashes(total: i64, piece_length: i64) -> B {
    let count = (total + piece_length - 1) / piece_length;
    B::S((0..count * 20).map(|i| i as u8).collect())
}

fn single_info(length: i64) -> B {
    d(&[
        ("length", B::I(length)),
        ("name", s("file.bin")),
        ("piece length", B::I(PL)),
        ("pieces", hashes(length, PL)),
    ])
}

/// `files` entries from `(path, length)`; the pieces match the total.
fn multi_info(files: &[(B, i64)]) -> B {
    let total: i64 = files.iter().map(|(_, l)| l).sum();
    let list = files
        .iter()
        .map(|(path, len)| d(&[("length", B::I(*len)), ("path", path.clone())]))
        .collect();
    d(&[
        ("files", B::L(list)),
        ("name", s("album")),
        ("piece length", B::I(PL)),
        ("pieces", hashes(total, PL)),
    ])
}

fn torrent(info: &B, extra: &[(&str, B)]) -> Vec<u8> {
    d(extra).with("info", info.clone()).encode()
}

fn paths(info: &Info) -> Vec<String> {
    info.files.iter().map(|f| f.path.join("/")).collect()
}

fn err(info: B) -> String {
    Info::from_bytes(&info.encode()).unwrap_err().to_string()
}

#[test]
fn single_file_torrent() {
    let info = single_info(40_000);
    let bytes = torrent(&info, &[("announce", s("http://t.example/announce"))]);
    let t = Torrent::from_bytes(&bytes).unwrap();
    assert_eq!(t.info.name, "file.bin");
    assert!(!t.info.is_multi_file());
    assert_eq!(
        t.info.files,
        [FileEntry {
            path: vec!["file.bin".into()],
            length: 40_000,
            offset: 0,
            padding: false
        }]
    );
    assert_eq!(t.info.total_length(), 40_000);
    assert_eq!(t.info.geometry.piece_count(), 3);
    assert_eq!(t.info.piece_hashes.len(), 3);
    assert_eq!(t.info.piece_hashes[1][0], 20);
    assert_eq!(t.info.raw, info.encode());
    assert_eq!(t.info_hash, InfoHash::of(&info.encode()));
    assert_eq!(t.trackers, [["http://t.example/announce"]]);
    assert!(!t.info.private);
}

#[test]
fn multi_file_torrent_with_nested_dirs_and_empty_file() {
    let info = multi_info(&[
        (strs(&["a.txt"]), 5),
        (strs(&["sub", "b.bin"]), 10),
        (strs(&["sub", "deeper", "empty"]), 0),
        (strs(&["sub", "deeper", "c.txt"]), 7),
    ]);
    let i = Info::from_bytes(&info.encode()).unwrap();
    assert!(i.is_multi_file());
    assert_eq!(
        paths(&i),
        [
            "album/a.txt",
            "album/sub/b.bin",
            "album/sub/deeper/empty",
            "album/sub/deeper/c.txt"
        ]
    );
    let offsets: Vec<_> = i.files.iter().map(|f| (f.offset, f.length)).collect();
    assert_eq!(offsets, [(0, 5), (5, 10), (15, 0), (15, 7)]);
    assert_eq!(i.total_length(), 22);

    // A `files` list with one file is still multi-file: the file lives under the name.
    let one = Info::from_bytes(&multi_info(&[(strs(&["x"]), 3)]).encode()).unwrap();
    assert!(one.is_multi_file());
    assert_eq!(paths(&one), ["album/x"]);
}

#[test]
fn announce_list_tiers_win_over_announce() {
    let list = B::L(vec![
        strs(&[
            "http://a.example/ann",
            " udp://b.example:80 ",
            "wss://c.example",
        ]),
        strs(&[]),
        strs(&["ftp://d.example", ""]),
        strs(&["HTTPS://e.example/ann", "http://a.example/ann"]),
    ]);
    let bytes = torrent(
        &single_info(1),
        &[
            ("announce", s("http://ignored.example/ann")),
            ("announce-list", list),
        ],
    );
    let t = Torrent::from_bytes(&bytes).unwrap();
    assert_eq!(
        t.trackers,
        vec![
            vec!["http://a.example/ann", "udp://b.example:80"],
            vec!["HTTPS://e.example/ann"],
        ]
    );

    // A list with nothing usable falls back to `announce`; a bad `announce` gives no tracker.
    let unusable = B::L(vec![strs(&["ws://x"]), B::I(3)]);
    let fallback = torrent(
        &single_info(1),
        &[
            ("announce", s("udp://f.example:6969")),
            ("announce-list", unusable),
        ],
    );
    let t = Torrent::from_bytes(&fallback).unwrap();
    assert_eq!(t.trackers, [["udp://f.example:6969"]]);
    let bad = torrent(&single_info(1), &[("announce", s("http://"))]);
    assert!(Torrent::from_bytes(&bad).unwrap().trackers.is_empty());
}

#[test]
fn private_flag() {
    let private = |v: Option<B>| {
        let info = match v {
            Some(v) => single_info(1).with("private", v),
            None => single_info(1),
        };
        Info::from_bytes(&info.encode()).unwrap().private
    };
    assert!(private(Some(B::I(1))));
    assert!(!private(Some(B::I(0))));
    assert!(!private(None));
}

#[test]
fn nodes_url_list_and_text_fields_are_kept() {
    let nodes = B::L(vec![
        B::L(vec![s("router.example"), B::I(6881)]),
        B::L(vec![s("127.0.0.1"), B::I(0)]),
        B::L(vec![s("127.0.0.1"), B::I(70_000)]),
        B::L(vec![s("lonely")]),
        B::I(5),
    ]);
    let bytes = torrent(
        &single_info(1),
        &[
            ("comment", s(b"caf\xe9")),
            ("comment.utf-8", s("café")),
            ("created by", s("hand")),
            ("creation date", B::I(1_700_000_000)),
            ("nodes", nodes),
            (
                "url-list",
                strs(&["http://w.example/f", "ftp://x", "http://w.example/f"]),
            ),
        ],
    );
    let t = Torrent::from_bytes(&bytes).unwrap();
    assert_eq!(t.nodes, [("router.example".to_string(), 6881)]);
    assert_eq!(t.url_list, ["http://w.example/f"]);
    assert_eq!(t.comment.as_deref(), Some("café"));
    assert_eq!(t.created_by.as_deref(), Some("hand"));
    assert_eq!(t.creation_date, Some(1_700_000_000));

    let one = torrent(&single_info(1), &[("url-list", s("https://w.example/"))]);
    let t = Torrent::from_bytes(&one).unwrap();
    assert_eq!(t.url_list, ["https://w.example/"]);
    assert_eq!(
        (t.comment, t.created_by, t.creation_date),
        (None, None, None)
    );
}

#[test]
fn padding_files_take_space_but_are_marked() {
    let pad = |path: B, len: i64| d(&[("attr", s("p")), ("length", B::I(len)), ("path", path)]);
    let file = |name: &str, len: i64| d(&[("length", B::I(len)), ("path", strs(&[name]))]);
    let info = multi_info(&[])
        .with(
            "files",
            B::L(vec![
                file("a", 10),
                pad(strs(&[".pad", "6"]), 6),
                file("b", 16),
                pad(strs(&[".pad", "6"]), 6),
                pad(strs(&[]), 2),
            ]),
        )
        .with("pieces", hashes(40, PL));
    let i = Info::from_bytes(&info.encode()).unwrap();
    let got: Vec<_> = i
        .files
        .iter()
        .map(|f| (f.path.join("/"), f.offset, f.padding))
        .collect();
    assert_eq!(
        got,
        [
            ("album/a".to_string(), 0, false),
            ("album/.pad/6".to_string(), 10, true),
            ("album/b".to_string(), 16, false),
            ("album/.pad/6".to_string(), 32, true),
            ("album/.pad".to_string(), 38, true),
        ]
    );
    assert_eq!(i.total_length(), 40);
}

#[test]
fn utf8_variants_are_preferred_and_bad_bytes_converted() {
    let entry = d(&[
        ("length", B::I(1)),
        ("path", B::L(vec![s(b"\xff\xfe"), s("x")])),
        ("path.utf-8", strs(&["ü", "x"])),
    ]);
    let lossy = d(&[("length", B::I(1)), ("path", B::L(vec![s(b"a\xffb")]))]);
    let info = multi_info(&[(strs(&["unused"]), 2)])
        .with("files", B::L(vec![entry, lossy]))
        .with("name", s(b"n\xe4me"))
        .with("name.utf-8", s("näme"));
    let i = Info::from_bytes(&info.encode()).unwrap();
    assert_eq!(i.name, "näme");
    assert_eq!(paths(&i), ["näme/ü/x", "näme/a\u{fffd}b"]);

    let latin1 = single_info(1).with("name", s(b"caf\xe9"));
    assert_eq!(
        Info::from_bytes(&latin1.encode()).unwrap().name,
        "caf\u{fffd}"
    );
}

#[test]
fn v2_only_fixture_is_refused() {
    let bytes = include_bytes!("../../../tests/fixtures/lt_multi_v2only.torrent");
    assert!(matches!(
        Torrent::from_bytes(bytes),
        Err(MetainfoError::V2Only)
    ));
}

/// The fixtures were made by libtorrent and mktorrent; expected.txt holds what libtorrent's own
/// parser reads from them (both written by tests/fixtures/make_fixtures.py).
#[test]
fn parses_like_libtorrent() {
    let fixtures: [(&str, &[u8]); 4] = [
        (
            "lt_single_v1.torrent",
            include_bytes!("../../../tests/fixtures/lt_single_v1.torrent"),
        ),
        (
            "lt_multi_v1.torrent",
            include_bytes!("../../../tests/fixtures/lt_multi_v1.torrent"),
        ),
        (
            "lt_multi_hybrid.torrent",
            include_bytes!("../../../tests/fixtures/lt_multi_hybrid.torrent"),
        ),
        (
            "mktorrent_multi.torrent",
            include_bytes!("../../../tests/fixtures/mktorrent_multi.torrent"),
        ),
    ];
    let expected = include_str!("../../../tests/fixtures/expected.txt");
    // Blocks of lines, each starting with "torrent <name>".
    let mut blocks: Vec<(&str, Vec<String>)> = Vec::new();
    for line in expected.lines().filter(|l| !l.starts_with('#')) {
        match (line.strip_prefix("torrent "), blocks.last_mut()) {
            (Some(name), _) => blocks.push((name, Vec::new())),
            (None, Some((_, lines))) => lines.push(line.to_string()),
            (None, None) => panic!("expected.txt starts with {line:?}"),
        }
    }
    assert_eq!(blocks.len(), fixtures.len());
    for (name, want) in blocks {
        let bytes = fixtures.iter().find(|(n, _)| *n == name).unwrap().1;
        let t = Torrent::from_bytes(bytes).unwrap();
        let mut got = vec![
            format!("info_hash {}", t.info_hash),
            format!("piece_length {}", t.info.geometry.piece_length()),
            format!("num_pieces {}", t.info.geometry.piece_count()),
            format!("total_size {}", t.info.total_length()),
            format!("private {}", u8::from(t.info.private)),
        ];
        for f in &t.info.files {
            let pad = if f.padding { "pad" } else { "-" };
            got.push(format!(
                "file {} {} {pad} {}",
                f.offset,
                f.length,
                f.path.join("/")
            ));
        }
        for (tier, urls) in t.trackers.iter().enumerate() {
            for url in urls {
                got.push(format!("tracker {tier} {url}"));
            }
        }
        assert_eq!(got, want, "{name}");
        assert_eq!(t.info.info_hash(), t.info_hash);
    }
}

#[test]
fn from_file_reads_and_names_the_path_on_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let t = Torrent::from_file(&dir.join("lt_single_v1.torrent")).unwrap();
    assert_eq!(
        t.info_hash,
        InfoHash::from_hex("bacbda535980ac28ecac579b478e587d1a8a8c95").unwrap()
    );
    let missing = dir.join("no-such.torrent");
    let e = Torrent::from_file(&missing).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("cannot read torrent file {}: ", missing.display())),
        "{e}"
    );
}

#[test]
fn info_hash_hex_round_trips() {
    let h = InfoHash::from_hex("BACBDA535980ac28ecac579b478e587d1a8a8c95").unwrap();
    assert_eq!(h.to_string(), "bacbda535980ac28ecac579b478e587d1a8a8c95");
    assert_eq!(format!("{h:x}"), h.to_string());
    assert_eq!(h.0[0], 0xba);
    for bad in [
        "",
        "bacbda535980ac28ecac579b478e587d1a8a8c9",
        "bacbda535980ac28ecac579b478e587d1a8a8c950",
        "gacbda535980ac28ecac579b478e587d1a8a8c95",
        "+acbda535980ac28ecac579b478e587d1a8a8c95",
        "ébcbda535980ac28ecac579b478e587d1a8a8c9",
    ] {
        assert_eq!(InfoHash::from_hex(bad), None, "{bad}");
    }
}

#[test]
fn summary_shows_what_a_user_checks() {
    let info = multi_info(&[])
        .with(
            "files",
            B::L(vec![
                d(&[("length", B::I(20_000)), ("path", strs(&["big.bin"]))]),
                d(&[
                    ("attr", s("p")),
                    ("length", B::I(12_768)),
                    ("path", strs(&[".pad", "12768"])),
                ]),
                d(&[("length", B::I(100)), ("path", strs(&["dir", "new\nline"]))]),
            ]),
        )
        .with("pieces", hashes(32_868, PL))
        .with("private", B::I(1));
    let bytes = torrent(
        &info,
        &[
            (
                "announce-list",
                B::L(vec![
                    strs(&["http://a.example/ann", "udp://b.example:1"]),
                    strs(&["http://c.example/ann"]),
                ]),
            ),
            ("comment", s("hi")),
            ("created by", s("test")),
            ("creation date", B::I(1_700_000_000)),
            (
                "url-list",
                strs(&["http://w.example/files/", "https://m.example/"]),
            ),
        ],
    );
    let t = Torrent::from_bytes(&bytes).unwrap();
    let want = format!(
        "\
name:         album
info-hash:    {}
total size:   32.1 KiB (32868 bytes, 12768 of them padding)
piece length: 16.0 KiB (16384 bytes)
pieces:       3
private:      yes
trackers:     tier 1  http://a.example/ann
                      udp://b.example:1
              tier 2  http://c.example/ann
web seeds:    http://w.example/files/
              https://m.example/
created by:   test
created on:   2023-11-14 22:13:20 UTC
comment:      hi
files (2):
    19.5 KiB  album/big.bin
       100 B  album/dir/new\\nline
",
        t.info_hash
    );
    assert_eq!(t.summary(), want);

    let bare = Torrent::from_bytes(&torrent(&single_info(5), &[])).unwrap();
    let text = bare.summary();
    assert!(text.contains("\ntrackers:     none\n"), "{text}");
    assert!(!text.contains("created"), "{text}");
}
