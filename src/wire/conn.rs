//! Peer messages over tokio streams: the handshake, a cancel-safe reader and a batching writer.
//!
//! Read the handshake with [`read_handshake`] on the raw stream *before* wrapping it in a
//! [`MessageReader`]: it reads exactly 68 bytes, so a first message sent in the same packet
//! stays in the stream for the reader.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::WireError;
use super::message::{Handshake, Message};

/// How much the reader asks the stream for when it has no frame length to go by.
const READ_CHUNK: usize = 8 * 1024;

/// Sends our handshake.
pub async fn write_handshake<W>(w: &mut W, handshake: &Handshake) -> Result<(), WireError>
where
    W: AsyncWrite + Unpin,
{
    w.write_all(&handshake.encode()).await?;
    w.flush().await?;
    Ok(())
}

/// Reads exactly one 68-byte handshake, never more.
///
/// [`WireError::Closed`] if the peer hangs up before sending anything (peers do this when they
/// do not serve our info-hash), [`WireError::Truncated`] if it hangs up midway. Not cancel-safe:
/// run it under a timeout that drops the connection.
pub async fn read_handshake<R>(r: &mut R) -> Result<Handshake, WireError>
where
    R: AsyncRead + Unpin,
{
    let mut buf = [0u8; Handshake::LEN];
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]).await? {
            0 if filled == 0 => return Err(WireError::Closed),
            0 => return Err(WireError::Truncated),
            n => filled += n,
        }
    }
    Handshake::decode(&buf)
}

/// Reads length-prefixed messages from a stream.
///
/// [`MessageReader::next`] is cancel-safe: bytes read so far live in the reader's own buffer,
/// and a frame is consumed only once it is whole, so dropping a `next()` future inside
/// `tokio::select!` loses nothing.
///
/// Decoded payloads are slices of the read buffer, so a `Piece`'s data keeps that buffer (a few
/// frames' worth) alive for as long as it is held; copy the data if it is kept for long.
#[derive(Debug)]
pub struct MessageReader<R> {
    inner: R,
    buf: BytesMut,
    max_frame: u32,
    /// Shared count of read-buffer bytes held, by every reader given it (see `with_gauge`).
    gauge: Option<Gauge>,
}

/// This reader's share of a shared byte count; taken out again when dropped.
#[derive(Debug)]
struct Gauge {
    total: Arc<AtomicUsize>,
    counted: usize,
}

impl Gauge {
    fn set(&mut self, now: usize) {
        if now >= self.counted {
            self.total.fetch_add(now - self.counted, Ordering::Relaxed);
        } else {
            self.total.fetch_sub(self.counted - now, Ordering::Relaxed);
        }
        self.counted = now;
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        self.set(0);
    }
}

impl<R: AsyncRead + Unpin> MessageReader<R> {
    /// `max_frame` bounds the length prefix (id byte included) a peer may send. It must cover
    /// a block (16 KiB + 9), the bitfield (piece count / 8 + 1), and BEP 10 messages, of which
    /// a `ut_metadata` data message is a bencoded header plus up to 16 KiB.
    pub fn new(inner: R, max_frame: u32) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(READ_CHUNK),
            max_frame,
            gauge: None,
        }
    }

    /// Keeps `gauge` up to date with the capacity of this reader's buffer (added to it, and
    /// taken out again on drop), so that a session can tell what its connections hold.
    pub fn with_gauge(mut self, total: Arc<AtomicUsize>) -> Self {
        self.gauge = Some(Gauge { total, counted: 0 });
        self.update_gauge();
        self
    }

    fn update_gauge(&mut self) {
        let now = self.buf.capacity();
        if let Some(g) = &mut self.gauge {
            g.set(now);
        }
    }

    /// Changes the frame limit, e.g. once a magnet's metadata tells the bitfield size.
    pub fn set_max_frame(&mut self, max_frame: u32) {
        self.max_frame = max_frame;
    }

    /// The next message. [`WireError::Closed`] on a clean end of stream between frames,
    /// [`WireError::Truncated`] if it ends inside one; [`WireError::FrameTooLarge`] as soon as
    /// the length prefix is read, before the body arrives. After any error, drop the reader.
    pub async fn next(&mut self) -> Result<Message, WireError> {
        loop {
            let missing = match self.frame_len()? {
                Some(len) => {
                    let whole = 4 + len as usize;
                    if self.buf.len() >= whole {
                        self.buf.advance(4);
                        let frame = self.buf.split_to(len as usize).freeze();
                        self.update_gauge();
                        let msg = Message::decode(frame)?;
                        if let Message::Unknown { id, payload } = &msg {
                            tracing::trace!(id, len = payload.len(), "unknown peer message");
                        }
                        return Ok(msg);
                    }
                    whole - self.buf.len()
                }
                None => 4 - self.buf.len(),
            };
            // The only await point: `read_buf` is cancel-safe and everything read is in `buf`.
            self.buf.reserve(missing.max(READ_CHUNK));
            self.update_gauge();
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return Err(if self.buf.is_empty() {
                    WireError::Closed
                } else {
                    WireError::Truncated
                });
            }
        }
    }

    /// The length prefix of the buffered frame, once all 4 bytes of it are in.
    fn frame_len(&self) -> Result<Option<u32>, WireError> {
        let Some(prefix) = self.buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix);
        if len > self.max_frame {
            return Err(WireError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        Ok(Some(len))
    }

    /// Bytes read from the stream but not yet returned as messages.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// The stream and any bytes read from it but not yet returned as messages.
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.inner, self.buf)
    }
}

/// Writes messages to a stream, each call in as few writes as possible.
///
/// Not cancel-safe: a dropped `send` may leave half a frame on the wire, after which the
/// connection is unusable. Give it its own task or await it outside `select!`.
#[derive(Debug)]
pub struct MessageWriter<W> {
    inner: W,
    buf: BytesMut,
}

impl<W: AsyncWrite + Unpin> MessageWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
        }
    }

    /// Sends one message and flushes. A `Piece`'s data is written from its own buffer, not
    /// copied.
    pub async fn send(&mut self, msg: &Message) -> Result<(), WireError> {
        self.buf.clear();
        if let Message::Piece { index, begin, data } = msg {
            let header = Message::piece_header(*index, *begin, data.len());
            let mut both = Buf::chain(&header[..], data.clone());
            self.inner.write_all_buf(&mut both).await?;
        } else {
            msg.encode(&mut self.buf);
            self.inner.write_all(&self.buf).await?;
        }
        self.inner.flush().await?;
        Ok(())
    }

    /// Sends a batch (e.g. a pipeline of requests) as one write, then flushes.
    pub async fn send_many(&mut self, msgs: &[Message]) -> Result<(), WireError> {
        self.buf.clear();
        self.buf
            .reserve(msgs.iter().map(Message::encoded_len).sum::<usize>());
        for msg in msgs {
            msg.encode(&mut self.buf);
        }
        self.inner.write_all(&self.buf).await?;
        self.inner.flush().await?;
        Ok(())
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use tokio::io::ReadBuf;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::wire::message::BlockRef;
    use crate::wire::message::tests::random_message;

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
}
