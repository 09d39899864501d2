//! What a user sees on bad input: one clear line on stderr and a non-zero exit, never a panic.
//! The malformed corpus (`tests/malformed/`, its large cases made by `make.py` at test time) runs
//! through `btfs info` and `btfs mount` under an address-space limit, so an unbounded allocation
//! fails the test instead of passing slowly.

mod common;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{btfs, is_fuse_mount, mount_btfs};

/// Address space a run on hostile input may use. Parsing the largest input the decoder accepts
/// (3,000,000 values) peaks near 200 MB; an allocation sized by a length prefix would fail here.
const MEMORY_LIMIT: u64 = 768 << 20;

/// `btfs args...`, run to its end.
fn btfs_output(args: &[&str]) -> Output {
    Command::new(btfs()).args(args).output().expect("run btfs")
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// `btfs args...` with its address space capped at [`MEMORY_LIMIT`].
fn btfs_limited(args: &[&str]) -> Output {
    let mut cmd = Command::new(btfs());
    cmd.args(args).stdin(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe and touches only the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: MEMORY_LIMIT,
                rlim_max: MEMORY_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().expect("run btfs")
}

/// `btfs mount <target> <mnt>` on loopback with no DHT, under [`MEMORY_LIMIT`]: for input it
/// must refuse.
fn mount_limited(target: &str, mnt: &str) -> Output {
    btfs_limited(&[
        "mount",
        target,
        mnt,
        "--no-dht",
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
    ])
}

/// Fails unless btfs exited non-zero with exactly one `btfs: ...` line containing `needle`.
fn assert_clear_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit status: {}", out.status);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a plain failure, not a crash: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(lines[0].starts_with("btfs: "), "{err}");
    assert!(err.contains(needle), "{needle:?} in {err}");
}

#[test]
fn info_prints_what_the_torrent_holds() {
    let out = btfs_output(&["info", &fixture("lt_multi_v1.torrent")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let expected = std::fs::read_to_string(fixture("expected.txt")).expect("expected.txt");
    // The info-hash libtorrent computed for this fixture appears in our output.
    let hash = expected
        .lines()
        .skip_while(|l| !l.contains("lt_multi_v1.torrent"))
        .find_map(|l| {
            l.split_once("info_hash")
                .map(|(_, h)| h.trim_matches([' ', ':', '=']).to_string())
        })
        .expect("hash in expected.txt");
    assert!(text.contains(&hash), "{hash} in:\n{text}");
}

#[test]
fn a_missing_torrent_file_is_one_clear_line() {
    let out = btfs_output(&["info", "/nonexistent/x.torrent"]);
    assert_clear_error(&out, "/nonexistent/x.torrent");
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().display().to_string();
    let out = btfs_output(&["mount", "/nonexistent/x.torrent", &mnt]);
    assert_clear_error(&out, "/nonexistent/x.torrent");
}

#[test]
fn a_malformed_torrent_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.torrent");
    std::fs::write(&bad, b"d8:announce3:foo4:infod6:lengthi-5eee").expect("write");
    let out = btfs_output(&["info", &bad.display().to_string()]);
    assert_clear_error(&out, "");
    std::fs::write(&bad, b"this is not bencode").expect("write");
    let out = btfs_output(&[
        "mount",
        &bad.display().to_string(),
        &dir.path().display().to_string(),
    ]);
    assert_clear_error(&out, "");
}

#[test]
fn a_missing_mountpoint_is_one_clear_line() {
    let out = btfs_output(&[
        "mount",
        &fixture("lt_single_v1.torrent"),
        "/nonexistent/mnt",
    ]);
    assert_clear_error(&out, "/nonexistent/mnt");
}

#[test]
fn seeding_and_an_idle_time_are_refused_together_and_help_says_when_torrents_sleep() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mnt = tmp.path().to_str().expect("utf-8 path");
    let t = fixture("lt_multi_hybrid.torrent");
    let out = btfs_output(&["mount", &t, mnt, "--seed", "--idle-after", "5m"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--seed") && err.contains("--idle-after"),
        "{err}"
    );
    let help = btfs_output(&["mount", "--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("--seed") && text.contains("never for a single torrent"),
        "{text}"
    );
}

#[test]
fn a_port_in_use_is_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = btfs_output(&[
        "mount",
        &fixture("lt_single_v1.torrent"),
        &dir.path().display().to_string(),
        "--bind",
        "127.0.0.1",
        "--port",
        &port,
        "--no-dht",
    ]);
    assert_clear_error(&out, "in use");
}

/// `btfs status` with a runtime directory of its own, so mounts of other tests stay unseen.
fn status_in(runtime: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_btfs"))
        .arg("status")
        .args(args)
        .env("XDG_RUNTIME_DIR", runtime)
        .output()
        .expect("run btfs status")
}

#[test]
fn status_without_any_mount_says_so_and_fails() {
    let runtime = tempfile::tempdir().expect("tempdir");
    let out = status_in(runtime.path(), &[]);
    assert_clear_error(&out, "no btfs mount is running");
    let out = status_in(runtime.path(), &["--json"]);
    assert_clear_error(&out, "no btfs mount is running");
}

#[test]
fn status_of_a_directory_that_is_no_btfs_mount_is_one_clear_line() {
    let runtime = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().display().to_string();
    let out = status_in(runtime.path(), &[&path]);
    assert_clear_error(&out, "is not a running btfs mount");
    assert_clear_error(&out, &path);
}

#[test]
fn status_removes_the_socket_of_a_killed_mount_and_says_so() {
    let runtime = tempfile::tempdir().expect("tempdir");
    let dir = runtime.path().join("btfs");
    std::fs::create_dir(&dir).expect("mkdir");
    // A bound and closed listener leaves what a killed mount leaves: a socket nobody accepts on.
    let stale = dir.join("0123456789abcdef0123.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    let out = status_in(runtime.path(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("stale status socket"), "{err}");
    assert!(err.contains("no btfs mount is running"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!stale.exists(), "the stale socket is removed");
}

/// The corpus: `(file, text its error line must contain)` from `expected.tsv` in `dir`.
fn corpus(dir: &Path) -> Vec<(PathBuf, String)> {
    let manifest = fs::read_to_string(dir.join("expected.tsv")).expect("expected.tsv");
    manifest
        .lines()
        .map(|line| {
            let (file, needle) = line.split_once('\t').expect("file<TAB>needle");
            (dir.join(file), needle.to_owned())
        })
        .collect()
}

/// The small corpus committed in tests/malformed and the large one `make.py big` writes.
fn full_corpus(scratch: &Path) -> Vec<(PathBuf, String)> {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/malformed");
    let status = Command::new("/usr/bin/python3")
        .arg(committed.join("make.py"))
        .arg(scratch)
        .arg("big")
        .status()
        .expect("run make.py");
    assert!(status.success(), "make.py big: {status}");
    let mut all = corpus(&committed);
    all.extend(corpus(scratch));
    assert!(all.len() > 50, "corpus has {} cases", all.len());
    all
}

#[test]
fn every_malformed_torrent_is_one_clear_line_and_mounts_nothing() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let mnt = tempfile::tempdir().expect("tempdir");
    let mnt_arg = mnt.path().display().to_string();
    for (file, needle) in full_corpus(scratch.path()) {
        if file.parent().is_some_and(|p| p.ends_with("sanitized")) {
            continue;
        }
        let path = file.display().to_string();
        let out = btfs_limited(&["info", &path]);
        assert_clear_error(&out, &needle);
        let out = mount_limited(&path, &mnt_arg);
        assert_clear_error(&out, &needle);
        assert!(!is_fuse_mount(mnt.path()), "{path} left a mount behind");
        assert_eq!(fs::read_dir(mnt.path()).expect("ls").count(), 0, "{path}");
    }
}

#[test]
fn bad_magnet_links_are_one_clear_line() {
    let mnt = tempfile::tempdir().expect("tempdir");
    let mnt_arg = mnt.path().display().to_string();
    let hex = "0123456789abcdef0123456789abcdef01234567";
    let long = format!("magnet:?dn={}", "x".repeat(100_000));
    let cases = [
        ("magnet:".to_owned(), "should start with 'magnet:?'"),
        ("magnet:?".to_owned(), "has no info-hash"),
        (
            "magnet:?dn=only+a+name&tr=http://t/a".to_owned(),
            "has no info-hash",
        ),
        ("magnet:?xt=urn:btih:".to_owned(), "has 0 characters"),
        ("magnet:?xt=urn:btih:0123".to_owned(), "has 4 characters"),
        (
            format!("magnet:?xt=urn:btih:{}", "g".repeat(40)),
            "other than hex",
        ),
        (
            format!("magnet:?xt=urn:btih:{}", "1".repeat(32)),
            "other than base32",
        ),
        (
            format!("magnet:?xt=urn:btih:{hex}{hex}"),
            "has 80 characters",
        ),
        (
            format!("magnet:?xt=urn:btih:%ZZ{}", &hex[3..]),
            "other than hex",
        ),
        (
            format!("magnet:?xt=urn:sha1:{hex}"),
            "not a BitTorrent info-hash",
        ),
        (
            format!("magnet:?xt=urn:btmh:1220{}", "a".repeat(64)),
            "v2-only",
        ),
        (
            format!("magnet:?xt=urn:btih:{hex}&xt=urn:btih:{}", "f".repeat(40)),
            "two different info-hashes",
        ),
        (long, "has no info-hash"),
    ];
    for (link, needle) in &cases {
        let out = mount_limited(link, &mnt_arg);
        assert_clear_error(&out, needle);
        assert!(!is_fuse_mount(mnt.path()), "{link} left a mount behind");
    }
}

#[test]
fn hostile_names_mount_as_safe_names_inside_the_mount() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/malformed/sanitized");
    let expect: &[(&str, &[&str])] = &[
        (
            "hostile_paths.torrent",
            &[
                "album/_/_/etc/passwd",
                "album/_etc_shadow",
                "album/abs/x",
                "album/nul_byte",
                "album/a/b",
                "album/latin1-\u{fffd}t\u{fffd}",
                "album/\u{fffd}\u{fffd}",
            ],
        ),
        ("name_dotdot.torrent", &["_"]),
        ("name_absolute.torrent", &["_tmp_evil"]),
        ("name_not_utf8.torrent", &["\u{fffd}(-\u{fffd}"]),
        // Found by `cargo fuzz` (a tracker URL split inside a character panicked); kept as found.
        (
            "fuzz_crash_url_char_boundary.torrent",
            &["album/_/_/etc/passwd"],
        ),
    ];
    for (torrent, names) in expect {
        let path = dir.join(torrent);
        let out = btfs_output(&["info", &path.display().to_string()]);
        assert!(out.status.success(), "{torrent}: {out:?}");
        let m = mount_btfs(&path, &[]);
        let found = walk(m.path());
        for name in *names {
            assert!(
                found.iter().any(|f| f == name),
                "{torrent}: {name:?} not in {found:?}"
            );
        }
        for f in &found {
            assert!(
                f.split('/')
                    .all(|c| !c.is_empty() && c != ".." && c.len() <= 255),
                "{torrent}: unsafe name {f:?}"
            );
        }
        let status = m.unmount().expect("exits after unmount");
        assert!(status.success(), "{torrent}: {status}");
    }
}

/// Every regular file below `root`, as a path relative to it, listed by `find` (which follows
/// no link out of it). In a process of its own: a directory this test process held open would
/// be copied into every child another test forks meanwhile (until its exec), and such a copy
/// keeps the mount busy at `fusermount3 -u`.
fn walk(root: &Path) -> Vec<String> {
    let out = Command::new("find")
        .arg(root)
        .args(["-mindepth", "1", "-printf", "%y %P\\0"])
        .output()
        .expect("run find");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "find {root:?}: {err}");
    let mut files = Vec::new();
    for entry in out.stdout.split(|&b| b == 0).filter(|e| !e.is_empty()) {
        let (kind, rel) = entry.split_at(2);
        let rel = String::from_utf8_lossy(rel).into_owned();
        match kind {
            b"f " => files.push(rel),
            b"d " => {}
            _ => panic!("{rel:?} is neither file nor dir ({kind:?})"),
        }
    }
    files
}
