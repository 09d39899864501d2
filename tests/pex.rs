//! Peer exchange (BEP 11) both ways with libtorrent, on torrents without trackers and with
//! no DHT, so that PEX is the only way the peers in each test can learn of each other.

mod common;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use common::{Layout, Mount, Swarm, SwarmOptions, mount_btfs, sha1_file};

/// Hang detectors only: libtorrent may wait up to a minute before its first PEX message.
const LEECH_DEADLINE: Duration = Duration::from_secs(240);
const READ_DEADLINE: Duration = Duration::from_secs(300);

/// One libtorrent seeder and a torrent that names no tracker. The seeder keeps connections
/// to peers that want nothing from it: btfs once a read's background fetch made it a seed,
/// and the PEX hub.
fn trackerless() -> Swarm {
    Swarm::start(SwarmOptions {
        layout: Layout::Multi,
        size: 3 * 1024 * 1024 + 4321,
        piece_length: 64 * 1024,
        seeders: 1,
        trackers: Vec::new(),
        keep_redundant: true,
        ..SwarmOptions::default()
    })
}

fn mount(swarm: &Swarm, peer: SocketAddr, extra: &[&str]) -> Mount {
    let peer = peer.to_string();
    let mut args = vec!["--peer", &peer];
    args.extend_from_slice(extra);
    mount_btfs(swarm.torrent(), &args)
}

/// btfs is connected to seeder S and uploads nothing; a libtorrent leecher whose only peer is
/// btfs still downloads everything: it can only have found S in our PEX message.
#[test]
fn a_leecher_finds_our_seeder_through_our_pex() {
    let swarm = trackerless();
    let seeder = swarm.seeders()[0];
    let m = mount(&swarm, seeder, &["--no-upload"]);
    // A read needs a connection to S, so btfs has one to name.
    let (first, _) = &swarm.files()[0];
    let bytes = std::fs::read(m.path().join(first))
        .unwrap_or_else(|e| panic!("read {first:?}: {e}\n{}", m.stderr()));
    assert_eq!(
        bytes,
        std::fs::read(swarm.data_parent().join(first)).unwrap()
    );
    let us = SocketAddr::from(([127, 0, 0, 1], m.status_u64("listen_port") as u16));
    let leech = swarm.leech_pex([127, 0, 97, 1].into(), &[us], LEECH_DEADLINE);
    assert!(
        leech.complete,
        "leecher did not finish: {leech:?}\n{}\n{}",
        m.stderr(),
        swarm.logs()
    );
    assert_eq!(leech.hash_failures, 0, "{leech:?}");
    assert!(
        leech.stdout.contains(&format!("\"{seeder}\"")),
        "leecher connected to the seeder: {}",
        leech.stdout
    );
    assert_eq!(m.status_u64("uploaded_bytes"), 0, "we uploaded nothing");
}

/// btfs's only peer is a libtorrent peer with no data that downloads nothing but is connected
/// to seeder S; every file still reads right through the mount: the bytes came from S, which
/// btfs can only have learned from that peer's PEX messages.
#[test]
fn we_find_a_seeder_through_a_libtorrent_peers_pex() {
    let mut swarm = trackerless();
    let seeder = swarm.seeders()[0];
    let hub = swarm.start_pex_hub([127, 0, 96, 1].into(), &[seeder]);
    let m = mount(&swarm, hub, &[]);
    let files = swarm.files();
    let mnt = m.path().to_path_buf();
    let (tx, rx) = mpsc::channel();
    let jobs = files.clone();
    // In a thread so that a read that never completes fails the test instead of hanging it;
    // unmounting (when `m` drops) then fails the read and ends the thread.
    std::thread::spawn(move || {
        for (rel, _) in jobs {
            let _ = tx.send((rel.clone(), sha1_file(&mnt.join(&rel))));
        }
    });
    let deadline = std::time::Instant::now() + READ_DEADLINE;
    for (rel, _) in &files {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let (got_rel, got) = rx.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "reading {rel:?} through the mount never finished\n{}\n{}",
                m.stderr(),
                swarm.logs()
            )
        });
        assert_eq!(&got_rel, rel);
        assert_eq!(
            got,
            sha1_file(&swarm.data_parent().join(rel)),
            "content of {rel:?}"
        );
    }
    assert!(m.status_u64("known_peers") >= 2, "{:?}", m.status());
}
