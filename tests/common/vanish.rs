//! A seeder that vanishes mid-read, behind a crowd of addresses that answer nothing: what
//! users meet on the internet, over either transport.

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use super::{Layout, Swarm, SwarmOptions, free_port, mount_btfs};

/// Most addresses a tracker or the DHT hands out answer nothing (behind a NAT, long gone),
/// and a peer that was sending can vanish mid-transfer without a word. Forty silent addresses
/// (a UDP socket that reads nothing, a TCP listener whose backlog takes the connection and
/// never speaks) are listed before two capped seeders that speak only `transport`; a quarter
/// of the way into the read one seeder freezes (SIGSTOP): no FIN, no reset, its requests
/// unanswered. The read goes on from the other, and every byte is right.
///
/// A read that hangs on the frozen seeder fails: with readahead capped, nothing else arrives
/// and `--read-timeout` ends the read with EIO.
pub fn read_around_a_vanishing_seeder(transport: &'static str) {
    const MIB: usize = 1024 * 1024;
    let size = 4 * MIB;
    let mut swarm = Swarm::start(SwarmOptions {
        layout: Layout::Single,
        size: size as u64,
        piece_length: 64 * 1024,
        seeders: 2,
        trackers: vec![],
        transport,
        upload_limit: Some(512 * 1024),
        ..SwarmOptions::default()
    });
    let ip = Ipv4Addr::new(127, 0, 99, 1);
    let mut silent = Vec::new();
    // Only what is read, at most 1 MiB ahead: the seeder freezes with most still to come.
    let mut args: Vec<String> = ["--background", "off", "--max-readahead", "1M"]
        .into_iter()
        .chain(["--read-timeout", "120"])
        .map(String::from)
        .collect();
    for _ in 0..40 {
        let port = free_port(ip);
        let udp = UdpSocket::bind((ip, port)).expect("bind a silent UDP socket");
        let tcp = TcpListener::bind((ip, port)).expect("bind a silent TCP listener");
        silent.push((udp, tcp));
        args.extend(["--peer".to_string(), format!("{ip}:{port}")]);
    }
    for seeder in swarm.seeders() {
        args.extend(["--peer".to_string(), seeder.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let m = mount_btfs(swarm.torrent(), &args);
    let (rel, _) = swarm.files().pop().expect("one file");
    let mut file = std::fs::File::open(m.path().join(&rel)).expect("open");
    let mut got = vec![0u8; size];
    let why = |e: std::io::Error| format!("{e}: {:?}\n{}", m.status(), m.stderr());
    file.read_exact(&mut got[..MIB])
        .unwrap_or_else(|e| panic!("{}", why(e)));
    // A hang detector, not a timing threshold.
    let deadline = Instant::now() + Duration::from_secs(60);
    while m.status_u64(&format!("peers_{transport}")) < 2 {
        assert!(
            Instant::now() < deadline,
            "never both seeders: {:?}",
            m.status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    swarm.freeze_seeder(0);
    file.read_exact(&mut got[MIB..])
        .unwrap_or_else(|e| panic!("{}", why(e)));
    let want = std::fs::read(swarm.data_parent().join(&rel)).expect("the seeded file");
    assert!(got == want, "wrong bytes read: {:?}", m.status());
    let s = m.status();
    assert_eq!(s["hash_failures"], "0", "{s:?}");
    let other = if transport == "utp" { "tcp" } else { "utp" };
    assert_eq!(
        s[&format!("peers_{other}")],
        "0",
        "the silent sockets are no peers: {s:?}"
    );
    drop(silent);
}
