//! Peer messages over tokio streams: the handshake, a cancel-safe reader and a batching writer.
//!
//! Exchange handshakes with [`exchange_handshakes`] on the raw stream *before* wrapping it in a
//! [`MessageReader`]: it reads exactly 68 bytes, so a first message sent in the same packet
//! stays in the stream for the reader.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::WireError;
use super::message::{Handshake, Message};

/// How much the reader asks the stream for when it has no frame length to go by.
const READ_CHUNK: usize = 8 * 1024;

/// Which side of a connection we are, which decides who sends the first handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// We dialled: we send ours at once, then read theirs.
    Initiator,
    /// They dialled: we read theirs first, so we answer only for a torrent we serve.
    Responder,
}

/// Why a handshake exchange failed. After any of these the stream is unusable: drop it.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake timed out")]
    Timeout,
    /// Their info-hash is not ours. A responder has not answered.
    #[error("peer is for another torrent")]
    WrongTorrent,
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Initiator: sends ours, reads theirs. Responder: reads theirs, then answers with ours.
/// Either way fails with [`HandshakeError::WrongTorrent`] unless their info-hash is ours (before
/// a responder answers), and with [`HandshakeError::Timeout`] unless all is done `within`.
///
/// Returns their handshake. Only the info-hash is checked: whether to refuse our own peer id or
/// a peer without the extensions we need is the caller's call.
pub async fn exchange_handshakes<S>(
    stream: &mut S,
    ours: &Handshake,
    role: Role,
    within: Duration,
) -> Result<Handshake, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        if role == Role::Initiator {
            write_handshake(stream, ours).await?;
        }
        let theirs = read_handshake(stream).await?;
        if theirs.info_hash != ours.info_hash {
            return Err(HandshakeError::WrongTorrent);
        }
        if role == Role::Responder {
            write_handshake(stream, ours).await?;
        }
        Ok(theirs)
    };
    tokio::time::timeout(within, exchange)
        .await
        .map_err(|_| HandshakeError::Timeout)?
}

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
    want: Option<WantHint>,
}

/// Told before each read how many more bytes the reader needs to finish the frame it is on, so
/// that a transport which queues small packets (uTP) can wake it once per frame rather than
/// once per packet. A hint only: a read still returns whatever the stream has.
pub struct WantHint(Box<dyn Fn(usize) + Send + Sync>);

impl WantHint {
    pub fn new(f: impl Fn(usize) + Send + Sync + 'static) -> Self {
        Self(Box::new(f))
    }
}

impl std::fmt::Debug for WantHint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WantHint")
    }
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
            want: None,
        }
    }

    /// Tells `want` before each read how many bytes the frame being read still lacks.
    pub fn with_want_hint(mut self, want: WantHint) -> Self {
        self.want = Some(want);
        self
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
            if let Some(want) = &self.want {
                (want.0)(missing);
            }
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
