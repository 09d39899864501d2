//! Magnet links against real libtorrent seeders: metadata fetched over BEP 9/10, verified,
//! kept for the next mount; a link's web seeds (`ws=`, served by nginx) read from once the
//! metadata came from a peer; clear errors for bad links and silent swarms.

mod common;

use std::path::Path;
use std::process::Command;

use common::{
    Layout, MOUNT_ARGS, Mount, Nginx, Reaped, Swarm, SwarmOptions, Tracker, btfs, mount_btfs, run,
    sha1_file, web_seed_url,
};

/// `s` as a magnet parameter's value: everything but unreserved characters percent-encoded.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `magnet:?xt=urn:btih:<hash>&dn=<name>&tr=<url>` for the swarm's torrent.
fn magnet_of(swarm: &Swarm) -> String {
    let tr = percent_encode(&swarm.http_tracker_url());
    format!("magnet:?xt=urn:btih:{}&dn=multi&tr={tr}", swarm.info_hash())
}

#[test]
fn a_magnet_link_mounts_streams_and_is_remembered() {
    let mut swarm = Swarm::start(SwarmOptions {
        layout: Layout::Multi,
        size: 2 * 1024 * 1024,
        piece_length: 64 * 1024,
        seeders: 3,
        trackers: vec![Tracker::Http],
        ..SwarmOptions::default()
    });
    let cache = tempfile::tempdir().expect("tempdir");
    let cache_arg = cache.path().display().to_string();
    let magnet = magnet_of(&swarm);
    let magnet = Path::new(&magnet);
    {
        let m = mount_btfs(
            magnet,
            &["--metadata-cache", &cache_arg, "--metadata-timeout", "120"],
        );
        for (rel, len) in swarm.files() {
            let dst = m.path().join(&rel);
            assert_eq!(std::fs::metadata(&dst).expect("stat").len(), len);
            assert_eq!(
                sha1_file(&dst),
                sha1_file(&swarm.data_parent().join(&rel)),
                "{rel:?}"
            );
        }
        assert!(m.unmount().is_some_and(|s| s.success()));
    }
    let kept = cache.path().join(format!("{}.torrent", swarm.info_hash()));
    assert!(kept.exists(), "metadata kept at {kept:?}");

    // With every seeder gone, only the kept metadata can make the tree appear.
    for i in 0..3 {
        swarm.stop_seeder(i);
    }
    let m = mount_btfs(
        magnet,
        &["--metadata-cache", &cache_arg, "--metadata-timeout", "3"],
    );
    let names: Vec<_> = std::fs::read_dir(m.path().join("multi"))
        .expect("tree")
        .collect();
    assert!(!names.is_empty());
}

/// A libtorrent seeder gives the metadata and is then stopped, so the link's `ws=` server is
/// the only source of the data: every file reads right, all of it from the web seed, which
/// `btfs status` shows. Also when the metadata comes from the cache, kept by an earlier mount
/// of the link without `ws=`.
#[test]
fn a_magnets_web_seed_serves_the_data_once_a_peer_gave_the_metadata() {
    let mut swarm = Swarm::start(SwarmOptions {
        layout: Layout::Multi,
        size: 1024 * 1024 + 4321,
        piece_length: 64 * 1024,
        seeders: 1,
        trackers: vec![Tracker::Http],
        ..SwarmOptions::default()
    });
    let server = Nginx::start(&swarm.data_parent());
    let ws = web_seed_url(server.port());
    let plain = magnet_of(&swarm);
    let with_ws = format!("{plain}&ws={}", percent_encode(&ws));
    let kept = tempfile::tempdir().expect("tempdir");
    let fresh = tempfile::tempdir().expect("tempdir");

    let m = mount_magnet(&plain, kept.path());
    assert_eq!(json_status(&m)["web_seeds"], serde_json::json!([]));
    assert!(m.unmount().is_some_and(|s| s.success()));

    let m = mount_magnet(&with_ws, fresh.path());
    // Nothing is fetched before the first read, so from here on only the web seed has data.
    swarm.stop_seeder(0);
    every_file_reads_right_from_the_web_seed(&swarm, &m, &ws);
    assert!(m.unmount().is_some_and(|s| s.success()));

    let m = mount_magnet(&with_ws, kept.path());
    every_file_reads_right_from_the_web_seed(&swarm, &m, &ws);
    assert!(m.unmount().is_some_and(|s| s.success()));
    let log = server.access_log();
    assert!(log.contains("\" 206 "), "{log}");
    assert!(!log.contains("\" 404 "), "{log}");
}

/// `link` mounted with its metadata kept in (or read from) `cache`; a read no source serves
/// fails after a minute (a hang detector) instead of waiting for ever.
fn mount_magnet(link: &str, cache: &Path) -> Mount {
    let cache = cache.display().to_string();
    let args = ["--metadata-cache", &cache, "--metadata-timeout", "60"];
    mount_btfs(
        Path::new(link),
        &[&args[..], &["--read-timeout", "60"]].concat(),
    )
}

fn json_status(m: &Mount) -> serde_json::Value {
    let out = run(Command::new(btfs())
        .arg("status")
        .arg(m.path())
        .arg("--json"));
    serde_json::from_str(&out).expect("btfs status --json prints JSON")
}

fn every_file_reads_right_from_the_web_seed(swarm: &Swarm, m: &Mount, ws: &str) {
    for (rel, len) in swarm.files() {
        let got = m.path().join(&rel);
        assert_eq!(std::fs::metadata(&got).expect("stat").len(), len, "{rel:?}");
        let want = sha1_file(&swarm.data_parent().join(&rel));
        assert_eq!(sha1_file(&got), want, "{rel:?}\n{}", m.stderr());
    }
    let report = json_status(m);
    let seed = &report["web_seeds"][0];
    assert_eq!(seed["url"], ws, "{report}");
    assert_eq!(seed["state"], "active", "{report}");
    let total: u64 = swarm.files().iter().map(|(_, len)| len).sum();
    assert!(seed["downloaded_bytes"].as_u64() >= Some(total), "{report}");
    let text = run(Command::new(btfs()).arg("status").arg(m.path()));
    assert!(text.contains(&format!("web_seed: {ws} (active")), "{text}");
}

#[test]
fn a_magnet_nobody_answers_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(btfs())
        .arg("mount")
        .arg("magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&tr=http%3A%2F%2F127.0.0.1%3A9%2Fannounce")
        .arg(dir.path())
        .args(MOUNT_ARGS)
        .args(["--metadata-timeout", "2"])
        .arg("--metadata-cache")
        .arg(dir.path().join("cache"))
        .output()
        .expect("run btfs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no metadata after 2 s"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_bad_magnet_link_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(btfs())
        .args(["mount", "magnet:?xt=urn:btih:nothex"])
        .arg(dir.path())
        .output()
        .expect("run btfs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("btfs: bad magnet link"), "{err}");
}

#[test]
fn a_torrent_url_is_downloaded_and_mounted() {
    let swarm = Swarm::start(SwarmOptions {
        layout: Layout::Multi,
        seeders: 2,
        trackers: vec![Tracker::Http],
        ..SwarmOptions::default()
    });
    let port = common::free_port(std::net::Ipv4Addr::LOCALHOST);
    let dir = swarm.torrent().parent().expect("torrent dir");
    let _server = Reaped(
        Command::new("/usr/bin/python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("http.server"),
    );
    let name = swarm
        .torrent()
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let url = format!("http://127.0.0.1:{port}/{name}");
    // The server may need a moment to listen; a refused download is a clean failure, so retry.
    let m = (0..50)
        .find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            Some(mount_btfs(Path::new(&url), &[]))
        })
        .expect("http.server listens");
    let (rel, _) = swarm
        .files()
        .into_iter()
        .max_by_key(|(_, l)| *l)
        .expect("a file");
    assert_eq!(
        sha1_file(&m.path().join(&rel)),
        sha1_file(&swarm.data_parent().join(&rel))
    );
}
