//! A library mount changing while mounted: `btfs add` and `btfs remove` over the status
//! socket, `--watch DIR`, `--library` with no torrent, all against libtorrent seeders (one
//! swarm, tracker and seeder per torrent, on loopback) and read with ordinary tools.

mod common;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::library::{
    assert_folder_reads, folder_files, library_swarm, mount_library, root_names, two_swarms,
};
use common::{Layout, MOUNT_ARGS, Mount, Reaped, Swarm, assert_tree_matches, btfs};

/// Generous for slow CI: a hang detector only, never a measure.
const HANG: Duration = Duration::from_secs(120);

/// `btfs <args>`, its output.
fn btfs_run(args: &[&OsString]) -> Output {
    Command::new(btfs())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run btfs")
}

fn add(m: &Mount, source: impl Into<OsString>) -> Output {
    btfs_run(&[&"add".into(), &m.path().into(), &source.into()])
}

fn remove(m: &Mount, name: &str) -> Output {
    btfs_run(&[&"remove".into(), &m.path().into(), &name.into()])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls until `cond` holds; panics with `what` and btfs's log if it never does.
fn eventually(m: &Mount, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG;
    while !cond() {
        assert!(Instant::now() < deadline, "never: {what}\n{}", m.stderr());
        sleep(Duration::from_millis(50));
    }
}

/// `btfs status MOUNT NAME --json`, or `None` if it fails (no such torrent).
fn torrent_status(m: &Mount, name: &str) -> Option<serde_json::Value> {
    let out = btfs_run(&[
        &"status".into(),
        &m.path().into(),
        &name.into(),
        &"--json".into(),
    ]);
    if !out.status.success() {
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("status JSON"))
}

/// Every file of `swarm` among `files` read through `folder`, compared by sha1sum.
fn assert_files_read(m: &Mount, folder: &str, swarm: &Swarm, files: &[(PathBuf, u64)]) {
    let (parent, _) = folder_files(swarm);
    assert_tree_matches(&m.path().join(folder), &parent, files, HANG, || {
        format!("{folder}\n{}\nthe swarm:\n{}", m.stderr(), swarm.logs())
    });
}

/// One torrent mounted with `--library` is read (slowly: its seeder uploads at 256 KiB/s);
/// meanwhile a second (of the same name, so in a suffixed folder) is added with `btfs add`,
/// appears at once, and both read right. A third, whose seeder is gone, is added; a `cat` of
/// its file blocks; `btfs remove` ends the cat with an error and takes the folder away, and
/// the second's files not yet read still read right.
#[test]
fn torrents_are_added_while_another_is_read_and_removed_while_a_read_waits() {
    let (slow, second, mut dead) = std::thread::scope(|s| {
        let slow =
            s.spawn(|| library_swarm(Layout::Multi, 1 << 20, 32 * 1024, 51, Some(256 * 1024)));
        let second = s.spawn(|| library_swarm(Layout::Multi, 500_000, 32 * 1024, 52, None));
        let dead = s.spawn(|| library_swarm(Layout::Single, 300_000, 32 * 1024, 53, None));
        let join = |h: std::thread::ScopedJoinHandle<'_, Swarm>| h.join().expect("a swarm");
        (join(slow), join(second), join(dead))
    });
    dead.stop_seeder(0);
    let m = mount_library(&[slow.torrent()], &["--library"]);
    assert_eq!(root_names(&m), ["multi"], "{}", m.stderr());
    let (_, second_files) = folder_files(&second);
    let (now, later) = second_files.split_at(second_files.len() / 2);

    std::thread::scope(|s| {
        let reading = s.spawn(|| assert_folder_reads(&m, "multi", &slow, HANG));
        let out = add(&m, second.torrent());
        assert!(
            out.status.success(),
            "{}\n{}",
            text(&out.stderr),
            m.stderr()
        );
        let said = text(&out.stdout);
        assert!(said.contains("multi (2)"), "{said}");
        // No wait: the kernel was told, and the listing is asked again.
        assert_eq!(root_names(&m), ["multi", "multi (2)"], "{}", m.stderr());
        assert_files_read(&m, "multi (2)", &second, now);
        reading.join().expect("the first torrent read right");
    });
    let report = torrent_status(&m, "multi (2)").expect("status of the added torrent");
    assert_eq!(report["info_hash"], second.info_hash(), "{report:#}");
    let one = btfs_run(&[&"status".into(), &m.path().into(), &"multi (2)".into()]);
    let one = text(&one.stdout);
    assert!(
        one.starts_with("torrent: multi (2)\n  name: multi\n"),
        "{one}"
    );
    assert!(
        !one.contains("torrent: multi\n"),
        "only the one asked for:\n{one}"
    );

    let out = add(&m, dead.torrent());
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        m.stderr()
    );
    let folder = "single.bin";
    let file = m.path().join(folder).join("single.bin");
    let mut cat = Reaped(
        Command::new("cat")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cat"),
    );
    eventually(&m, "the cat's read waits in btfs", || {
        torrent_status(&m, folder)
            .is_some_and(|r| r["readers"].as_array().is_some_and(|a| !a.is_empty()))
    });
    assert!(cat.0.try_wait().expect("try_wait").is_none(), "cat waits");
    let out = remove(&m, folder);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        m.stderr()
    );
    let deadline = Instant::now() + HANG;
    let status = loop {
        if let Some(s) = cat.0.try_wait().expect("try_wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "cat never ended\n{}", m.stderr());
        sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "the blocked read fails");
    assert_eq!(root_names(&m), ["multi", "multi (2)"], "{}", m.stderr());
    let gone = fs::metadata(&file).expect_err("the removed file is gone");
    assert_eq!(gone.kind(), std::io::ErrorKind::NotFound, "{gone}");
    assert!(torrent_status(&m, folder).is_none());
    // Nothing else disturbed: files never read before come from the swarm, right.
    assert_files_read(&m, "multi (2)", &second, later);
    assert!(!m.stderr().contains("panicked"), "{}", m.stderr());
    assert!(m.unmount().is_some_and(|s| s.success()));
}

/// `--watch DIR` with no source: a .torrent file copied in appears as a folder and reads
/// right, a .magnet file too (its metadata from the seeder); deleting a file takes its folder
/// away, the other staying.
#[test]
fn a_watch_directory_is_followed_while_mounted() {
    let (a, b) = two_swarms(
        (Layout::Multi, 600_000, 61),
        (Layout::Single, 400_000, 62),
        32 * 1024,
    );
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path().join("watch");
    fs::create_dir(&dir).expect("mkdir");
    let cache = scratch.path().join("metadata");
    let m = mount_library(
        &[],
        &[
            "--watch",
            dir.to_str().expect("UTF-8"),
            "--metadata-cache",
            cache.to_str().expect("UTF-8"),
        ],
    );
    assert_eq!(root_names(&m), Vec::<String>::new());

    // (That a file still being written is not read is the watcher's unit test: a test here
    // would race the writer against the polls.)
    let dst = dir.join("a.torrent");
    fs::copy(a.torrent(), &dst).expect("copy the torrent in");
    eventually(&m, "the .torrent file's folder", || {
        root_names(&m) == ["multi"]
    });
    assert_folder_reads(&m, "multi", &a, HANG);

    let magnet = format!(
        "magnet:?xt=urn:btih:{}&tr={}\n",
        b.info_hash(),
        b.http_tracker_url().replace(':', "%3A").replace('/', "%2F")
    );
    fs::write(dir.join("b.magnet"), magnet).expect("write");
    eventually(&m, "the .magnet file's folder", || {
        root_names(&m) == ["multi", "single.bin"]
    });
    assert_folder_reads(&m, "single.bin", &b, HANG);

    fs::remove_file(&dst).expect("delete");
    eventually(&m, "the deleted file's folder gone", || {
        root_names(&m) == ["single.bin"]
    });
    assert!(!m.stderr().contains("left out"), "{}", m.stderr());
    assert_folder_reads(&m, "single.bin", &b, HANG);
    assert!(m.unmount().is_some_and(|s| s.success()));
}

/// `btfs mount --library` with no torrent shows an empty root; a broken torrent, a missing
/// file and a duplicate added at runtime each make `btfs add` exit non-zero with one line
/// saying why, and the mount goes on; `btfs remove` of an unknown name fails the same way; a
/// torrent removed can be added again; a mount of one torrent refuses `btfs add`.
#[test]
fn bad_torrents_added_at_runtime_are_refused_and_the_mount_goes_on() {
    let good = library_swarm(Layout::Single, 200_000, 32 * 1024, 71, None);
    let m = mount_library(&[], &["--library"]);
    assert_eq!(root_names(&m), Vec::<String>::new());
    let scratch = tempfile::tempdir().expect("tempdir");
    let broken = scratch.path().join("broken.torrent");
    fs::write(&broken, b"d8:announce5:nope").expect("write");
    let missing = scratch.path().join("missing.torrent");

    let refused = |out: Output, needle: &str| {
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with("btfs: ") && err.contains(needle), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    };
    refused(add(&m, &broken), &broken.to_string_lossy());
    refused(add(&m, &missing), &missing.to_string_lossy());
    refused(add(&m, "magnet:?xt=urn:btih:nothex"), "bad magnet link");

    let out = add(&m, good.torrent());
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        m.stderr()
    );
    refused(add(&m, good.torrent()), "the same torrent as");
    refused(remove(&m, "nope"), "no torrent in folder \"nope\"");
    assert_eq!(root_names(&m), ["single.bin"]);
    assert_folder_reads(&m, "single.bin", &good, HANG);
    let status = text(&btfs_run(&[&"status".into(), &m.path().into()]).stdout);
    assert!(
        status.contains("broken.torrent"),
        "said in the report:\n{status}"
    );

    let out = remove(&m, "single.bin");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(root_names(&m), Vec::<String>::new());
    // Removed, then added again at once: a new session, read right again.
    let out = add(&m, good.torrent());
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        m.stderr()
    );
    assert_eq!(root_names(&m), ["single.bin"]);
    assert_folder_reads(&m, "single.bin", &good, HANG);

    let single = common::mount_btfs(good.torrent(), &[]);
    refused(add(&single, &broken), "--library");
    assert!(single.unmount().is_some_and(|s| s.success()));
    assert!(m.unmount().is_some_and(|s| s.success()));
}

#[test]
fn help_tells_of_add_remove_library_and_watch() {
    let help = |args: &[&str]| {
        let out = Command::new(btfs()).args(args).output().expect("run btfs");
        assert!(out.status.success(), "{args:?}");
        text(&out.stdout)
    };
    let top = help(&["--help"]);
    for needle in ["add", "remove", "status"] {
        assert!(
            top.lines().any(|l| l.trim_start().starts_with(needle)),
            "{top}"
        );
    }
    let add = help(&["add", "--help"]);
    assert!(add.contains("<MOUNTPOINT> <TORRENT|MAGNET|URL>"), "{add}");
    assert!(add.contains("--library"), "{add}");
    let remove = help(&["remove", "--help"]);
    assert!(remove.contains("<MOUNTPOINT> <NAME>"), "{remove}");
    let mount = help(&["mount", "--help"]);
    assert!(
        mount.contains("--library") && mount.contains("--watch <DIR>"),
        "{mount}"
    );
    // Nothing to mount: said, not a mount of nothing.
    let out = Command::new(btfs())
        .args(["mount", "/nonexistent-mnt"])
        .output()
        .expect("run btfs");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("<TORRENT>"),
        "{}",
        text(&out.stderr)
    );
}

/// With `--state-dir`, the torrents added with `btfs add` come back at the next mount of the
/// mountpoint (a .torrent file's bytes are kept: the file given is gone by then), and one
/// removed with `btfs remove` does not.
#[test]
fn torrents_added_at_runtime_survive_a_remount() {
    let (kept, dropped) = two_swarms(
        (Layout::Multi, 300_000, 81),
        (Layout::Single, 200_000, 82),
        32 * 1024,
    );
    let scratch = tempfile::tempdir().expect("tempdir");
    let state = scratch.path().join("state");
    let copy = scratch.path().join("copy.torrent");
    fs::copy(kept.torrent(), &copy).expect("copy the torrent");
    let args = |mnt: &Path| -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["mount".into(), mnt.into()];
        args.extend(MOUNT_ARGS.iter().map(OsString::from));
        args.extend([
            "--library".into(),
            "--state-dir".into(),
            state.clone().into(),
        ]);
        args
    };
    let mut m = Mount::with_args(btfs(), |mnt, _| args(mnt));
    for source in [&copy, dropped.torrent()] {
        let out = add(&m, source);
        assert!(
            out.status.success(),
            "{}\n{}",
            text(&out.stderr),
            m.stderr()
        );
    }
    let out = remove(&m, "single.bin");
    assert!(out.status.success(), "{}", text(&out.stderr));
    fs::remove_file(&copy).expect("delete the copy");
    assert!(m.unmount_in_place().is_some_and(|s| s.success()));

    let again = args(m.path());
    m.restart(btfs(), &again);
    eventually(&m, "the kept torrent back", || root_names(&m) == ["multi"]);
    assert_folder_reads(&m, "multi", &kept, HANG);
    // Only the one kept: the removed one is forgotten, not merely slow to come back.
    let kept_files: Vec<_> = fs::read_dir(state.join("library"))
        .expect("the kept torrents' directory")
        .flat_map(|d| fs::read_dir(d.expect("an entry").path()).expect("a mount's directory"))
        .map(|e| e.expect("an entry").file_name())
        .collect();
    assert_eq!(kept_files.len(), 1, "{kept_files:?}");
    assert!(
        (kept_files[0].to_string_lossy()).starts_with(kept.info_hash()),
        "{kept_files:?}"
    );
    assert!(!m.stderr().contains("left out"), "{}", m.stderr());
    assert!(m.unmount().is_some_and(|s| s.success()));
}
