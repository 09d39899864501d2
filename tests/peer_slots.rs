//! `--max-peers` of a library mount is one total the torrents share as they need it, on a real
//! mount served by libtorrent seeders on loopback (three seeders per torrent, more than the
//! whole total): torrents asleep hold no peer; the one being read takes more than an even
//! split would give it; a second one read claims its fair share from it; the process never
//! holds more than `--max-peers`, and every file reads right.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::library::{
    assert_folder_reads, mount_library, status_json, torrent_states, wait_for_states,
};
use common::{Layout, Mount, Swarm, SwarmOptions, Tracker};

const DEADLINE: Duration = Duration::from_secs(120);
const MAX_PEERS: u64 = 4;
const SEEDERS: usize = 3;
const FOLDERS: [&str; 3] = ["single.bin", "single.bin (2)", "single.bin (3)"];

/// Each torrent's (state, peers), in folder order, and the process's peers.
fn peers(m: &Mount) -> (Vec<(String, u64)>, u64, serde_json::Value) {
    let report = status_json(m);
    let total = report["peers"].as_u64().expect("the process's peers");
    (torrent_states(&report), total, report)
}

/// Polls until `cond` holds for the torrents' (state, peers).
fn wait_for(m: &Mount, what: &str, cond: impl Fn(&[(String, u64)]) -> bool) {
    wait_for_states(m, what, DEADLINE, cond)
}

/// Three one-file torrents of three seeders each, started at once; the first two's seeders
/// upload slowly, so that their reads last (and wait, and claim) for seconds.
fn swarms() -> Vec<Swarm> {
    let slow = Some(64 * 1024);
    let specs = [
        (1 << 20, 71, slow),
        (3 << 18, 72, slow),
        (1 << 20, 73, None),
    ];
    std::thread::scope(|s| {
        let started: Vec<_> = (specs.iter())
            .map(|&(size, seed, upload_limit)| {
                s.spawn(move || {
                    Swarm::start(SwarmOptions {
                        layout: Layout::Single,
                        size,
                        piece_length: 32 * 1024,
                        seeders: SEEDERS,
                        trackers: vec![Tracker::Http],
                        data_seed: seed,
                        upload_limit,
                        ..SwarmOptions::default()
                    })
                })
            })
            .collect();
        (started.into_iter())
            .map(|h| h.join().expect("a swarm started"))
            .collect()
    })
}

#[test]
fn the_torrent_being_read_gets_the_peers_the_sleeping_ones_do_not_use() {
    let swarms = swarms();
    let torrents: Vec<_> = swarms.iter().map(|s| s.torrent()).collect();
    let m = mount_library(
        &torrents,
        &["--max-peers", &MAX_PEERS.to_string(), "--idle-after", "2s"],
    );
    let done = AtomicBool::new(false);
    let polls = AtomicUsize::new(0);
    std::thread::scope(|s| {
        // The process never holds more than --max-peers, whatever the phase.
        let poller = s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let (_, total, report) = peers(&m);
                assert!(total <= MAX_PEERS, "{total} peers: {report:#}");
                polls.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let steps = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            phases(&m, &swarms);
        }));
        done.store(true, Ordering::Relaxed);
        let polled = poller.join();
        steps.unwrap_or_else(|e| std::panic::resume_unwind(e));
        polled.unwrap_or_else(|e| std::panic::resume_unwind(e));
    });
    assert!(
        polls.load(Ordering::Relaxed) >= 3,
        "status polled too few times"
    );
    assert!(m.unmount().is_some_and(|s| s.success()));
}

fn phases(m: &Mount, swarms: &[Swarm]) {
    // Nothing read: every torrent falls asleep and holds no peer.
    wait_for(m, "all asleep with no peers", |t| {
        t.iter().all(|(state, n)| state == "asleep" && *n == 0)
    });
    std::thread::scope(|s| {
        let read =
            |i: usize| s.spawn(move || assert_folder_reads(m, FOLDERS[i], &swarms[i], DEADLINE));
        // The first read: alone awake, it takes a peer per seeder, more than an even split's
        // 4/3; the others sleep on.
        let first = read(0);
        wait_for(m, "the torrent read holds a peer per seeder", |t| {
            t[0].1 >= SEEDERS as u64 && t[1..].iter().all(|(s, n)| s == "asleep" && *n == 0)
        });
        // The second read meanwhile: its read waits and claims its fair share, 2 of 4 with
        // two awake; the first gives back what it holds over its share.
        let second = read(1);
        wait_for(m, "the second torrent read gets its fair share", |t| {
            t[1].1 >= MAX_PEERS / 2
        });
        for reading in [first, second] {
            reading
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
        }
    });
    // The third, asleep all along, wakes to its read: every byte right.
    assert_folder_reads(m, FOLDERS[2], &swarms[2], DEADLINE);
}
