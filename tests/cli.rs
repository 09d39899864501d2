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
