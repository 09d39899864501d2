//! Whole-node tests: our own nodes on 127.0.0.x talking to each other, and our node in a DHT
//! of real libtorrent nodes (scripts/dht_nodes.py). The libtorrent tests run only inside a
//! loopback-only network namespace (see [`in_loopback_netns`]): a DHT node talks to whatever
//! addresses it hears of, and loopback must be all there is.

mod krpc;
mod props;
mod routing;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::krpc::{Body, Message, Query};
use super::{Dht, DhtConfig, NodeId, SavedState, spawn_announce_loop};
use crate::net::Family;
use crate::net::udp::{Protocol, UdpPort};

fn config(nodes: Vec<SocketAddr>) -> DhtConfig {
    DhtConfig {
        bootstrap: Vec::new(),
        nodes,
        id: None,
        read_only: false,
    }
}

async fn node_on(ip: &str, nodes: Vec<SocketAddr>) -> Dht {
    let socket = UdpSocket::bind((ip, 0)).await.unwrap();
    Dht::bind(socket, config(nodes)).unwrap()
}

/// Polls `cond` every 20 ms; panics with `what` if it is still false after `secs` seconds.
async fn eventually(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs one lookup to its end; returns every peer it found.
async fn lookup(dht: &Dht, info_hash: NodeId, port: Option<u16>) -> HashSet<SocketAddr> {
    let mut rx = dht.get_peers(info_hash, port);
    let mut found = HashSet::new();
    while let Some(batch) = rx.recv().await {
        found.extend(batch);
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_nodes_bootstrap_from_each_other_and_find_an_announce() {
    let mut nodes: Vec<Dht> = Vec::new();
    for i in 0..8 {
        // Each new node knows only the first two: the rest it must learn through the DHT.
        let seeds = nodes
            .iter()
            .take(2)
            .map(|d| d.local_addr().unwrap())
            .collect();
        nodes.push(node_on(&format!("127.0.0.{}", 20 + i), seeds).await);
    }
    eventually("every node knows 4 others", 20, || {
        nodes.iter().all(|d| d.node_count() >= 4)
    })
    .await;

    let info_hash: NodeId = rand::random();
    let announcer = &nodes[5];
    assert!(lookup(announcer, info_hash, Some(4242)).await.is_empty());
    let announced: SocketAddr = "127.0.0.25:4242".parse().unwrap();
    for finder in [&nodes[0], &nodes[7]] {
        assert_eq!(
            lookup(finder, info_hash, None).await,
            HashSet::from([announced])
        );
    }

    // The saved table lets a new node start from where node 7 was.
    let saved = SavedState::of(&nodes[7]);
    assert!(saved.nodes.len() >= 4);
    let mut cfg = config(Vec::new());
    saved.clone().apply(&mut cfg);
    let socket = UdpSocket::bind("127.0.0.40:0").await.unwrap();
    let restarted = Dht::bind(socket, cfg).unwrap();
    assert_eq!(restarted.id(), saved.id);
    assert_eq!(
        lookup(&restarted, info_hash, None).await,
        HashSet::from([announced])
    );
    assert!(restarted.node_count() >= 4);

    // After shutdown, a lookup ends at once with nothing.
    restarted.shutdown();
    assert!(lookup(&restarted, info_hash, None).await.is_empty());
    for d in &nodes {
        d.shutdown();
    }
}

/// A node on an IPv4 and an IPv6 port of its own (BEP 32), bootstrapping from `nodes`.
async fn dual_node(v4: &str, nodes: Vec<SocketAddr>) -> Dht {
    let p4 = UdpPort::bind(SocketAddr::new(v4.parse().unwrap(), 0))
        .await
        .unwrap();
    let p6 = UdpPort::bind("[::1]:0".parse().unwrap()).await.unwrap();
    let sockets = [p4.channel(Protocol::Dht), p6.channel(Protocol::Dht)];
    Dht::start_all(sockets, config(nodes)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_nodes_bootstrap_from_each_other_and_find_an_ipv6_announce() {
    let mut nodes: Vec<Dht> = Vec::new();
    for _ in 0..6 {
        let seeds = nodes
            .iter()
            .take(2)
            .map(|d| d.local_addr().unwrap())
            .collect();
        nodes.push(node_on("::1", seeds).await);
    }
    eventually("every IPv6 node knows 3 others", 20, || {
        nodes.iter().all(|d| d.node_count_of(Family::V6) >= 3)
    })
    .await;
    assert!(nodes.iter().all(|d| d.node_count_of(Family::V4) == 0));

    let info_hash: NodeId = rand::random();
    assert!(lookup(&nodes[4], info_hash, Some(4242)).await.is_empty());
    let announced: SocketAddr = "[::1]:4242".parse().unwrap();
    for finder in [&nodes[0], &nodes[5]] {
        assert_eq!(
            lookup(finder, info_hash, None).await,
            HashSet::from([announced])
        );
    }
    let saved = SavedState::of(&nodes[5]);
    assert!(saved.nodes.len() >= 3 && saved.nodes.iter().all(SocketAddr::is_ipv6));
    assert_eq!(SavedState::decode(&saved.encode()), Ok(saved));
    for d in &nodes {
        d.shutdown();
    }
}

/// BEP 32's `want`: a node that knows a single IPv4 node learns the IPv6 DHT from it (it asks
/// for both families while its IPv6 table is thin), then finds a peer announced in each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_node_learns_the_ipv6_dht_through_an_ipv4_node() {
    let a = dual_node("127.0.0.80", Vec::new()).await;
    let mut others = Vec::new();
    for i in 1..=3 {
        let seeds = a.local_addrs().unwrap();
        others.push(dual_node(&format!("127.0.0.{}", 80 + i), seeds).await);
    }
    eventually("A knows the others in both families", 20, || {
        a.node_count_of(Family::V4) >= 3 && a.node_count_of(Family::V6) >= 3
    })
    .await;
    let a_v4 = a.local_addrs().unwrap()[0];
    assert!(a_v4.is_ipv4());
    let newcomer = dual_node("127.0.0.90", vec![a_v4]).await;
    eventually(
        "the newcomer learns IPv6 nodes from IPv4 answers",
        20,
        || newcomer.node_count_of(Family::V6) >= 2,
    )
    .await;

    let info_hash: NodeId = rand::random();
    assert!(lookup(&others[2], info_hash, Some(4343)).await.is_empty());
    let both: HashSet<SocketAddr> = HashSet::from([
        "127.0.0.83:4343".parse().unwrap(),
        "[::1]:4343".parse().unwrap(),
    ]);
    assert_eq!(lookup(&newcomer, info_hash, None).await, both);
    for d in others.iter().chain([&a, &newcomer]) {
        d.shutdown();
    }
}

#[tokio::test]
async fn announce_loop_streams_peers_and_stops_on_shutdown() {
    let a = node_on("127.0.0.50", vec![]).await;
    let b = node_on("127.0.0.51", vec![a.local_addr().unwrap()]).await;
    eventually("the nodes know each other", 20, || {
        a.node_count() == 1 && b.node_count() == 1
    })
    .await;
    let info_hash: NodeId = rand::random();
    lookup(&a, info_hash, Some(7000)).await;
    let (tx, mut rx) = mpsc::channel(8);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let more = std::sync::Arc::default();
    let task = spawn_announce_loop(b.clone(), info_hash, Some(7001), tx, more, stop_rx);
    // a's announce went to b's peer store: b's first lookup starts with it.
    let first = rx.recv().await.unwrap();
    assert_eq!(
        first,
        vec!["127.0.0.50:7000".parse::<SocketAddr>().unwrap()]
    );
    // b's announce reaches a once its lookup ends.
    let b_peer: SocketAddr = "127.0.0.51:7001".parse().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !lookup(&a, info_hash, None).await.contains(&b_peer) {
        assert!(tokio::time::Instant::now() < deadline, "b never announced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send_replace(true);
    task.await.unwrap();
}

#[tokio::test]
async fn malformed_packets_get_no_reply_and_floods_are_cut() {
    let dht = node_on("127.0.0.60", vec![]).await;
    let target = dht.local_addr().unwrap();
    let client = UdpSocket::bind("127.0.0.61:0").await.unwrap();
    let ping = |tid: u16| {
        Message {
            tid: tid.to_be_bytes().to_vec(),
            body: Body::Query {
                query: Query::Ping { id: [1; 20] },
                read_only: true,
            },
        }
        .encode()
    };
    for garbage in [
        &b""[..],
        b"d1:t2:aa1:y1:qe",
        b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe",
        b"\xff\xfe",
        b"d1:rd2:id20:abcdefghij0123456789e1:t2:zz1:y1:re",
        b"d1:eli201e5:oops!e1:t2:\x00\x001:y1:ee",
    ] {
        client.send_to(garbage, target).await.unwrap();
    }
    client.send_to(&ping(7), target).await.unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = client.recv_from(&mut buf).await.unwrap();
    assert_eq!(from, target);
    let reply = Message::decode(&buf[..n]).unwrap();
    assert_eq!(
        reply.tid,
        7u16.to_be_bytes(),
        "the first reply is the ping's"
    );
    let Body::Response(r) = reply.body else {
        panic!("ping got {reply:?}");
    };
    assert_eq!(r.id, dht.id());

    // 500 pings at once: the per-IP limit (burst 60, 20/s) answers only some.
    for tid in 0..500 {
        client.send_to(&ping(tid), target).await.unwrap();
    }
    let mut answered = 0;
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(500), client.recv_from(&mut buf)).await
    {
        answered += 1;
    }
    assert!(
        (59..400).contains(&answered),
        "{answered} of 500 flood pings answered"
    );
    dht.shutdown();
}

// ---------------------------------------------------------------- real libtorrent nodes

/// Set (to a marker file path) in the re-executed test that runs inside the namespace.
const NETNS_VAR: &str = "BTFS_DHT_TEST_IN_NETNS";

/// Runs `body` in a network namespace whose only interface is loopback. The test process
/// re-executes its own binary, filtered to this one test, under
/// `unshare -n -- sh -c 'ip link set lo up && exec "$0" "$@"'`, and asserts that it passed
/// and that `body` ran there (a marker file: a filter matching no test would also "pass").
/// The re-executed test sees `NETNS_VAR`, checks that `lo` is its only interface, and runs
/// `body`. Without `unshare` (or the right to use it) the test fails: it never skips, and never
/// runs a DHT outside the namespace.
fn in_loopback_netns(test: &str, body: impl FnOnce()) {
    if let Some(marker) = std::env::var_os(NETNS_VAR) {
        let dev = std::fs::read_to_string("/proc/self/net/dev").expect("read /proc/self/net/dev");
        let ifaces: Vec<&str> = dev
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(ifaces, ["lo"], "not in a loopback-only network namespace");
        body();
        std::fs::write(marker, b"ran").expect("write the marker file");
        return;
    }
    let exe = std::env::current_exe().expect("path of the test executable");
    let module = module_path!()
        .split_once("::")
        .map_or(module_path!(), |(_crate, rest)| rest);
    let name = format!("{module}::{test}");
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let status = Command::new("unshare")
        .args([
            "-n",
            "--",
            "sh",
            "-c",
            r#"ip link set lo up && exec "$0" "$@""#,
        ])
        .arg(&exe)
        .args([&name, "--exact", "--nocapture", "--test-threads=1"])
        .env(NETNS_VAR, &marker)
        .status()
        .expect("run `unshare -n` (util-linux; needs root): libtorrent DHT tests run only there");
    assert!(
        status.success(),
        "{name} in its network namespace: {status}"
    );
    assert!(
        marker.exists(),
        "{name} did not run in its network namespace"
    );
}

fn block_on(f: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f);
}

/// scripts/dht_nodes.py: `count` libtorrent DHT nodes on 127.0.0.10.. port 6900.
struct LibtorrentDht {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
    nodes: Vec<SocketAddr>,
}

impl LibtorrentDht {
    async fn start(count: usize) -> LibtorrentDht {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dht_nodes.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .args(["--count", &count.to_string()])
            .args(["--first-ip", "127.0.0.10", "--port", "6900"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run /usr/bin/python3 scripts/dht_nodes.py (python3-libtorrent)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lt = LibtorrentDht {
            child,
            stdin,
            lines,
            nodes: Vec::new(),
        };
        loop {
            let line = lt.line(90).await;
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["node", _, addr] => lt.nodes.push(addr.parse().unwrap()),
                ["ready"] => break,
                _ => panic!("dht_nodes.py: {line}"),
            }
        }
        assert_eq!(lt.nodes.len(), count);
        lt
    }

    async fn line(&mut self, secs: u64) -> String {
        match tokio::time::timeout(Duration::from_secs(secs), self.lines.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!("dht_nodes.py exited"),
            Err(_) => panic!("dht_nodes.py said nothing for {secs} s"),
        }
    }

    async fn command(&mut self, cmd: &str, secs: u64) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.line(secs).await
    }
}

impl Drop for LibtorrentDht {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Child::kill signals exactly this PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_hex(hex: &str) -> NodeId {
    let mut id = [0; 20];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    id
}

async fn join_libtorrent_dht(lt: &LibtorrentDht) -> Dht {
    // Bootstrap from one libtorrent node only: the others we must learn through it.
    let dht = node_on("127.0.0.2", vec![lt.nodes[0]]).await;
    eventually("our node learns every libtorrent node", 30, || {
        dht.node_count() >= lt.nodes.len()
    })
    .await;
    dht
}

#[test]
fn finds_a_libtorrent_seeder_through_libtorrent_nodes() {
    in_loopback_netns("finds_a_libtorrent_seeder_through_libtorrent_nodes", || {
        block_on(async {
            let mut lt = LibtorrentDht::start(5).await;
            let dht = join_libtorrent_dht(&lt).await;
            let line = lt.command("seed 3", 30).await;
            let info_hash = parse_hex(line.strip_prefix("infohash ").expect(&line));
            let seeder = lt.nodes[3];
            // libtorrent announces the new torrent on its own schedule: look until it did.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let found = lookup(&dht, info_hash, None).await;
                if found.contains(&seeder) {
                    assert_eq!(found, HashSet::from([seeder]));
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never found {seeder}: {found:?}"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            dht.shutdown();
        })
    });
}

#[test]
fn libtorrent_finds_our_announce() {
    in_loopback_netns("libtorrent_finds_our_announce", || {
        block_on(async {
            let mut lt = LibtorrentDht::start(5).await;
            let dht = join_libtorrent_dht(&lt).await;
            let info_hash: NodeId = rand::random();
            let hex: String = info_hash.iter().map(|b| format!("{b:02x}")).collect();
            assert!(lookup(&dht, info_hash, Some(7777)).await.is_empty());
            let line = lt.command(&format!("get_peers 2 {hex} 30"), 40).await;
            assert_eq!(line, "peers 2 127.0.0.2:7777");
            // The libtorrent nodes learnt us from our queries and kept us.
            let line = lt.command("nodes 4", 5).await;
            let count: usize = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(count >= lt.nodes.len(), "{line}");
            dht.shutdown();
        })
    });
}
