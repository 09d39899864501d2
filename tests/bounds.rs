//! Large torrents mount and list correctly with no peer at all: 100,000 files, 1,000,000
//! pieces. Generated here, not committed. Speed and memory are measured by scripts/bounds.py,
//! not asserted (machines are noisy).

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::{btfs, mount_btfs};

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(format!("{}:", b.len()).as_bytes());
    out.extend_from_slice(b);
}

fn int(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(format!("i{n}e").as_bytes());
}

/// `d4:infod<entries>ee` around info entries already in sorted key order.
fn torrent(info_entries: &[u8]) -> Vec<u8> {
    [&b"d4:infod"[..], info_entries, b"ee"].concat()
}

/// Hashes that no data matches: nothing is ever read here.
fn fake_hashes(count: u64) -> Vec<u8> {
    (0..count * 20).map(|i| (i * 7 % 251) as u8).collect()
}

fn file_len(i: u64) -> u64 {
    i % 1000 + 1
}

fn many_files(n: u64, piece_length: u64) -> Vec<u8> {
    let mut info = Vec::new();
    bytes(&mut info, b"files");
    info.push(b'l');
    for i in 0..n {
        info.extend_from_slice(b"d6:length");
        int(&mut info, file_len(i));
        info.extend_from_slice(b"4:pathl");
        bytes(&mut info, format!("d{:03}", i / 1000).as_bytes());
        bytes(&mut info, format!("f{i:06}.bin").as_bytes());
        info.extend_from_slice(b"ee");
    }
    info.push(b'e');
    let total: u64 = (0..n).map(file_len).sum();
    bytes(&mut info, b"name");
    bytes(&mut info, b"many");
    bytes(&mut info, b"piece length");
    int(&mut info, piece_length);
    bytes(&mut info, b"pieces");
    bytes(&mut info, &fake_hashes(total.div_ceil(piece_length)));
    torrent(&info)
}

fn write_torrent(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    fs::write(&path, data).expect("write torrent");
    path
}

#[test]
fn a_torrent_of_100000_files_lists_every_file_with_its_size() {
    let n = 100_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let torrent = write_torrent(dir.path(), "many.torrent", &many_files(n, 256 * 1024));
    let m = mount_btfs(&torrent, &[]);
    let root = m.path().join("many");
    let mut seen = 0u64;
    for d in 0..n.div_ceil(1000) {
        let sub = root.join(format!("d{d:03}"));
        let mut names: Vec<String> = fs::read_dir(&sub)
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        names.sort();
        let want: Vec<String> = (d * 1000..(d * 1000 + 1000).min(n))
            .map(|i| format!("f{i:06}.bin"))
            .collect();
        assert_eq!(names, want, "{sub:?}");
        for (i, name) in (d * 1000..).zip(&names) {
            let meta = fs::metadata(sub.join(name)).expect("stat");
            assert!(meta.is_file());
            assert_eq!(meta.size(), file_len(i), "{name}");
            seen += 1;
        }
    }
    assert_eq!(seen, n);
    // What a user runs: every file shows up in `find`, and `ls -lR` walks the tree.
    let find = Command::new("find")
        .arg(&root)
        .args(["-type", "f"])
        .output()
        .expect("find");
    assert!(find.status.success());
    assert_eq!(
        find.stdout.iter().filter(|&&b| b == b'\n').count() as u64,
        n
    );
    let ls = Command::new("ls")
        .arg("-lR")
        .arg(&root)
        .output()
        .expect("ls");
    assert!(
        ls.status.success(),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    let status = m.unmount().expect("exits after unmount");
    assert!(status.success(), "{status}");
}

#[test]
fn a_torrent_of_1000000_pieces_mounts_and_stats() {
    let pieces = 1_000_000u64;
    let piece_length = 16 * 1024;
    let length = pieces * piece_length - 1;
    let mut info = Vec::new();
    bytes(&mut info, b"length");
    int(&mut info, length);
    bytes(&mut info, b"name");
    bytes(&mut info, b"big.bin");
    bytes(&mut info, b"piece length");
    int(&mut info, piece_length);
    bytes(&mut info, b"pieces");
    bytes(&mut info, &fake_hashes(pieces));
    let data = torrent(&info);
    // 20 MB of hashes: within the torrent-file size limit.
    assert!(data.len() as u64 > 20_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let torrent = write_torrent(dir.path(), "big.torrent", &data);
    let info_out = Command::new(btfs())
        .arg("info")
        .arg(&torrent)
        .output()
        .expect("btfs info");
    assert!(
        info_out.status.success(),
        "{}",
        String::from_utf8_lossy(&info_out.stderr)
    );
    assert!(String::from_utf8_lossy(&info_out.stdout).contains("1000000"));
    let m = mount_btfs(&torrent, &[]);
    let meta = fs::metadata(m.path().join("big.bin")).expect("stat");
    assert_eq!(meta.size(), length);
    let names: Vec<_> = fs::read_dir(m.path())
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["big.bin"]);
    let status = m.unmount().expect("exits after unmount");
    assert!(status.success(), "{status}");
}
