//! Life in a public swarm, end to end: the real `btfs` binary, libtorrent peers behind
//! opentracker on loopback, ordinary tools reading the mount. A crowd of peers with nothing we
//! need holds every slot before the seeders are known; seeders leave and new ones arrive while
//! a file is read; one vanishes without a word. Deadlines are hang detectors only.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{
    Layout, Mount, Reaped, Swarm, SwarmOptions, Tracker, assert_tree_matches, mount_btfs, sha1_file,
};

/// Only a hang detector: nothing here is expected to take this long.
const HANG: Duration = Duration::from_secs(120);

/// (connected, known) peers of one source, from `peers_<source>: N connected, M known`.
fn by_source(m: &Mount, source: &str) -> (u64, u64) {
    let v = m.status_value(&format!("peers_{source}"));
    let num = |word: &str| -> u64 {
        (v.split(", "))
            .find_map(|part| part.strip_suffix(&format!(" {word}")))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {word} count in peers_{source}: {v}"))
    };
    (num("connected"), num("known"))
}

/// What a failure shows: the status, btfs's log and the swarm's.
fn report(m: &Mount, swarm: &Swarm) -> String {
    format!(
        "status:\n{}\nbtfs:\n{}\n{}",
        m.status_text(),
        m.stderr(),
        swarm.logs()
    )
}

/// Polls until `cond` holds; panics with `what`, the status and the logs if it never does.
fn eventually(m: &Mount, swarm: &Swarm, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "never: {what}\n{}",
            report(m, swarm)
        );
        sleep(Duration::from_millis(100));
    }
}

/// Slots in the crowd test; more leechers than that connect.
const SLOTS: usize = 6;
/// Leechers btfs dials itself (from `--peer`): they take its outgoing slots.
const DIALLED: u8 = 2;
/// Leechers that dial btfs: more than the slots left for incoming peers.
const DIALLING: u8 = 8;

/// The leechers hold nothing and want everything, as a public swarm's newcomers do; they fill
/// every slot (incoming and outgoing) before the tracker names the seeders. btfs must turn
/// them over for the seeders, or the read waits forever.
#[test]
fn a_crowd_of_empty_leechers_in_every_slot_makes_way_for_the_seeders() {
    let mut swarm = Swarm::start(SwarmOptions::multi(vec![Tracker::Http], 2));
    // Nobody can name the seeders yet: the tracker is down, and so are they.
    swarm.stop_tracker();
    swarm.stop_seeder(0);
    swarm.stop_seeder(1);

    let dialled: Vec<SocketAddr> = (0..DIALLED)
        .map(|i| swarm.start_leecher(Ipv4Addr::new(127, 0, 100 + i, 1), &[]))
        .collect();
    let mut args = vec!["--max-peers".to_string(), SLOTS.to_string()];
    for a in &dialled {
        args.extend(["--peer".to_string(), a.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let m = mount_btfs(swarm.torrent(), &args);
    let port: u16 = m.status_value("listen_port").parse().expect("a port");
    let btfs_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    for i in 0..DIALLING {
        swarm.start_leecher(Ipv4Addr::new(127, 0, 110 + i, 1), &[btfs_addr]);
    }
    eventually(&m, &swarm, "the crowd holds every slot", || {
        m.status_u64("peers") == SLOTS as u64
    });
    assert_eq!(by_source(&m, "tracker"), (0, 0), "{}", m.status_text());

    // The seeders come up and announce; btfs hears of them when it retries the tracker.
    swarm.restart_tracker();
    swarm.restart_seeder(0);
    swarm.restart_seeder(1);
    let why = || report(&m, &swarm);
    assert_tree_matches(m.path(), &swarm.data_parent(), &swarm.files(), HANG, why);
    // Only the seeders had the bytes; btfs found them through the tracker and got every
    // piece. (They need not be connected still: with every piece btfs is a seed too, and
    // libtorrent drops seed-to-seed connections.)
    assert!(by_source(&m, "tracker").1 >= 2, "{}", why());
    let total = m.status_u64("total_bytes");
    assert!(m.status_u64("downloaded_bytes") >= total, "{}", why());
}

/// Hands the bytes a reader process writes to its stdout on to a file, only as far as it is
/// told: a reader that cannot write blocks, so the test decides how far the read has got
/// when it changes the swarm.
struct Pacer {
    more: mpsc::Sender<u64>,
    done: mpsc::Receiver<std::io::Result<u64>>,
}

impl Pacer {
    fn start(mut from: ChildStdout, to: &Path) -> Pacer {
        let mut out = fs::File::create(to).unwrap_or_else(|e| panic!("create {to:?}: {e}"));
        let (more, wanted) = mpsc::channel::<u64>();
        let (reply, done) = mpsc::channel();
        std::thread::spawn(move || {
            let mut total = 0u64;
            let mut buf = vec![0u8; 64 * 1024];
            for target in wanted {
                let got = (|| {
                    while total < target {
                        let want = buf.len().min((target - total) as usize);
                        let n = from.read(&mut buf[..want])?;
                        if n == 0 {
                            break;
                        }
                        out.write_all(&buf[..n])?;
                        total += n as u64;
                    }
                    Ok(total)
                })();
                if reply.send(got).is_err() {
                    return;
                }
            }
        });
        Pacer { more, done }
    }

    /// Lets the reader get `upto` bytes in (or to its end); returns the bytes passed on.
    fn take_to(&self, upto: u64, why: impl Fn() -> String) -> u64 {
        self.more.send(upto).expect("the pacer runs");
        match self.done.recv_timeout(HANG) {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => panic!("reading the reader's output: {e}\n{}", why()),
            Err(_) => panic!("the read never got to {upto} bytes\n{}", why()),
        }
    }
}

const MIB: u64 = 1024 * 1024;

/// Two seeders, capped so the read takes a while; during it the first leaves, a third arrives
/// (it learns of us from the tracker and connects) and then the second leaves. The read is
/// paced so that each change happens mid-read, with most of the file still to come.
#[test]
fn seeders_leaving_and_arriving_during_a_long_read() {
    let size = 8 * MIB;
    let mut swarm = Swarm::start(SwarmOptions {
        layout: Layout::Single,
        size,
        piece_length: 64 * 1024,
        seeders: 2,
        trackers: vec![Tracker::Http],
        upload_limit: Some(512 * 1024),
        ..SwarmOptions::default()
    });
    // Only what is read, and at most 1 MiB ahead of it: the pacing decides what btfs has.
    let m = mount_btfs(
        swarm.torrent(),
        &["--background", "off", "--max-readahead", "1M"],
    );
    let (rel, len) = swarm.files().pop().expect("one file");
    assert_eq!(len, size);
    let mut cat = Reaped(
        Command::new("cat")
            .arg(m.path().join(&rel))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cat"),
    );
    let copy = swarm.dir().join("copy.bin");
    let pacer = Pacer::start(cat.0.stdout.take().expect("stdout"), &copy);
    let why = |swarm: &Swarm| report(&m, swarm);

    pacer.take_to(2 * MIB, || why(&swarm));
    swarm.stop_seeder(0);
    pacer.take_to(3 * MIB, || why(&swarm));
    swarm.add_seeder();
    eventually(&m, &swarm, "the new seeder connected to us", || {
        by_source(&m, "incoming").0 == 1
    });
    let held = m.status_u64("verified_bytes");
    assert!(
        held < size - 2 * MIB,
        "btfs holds {held} bytes already: the read would not need the newcomer\n{}",
        why(&swarm)
    );
    swarm.stop_seeder(1);
    let all = pacer.take_to(u64::MAX, || why(&swarm));
    assert_eq!(all, size, "{}", why(&swarm));

    let deadline = Instant::now() + HANG;
    let st = loop {
        if let Some(st) = cat.0.try_wait().expect("try_wait") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "cat never ended\n{}",
            why(&swarm)
        );
        sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = cat.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(st.success(), "cat: {st} {err}\n{}", why(&swarm));
    assert_eq!(
        sha1_file(&copy),
        sha1_file(&swarm.data_parent().join(&rel)),
        "every byte right"
    );
}

/// A TCP seeder that vanishes mid-read (its connection stays open, its requests unanswered),
/// behind a crowd of addresses that answer nothing (`common::vanish`).
#[test]
fn a_tcp_seeder_that_vanishes_mid_read_behind_silent_peers_is_read_around() {
    common::vanish::read_around_a_vanishing_seeder("tcp");
}
