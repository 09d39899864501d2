//! What a user sees on bad input: one clear line on stderr and a non-zero exit, never a panic.

use std::path::Path;
use std::process::{Command, Output};

fn btfs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_btfs"))
        .args(args)
        .output()
        .expect("run btfs")
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
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
    let out = btfs(&["info", &fixture("lt_multi_v1.torrent")]);
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
    let out = btfs(&["info", "/nonexistent/x.torrent"]);
    assert_clear_error(&out, "/nonexistent/x.torrent");
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().display().to_string();
    let out = btfs(&["mount", "/nonexistent/x.torrent", &mnt]);
    assert_clear_error(&out, "/nonexistent/x.torrent");
}

#[test]
fn a_malformed_torrent_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.torrent");
    std::fs::write(&bad, b"d8:announce3:foo4:infod6:lengthi-5eee").expect("write");
    let out = btfs(&["info", &bad.display().to_string()]);
    assert_clear_error(&out, "");
    std::fs::write(&bad, b"this is not bencode").expect("write");
    let out = btfs(&[
        "mount",
        &bad.display().to_string(),
        &dir.path().display().to_string(),
    ]);
    assert_clear_error(&out, "");
}

#[test]
fn a_missing_mountpoint_is_one_clear_line() {
    let out = btfs(&[
        "mount",
        &fixture("lt_single_v1.torrent"),
        "/nonexistent/mnt",
    ]);
    assert_clear_error(&out, "/nonexistent/mnt");
}

#[test]
fn a_port_in_use_is_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = btfs(&[
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
