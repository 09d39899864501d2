//! Web seeds (BEP 19) end to end: torrents whose only source is a `url-list`, served by
//! Debian's nginx on loopback, mounted by the real `btfs` and read with ordinary tools
//! (`dd`, `sha1sum`); and a server serving one corrupted range, dropped while the file still
//! reads right from an honest second server.

mod common;

use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{Mount, Nginx, WebSeeded, btfs, mount_btfs, run, sha1_file, web_seed_url};

/// 64 KiB pieces; the multi layout's files straddle piece edges.
const PIECE: u32 = 64 * 1024;
/// The multi layout's last file: about 2 MiB, so a read crosses many piece edges.
const LAST: u64 = 2 * 1024 * 1024 + 4321;
/// A hang detector: loopback transfers take moments.
const DEADLINE: Duration = Duration::from_secs(90);

fn json_status(m: &Mount) -> serde_json::Value {
    let out = Command::new(btfs())
        .arg("status")
        .arg(m.path())
        .arg("--json")
        .output()
        .expect("run btfs status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("btfs status --json prints JSON")
}

fn web_seed(report: &serde_json::Value, i: usize) -> &serde_json::Value {
    &report["web_seeds"][i]
}

/// `len` bytes at `offset` of `path`, read by `dd` (byte offsets, 4 KiB reads).
fn dd(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    let out = Command::new("dd")
        .arg(format!("if={}", path.display()))
        .args(["bs=4096", "iflag=skip_bytes,count_bytes", "status=none"])
        .arg(format!("skip={offset}"))
        .arg(format!("count={len}"))
        .output()
        .expect("run dd");
    assert!(
        out.status.success(),
        "dd {path:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn every_file_matches(ws: &WebSeeded, m: &Mount) {
    for (rel, len) in ws.files() {
        let got = m.path().join(&rel);
        let meta = std::fs::metadata(&got).unwrap_or_else(|e| panic!("stat {got:?}: {e}"));
        assert_eq!(meta.len(), len, "size of {rel:?}");
        let want = sha1_file(&ws.data_parent().join(&rel));
        assert_eq!(sha1_file(&got), want, "content of {rel:?}\n{}", m.stderr());
    }
}

#[test]
fn a_web_seed_only_torrent_reads_right_through_the_mount() {
    let ws = WebSeeded::make("multi", LAST);
    let server = Nginx::start(&ws.data_parent());
    ws.make_torrent(PIECE, &[web_seed_url(server.port())]);
    let m = mount_btfs(ws.torrent(), &[]);

    // Cold reads first, at seeded random places: across piece edges inside the large file,
    // and the edges of the small files (whose pieces they share with their neighbours).
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    for (rel, len) in ws.files().into_iter().filter(|(_, len)| *len > 0) {
        let src = std::fs::read(ws.data_parent().join(&rel)).expect("read source");
        let mut reads = vec![(0, len.min(5000)), (len.saturating_sub(3000), 3000)];
        if len > u64::from(PIECE) * 2 {
            for _ in 0..12 {
                let edge = u64::from(PIECE) * (1 + next(len / u64::from(PIECE)));
                let start = edge.saturating_sub(1 + next(40_000));
                reads.push((start, 1 + next(150_000)));
            }
        }
        for (offset, n) in reads {
            let offset = offset.min(len);
            let want = &src[offset as usize..(offset + n).min(len) as usize];
            let got = dd(&m.path().join(&rel), offset, n);
            assert!(
                got == want,
                "{rel:?} at {offset}, {n} bytes\n{}",
                m.stderr()
            );
        }
    }
    every_file_matches(&ws, &m);

    let report = json_status(&m);
    let total: u64 = ws.files().iter().map(|(_, len)| len).sum();
    let seed = web_seed(&report, 0);
    assert_eq!(seed["url"], web_seed_url(server.port()));
    assert_eq!(seed["state"], "active", "{report}");
    assert!(seed["downloaded_bytes"].as_u64() >= Some(total), "{report}");
    assert_eq!(report["peers"], 0);
    assert_eq!(report["hash_failures"], 0);
    // nginx answered byte ranges, and found the file whose name needs percent-encoding.
    let log = server.access_log();
    assert!(log.contains("\" 206 "), "{log}");
    assert!(!log.contains("\" 404 "), "{log}");
    assert!(
        log.contains("/multi/sub%20dir/%C3%BCn%C3%AF"),
        "the unicode file was asked for: {log}"
    );
    assert!(m.unmount().is_some_and(|s| s.success()));
}

/// The first web seed serves 100 flipped bytes in the middle of the last file and is the only
/// source while the second server is not up yet, so the piece that holds them fails with that
/// seed as its only sender: it is dropped. Then the honest server starts and the file reads
/// right from it.
#[test]
fn a_web_seed_serving_a_corrupt_range_is_dropped_and_the_file_still_reads_right() {
    let ws = WebSeeded::make("multi", LAST);
    let bad_root = ws.copy_data("bad");
    let last = Path::new("multi/zz last.bin");
    let bad_file = bad_root.join(last);
    let mut bytes = std::fs::read(&bad_file).expect("read copy");
    for b in &mut bytes[1_000_000..1_000_100] {
        *b ^= 0xff;
    }
    std::fs::write(&bad_file, bytes).expect("write corrupted copy");
    let bad = Nginx::start(&bad_root);
    let good_port = Nginx::reserve_port();
    let (bad_url, good_url) = (web_seed_url(bad.port()), web_seed_url(good_port));
    ws.make_torrent(PIECE, &[bad_url.clone(), good_url.clone()]);
    let m = mount_btfs(ws.torrent(), &[]);

    let mounted = m.path().join(last);
    let reader = std::thread::spawn(move || sha1_file(&mounted));
    let deadline = Instant::now() + DEADLINE;
    let report = loop {
        let report = json_status(&m);
        if web_seed(&report, 0)["state"] == "dropped" {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "never dropped: {report}\n{}",
            m.stderr()
        );
        sleep(Duration::from_millis(100));
    };
    let reason = web_seed(&report, 0)["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("SHA1"), "{report}");
    assert!(report["hash_failures"].as_u64() >= Some(1));

    let good = Nginx::start_at(&ws.data_parent(), good_port);
    let got = reader.join().expect("the read ends");
    assert_eq!(
        got,
        sha1_file(&ws.data_parent().join(last)),
        "{}",
        m.stderr()
    );
    every_file_matches(&ws, &m);

    let report = json_status(&m);
    assert_eq!(web_seed(&report, 0)["url"], bad_url);
    assert_eq!(web_seed(&report, 0)["state"], "dropped");
    assert_eq!(web_seed(&report, 1)["url"], good_url);
    assert_eq!(web_seed(&report, 1)["state"], "active", "{report}");
    assert!(web_seed(&report, 1)["downloaded_bytes"].as_u64() > Some(0));
    assert_eq!(report["banned_peers"], 0);
    assert!(good.access_log().contains("\" 206 "));
    // `btfs status` in text says the same, one line per web seed.
    let text = run(Command::new(btfs()).arg("status").arg(m.path()));
    assert!(
        text.contains(&format!("web_seed: {bad_url} (dropped: ")),
        "{text}"
    );
    assert!(
        text.contains(&format!("web_seed: {good_url} (active")),
        "{text}"
    );
    assert!(m.unmount().is_some_and(|s| s.success()));
}

/// `--no-web-seeds`: the server is never asked; with no other source a read fails after
/// `--read-timeout` instead of returning data.
#[test]
fn no_web_seeds_leaves_the_server_alone() {
    let ws = WebSeeded::make("single", 300_000);
    let server = Nginx::start(&ws.data_parent());
    ws.make_torrent(PIECE, &[web_seed_url(server.port())]);
    let m = mount_btfs(ws.torrent(), &["--no-web-seeds", "--read-timeout", "1"]);

    let file = m.path().join(&ws.files()[0].0);
    let read = std::fs::read(&file);
    assert!(read.is_err(), "read {file:?} with no source: {read:?}");
    let report = json_status(&m);
    assert_eq!(report["web_seeds"], serde_json::json!([]), "{report}");
    assert_eq!(server.access_log(), "", "nginx was asked");
    assert!(m.unmount().is_some_and(|s| s.success()));
}
