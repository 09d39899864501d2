//! The discovery task against a stand-in for the other clients on the network: a UDP socket
//! on loopback that receives what the task announces (the task sends to it instead of the
//! multicast group) and sends it announces as other clients would. The clock is paused, so
//! "at once" and "3 s later" are exact (the loopback datagrams arrive before the clock may
//! move on).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::message::{self, Announce, HOST_V4};
use super::policy::FIRST_DELAYS;
use super::socket::Channel;
use super::*;

fn h(b: u8) -> InfoHash {
    InfoHash([b; 20])
}

/// Hang detector only.
const WAIT: Duration = Duration::from_secs(3600);

struct Net {
    /// The other clients.
    others: UdpSocket,
    /// Where the task's socket is.
    task: SocketAddr,
    lsd: Lsd,
}

impl Net {
    async fn start() -> Net {
        let others = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let channel =
            Channel::unicast("127.0.0.1:0".parse().unwrap(), others.local_addr().unwrap()).unwrap();
        let task = channel.socket.local_addr().unwrap();
        Net {
            others,
            task,
            lsd: Lsd::spawn(vec![channel]),
        }
    }

    /// The next announce the task sends.
    async fn next_announce(&self) -> Announce {
        let mut buf = [0u8; 2048];
        let (n, _) = tokio::time::timeout(WAIT, self.others.recv_from(&mut buf))
            .await
            .expect("an announce")
            .unwrap();
        message::parse(&buf[..n]).expect("a valid announce")
    }

    async fn send(&self, datagram: &[u8]) {
        self.others.send_to(datagram, self.task).await.unwrap();
    }

    /// Another client's announce: `port`, `hashes`, its own cookie.
    async fn announce(&self, port: u16, hashes: &[InfoHash]) {
        for d in message::encode(HOST_V4, port, "0ther", hashes) {
            self.send(&d).await;
        }
    }
}

fn from_others(port: u16) -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], port))]
}

async fn next_peers(rx: &mut mpsc::Receiver<Vec<SocketAddr>>) -> Vec<SocketAddr> {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("peers")
        .expect("the channel open")
}

#[tokio::test(start_paused = true)]
async fn announces_at_once_and_answers_a_newcomer_at_once() {
    let net = Net::start().await;
    let t0 = Instant::now();
    let (tx, mut rx) = mpsc::channel(8);
    let _reg = net.lsd.register(h(1), 7001, tx);

    let first = net.next_announce().await;
    assert_eq!((first.port, first.info_hashes), (7001, vec![h(1)]));
    assert!(first.cookie.is_some(), "our announces carry a cookie");
    assert_eq!(t0.elapsed(), Duration::ZERO);

    net.announce(7002, &[h(1)]).await;
    assert_eq!(next_peers(&mut rx).await, from_others(7002));
    let answer = net.next_announce().await;
    assert_eq!(answer.info_hashes, [h(1)]);
    assert!(
        t0.elapsed() < FIRST_DELAYS[0],
        "the answer, not the planned resend"
    );
    // Then the planned resend, on time.
    let resend = net.next_announce().await;
    assert_eq!(resend.info_hashes, [h(1)]);
    assert_eq!(t0.elapsed(), FIRST_DELAYS[0]);
}

#[tokio::test(start_paused = true)]
async fn ignores_its_own_announces_garbage_and_repeats() {
    let net = Net::start().await;
    let (tx, mut rx) = mpsc::channel(8);
    let _reg = net.lsd.register(h(1), 7001, tx);
    let mut buf = [0u8; 2048];
    let (n, _) = net.others.recv_from(&mut buf).await.unwrap();
    let ours = buf[..n].to_vec();

    net.send(&ours).await; // multicast loops our own back
    net.send(b"GET / HTTP/1.1\r\n\r\n").await;
    net.send(&[0xff; 3000]).await;
    let wrong_port = "BT-SEARCH * HTTP/1.1\r\nPort: 0\r\n\
        Infohash: 0101010101010101010101010101010101010101\r\n\r\n";
    net.send(wrong_port.as_bytes()).await;
    net.announce(7009, &[h(9)]).await; // a torrent we do not serve
    net.announce(7003, &[h(1)]).await;
    // The channel keeps order: nothing before 7003 was passed on.
    assert_eq!(next_peers(&mut rx).await, from_others(7003));

    net.announce(7003, &[h(1)]).await; // its resend: nothing new
    net.announce(7004, &[h(1)]).await;
    assert_eq!(next_peers(&mut rx).await, from_others(7004));
}

#[tokio::test(start_paused = true)]
async fn one_task_serves_several_torrents() {
    let net = Net::start().await;
    let (tx1, mut rx1) = mpsc::channel(8);
    let (tx2, mut rx2) = mpsc::channel(8);
    let _reg1 = net.lsd.register(h(1), 7001, tx1);
    let _reg2 = net.lsd.register(h(2), 7001, tx2);
    let mut announced = Vec::new();
    while announced.len() < 2 {
        announced.extend(net.next_announce().await.info_hashes);
    }
    announced.sort();
    assert_eq!(announced, [h(1), h(2)]);

    net.announce(7005, &[h(2), h(1)]).await; // one datagram, both torrents
    assert_eq!(next_peers(&mut rx1).await, from_others(7005));
    assert_eq!(next_peers(&mut rx2).await, from_others(7005));
    net.announce(7006, &[h(2)]).await;
    net.announce(7007, &[h(1)]).await;
    assert_eq!(next_peers(&mut rx2).await, from_others(7006));
    assert_eq!(next_peers(&mut rx1).await, from_others(7007));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_registration_is_neither_announced_nor_fed() {
    let net = Net::start().await;
    let (tx, mut rx) = mpsc::channel(8);
    let reg = net.lsd.register(h(1), 7001, tx);
    net.next_announce().await;
    drop(reg);
    // The task let go of the torrent's sender.
    assert_eq!(tokio::time::timeout(WAIT, rx.recv()).await, Ok(None));
    net.announce(7002, &[h(1)]).await;
    let mut buf = [0u8; 2048];
    let quiet = tokio::time::timeout(Duration::from_secs(3600), net.others.recv_from(&mut buf));
    assert!(quiet.await.is_err(), "announced after it was dropped");
}

#[tokio::test(start_paused = true)]
async fn a_session_registration_ends_with_its_shutdown() {
    let net = Net::start().await;
    let (tx, mut rx) = mpsc::channel(8);
    let (shutdown, stopped) = watch::channel(false);
    net.lsd.spawn_announce(h(1), 7001, tx, stopped);
    net.next_announce().await;
    net.announce(7002, &[h(1)]).await;
    assert_eq!(next_peers(&mut rx).await, from_others(7002));
    shutdown.send_replace(true);
    assert_eq!(tokio::time::timeout(WAIT, rx.recv()).await, Ok(None));
}
