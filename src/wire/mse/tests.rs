//! Both sides of the handshake against each other over in-memory pipes: each method, pad
//! lengths from 0 to 512, an initial payload, and the ways a peer goes wrong (garbage,
//! hanging up midway, the wrong torrent, silence).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::time::Instant;

use super::handshake::{self, Pads};
use super::*;
use crate::wire::{Handshake, read_handshake};

const SKEY: [u8; 20] = [0x5a; 20];
const WITHIN: Duration = Duration::from_secs(10);

fn serve(skey: [u8; 20], sel: Selection) -> impl FnOnce(&[u8; 20]) -> Option<Serving> {
    move |h| {
        (*h == req2(&skey)).then_some(Serving {
            skey,
            selection: sel,
        })
    }
}

fn prefer(m: Method) -> Selection {
    Selection {
        allowed: Methods::BOTH,
        prefer: m,
    }
}

/// A stream that copies every byte written through it into `log`.
struct Tap<S> {
    inner: S,
    log: Arc<Mutex<Vec<u8>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.log.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn deadline() -> Instant {
    Instant::now() + WITHIN
}

/// Runs both sides over a pipe of `capacity` bytes; the initiator's writes are logged.
async fn pair(
    provide: Methods,
    sel: Selection,
    ia: &[u8],
    pads: (Pads, Pads),
    capacity: usize,
) -> (
    Result<MseStream<Tap<DuplexStream>>, MseError>,
    Result<Accepted<DuplexStream>, MseError>,
    Arc<Mutex<Vec<u8>>>,
) {
    let (a, b) = tokio::io::duplex(capacity);
    let log = Arc::new(Mutex::new(Vec::new()));
    let a = Tap {
        inner: a,
        log: log.clone(),
    };
    let (x, y) = tokio::join!(
        handshake::initiate(a, &SKEY, provide, ia, pads.0, deadline()),
        handshake::accept(b, &[], serve(SKEY, sel), pads.1, deadline()),
    );
    (x, y, log)
}

fn pads(key: usize, crypto: usize) -> Pads {
    Pads { key, crypto }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A megabyte each way at once, through the split halves, over a small pipe (so writes are
/// partial and reads fragmented).
async fn exchange_both_ways<A, B>(a: MseStream<A>, b: MseStream<B>)
where
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let data_ab: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let data_ba: Vec<u8> = (0..999_983u32).map(|i| (i * 13 + 5) as u8).collect();
    let (mut ar, mut aw) = a.split_with(tokio::io::split);
    let (mut br, mut bw) = b.split_with(tokio::io::split);
    let (ab, ba) = (data_ab.clone(), data_ba.clone());
    let send_a = tokio::spawn(async move {
        aw.write_all(&ab).await.unwrap();
        aw.flush().await.unwrap();
        aw
    });
    let send_b = tokio::spawn(async move {
        for chunk in ba.chunks(1000) {
            bw.write_all(chunk).await.unwrap();
        }
        bw.flush().await.unwrap();
        bw
    });
    let mut got_b = vec![0u8; data_ab.len()];
    let mut got_a = vec![0u8; data_ba.len()];
    let (r1, r2) = tokio::join!(br.read_exact(&mut got_b), ar.read_exact(&mut got_a));
    r1.unwrap();
    r2.unwrap();
    send_a.await.unwrap();
    send_b.await.unwrap();
    assert!(got_b == data_ab, "initiator -> receiver bytes differ");
    assert!(got_a == data_ba, "receiver -> initiator bytes differ");
}

#[tokio::test]
async fn rc4_carries_bytes_both_ways_and_hides_them() {
    let (a, b, log) = pair(
        Methods::BOTH,
        prefer(Method::Rc4),
        &[],
        (Pads::random(), Pads::random()),
        1024,
    )
    .await;
    let (mut a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.method(), Method::Rc4);
    assert_eq!(b.stream.method(), Method::Rc4);
    assert_eq!(b.skey, SKEY);
    // What we write is not on the wire as written.
    let marker = b"\x13BitTorrent protocol and some more plain words";
    a.write_all(marker).await.unwrap();
    a.flush().await.unwrap();
    let mut b = b.stream;
    let mut got = vec![0u8; marker.len()];
    b.read_exact(&mut got).await.unwrap();
    assert_eq!(&got[..], marker);
    assert!(!contains(&log.lock().unwrap(), b"BitTorrent protocol"));
    exchange_both_ways(a, b).await;
}

#[tokio::test]
async fn plaintext_after_the_handshake_when_chosen() {
    let (a, b, log) = pair(
        Methods::BOTH,
        prefer(Method::Plaintext),
        &[],
        (Pads::random(), Pads::random()),
        1024,
    )
    .await;
    let (mut a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.method(), Method::Plaintext);
    let marker = b"\x13BitTorrent protocol";
    a.write_all(marker).await.unwrap();
    a.flush().await.unwrap();
    let mut b = b.stream;
    let mut got = vec![0u8; marker.len()];
    b.read_exact(&mut got).await.unwrap();
    assert_eq!(&got[..], marker);
    assert!(
        contains(&log.lock().unwrap(), marker),
        "plaintext on the wire"
    );
    exchange_both_ways(a, b).await;
}

#[tokio::test]
async fn a_receiver_that_requires_rc4_refuses_plaintext_only() {
    let only_rc4 = Selection {
        allowed: Methods::RC4,
        prefer: Method::Rc4,
    };
    let (a, b, _) = pair(
        Methods(0x01),
        only_rc4,
        &[],
        (Pads::random(), Pads::random()),
        4096,
    )
    .await;
    assert!(
        matches!(b, Err(MseError::NoCommonMethod { provided: 1 })),
        "{:?}",
        b.err()
    );
    assert!(a.is_err());
    // Offered only RC4, a receiver preferring plaintext still agrees on RC4.
    let (a, b, _) = pair(
        Methods::RC4,
        prefer(Method::Plaintext),
        &[],
        (Pads::random(), Pads::random()),
        4096,
    )
    .await;
    assert_eq!(a.unwrap().method(), Method::Rc4);
    assert_eq!(b.unwrap().stream.method(), Method::Rc4);
}

#[tokio::test]
async fn every_pad_length_from_none_to_512() {
    for (ka, ca, kb, cb) in [
        (0, 0, 0, 0),
        (512, 512, 512, 512),
        (0, 512, 512, 0),
        (1, 7, 300, 511),
        (511, 1, 19, 20),
    ] {
        for sel in [prefer(Method::Rc4), prefer(Method::Plaintext)] {
            let (a, b, _) = pair(
                Methods::BOTH,
                sel,
                b"ia",
                (pads(ka, ca), pads(kb, cb)),
                64 * 1024,
            )
            .await;
            let (mut a, b) = (a.unwrap(), b.unwrap());
            let mut b = b.stream;
            let mut ia = [0u8; 2];
            b.read_exact(&mut ia).await.unwrap();
            assert_eq!(&ia, b"ia");
            b.write_all(b"pong").await.unwrap();
            b.flush().await.unwrap();
            let mut pong = [0u8; 4];
            a.read_exact(&mut pong).await.unwrap();
            assert_eq!(&pong, b"pong", "pads {ka} {ca} {kb} {cb}");
        }
    }
}

#[tokio::test]
async fn the_initial_payload_carries_the_bittorrent_handshake() {
    let ours = Handshake::new(SKEY, *b"-Bf0001-initiator000");
    let mut ia = ours.encode().to_vec();
    ia.extend_from_slice(b"\0\0\0\x01\x02"); // interested, right behind it
    for sel in [prefer(Method::Rc4), prefer(Method::Plaintext)] {
        let (a, b, log) = pair(
            Methods::BOTH,
            sel,
            &ia,
            (Pads::random(), Pads::random()),
            64 * 1024,
        )
        .await;
        let (mut a, b) = (a.unwrap(), b.unwrap());
        // The initiator writes more at once; it must come after the initial payload.
        a.write_all(b"\0\0\0\0").await.unwrap();
        a.flush().await.unwrap();
        let mut b = b.stream;
        let theirs = read_handshake(&mut b).await.unwrap();
        assert_eq!(theirs, ours);
        let mut rest = [0u8; 9];
        b.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"\0\0\0\x01\x02\0\0\0\0");
        // Even with plaintext chosen, the initial payload went encrypted.
        assert!(!contains(&log.lock().unwrap(), b"BitTorrent protocol"));
    }
}

/// A peer that sends endless random bytes and swallows whatever it is sent; counts what it
/// sent.
struct Garbage {
    sent: usize,
}

impl AsyncRead for Garbage {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = buf.remaining().min(100);
        let bytes: Vec<u8> = (0..n).map(|_| rand::random()).collect();
        buf.put_slice(&bytes);
        self.sent += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Garbage {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn garbage_fails_within_the_sync_window_on_both_sides() {
    let mut g = Garbage { sent: 0 };
    let r = handshake::accept(
        &mut g,
        &[],
        serve(SKEY, prefer(Method::Rc4)),
        Pads::random(),
        deadline(),
    )
    .await;
    assert!(
        matches!(r, Err(MseError::NotFound { stage: Stage::Sync })),
        "{:?}",
        r.err()
    );
    assert!(g.sent <= 96 + 512 + 20, "read {} bytes", g.sent);

    let mut g = Garbage { sent: 0 };
    let r = handshake::initiate(
        &mut g,
        &SKEY,
        Methods::BOTH,
        &[],
        Pads::random(),
        deadline(),
    )
    .await;
    assert!(
        matches!(r, Err(MseError::NotFound { stage: Stage::Sync })),
        "{:?}",
        r.err()
    );
    assert!(g.sent <= 96 + 512 + 8, "read {} bytes", g.sent);
}

/// The bytes an honest peer sends, then the end of the stream after `cut` of them.
struct CutShort {
    inner: DuplexStream,
    left: usize,
}

impl AsyncRead for CutShort {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.left == 0 {
            return Poll::Ready(Ok(()));
        }
        let mut tmp = vec![0u8; buf.remaining().min(self.left)];
        let mut rb = ReadBuf::new(&mut tmp);
        let r = Pin::new(&mut self.inner).poll_read(cx, &mut rb);
        if let Poll::Ready(Ok(())) = r {
            let n = rb.filled().len();
            buf.put_slice(rb.filled());
            self.left -= n;
        }
        r
    }
}

impl AsyncWrite for CutShort {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, b)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_peer_hanging_up_anywhere_in_the_handshake_is_an_error() {
    let pad = pads(10, 10);
    // The initiator's message runs 96 + 10 + 40 + 14 + 10 + 2 = 172 bytes; the receiver's
    // 96 + 10 + 14 + 10 = 130.
    for cut in [0, 1, 95, 96, 100, 106, 110, 126, 145, 150, 160, 171] {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let b = CutShort {
            inner: b,
            left: cut,
        };
        let (_x, y) = tokio::join!(
            handshake::initiate(a, &SKEY, Methods::BOTH, &[], pad, deadline()),
            handshake::accept(b, &[], serve(SKEY, prefer(Method::Rc4)), pad, deadline()),
        );
        assert!(
            matches!(y, Err(MseError::Closed { .. })),
            "receiver cut at {cut}: {:?}",
            y.err()
        );
    }
    for cut in [0, 50, 96, 105, 106, 110, 119, 125, 129] {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let a = CutShort {
            inner: a,
            left: cut,
        };
        let (x, _y) = tokio::join!(
            handshake::initiate(a, &SKEY, Methods::BOTH, &[], pad, deadline()),
            handshake::accept(b, &[], serve(SKEY, prefer(Method::Rc4)), pad, deadline()),
        );
        let e = x.err().unwrap();
        assert!(
            matches!(e, MseError::Closed { .. }),
            "initiator cut at {cut}: {e:?}"
        );
        assert_eq!(e.peer_does_not_speak_mse(), cut < 96, "cut at {cut}");
    }
}

#[tokio::test]
async fn the_wrong_torrent_is_refused() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (x, y) = tokio::join!(
        handshake::initiate(a, &[1; 20], Methods::BOTH, &[], Pads::random(), deadline()),
        async move {
            // Dropped with the result: the initiator sees the connection close.
            handshake::accept(
                b,
                &[],
                serve(SKEY, prefer(Method::Rc4)),
                Pads::random(),
                deadline(),
            )
            .await
            .map(|_| ())
        },
    );
    assert!(matches!(y, Err(MseError::UnknownTorrent)), "{y:?}");
    assert!(x.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_silent_or_stalling_peer_times_out() {
    // Nothing at all.
    let (a, _b) = tokio::io::duplex(64 * 1024);
    let r = initiate(a, &SKEY, Methods::BOTH, &[], WITHIN).await;
    assert!(
        matches!(
            r,
            Err(MseError::Timeout {
                stage: Stage::PublicKey
            })
        ),
        "{:?}",
        r.err()
    );
    // A public key, then silence.
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    b.write_all(&[7u8; 96]).await.unwrap();
    let started = Instant::now();
    let r = initiate(a, &SKEY, Methods::BOTH, &[], WITHIN).await;
    assert!(
        matches!(r, Err(MseError::Timeout { stage: Stage::Sync })),
        "{:?}",
        r.err()
    );
    assert_eq!(Instant::now() - started, WITHIN);
    // The receiver: half a public key, then silence.
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    b.write_all(&[7u8; 50]).await.unwrap();
    let r = accept(a, &[1, 2, 3], serve(SKEY, prefer(Method::Rc4)), WITHIN).await;
    assert!(
        matches!(
            r,
            Err(MseError::Timeout {
                stage: Stage::PublicKey
            })
        ),
        "{:?}",
        r.err().map(|e| e.to_string())
    );
}

#[tokio::test]
async fn a_plaintext_only_peer_is_recognised() {
    // It reads what should be a BitTorrent handshake, finds none, and hangs up.
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let peer = tokio::spawn(async move {
        let r = read_handshake(&mut b).await;
        assert!(r.is_err());
    });
    let e = initiate(a, &SKEY, Methods::BOTH, &[], WITHIN)
        .await
        .err()
        .unwrap();
    peer.await.unwrap();
    assert!(e.peer_does_not_speak_mse(), "{e:?}");
}

#[tokio::test]
async fn the_receiver_uses_bytes_read_before_it() {
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let init = tokio::spawn(async move {
        let mut s = initiate(a, &SKEY, Methods::BOTH, b"hi", WITHIN)
            .await
            .unwrap();
        s.write_all(b" there").await.unwrap();
        s.flush().await.unwrap();
        s
    });
    let mut first = [0u8; 20];
    b.read_exact(&mut first).await.unwrap();
    let acc = accept(b, &first, serve(SKEY, prefer(Method::Rc4)), WITHIN)
        .await
        .unwrap();
    let mut s = acc.stream;
    let mut got = [0u8; 8];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hi there");
    init.await.unwrap();
}
