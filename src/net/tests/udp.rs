//! The shared UDP port: datagrams told apart and routed to their protocol's channel, a reader
//! taking the socket (one datagram or a batch at a time) and handing it back, both families'
//! ports side by side, the socket's lifetime.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::net::udp::{Protocol, UTP_QUEUE, UdpPort, classify};

#[test]
fn datagrams_are_told_apart_by_their_first_byte() {
    assert_eq!(classify(b"d1:ad2:id20:"), Some(Protocol::Dht));
    let mut utp = [0u8; 20];
    for kind in 0..=4u8 {
        utp[0] = (kind << 4) | 1;
        assert_eq!(classify(&utp), Some(Protocol::Utp), "type {kind}");
    }
    utp[0] = (5 << 4) | 1;
    assert_eq!(classify(&utp), None, "no uTP type 5");
    utp[0] = 0x02;
    assert_eq!(classify(&utp), None, "no uTP version 2");
    assert_eq!(classify(&[0x41; 19]), None, "shorter than a uTP header");
    assert_eq!(classify(b""), None);
    assert_eq!(
        classify(b"l4:spame"),
        None,
        "bencoded, but not a dictionary"
    );
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("hang")
}

#[tokio::test]
async fn interleaved_dht_and_utp_datagrams_reach_their_own_channel() {
    let port = UdpPort::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let at = port.local_addr().unwrap();
    let dht = port.channel(Protocol::Dht);
    let utp = port.channel(Protocol::Utp);
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut sent_utp = Vec::new();
    for i in 0..20u8 {
        other
            .send_to(format!("d1:i{i}e").as_bytes(), at)
            .await
            .unwrap();
        let mut packet = vec![(i % 5) << 4 | 1; 20];
        packet.push(i);
        other.send_to(&packet, at).await.unwrap();
        sent_utp.push(packet);
        other.send_to(b"garbage", at).await.unwrap();
    }
    for i in 0..20u8 {
        let d = within(dht.recv()).await.unwrap();
        assert_eq!(&d.data[..], format!("d1:i{i}e").as_bytes());
        assert_eq!(d.from, other.local_addr().unwrap());
        let mut buf = [0u8; 64];
        let (n, from) = within(utp.recv_from(&mut buf)).await.unwrap();
        assert_eq!(&buf[..n], &sent_utp[i as usize][..]);
        assert_eq!(from, other.local_addr().unwrap());
    }

    // Both send from the port's own address.
    dht.send_to(b"d1:xe", other.local_addr().unwrap())
        .await
        .unwrap();
    let vectored = [io::IoSlice::new(b"\x21head"), io::IoSlice::new(b"tail")];
    within(poll_fn(|cx| {
        utp.poll_send_to_vectored(cx, &vectored, other.local_addr().unwrap())
    }))
    .await
    .unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = within(other.recv_from(&mut buf)).await.unwrap();
    assert_eq!((&buf[..n], from), (&b"d1:xe"[..], at));
    let (n, from) = within(other.recv_from(&mut buf)).await.unwrap();
    assert_eq!((&buf[..n], from), (&b"\x21headtail"[..], at));
}

/// While uTP's reader lives it takes the socket's datagrams and passes the DHT's on; once
/// it is dropped, the receive task serves every channel again.
#[tokio::test]
async fn a_reader_passes_the_others_datagrams_on_and_hands_the_socket_back() {
    let port = UdpPort::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let at = port.local_addr().unwrap();
    let dht = port.channel(Protocol::Dht);
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let utp_packet = |i: u8| {
        let mut p = vec![0x41; 20];
        p.push(i);
        p
    };
    let reader = port.reader(Protocol::Utp);
    for i in 0..10u8 {
        other.send_to(&utp_packet(i), at).await.unwrap();
        other
            .send_to(format!("d1:i{i}e").as_bytes(), at)
            .await
            .unwrap();
    }
    let mut buf = [0u8; 64];
    for i in 0..10u8 {
        let (n, from) = within(reader.recv_from(&mut buf)).await.unwrap();
        assert_eq!(
            (&buf[..n], from),
            (&utp_packet(i)[..], other.local_addr().unwrap())
        );
    }
    // The last DHT datagram came after the last uTP one: it waits in the socket until the
    // reader is polled again, or gone.
    for i in 0..9u8 {
        let d = within(dht.recv()).await.unwrap();
        assert_eq!(&d.data[..], format!("d1:i{i}e").as_bytes());
    }
    drop(reader);
    assert_eq!(&within(dht.recv()).await.unwrap().data[..], b"d1:i9e");

    let utp = port.channel(Protocol::Utp);
    other.send_to(b"d1:ze", at).await.unwrap();
    other.send_to(&utp_packet(99), at).await.unwrap();
    assert_eq!(&within(dht.recv()).await.unwrap().data[..], b"d1:ze");
    assert_eq!(
        &within(utp.recv()).await.unwrap().data[..],
        &utp_packet(99)[..]
    );
}

/// A reader's batches: its own datagrams in order, at most `max` a call, several per
/// call; the DHT's passed on; once the socket is empty it waits, and a datagram that
/// comes later wakes it.
#[tokio::test]
async fn a_reader_takes_its_datagrams_in_batches_and_passes_the_others_on() {
    let port = UdpPort::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let at = port.local_addr().unwrap();
    let dht = port.channel(Protocol::Dht);
    let reader = port.reader(Protocol::Utp);
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let utp_packet = |i: u8| {
        let mut p = vec![0x41; 20];
        p.push(i);
        p
    };
    for i in 0..50u8 {
        other.send_to(&utp_packet(i), at).await.unwrap();
        if i % 10 == 0 {
            other
                .send_to(format!("d1:i{i}e").as_bytes(), at)
                .await
                .unwrap();
        }
    }
    let mut got = Vec::new();
    let mut calls = 0;
    while got.len() < 50 {
        let n = within(poll_fn(|cx| {
            reader.poll_recv_batch(cx, 20, &mut |packet, from| {
                assert_eq!(from, other.local_addr().unwrap());
                got.push(packet.to_vec());
            })
        }))
        .await
        .unwrap();
        assert!((1..=20).contains(&n), "{n} handed");
        calls += 1;
    }
    assert_eq!(got, (0..50).map(utp_packet).collect::<Vec<_>>());
    assert!(calls < 50, "{calls} calls for 50 datagrams");
    for i in (0..50u8).step_by(10) {
        let d = within(dht.recv()).await.unwrap();
        assert_eq!(&d.data[..], format!("d1:i{i}e").as_bytes());
    }

    let later = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        other.send_to(&utp_packet(99), at).await.unwrap();
    });
    let mut last = Vec::new();
    within(poll_fn(|cx| {
        reader.poll_recv_batch(cx, 20, &mut |packet, _| last.push(packet.to_vec()))
    }))
    .await
    .unwrap();
    assert_eq!(last, vec![utp_packet(99)]);
    later.await.unwrap();
}

#[tokio::test]
async fn a_protocol_nobody_listens_to_does_not_block_the_other() {
    let port = UdpPort::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let at = port.local_addr().unwrap();
    let dht = port.channel(Protocol::Dht);
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..(UTP_QUEUE + 100) / 100 {
        other.send_to(&[0x41; 20], at).await.unwrap();
    }
    other.send_to(b"d1:ye", at).await.unwrap();
    assert_eq!(&within(dht.recv()).await.unwrap().data[..], b"d1:ye");
}

#[tokio::test]
async fn ipv4_and_ipv6_ports_of_one_number_live_side_by_side() {
    let v6 = UdpPort::bind("[::]:0".parse().unwrap()).await.unwrap();
    let port = v6.local_addr().unwrap().port();
    let v4 = UdpPort::bind(SocketAddr::from(([0, 0, 0, 0], port)))
        .await
        .expect("the IPv6 socket is IPv6-only");
    let (d6, d4) = (v6.channel(Protocol::Dht), v4.channel(Protocol::Dht));
    let other6 = UdpSocket::bind("[::1]:0").await.unwrap();
    let other4 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    other6.send_to(b"d1:6e", ("::1", port)).await.unwrap();
    other4.send_to(b"d1:4e", ("127.0.0.1", port)).await.unwrap();
    let got6 = within(d6.recv()).await.unwrap();
    assert_eq!(
        (&got6.data[..], got6.from),
        (&b"d1:6e"[..], other6.local_addr().unwrap())
    );
    let got4 = within(d4.recv()).await.unwrap();
    assert_eq!(
        (&got4.data[..], got4.from),
        (&b"d1:4e"[..], other4.local_addr().unwrap())
    );
}

#[tokio::test]
async fn the_socket_closes_with_the_last_handle() {
    let port = UdpPort::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let at = port.local_addr().unwrap();
    let channel = port.channel(Protocol::Utp);
    drop(port);
    assert!(UdpSocket::bind(at).await.is_err(), "the channel keeps it");
    drop(channel);
    within(async {
        while UdpSocket::bind(at).await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}
