//! The tokio side of [`crate::wire::conn`]: frames split and batched across reads, cancelled
//! reads, batched writes, and the handshake read on its own.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::wire::message::tests::random_message;
use crate::wire::{
    BlockRef, Handshake, Message, MessageReader, MessageWriter, WireError, read_handshake,
    write_handshake,
};

const MAX: u32 = 32 * 1024;

fn wire_of(msgs: &[Message]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for m in msgs {
        m.encode(&mut buf);
    }
    buf.to_vec()
}

fn sample() -> Vec<Message> {
    vec![
        Message::Bitfield(Bytes::from_static(&[0b1010_0000])),
        Message::Unchoke,
        Message::KeepAlive,
        Message::Have(9),
        Message::Piece {
            index: 1,
            begin: 0,
            data: Bytes::from(vec![7u8; 16 * 1024]),
        },
        Message::Request(BlockRef {
            index: 1,
            begin: 16384,
            length: 16384,
        }),
        Message::Extended {
            id: 0,
            payload: Bytes::from_static(b"de"),
        },
    ]
}

/// Hands out one byte per read, so every frame arrives split across reads.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(&b) = self.data.get(self.pos) {
            buf.put_slice(&[b]);
            self.pos += 1;
        }
        Poll::Ready(Ok(()))
    }
}

/// Records each `poll_write` call as one chunk.
#[derive(Default)]
struct Writes(Vec<Vec<u8>>);

impl AsyncWrite for Writes {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.push(buf.to_vec());
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

async fn read_all<R: AsyncRead + Unpin>(reader: &mut MessageReader<R>) -> Vec<Message> {
    let mut got = Vec::new();
    loop {
        match reader.next().await {
            Ok(m) => got.push(m),
            Err(WireError::Closed) => return got,
            Err(e) => panic!("after {} messages: {e}", got.len()),
        }
    }
}

#[tokio::test]
async fn frames_split_across_one_byte_reads() {
    let msgs = sample();
    let mut reader = MessageReader::new(
        Trickle {
            data: wire_of(&msgs),
            pos: 0,
        },
        MAX,
    );
    assert_eq!(read_all(&mut reader).await, msgs);
}

#[tokio::test]
async fn many_frames_in_one_read() {
    let mut rng = StdRng::seed_from_u64(7);
    let msgs: Vec<Message> = (0..2_000).map(|_| random_message(&mut rng)).collect();
    let wire = wire_of(&msgs);
    let mut reader = MessageReader::new(&wire[..], MAX);
    assert_eq!(read_all(&mut reader).await, msgs);
}

#[tokio::test]
async fn eof_inside_a_frame_is_truncated() {
    let wire = wire_of(&[Message::Have(1), Message::Have(2)]);
    for cut in [wire.len() - 1, 9 + 3, 9 + 1] {
        let mut reader = MessageReader::new(&wire[..cut], MAX);
        assert_eq!(reader.next().await.unwrap(), Message::Have(1));
        assert!(
            matches!(reader.next().await, Err(WireError::Truncated)),
            "cut at {cut}"
        );
    }
    let mut reader = MessageReader::new(&[][..], MAX);
    assert!(matches!(reader.next().await, Err(WireError::Closed)));
}

#[tokio::test]
async fn too_large_frame_is_rejected_from_its_prefix() {
    // Only the length prefix is sent: the reader must not wait for 1 MiB of body.
    let (mut tx, rx) = tokio::io::duplex(64);
    tx.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
    let mut reader = MessageReader::new(rx, MAX);
    match reader.next().await {
        Err(WireError::FrameTooLarge { len, max }) => assert_eq!((len, max), (1 << 20, MAX)),
        other => panic!("{other:?}"),
    }
    // Exactly the limit is fine.
    let piece = Message::Piece {
        index: 0,
        begin: 0,
        data: Bytes::from(vec![1u8; 16384]),
    };
    let wire = wire_of(std::slice::from_ref(&piece));
    let mut reader = MessageReader::new(&wire[..], 16384 + 9);
    assert_eq!(reader.next().await.unwrap(), piece);
}

#[tokio::test]
async fn bad_message_length_surfaces_from_reader() {
    let wire = [0, 0, 0, 4, 4, 0, 0, 0];
    let mut reader = MessageReader::new(&wire[..], MAX);
    assert!(matches!(
        reader.next().await,
        Err(WireError::BadLength { id: 4, len: 4 })
    ));
}

#[tokio::test]
async fn cancelled_next_loses_no_bytes() {
    let msgs = sample();
    let wire = wire_of(&msgs);
    let (mut tx, rx) = tokio::io::duplex(64 * 1024);
    let mut reader = MessageReader::new(rx, MAX);
    let mut got = Vec::new();
    let mut cancelled = 0;
    for &b in &wire {
        tx.write_all(&[b]).await.unwrap();
        // `next()` is polled first, reads the byte into its buffer, and is dropped when the
        // always-ready branch wins, unless that byte completed a frame.
        tokio::select! {
            biased;
            m = reader.next() => got.push(m.unwrap()),
            () = std::future::ready(()) => cancelled += 1,
        }
    }
    assert_eq!(got, msgs);
    assert_eq!(cancelled, wire.len() - msgs.len());
    drop(tx);
    assert!(matches!(reader.next().await, Err(WireError::Closed)));
}

#[tokio::test]
async fn writer_to_reader_round_trip() {
    let mut rng = StdRng::seed_from_u64(11);
    let msgs: Vec<Message> = (0..500).map(|_| random_message(&mut rng)).collect();
    let (tx, rx) = tokio::io::duplex(4096);
    let sender = {
        let msgs = msgs.clone();
        tokio::spawn(async move {
            let mut writer = MessageWriter::new(tx);
            for chunk in msgs.chunks(7) {
                writer.send(&chunk[0]).await.unwrap();
                writer.send_many(&chunk[1..]).await.unwrap();
            }
        })
    };
    let mut reader = MessageReader::new(rx, MAX);
    assert_eq!(read_all(&mut reader).await, msgs);
    sender.await.unwrap();
}

#[tokio::test]
async fn send_many_is_one_write() {
    let reqs: Vec<Message> = (0..5)
        .map(|i| {
            Message::Request(BlockRef {
                index: 3,
                begin: i * 16384,
                length: 16384,
            })
        })
        .collect();
    let mut writer = MessageWriter::new(Writes::default());
    writer.send_many(&reqs).await.unwrap();
    let writes = writer.into_inner().0;
    assert_eq!(writes, vec![wire_of(&reqs)]);
}

#[tokio::test]
async fn send_piece_writes_the_encoded_bytes() {
    let piece = Message::Piece {
        index: 4,
        begin: 32768,
        data: Bytes::from(vec![3u8; 1000]),
    };
    let mut writer = MessageWriter::new(Writes::default());
    writer.send(&piece).await.unwrap();
    writer.send(&Message::Interested).await.unwrap();
    let written: Vec<u8> = writer.into_inner().0.concat();
    assert_eq!(written, wire_of(&[piece, Message::Interested]));
}

#[tokio::test]
async fn handshake_eof_is_closed_or_truncated() {
    let wire = Handshake::new([1; 20], [2; 20]).encode();
    assert!(matches!(
        read_handshake(&mut &[][..]).await,
        Err(WireError::Closed)
    ));
    assert!(matches!(
        read_handshake(&mut &wire[..67]).await,
        Err(WireError::Truncated)
    ));
    let mut trickle = Trickle {
        data: wire.to_vec(),
        pos: 0,
    };
    assert_eq!(read_handshake(&mut trickle).await.unwrap().peer_id, [2; 20]);
}

#[tokio::test]
async fn loopback_handshake_then_messages() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ours = Handshake::new([0x11; 20], [0x22; 20]);
    let theirs = Handshake::new([0x11; 20], [0x33; 20]);

    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let got = read_handshake(&mut sock).await.unwrap();
        write_handshake(&mut sock, &theirs).await.unwrap();
        // The client's first message came in the same write as its handshake.
        let mut reader = MessageReader::new(sock, MAX);
        (
            got,
            reader.next().await.unwrap(),
            reader.next().await.unwrap_err(),
        )
    });

    let mut sock = TcpStream::connect(addr).await.unwrap();
    let mut first = ours.encode().to_vec();
    first.extend(wire_of(&[Message::Interested]));
    sock.write_all(&first).await.unwrap();
    assert_eq!(read_handshake(&mut sock).await.unwrap(), theirs);
    drop(sock);

    let (got, msg, end) = server.await.unwrap();
    assert_eq!(got, ours);
    assert_eq!(msg, Message::Interested);
    assert!(matches!(end, WireError::Closed));
}

#[tokio::test]
async fn want_hint_is_told_what_the_frame_still_lacks() {
    use std::sync::{Arc, Mutex};
    let piece = Message::Piece {
        index: 3,
        begin: 0,
        data: Bytes::from(vec![9u8; 1000]),
    };
    let wire = wire_of(&[piece.clone(), Message::Interested]);
    let told = Arc::new(Mutex::new(Vec::new()));
    let (mut tx, rx) = tokio::io::duplex(64 * 1024);
    let log = told.clone();
    let mut reader =
        MessageReader::new(rx, MAX).with_want_hint(crate::wire::WantHint::new(move |n| {
            log.lock().unwrap().push(n)
        }));
    // A length prefix and 100 bytes of the piece's 1,009-byte frame, then the rest of it.
    let read = tokio::spawn(async move { (reader.next().await.unwrap(), reader) });
    tx.write_all(&wire[..104]).await.unwrap();
    // A guard against a hang, not a timing: the reader needs no more than its next poll.
    let asked = async {
        while told.lock().unwrap().last() != Some(&(4 + 1009 - 104)) {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), asked)
        .await
        .expect("never asked for the rest of the frame");
    tx.write_all(&wire[104..]).await.unwrap();
    let (got, mut reader) = read.await.unwrap();
    assert_eq!(got, piece);
    assert_eq!(reader.next().await.unwrap(), Message::Interested);
    let told = told.lock().unwrap().clone();
    // First a length prefix is all it knows it needs, then exactly the piece's remainder.
    assert_eq!(told[0], 4);
    assert!(told.contains(&(4 + 1009 - 104)), "{told:?}");
}
