//! One memory budget for a library mount (`--cache-size` shared by every torrent, least
//! recently used across them), on a real mount served by libtorrent seeders on loopback: two
//! torrents each larger than the cache, read one after the other with ordinary file reads,
//! every byte right, and `btfs status --json` never showing more cached than the budget.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::Layout;
use common::library::{assert_folder_reads, mount_library, status_json, two_swarms};

const READ_DEADLINE: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;
const BUDGET: u64 = 16 * MIB;

/// Each torrent's cached bytes, in folder order.
fn cached(report: &serde_json::Value) -> Vec<u64> {
    (report["torrents"]
        .as_array()
        .expect("a torrents list")
        .iter())
    .map(|t| t["cache_used_bytes"].as_u64().expect("cache_used_bytes"))
    .collect()
}

/// Two 24 MiB torrents under a 16 MiB `--cache-size`, read one after the other: every byte
/// right; the cached bytes of both torrents together within the budget at every poll of `btfs
/// status --json`; the second takes more than half the budget (an even split would cap it
/// at half) from the first, which keeps what the second did not need.
#[test]
fn two_torrents_larger_than_the_cache_share_one_budget() {
    let (a, b) = two_swarms(
        (Layout::Single, 24 * MIB, 51),
        (Layout::Single, 24 * MIB + 4321, 52),
        64 * 1024,
    );
    let m = mount_library(
        &[a.torrent(), b.torrent()],
        &["--cache-size", "16M", "--max-readahead", "4M"],
    );
    let folders = ["single.bin", "single.bin (2)"];
    let report = status_json(&m);
    assert_eq!(
        report["cache_budget_bytes"].as_u64(),
        Some(BUDGET),
        "{report:#}"
    );

    let done = AtomicBool::new(false);
    let (polls, worst) = std::thread::scope(|s| {
        let poller = s.spawn(|| {
            let (mut polls, mut worst) = (0u32, 0u64);
            while !done.load(Ordering::Relaxed) {
                // The mount's total is the pool's, read at once; the torrents' own numbers
                // are taken one after another while pieces move between them.
                let report = status_json(&m);
                let sum = report["cache_used_bytes"]
                    .as_u64()
                    .expect("cache_used_bytes");
                assert!(sum <= BUDGET, "{sum} cached over {BUDGET}: {report:#}");
                for one in cached(&report) {
                    assert!(one <= BUDGET, "{one} cached over {BUDGET}: {report:#}");
                }
                worst = worst.max(sum);
                polls += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            (polls, worst)
        });
        let reads = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert_folder_reads(&m, folders[0], &a, READ_DEADLINE);
            let first = cached(&status_json(&m));
            assert_folder_reads(&m, folders[1], &b, READ_DEADLINE);
            first
        }));
        done.store(true, Ordering::Relaxed);
        let polled = poller.join();
        let first = reads.unwrap_or_else(|e| std::panic::resume_unwind(e));
        let polled = polled.unwrap_or_else(|e| std::panic::resume_unwind(e));
        assert!(
            first[0] > BUDGET / 2,
            "the first torrent alone held only {first:?}"
        );
        polled
    });
    assert!(polls >= 3, "status polled {polls} times only");
    let last = cached(&status_json(&m));
    assert!(last.iter().sum::<u64>() <= BUDGET, "{last:?}");
    assert!(
        last[1] > BUDGET / 2,
        "the torrent read last holds only {last:?} of {BUDGET}"
    );
    assert!(last[0] < BUDGET / 2, "the first kept too much: {last:?}");
    eprintln!("{polls} polls, at most {worst} of {BUDGET} bytes cached");
    assert!(m.unmount().is_some_and(|s| s.success()));
}
