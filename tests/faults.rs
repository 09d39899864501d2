//! Network faults and teardown under load, end to end: the real `btfs` binary, libtorrent
//! seeders behind opentracker on loopback, ordinary tools reading the mount. Seeders and the
//! tracker die and come back at their old addresses; readers are killed mid-read; the mount is
//! taken down with readers blocked and peers connected. Deadlines are hang detectors only.

mod common;

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{
    MOUNT_ARGS, Mount, Reaped, Swarm, SwarmOptions, Tracker, btfs, mount_btfs, run, sha1_file,
    signal,
};

/// Only a hang detector: nothing here is expected to take this long.
const HANG: Duration = Duration::from_secs(120);

/// Polls until `cond` holds; panics with `what`, the status and btfs's log if it never does.
fn eventually(m: &Mount, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "never: {what}\nstatus:\n{}\nbtfs:\n{}",
            m.status_text(),
            m.stderr()
        );
        sleep(Duration::from_millis(100));
    }
}

/// The largest file of the swarm: (path under the mount, path of the original).
fn largest(swarm: &Swarm, m: &Mount) -> (PathBuf, PathBuf) {
    let (rel, _) = swarm
        .files()
        .into_iter()
        .max_by_key(|(_, l)| *l)
        .expect("a file");
    (m.path().join(&rel), swarm.data_parent().join(&rel))
}

/// Waits for a child with a hang detector; returns its status.
fn wait_child(child: &mut Child, what: &str, m: &Mount) -> std::process::ExitStatus {
    let deadline = Instant::now() + HANG;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never ended\nbtfs:\n{}",
            m.stderr()
        );
        sleep(Duration::from_millis(20));
    }
}

/// `sha1sum <file>` in the background; its stdout is the hash line.
fn spawn_sha1(path: &Path) -> Reaped {
    Reaped(
        Command::new("sha1sum")
            .arg(path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sha1sum"),
    )
}

#[test]
fn all_seeders_killed_mid_read_the_read_waits_and_completes_when_they_return() {
    let mut opts = SwarmOptions::multi(vec![Tracker::Http], 2);
    // Slow enough that the read is still going when the seeders are stopped.
    opts.upload_limit = Some(256 * 1024);
    let mut swarm = Swarm::start(opts);
    let m = mount_btfs(swarm.torrent(), &[]);
    let (file, original) = largest(&swarm, &m);
    let mut reader = spawn_sha1(&file);
    eventually(&m, "some data arrived", || {
        m.status_u64("downloaded_bytes") > 0
    });
    swarm.stop_seeder(0);
    swarm.stop_seeder(1);
    eventually(&m, "no peer connected", || m.status_u64("peers") == 0);
    assert!(
        reader.0.try_wait().expect("try_wait").is_none(),
        "the read waits while no seeder is up\n{}",
        m.stderr()
    );
    // Back at the same addresses; the tracker will not mention them again for half an hour.
    swarm.restart_seeder(0);
    swarm.restart_seeder(1);
    let st = wait_child(&mut reader.0, "the read", &m);
    assert!(st.success(), "the read completes\n{}", m.stderr());
    let mut out = String::new();
    reader
        .0
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read sha1sum");
    let got = out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(got, sha1_file(&original), "the right bytes");
}

#[test]
fn tracker_down_at_start_the_peer_flag_works_and_the_tracker_is_retried() {
    let mut swarm = Swarm::start(SwarmOptions::multi(vec![Tracker::Http], 2));
    swarm.stop_tracker();
    // Seeder 2 is found only through the tracker; it leaves now and comes back later.
    swarm.stop_seeder(1);
    let first = swarm.seeders()[0].to_string();
    let m = mount_btfs(swarm.torrent(), &["--peer", &first]);
    let (file, original) = largest(&swarm, &m);
    assert_eq!(sha1_file(&file), sha1_file(&original), "read via --peer");
    eventually(&m, "the tracker's failure shown", || {
        m.status_value("tracker").contains("error")
    });
    swarm.restart_tracker();
    swarm.restart_seeder(1);
    eventually(&m, "the tracker answered", || {
        m.status_value("tracker").contains("(ok, ")
    });
    eventually(&m, "the tracker's peer known", || {
        m.status_u64("known_peers") >= 2
    });
}

#[test]
fn read_timeout_fails_a_read_that_cannot_progress_and_the_mount_stays_usable() {
    let mut swarm = Swarm::start(SwarmOptions::multi(vec![], 1));
    let seeder = swarm.seeders()[0].to_string();
    swarm.stop_seeder(0);
    let m = mount_btfs(swarm.torrent(), &["--peer", &seeder, "--read-timeout", "4"]);
    let (file, original) = largest(&swarm, &m);
    let dd = |count: &str| {
        Command::new("dd")
            .arg(format!("if={}", file.display()))
            .args(["of=/dev/null", "bs=64k", count])
            .stdin(Stdio::null())
            .output()
            .expect("dd")
    };
    let out = dd("count=1");
    assert!(!out.status.success(), "no seeder: the read fails");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Input/output error"), "dd said: {err}");
    // Still usable: metadata answers, and once the seeder is back, reads do too.
    assert!(m.status_text().contains("verified_pieces: 0"));
    assert!(fs::read_dir(m.path()).expect("readdir").count() > 0);
    swarm.restart_seeder(0);
    let deadline = Instant::now() + HANG;
    // The first read after the seeder's return may still time out while it is dialled.
    while !dd("count=4").status.success() {
        assert!(
            Instant::now() < deadline,
            "reads never worked again\n{}",
            m.stderr()
        );
    }
    assert_eq!(sha1_file(&file), sha1_file(&original));
}

/// `cat`s blocked reading a file nobody seeds yet.
/// `cat`s with SIGINT at its default action, terminate: a shell without job control that
/// starts the suite in the background (`cmd &` in a script) hands its children SIGINT ignored.
fn blocked_cats(file: &Path, n: usize) -> Vec<Reaped> {
    (0..n)
        .map(|_| {
            let mut cat = Command::new("cat");
            cat.arg(file).stdout(Stdio::null()).stderr(Stdio::piped());
            // SAFETY: between fork and exec only `signal`, which is async-signal-safe.
            unsafe {
                cat.pre_exec(|| {
                    libc::signal(libc::SIGINT, libc::SIG_DFL);
                    Ok(())
                });
            }
            Reaped(cat.spawn().expect("cat"))
        })
        .collect()
}

fn reader_lines(m: &Mount) -> usize {
    m.status_text()
        .lines()
        .filter(|l| l.starts_with("reader: "))
        .count()
}

/// fuser 0.18 answers FUSE_INTERRUPT itself (ENOSYS), so a blocked read never becomes EINTR
/// for a caught signal; a fatal one ends the reader at once (the page-cache wait is
/// killable). btfs then notices the reader is gone, answers its pending reads, gets the
/// file's release, and keeps serving everyone else.
#[test]
fn readers_killed_mid_read_leave_nothing_behind_and_the_mount_serves_others() {
    let mut swarm = Swarm::start(SwarmOptions::multi(vec![], 1));
    let seeder = swarm.seeders()[0].to_string();
    swarm.stop_seeder(0);
    let m = mount_btfs(swarm.torrent(), &["--peer", &seeder]);
    let (file, original) = largest(&swarm, &m);
    let mut cats = blocked_cats(&file, 2);
    eventually(&m, "both readers open", || reader_lines(&m) == 2);
    sleep(Duration::from_millis(500));
    for c in &mut cats {
        assert!(c.0.try_wait().expect("try_wait").is_none(), "blocked");
    }
    signal(cats[0].0.id(), 9); // SIGKILL
    signal(cats[1].0.id(), 2); // SIGINT, default action: terminate
    for c in &mut cats {
        let st = wait_child(&mut c.0, "a killed reader", &m);
        assert!(!st.success(), "killed, not finished");
    }
    eventually(&m, "no reader left", || reader_lines(&m) == 0);
    swarm.restart_seeder(0);
    assert_eq!(
        sha1_file(&file),
        sha1_file(&original),
        "the mount still serves"
    );
    assert_eq!(reader_lines(&m), 0);
}

/// Fake peers on one loopback address: each accepts, answers the handshake for `info_hash`
/// and then sends nothing, ever, until dropped.
struct Stallers {
    addrs: Vec<String>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Stallers {
    fn start(n: usize, info_hash_hex: &str) -> Stallers {
        let mut info_hash = [0u8; 20];
        for (i, b) in info_hash.iter_mut().enumerate() {
            *b = u8::from_str_radix(&info_hash_hex[2 * i..2 * i + 2], 16).expect("hex");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut addrs = Vec::new();
        let mut threads = Vec::new();
        for i in 0..n {
            let listener = TcpListener::bind((Ipv4Addr::new(127, 0, 9, 1), 0)).expect("bind");
            listener.set_nonblocking(true).expect("nonblocking");
            addrs.push(listener.local_addr().expect("addr").to_string());
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut held: Vec<TcpStream> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((mut s, _)) = listener.accept() {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut theirs = [0u8; 68];
                        if s.read_exact(&mut theirs).is_ok() {
                            let mut hs = Vec::with_capacity(68);
                            hs.push(19);
                            hs.extend_from_slice(b"BitTorrent protocol");
                            hs.extend_from_slice(&[0; 8]);
                            hs.extend_from_slice(&info_hash);
                            hs.extend_from_slice(format!("-ST0001-{i:012}").as_bytes());
                            if s.write_all(&hs).is_ok() {
                                held.push(s);
                            }
                        }
                    }
                    sleep(Duration::from_millis(20));
                }
            }));
        }
        Stallers {
            addrs,
            stop,
            threads,
        }
    }

    fn peer_args(&self) -> Vec<String> {
        self.addrs
            .iter()
            .flat_map(|a| ["--peer".to_string(), a.clone()])
            .collect()
    }
}

impl Drop for Stallers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A mount of a torrent nobody seeds, 50 stalling peers connected and 8 `cat`s blocked.
fn loaded_mount() -> (Swarm, Stallers, Mount, Vec<Reaped>, u16) {
    let mut swarm = Swarm::start(SwarmOptions::multi(vec![], 1));
    swarm.stop_seeder(0);
    let stallers = Stallers::start(50, swarm.info_hash());
    let peers = stallers.peer_args();
    let peers: Vec<&str> = peers.iter().map(String::as_str).collect();
    let m = mount_btfs(swarm.torrent(), &peers);
    let port: u16 = m.status_value("listen_port").parse().expect("port");
    eventually(&m, "50 peers connected", || m.status_u64("peers") == 50);
    let (file, _) = largest(&swarm, &m);
    let cats = blocked_cats(&file, 8);
    eventually(&m, "8 readers open", || reader_lines(&m) == 8);
    (swarm, stallers, m, cats, port)
}

/// Every `cat` failed, the mount is gone, btfs exited, and nothing listens on its port.
fn assert_torn_down(mut m: Mount, cats: &mut [Reaped], port: u16) {
    for c in cats.iter_mut() {
        let st = wait_child(&mut c.0, "a blocked cat", &m);
        assert!(!st.success(), "a blocked read fails");
    }
    let deadline = Instant::now() + HANG;
    let st = loop {
        if let Some(st) = m.child().try_wait().expect("try_wait") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "btfs never exited\n{}",
            m.stderr()
        );
        sleep(Duration::from_millis(20));
    };
    assert!(st.success(), "btfs exits cleanly: {st}\n{}", m.stderr());
    assert!(!m.is_mounted(), "the mount is gone");
    let listening = run(Command::new("ss").args(["-Htln", &format!("sport = :{port}")]));
    assert!(listening.trim().is_empty(), "still listening:\n{listening}");
}

#[test]
fn sigterm_with_readers_blocked_and_peers_connected_tears_everything_down() {
    let (_swarm, _stallers, m, mut cats, port) = loaded_mount();
    m.signal(15);
    assert_torn_down(m, &mut cats, port);
}

/// A plain `fusermount3 -u` is refused while files are open (the kernel's EBUSY); the lazy
/// one detaches at once and btfs, noticing, fails the reads and exits.
#[test]
fn fusermount_with_readers_blocked_and_peers_connected_tears_everything_down() {
    let (_swarm, _stallers, m, mut cats, port) = loaded_mount();
    let plain = Command::new("fusermount3")
        .arg("-u")
        .arg(m.path())
        .output()
        .expect("fusermount3");
    assert!(!plain.status.success(), "busy while files are open");
    run(Command::new("fusermount3").args(["-u", "-z"]).arg(m.path()));
    assert_torn_down(m, &mut cats, port);
}

/// Nothing of btfs's own keeps an idle mount busy: a `fusermount3 -u` as soon as the mount is
/// listed (its first requests may still be in flight) unmounts it, and btfs exits cleanly.
/// Several times, as a holder of btfs's would be there for a moment only.
#[test]
fn fusermount_right_after_mounting_unmounts() {
    let torrent = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lt_multi_v1.torrent");
    for attempt in 1..=10 {
        let mut m = mount_btfs(&torrent, &[]);
        let status = m.unmount_in_place();
        assert!(
            status.is_some_and(|s| s.success()),
            "attempt {attempt}: {status:?}\n{}",
            m.stderr()
        );
    }
}

#[test]
fn a_killed_btfs_leaves_a_dead_mount_that_fusermount_clears_and_a_clear_message() {
    let swarm = Swarm::start(SwarmOptions::multi(vec![Tracker::Http], 1));
    let mut m = mount_btfs(swarm.torrent(), &[]);
    m.kill_hard();
    // What `ls` says (a stat may still be answered from the kernel's cache).
    let err = fs::read_dir(m.path()).expect_err("a dead mount");
    assert_eq!(err.raw_os_error(), Some(107), "ENOTCONN: {err}");

    let mnt = m.path().to_path_buf();
    let mut args: Vec<OsString> = vec!["mount".into(), swarm.torrent().into(), mnt.clone().into()];
    args.extend(MOUNT_ARGS.iter().map(OsString::from));
    let again = Command::new(btfs())
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("btfs");
    assert!(!again.status.success(), "mounting on a dead mount fails");
    let msg = String::from_utf8_lossy(&again.stderr);
    assert_eq!(msg.lines().count(), 1, "one line: {msg}");
    assert!(
        msg.contains(&format!("fusermount3 -u {}", mnt.display())),
        "says what to run: {msg}"
    );

    run(Command::new("fusermount3").arg("-u").arg(&mnt));
    m.restart(btfs(), &args);
    let (file, original) = largest(&swarm, &m);
    assert_eq!(
        sha1_file(&file),
        sha1_file(&original),
        "the new mount works"
    );
}
