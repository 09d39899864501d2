//! `btfs status` against a real mount: libtorrent seeders behind opentracker, a file read with
//! ordinary tools, then the status command run as a user would, as JSON and as text.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{Layout, Mount, Swarm, SwarmOptions, Tracker, btfs, mount_btfs, sha1_file};

const SEEDERS: usize = 3;
/// Peers connect within moments on loopback; generous for a loaded CI machine.
const PEERS_DEADLINE: Duration = Duration::from_secs(60);

fn status(args: &[&std::ffi::OsStr]) -> Output {
    status_env(args, &[])
}

fn status_env(args: &[&std::ffi::OsStr], env: &[(&str, &Path)]) -> Output {
    Command::new(btfs())
        .arg("status")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run btfs status")
}

fn ok_stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "btfs status failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_status(m: &Mount) -> serde_json::Value {
    let out = status(&[m.path().as_os_str(), "--json".as_ref()]);
    serde_json::from_str(&ok_stdout(&out)).expect("btfs status --json prints one JSON object")
}

fn by_source(report: &serde_json::Value, source: &str) -> (u64, u64) {
    let c = report["peer_sources"]
        .as_array()
        .expect("peer_sources is a list")
        .iter()
        .find(|c| c["source"] == source)
        .unwrap_or_else(|| panic!("no {source} in {report}"));
    (
        c["connected"].as_u64().expect("connected"),
        c["known"].as_u64().expect("known"),
    )
}

#[test]
fn status_shows_what_the_mount_did_and_goes_away_with_it() {
    // The torrent is three times the cache: we never hold all of it, so the seeders (which
    // drop seed-to-seed connections) stay connected.
    let swarm = Swarm::start(SwarmOptions {
        layout: Layout::Multi,
        size: 3 * 1024 * 1024,
        piece_length: 64 * 1024,
        seeders: SEEDERS,
        trackers: vec![Tracker::Http],
        ..SwarmOptions::default()
    });
    let mut m = mount_btfs(swarm.torrent(), &["--cache-size", "1M"]);
    let socket = btfs::app::status::socket::socket_for(m.path()).expect("resolve the mountpoint");
    assert!(socket.exists(), "{socket:?} while mounted");

    let rel = PathBuf::from("multi/sub dir/ünïcødé 名前.bin");
    let (_, len) = swarm
        .files()
        .into_iter()
        .find(|(p, _)| *p == rel)
        .expect("the swarm has the file");
    let file = m.path().join(&rel);
    assert_eq!(
        sha1_file(&file),
        sha1_file(&swarm.data_parent().join(&rel)),
        "{}",
        m.stderr()
    );
    // `cat` too: the whole file comes through an ordinary read loop.
    let cat = Command::new("cat").arg(&file).output().expect("run cat");
    assert!(cat.status.success());
    assert_eq!(cat.stdout.len() as u64, len);

    // Every seeder was found through the tracker; wait until each is connected.
    let deadline = Instant::now() + PEERS_DEADLINE;
    let report = loop {
        let r = json_status(&m);
        if by_source(&r, "tracker").0 == SEEDERS as u64 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "not all {SEEDERS} seeders connected: {r:#}\n{}",
            m.stderr()
        );
        sleep(Duration::from_millis(200));
    };
    let (connected, known) = by_source(&report, "tracker");
    assert_eq!(connected, SEEDERS as u64, "{report:#}");
    assert!(known >= SEEDERS as u64, "{report:#}");
    for other in ["dht", "pex", "incoming", "manual"] {
        assert_eq!(by_source(&report, other).0, 0, "{other}: {report:#}");
    }
    assert_eq!(report["peers"].as_u64(), Some(SEEDERS as u64));
    assert_eq!(report["info_hash"], swarm.info_hash());
    assert_eq!(report["mountpoint"].as_str(), m.path().to_str());
    let verified = report["verified_bytes"].as_u64().expect("verified_bytes");
    assert!(
        verified >= len,
        "verified {verified} < file {len}: {report:#}"
    );
    assert!(report["verified_pieces"].as_u64() > Some(0));
    assert!(report["downloaded_bytes"].as_u64() >= Some(len));
    assert!(report["cache_budget_bytes"].as_u64() == Some(1024 * 1024));
    // Rates depend on timing: only their presence is checked.
    assert!(report["download_rate"].as_u64().is_some(), "{report:#}");
    assert!(report["upload_rate"].as_u64().is_some(), "{report:#}");
    let trackers = report["trackers"].as_array().expect("trackers");
    assert_eq!(trackers.len(), 1, "{report:#}");
    assert_eq!(trackers[0]["url"], swarm.http_tracker_url());
    assert_eq!(trackers[0]["result"], "ok", "{report:#}");
    assert!(trackers[0]["peers"].as_u64() >= Some(SEEDERS as u64));

    // The text says the same.
    let text = ok_stdout(&status(&[m.path().as_os_str()]));
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
            .to_string()
    };
    assert_eq!(value("info_hash"), swarm.info_hash());
    let text_verified: u64 = value("verified_bytes").parse().expect("a number");
    assert!(text_verified >= len, "{text}");
    assert!(
        value("peers_tracker").starts_with(&format!("{SEEDERS} connected, ")),
        "{text}"
    );
    assert_eq!(value("peers"), SEEDERS.to_string());
    assert!(
        value("tracker").starts_with(&format!("{} (ok, ", swarm.http_tracker_url())),
        "{text}"
    );
    assert!(value("download_rate").ends_with("/s"), "{text}");

    // The same report as the mount root's attribute, read with getfattr.
    let attr = common::run(
        Command::new("getfattr")
            .args(["--only-values", "-n", "user.btfs.status"])
            .arg(m.path()),
    );
    assert!(
        attr.contains(&format!("peers_tracker: {SEEDERS} connected")),
        "{attr}"
    );

    // Without a mountpoint, this mount is among those listed.
    let all = ok_stdout(&status(&[]));
    assert!(all.contains(&format!("{}: ", m.path().display())), "{all}");

    assert!(
        m.unmount_in_place().is_some_and(|s| s.success()),
        "btfs exits cleanly after fusermount3 -u\n{}",
        m.stderr()
    );
    assert!(!socket.exists(), "{socket:?} removed at unmount");
    let out = status(&[m.path().as_os_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not a running btfs mount"), "{err}");
}

/// A mount whose process was killed leaves its socket behind: `btfs status` says so at once
/// (no hang), removes it, and fails.
#[test]
fn status_of_a_killed_mount_reports_and_removes_its_stale_socket() {
    let swarm = Swarm::start(SwarmOptions::default());
    // A runtime dir of its own: `btfs status` of every mount, run by another test meanwhile,
    // would find this socket stale and remove it first.
    let runtime = tempfile::tempdir().expect("tempdir");
    let env = [("XDG_RUNTIME_DIR", runtime.path())];
    let status = |args: &[&std::ffi::OsStr]| status_env(args, &env);
    let m = Mount::with_env(
        btfs(),
        |mnt, _| {
            let mut args: Vec<std::ffi::OsString> =
                vec!["mount".into(), swarm.torrent().into(), mnt.into()];
            args.extend(common::MOUNT_ARGS.iter().map(Into::into));
            args
        },
        &env,
    );
    let socket = runtime.path().join("btfs").join(
        btfs::app::status::socket::socket_for(m.path())
            .expect("resolve the mountpoint")
            .file_name()
            .expect("a socket name"),
    );
    ok_stdout(&status(&[m.path().as_os_str()]));
    let pid = i32::try_from(m.pid()).expect("a pid");
    // SAFETY: kill(2) on the PID of the child the Mount owns and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + PEERS_DEADLINE;
    // The process is gone once its listening socket refuses connections (while it dies, a
    // connection may still be accepted by the kernel and closed unanswered).
    loop {
        let out = status(&[m.path().as_os_str()]);
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("stale status socket") {
            assert_eq!(out.status.code(), Some(1), "{err}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no stale socket reported after SIGKILL: {err}"
        );
        sleep(Duration::from_millis(50));
    }
    assert!(!socket.exists(), "{socket:?} removed");
    let again = status(&[m.path().as_os_str()]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("is not a running btfs mount"), "{err}");
}
