//! [`exchange_handshakes`] on in-memory streams: both roles, a peer for another torrent, a
//! silent peer (on a paused clock), and peers that hang up or speak another protocol.

use std::mem::discriminant;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
use tokio::time::Instant;

use crate::wire::{Handshake, HandshakeError, Role, WireError, exchange_handshakes};

const WITHIN: Duration = Duration::from_secs(10);
const TORRENT: [u8; 20] = [0x11; 20];

fn handshake(info_hash: [u8; 20], peer_id: u8) -> Handshake {
    Handshake::new(info_hash, [peer_id; 20])
}

/// Everything the other end wrote, once `ours` is dropped.
async fn rest_of(mut theirs: DuplexStream) -> Vec<u8> {
    let mut got = Vec::new();
    theirs.read_to_end(&mut got).await.unwrap();
    got
}

#[tokio::test]
async fn initiator_and_responder_learn_each_other() {
    let (mut a, mut b) = duplex(1024);
    let (alice, bob) = (handshake(TORRENT, 0xa), handshake(TORRENT, 0xb));
    let (got_a, got_b) = tokio::join!(
        exchange_handshakes(&mut a, &alice, Role::Initiator, WITHIN),
        exchange_handshakes(&mut b, &bob, Role::Responder, WITHIN),
    );
    assert_eq!(got_a.unwrap(), bob);
    assert_eq!(got_b.unwrap(), alice);
}

#[tokio::test]
async fn a_message_sent_with_the_handshake_stays_in_the_stream() {
    let (mut ours, mut theirs) = duplex(1024);
    let mut first = handshake(TORRENT, 2).encode().to_vec();
    first.extend_from_slice(b"\0\0\0\x01\x02");
    theirs.write_all(&first).await.unwrap();
    let got = exchange_handshakes(&mut ours, &handshake(TORRENT, 1), Role::Responder, WITHIN)
        .await
        .unwrap();
    assert_eq!(got.peer_id, [2; 20]);
    let mut next = [0; 5];
    ours.read_exact(&mut next).await.unwrap();
    assert_eq!(&next, b"\0\0\0\x01\x02");
}

#[tokio::test]
async fn a_responder_does_not_answer_for_another_torrent() {
    let (mut ours, mut theirs) = duplex(1024);
    theirs
        .write_all(&handshake([0x22; 20], 2).encode())
        .await
        .unwrap();
    let got = exchange_handshakes(&mut ours, &handshake(TORRENT, 1), Role::Responder, WITHIN).await;
    assert!(matches!(got, Err(HandshakeError::WrongTorrent)), "{got:?}");
    drop(ours);
    assert_eq!(rest_of(theirs).await, b"", "the responder wrote nothing");
}

#[tokio::test]
async fn an_initiator_refuses_an_answer_for_another_torrent() {
    let (mut ours, mut theirs) = duplex(1024);
    let peer = async {
        let mut got = [0; Handshake::LEN];
        theirs.read_exact(&mut got).await.unwrap();
        theirs
            .write_all(&handshake([0x22; 20], 2).encode())
            .await
            .unwrap();
        got
    };
    let me = handshake(TORRENT, 1);
    let (got, sent) = tokio::join!(
        exchange_handshakes(&mut ours, &me, Role::Initiator, WITHIN),
        peer,
    );
    assert!(matches!(got, Err(HandshakeError::WrongTorrent)), "{got:?}");
    assert_eq!(sent, me.encode());
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_times_out_in_either_role() {
    for role in [Role::Initiator, Role::Responder] {
        // The other end stays open and says nothing.
        let (mut ours, _theirs) = duplex(1024);
        let start = Instant::now();
        let got = exchange_handshakes(&mut ours, &handshake(TORRENT, 1), role, WITHIN).await;
        assert!(
            matches!(got, Err(HandshakeError::Timeout)),
            "{role:?}: {got:?}"
        );
        assert_eq!(start.elapsed(), WITHIN, "{role:?}");
    }
}

#[tokio::test]
async fn a_peer_that_hangs_up_or_speaks_another_protocol_is_a_wire_error() {
    let whole = handshake(TORRENT, 2).encode();
    let mut http = [0u8; Handshake::LEN];
    http[..16].copy_from_slice(b"GET / HTTP/1.1\r\n");
    let cases = [
        (&[][..], WireError::Closed),
        (&whole[..30], WireError::Truncated),
        (&http, WireError::BadHandshake),
    ];
    for (sent, expected) in cases {
        let (mut ours, mut theirs) = duplex(1024);
        theirs.write_all(sent).await.unwrap();
        drop(theirs);
        let got =
            exchange_handshakes(&mut ours, &handshake(TORRENT, 1), Role::Responder, WITHIN).await;
        assert!(
            matches!(&got, Err(HandshakeError::Wire(e)) if discriminant(e) == discriminant(&expected)),
            "after {} bytes: {got:?}",
            sent.len()
        );
    }
}
