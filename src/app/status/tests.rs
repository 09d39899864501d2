//! `btfs status`: the problems it says (failing trackers, no peers, a stalled read, a failing disk cache) and the web seeds it shows.

use super::*;
use crate::tracker::announcer::TrackerStatus;

fn tracker(last: Option<Result<usize, String>>) -> TrackerStatus {
    TrackerStatus {
        url: "http://t/announce".into(),
        tier: 0,
        last,
        next_announce: None,
    }
}

fn holds(s: &Stats, c: Condition) -> bool {
    problems(s, false)
        .into_iter()
        .any(|(k, p)| k == c && p.is_some())
}

#[test]
fn trackers_fail_only_when_every_one_has_failed() {
    let mut s = Stats {
        peers: 1,
        ..Stats::default()
    };
    assert!(!holds(&s, Condition::TrackersFailing), "no trackers at all");
    s.trackers = vec![tracker(Some(Err("refused".into()))), tracker(None)];
    assert!(!holds(&s, Condition::TrackersFailing), "one not tried yet");
    s.trackers[1] = tracker(Some(Err("timed out".into())));
    assert!(holds(&s, Condition::TrackersFailing));
    s.trackers[0] = tracker(Some(Ok(3)));
    assert!(!holds(&s, Condition::TrackersFailing));
}

#[test]
fn no_peers_and_a_stalled_read_are_separate_conditions() {
    let mut s = Stats::default();
    assert!(holds(&s, Condition::NoPeers));
    assert!(!holds(&s, Condition::ReadStalled));
    s.peers = 2;
    s.longest_wait = Some(std::time::Duration::from_secs(59));
    assert!(!holds(&s, Condition::NoPeers));
    assert!(!holds(&s, Condition::ReadStalled));
    s.longest_wait = Some(READ_STALL);
    assert!(holds(&s, Condition::ReadStalled));
}

#[test]
fn a_sleeping_torrent_without_peers_is_no_problem() {
    let mut s = Stats {
        asleep: true,
        ..Stats::default()
    };
    assert!(!holds(&s, Condition::NoPeers));
    s.asleep = false;
    assert!(holds(&s, Condition::NoPeers));
}

#[test]
fn web_seeds_are_shown_with_their_state_and_count_as_a_source() {
    let seed = |state| WebSeedStatus {
        url: "http://h/x/".into(),
        state,
        downloaded: 3 * 1024 * 1024,
        missing_files: 0,
    };
    let mut s = Stats {
        web_seeds: vec![seed(WebSeedState::Active)],
        ..Stats::default()
    };
    assert!(
        !holds(&s, Condition::NoPeers),
        "an active web seed is a source"
    );
    s.web_seeds = vec![seed(WebSeedState::Dropped {
        reason: "sent data that failed the SHA1 check".into(),
    })];
    assert!(holds(&s, Condition::NoPeers), "a dropped one is not");

    let backing = WebSeedReport::new(WebSeedStatus {
        missing_files: 2,
        ..seed(WebSeedState::BackingOff {
            retry_in: std::time::Duration::from_millis(3500),
            reason: "HTTP 503 Service Unavailable".into(),
        })
    });
    assert_eq!(
        backing.to_text(),
        "http://h/x/ (backing off 4 s: HTTP 503 Service Unavailable, 3.0 MiB, 2 files missing)"
    );
    let dropped = WebSeedReport::new(s.web_seeds[0].clone());
    assert_eq!(dropped.state, "dropped");
    assert_eq!(
        dropped.to_text(),
        "http://h/x/ (dropped: sent data that failed the SHA1 check, 3.0 MiB)"
    );
    let json = serde_json::to_value(&dropped).unwrap();
    assert_eq!(json["state"], "dropped");
    assert_eq!(json["downloaded_bytes"], 3 * 1024 * 1024);
}

#[test]
fn a_failing_disk_cache_holds_until_a_write_succeeds() {
    let mut s = Stats::default();
    assert!(!holds(&s, Condition::DiskFailing));
    s.disk_failing = Some("No space left on device".into());
    let said = problems(&s, false)
        .into_iter()
        .find_map(|(k, p)| (k == Condition::DiskFailing).then_some(p))
        .flatten()
        .expect("said");
    assert!(said.contains("No space left on device"), "{said}");
    s.disk_failing = None;
    assert!(!holds(&s, Condition::DiskFailing));
}
