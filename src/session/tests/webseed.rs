//! Web seeds (BEP 19) against the scripted server of `web_server`: a web seed alone serves
//! every file over a few keep-alive connections; a missing file, a busy server, a body cut
//! short, a redirect are lived through; a server that answers wrongly or sends corrupt data
//! is dropped and its blocks come from a peer, with no peer banned for it. Every read returns
//! the right bytes.

use super::web_server::{Script, WebServer};
use super::*;
use crate::session::{WebSeedConfig, WebSeedState, WebSeedStatus};

/// Short waits, so a test sees a backoff end; still no test depends on them.
fn quick() -> WebSeedConfig {
    WebSeedConfig {
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        first_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        ..WebSeedConfig::default()
    }
}

/// `c` with these web seeds in its `url-list`.
fn seeded(c: &Content, urls: &[String]) -> Arc<Content> {
    let mut torrent = (*c.torrent).clone();
    torrent.url_list = urls.to_vec();
    Arc::new(Content {
        torrent: Arc::new(torrent),
        data: c.data.clone(),
    })
}

async fn start_web(c: &Content, peers: &[&FakePeer], web_seeds: WebSeedConfig) -> Session {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        peers: peers.iter().map(|p| p.addr).collect(),
        cache_bytes: BIG_CACHE,
        web_seeds,
        ..Config::default()
    };
    let host = host_for(&config).await;
    Session::start(c.torrent.clone(), config, &host)
        .await
        .expect("session starts")
}

/// One web seed at `server`, nothing else.
async fn alone(c: &Arc<Content>, server: &WebServer) -> (Arc<Content>, Session) {
    let cw = seeded(c, &[server.url()]);
    let session = start_web(&cw, &[], quick()).await;
    (cw, session)
}

fn seed0(s: &Stats) -> &WebSeedStatus {
    s.web_seeds.first().expect("a web seed in the stats")
}

fn dropped_for(s: &Stats, what: &str) -> bool {
    matches!(&seed0(s).state, WebSeedState::Dropped { reason } if reason.contains(what))
}

/// A server that failed the web seed stays in the picture; an honest peer on the server's own
/// address then serves the rest, and is neither banned nor dropped for the server's fault.
async fn rest_from_a_peer_on_the_same_ip(session: &Session, c: &Arc<Content>) -> FakePeer {
    let honest = FakePeer::start(ip(1), c.clone(), Behavior::Honest).await;
    join(session, &honest).await;
    honest
}

#[tokio::test(flavor = "multi_thread")]
async fn a_web_seed_alone_serves_every_file_over_few_connections() {
    // An empty file between two others; file edges inside pieces.
    let c = content(11, 64 * 1024, &[300_000, 0, 700_001, 5]);
    let server = WebServer::start(c.clone(), Script::default()).await;
    let (cw, session) = alone(&c, &server).await;

    read_everything(&session, &cw, 100_000).await;
    let stats = session.stats();
    let total = c.data.len() as u64;
    assert_eq!(seed0(&stats).state, WebSeedState::Active);
    assert!(seed0(&stats).downloaded >= total, "{stats:?}");
    assert!(stats.downloaded >= total);
    assert_eq!((stats.peers, stats.hash_failures, stats.banned), (0, 0, 0));
    let seen = server.seen();
    assert_eq!(seen.count(206), seen.requests.len(), "{:?}", seen.requests);
    assert!(
        seen.requests
            .iter()
            .all(|(path, ..)| path.starts_with("/fake/file")),
        "BEP 19 multi-file layout: {:?}",
        seen.requests
    );
    // Never more requests at once than allowed, and keep-alive: connections are used again.
    // (Not "connections <= max_requests": hyper's pool may open a connection for a request
    // just as another connection turns idle, and then keeps both.)
    assert!(seen.most_in_flight <= quick().max_requests, "{seen:?}");
    assert!(seen.requests.len() > seen.connections, "{seen:?}");
    stop(session).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_the_web_seed_lacks_comes_from_elsewhere_and_the_rest_from_it() {
    let c = two_files();
    let script = Script {
        missing: vec![0],
        ..Script::default()
    };
    let server = WebServer::start(c.clone(), script).await;
    let (cw, session) = alone(&c, &server).await;

    // Pieces wholly inside file 1 come from the web seed alone.
    let h = session.open_reader(1);
    check_read(&session, &cw, h, 1, 200_000, 100_000).await;
    session.close_reader(h);
    let reads = spawn_read_everything(&session, &cw, 64 * 1024);
    let stats = eventually(&session, "the 404 noted", |s| seed0(s).missing_files == 1).await;
    assert_eq!(seed0(&stats).state, WebSeedState::Active);
    let _honest = rest_from_a_peer_on_the_same_ip(&session, &c).await;
    within("reads", reads).await.expect("reads");
    let stats = session.stats();
    assert_eq!(seed0(&stats).state, WebSeedState::Active);
    assert_eq!(seed0(&stats).missing_files, 1);
    assert!(seed0(&stats).downloaded >= 100_000);
    assert!(server.seen().count(404) >= 1);
    stop(session).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_server_is_asked_again_after_its_retry_after() {
    let c = two_files();
    let script = Script {
        busy: true,
        ..Script::default()
    };
    let server = WebServer::start(c.clone(), script).await;
    let (cw, session) = alone(&c, &server).await;

    let reads = spawn_read_everything(&session, &cw, 64 * 1024);
    eventually(&session, "backing off after a 503", |s| {
        matches!(&seed0(s).state, WebSeedState::BackingOff { reason, .. } if reason.contains("503"))
    })
    .await;
    server.set(|s| s.busy = false);
    within("reads", reads).await.expect("reads");
    assert_eq!(seed0(&session.stats()).state, WebSeedState::Active);
    let seen = server.seen();
    assert!(seen.count(503) >= 1 && seen.count(206) >= 1, "{seen:?}");
    stop(session).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_cut_short_is_asked_again() {
    let c = two_files();
    let script = Script {
        cut_next: true,
        ..Script::default()
    };
    let server = WebServer::start(c.clone(), script).await;
    let (cw, session) = alone(&c, &server).await;

    read_everything(&session, &cw, 64 * 1024).await;
    let stats = session.stats();
    assert_eq!(seed0(&stats).state, WebSeedState::Active);
    assert_eq!(stats.hash_failures, 0, "a partial block is never used");
    // The cut answer's last byte never arrived: a later request asked for it again.
    let seen = server.seen();
    let (path, range) = (&seen.requests[0].0, seen.requests[0].1.as_deref());
    let span = |r: Option<&str>| -> (u64, u64) {
        let (a, b) = r
            .unwrap()
            .strip_prefix("bytes=")
            .unwrap()
            .split_once('-')
            .unwrap();
        (a.parse().unwrap(), b.parse().unwrap())
    };
    let last = span(range).1;
    let again = (seen.requests[1..].iter())
        .filter(|r| &r.0 == path)
        .any(|r| (span(r.1.as_deref()).0..=span(r.1.as_deref()).1).contains(&last));
    assert!(again, "{seen:?}");
    stop(session).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_are_followed_to_the_data() {
    let c = two_files();
    let target = WebServer::start(c.clone(), Script::default()).await;
    let script = Script {
        redirect_to: Some(target.addr),
        ..Script::default()
    };
    let bouncer = WebServer::start(c.clone(), script).await;
    let (cw, session) = alone(&c, &bouncer).await;

    read_everything(&session, &cw, 64 * 1024).await;
    assert_eq!(seed0(&session.stats()).state, WebSeedState::Active);
    let (b, t) = (bouncer.seen(), target.seen());
    assert_eq!(b.count(302), b.requests.len());
    assert_eq!(
        t.count(206),
        b.requests.len(),
        "each range reached the target"
    );
    assert!(t.bytes >= c.data.len() as u64);
    stop(session).await;
}

/// A server that keeps answering wrongly is dropped after a few tries (`health::MAX_STRIKES`);
/// one that ignores ranges at once. The rest comes from a peer on the server's IP.
async fn dropped_then_peer(script: Script, why: &str, also_loop: bool) {
    let c = two_files();
    let server = WebServer::start(c.clone(), script).await;
    if also_loop {
        let me = server.addr;
        server.set(|s| s.redirect_to = Some(me));
    }
    let (cw, session) = alone(&c, &server).await;

    let reads = spawn_read_everything(&session, &cw, 64 * 1024);
    eventually(&session, why, |s| dropped_for(s, why)).await;
    let honest = rest_from_a_peer_on_the_same_ip(&session, &c).await;
    within("reads", reads).await.expect("reads");
    let stats = session.stats();
    assert_eq!(stats.banned, 0, "no peer pays for the server");
    assert!(!banned(&session, honest.ip()));
    assert_eq!(stats.peers, 1);
    let after = server.seen().requests.len();
    read_everything(&session, &cw, 200_000).await;
    assert_eq!(
        server.seen().requests.len(),
        after,
        "a dropped seed is not asked"
    );
    stop(session).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_longer_body_than_asked_drops_the_web_seed() {
    let script = Script {
        too_long: true,
        ..Script::default()
    };
    dropped_then_peer(script, "longer than", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_ignoring_ranges_is_dropped() {
    let script = Script {
        ignore_range: true,
        ..Script::default()
    };
    dropped_then_peer(script, "ignores byte ranges", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_loop_drops_the_web_seed() {
    dropped_then_peer(Script::default(), "redirects", true).await;
}

/// The web seed serves ten bad bytes inside piece 3 and is its only source, so the failed
/// piece has one sender to blame: the web seed is dropped, not the IP it shares with an
/// honest peer, which then serves the piece.
#[tokio::test(flavor = "multi_thread")]
async fn a_web_seed_serving_a_corrupt_range_is_dropped_and_the_piece_comes_from_a_peer() {
    let c = two_files();
    let script = Script {
        corrupt: Some(100_000..100_010),
        ..Script::default()
    };
    let server = WebServer::start(c.clone(), script).await;
    let (cw, session) = alone(&c, &server).await;

    let reads = spawn_read_everything(&session, &cw, 64 * 1024);
    let stats = eventually(&session, "the liar dropped", |s| dropped_for(s, "SHA1")).await;
    assert!(stats.hash_failures >= 1);
    let honest = rest_from_a_peer_on_the_same_ip(&session, &c).await;
    within("reads", reads).await.expect("reads");
    let stats = session.stats();
    assert_eq!(stats.banned, 0);
    assert!(
        !banned(&session, honest.ip()),
        "the peer on the server's IP"
    );
    assert_eq!(stats.peers, 1);
    assert!(dropped_for(&stats, "SHA1"));
    stop(session).await;
}

/// The server sends headers, then nothing, and its read timeout is longer than the hang
/// detector: the read waiting on those blocks ends only because they were asked of a peer too
/// once the web seed was late with them.
#[tokio::test(flavor = "multi_thread")]
async fn blocks_a_read_waits_on_are_asked_of_a_peer_when_the_web_seed_is_late() {
    let c = two_files();
    let script = Script {
        stall: true,
        ..Script::default()
    };
    let server = WebServer::start(c.clone(), script).await;
    let cw = seeded(&c, &[server.url()]);
    let patient = WebSeedConfig {
        read_timeout: 2 * HANG,
        ..quick()
    };
    let session = start_web(&cw, &[], patient).await;

    let (s, cr) = (session.clone(), cw.clone());
    let read = tokio::spawn(async move {
        let h = s.open_reader(0);
        check_read(&s, &cr, h, 0, 0, 64 * 1024).await;
    });
    within("a request", async {
        while server.seen().requests.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let _honest = rest_from_a_peer_on_the_same_ip(&session, &c).await;
    within("the read", read).await.expect("read");
    let stats = session.stats();
    assert!(stats.rerequests >= 1, "{stats:?}");
    assert_eq!(seed0(&stats).state, WebSeedState::Active, "slow is not bad");
    stop(session).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_web_seeds_asks_none() {
    let c = two_files();
    let server = WebServer::start(c.clone(), Script::default()).await;
    let cw = seeded(&c, &[server.url()]);
    let honest = FakePeer::start(ip(2), c.clone(), Behavior::Honest).await;
    let off = WebSeedConfig {
        enabled: false,
        ..quick()
    };
    let session = start_web(&cw, &[&honest], off).await;

    read_everything(&session, &cw, 100_000).await;
    assert!(session.stats().web_seeds.is_empty());
    assert!(server.seen().requests.is_empty());
    stop(session).await;
}
