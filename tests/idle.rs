//! Idle torrents sleep (`--idle-after`), on a real library mount served by libtorrent seeders
//! on loopback: with no read, each torrent drops its peers (`btfs status` says `state:
//! asleep`, 0 peers); a read of one wakes it and returns the right bytes, the other sleeps on.
//! The wake needs no tracker: the seeder's address was kept while it slept.

mod common;

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::library::{
    assert_folder_reads, status_json, torrent_states, two_swarms, wait_for_states,
};
use common::{Layout, MOUNT_ARGS, Mount, btfs, run};

const DEADLINE: Duration = Duration::from_secs(120);

/// Polls the status until `cond` holds for the torrents' (state, peers).
fn wait_for(m: &Mount, what: &str, cond: impl Fn(&[(String, u64)]) -> bool) {
    wait_for_states(m, what, DEADLINE, cond)
}

#[test]
fn idle_torrents_sleep_and_a_read_wakes_one_with_right_bytes() {
    let (mut a, b) = two_swarms(
        (Layout::Single, 2 << 20, 61),
        (Layout::Single, 1 << 20, 62),
        32 * 1024,
    );
    let m = Mount::with_args(btfs(), |mnt, _| {
        let mut args: Vec<OsString> = vec!["mount".into()];
        args.extend([a.torrent(), b.torrent()].map(|p: &Path| p.as_os_str().to_owned()));
        args.push(mnt.into());
        args.extend(MOUNT_ARGS.iter().map(OsString::from));
        args.extend(["--idle-after", "2s"].map(OsString::from));
        args
    });
    // Nothing read: both fall asleep, their peers dropped.
    wait_for(&m, "both asleep with no peers", |t| {
        t.iter()
            .all(|(state, peers)| state == "asleep" && *peers == 0)
    });
    let text = run(Command::new(btfs()).arg("status").arg(m.path()));
    assert!(text.contains("  state: asleep\n"), "{text}");
    let report = status_json(&m);
    let known = report["torrents"][0]["known_peers"].as_u64();
    assert!(known >= Some(1), "the seeder's address is kept: {report:#}");

    // A read of the first wakes it, with its tracker gone: the seeder it knew is dialled
    // again. Every byte right, the second sleeps on.
    a.stop_tracker();
    assert_folder_reads(&m, "single.bin", &a, DEADLINE);
    let report = status_json(&m);
    let torrents = report["torrents"].as_array().expect("a torrents list");
    // Nothing was fetched before it slept (no read): the bytes came after the wake.
    assert!(
        torrents[0]["downloaded_bytes"].as_u64() >= Some(2 << 20),
        "{report:#}"
    );
    assert_eq!(torrents[1]["downloaded_bytes"].as_u64(), Some(0));
    assert_eq!(
        torrent_states(&report)[1],
        ("asleep".to_string(), 0),
        "{report:#}"
    );
    // And it sleeps again once reads stop.
    wait_for(&m, "the first asleep again", |t| {
        t[0].0 == "asleep" && t[0].1 == 0
    });
    assert!(m.unmount().is_some_and(|s| s.success()));
}
