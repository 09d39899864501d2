//! The stream after an MSE handshake: RC4 applied in both directions (or nothing, once the
//! peers chose plaintext), after the bytes the handshake already read.
//!
//! Reading decrypts in place in the caller's buffer. Writing cannot (the caller's bytes are
//! borrowed), so a write encrypts into a buffer of ours and reports the bytes taken at once;
//! `poll_flush` and the next write send what is left. Callers flush (the wire's
//! `MessageWriter` does after every batch), as `AsyncWrite` asks of them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Method;
use super::rc4::Rc4;

/// Most bytes one write takes into the encryption buffer.
const MAX_PENDING: usize = 64 * 1024;

/// The reading direction: bytes the handshake read past its end (already decrypted), then the
/// stream, decrypted as it comes.
pub(crate) struct ReadSide {
    plain: Vec<u8>,
    at: usize,
    cipher: Option<Rc4>,
}

impl ReadSide {
    pub(crate) fn new(plain: Vec<u8>, cipher: Option<Rc4>) -> Self {
        Self {
            plain,
            at: 0,
            cipher,
        }
    }

    fn poll_read<R: AsyncRead + ?Sized>(
        &mut self,
        inner: Pin<&mut R>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.plain.len() {
            let n = buf.remaining().min(self.plain.len() - self.at);
            buf.put_slice(&self.plain[self.at..self.at + n]);
            self.at += n;
            if self.at == self.plain.len() {
                self.plain = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(inner.poll_read(cx, buf))?;
        if let Some(c) = &mut self.cipher {
            c.apply(&mut buf.filled_mut()[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

/// The writing direction: RC4 over what the caller writes, or nothing.
pub(crate) struct WriteSide {
    cipher: Option<Rc4>,
    /// Encrypted bytes taken from the caller and not yet accepted by the stream.
    pending: Vec<u8>,
    sent: usize,
}

impl WriteSide {
    pub(crate) fn new(cipher: Option<Rc4>) -> Self {
        Self {
            cipher,
            pending: Vec::new(),
            sent: 0,
        }
    }

    /// Writes what is pending; ready once nothing is.
    fn poll_drain<W: AsyncWrite + ?Sized>(
        &mut self,
        mut inner: Pin<&mut W>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(inner.as_mut().poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    fn poll_write<W: AsyncWrite + ?Sized>(
        &mut self,
        mut inner: Pin<&mut W>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.cipher.is_none() {
            return inner.poll_write(cx, buf);
        }
        ready!(self.poll_drain(inner.as_mut(), cx))?;
        let n = buf.len().min(MAX_PENDING);
        self.pending.extend_from_slice(&buf[..n]);
        if let Some(c) = &mut self.cipher {
            c.apply(&mut self.pending);
        }
        // Sent now if the stream takes it; what it does not take waits for flush or the
        // next write (the waker is registered either way).
        if let Poll::Ready(Err(e)) = self.poll_drain(inner, cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush<W: AsyncWrite + ?Sized>(
        &mut self,
        mut inner: Pin<&mut W>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(inner.as_mut(), cx))?;
        inner.poll_flush(cx)
    }

    fn poll_shutdown<W: AsyncWrite + ?Sized>(
        &mut self,
        mut inner: Pin<&mut W>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(inner.as_mut(), cx))?;
        inner.poll_shutdown(cx)
    }
}

/// A stream after the MSE handshake; read and write it as the plain BitTorrent stream.
pub struct MseStream<S> {
    inner: S,
    rx: ReadSide,
    tx: WriteSide,
    method: Method,
}

impl<S> MseStream<S> {
    pub(crate) fn new(inner: S, rx: ReadSide, tx: WriteSide, method: Method) -> Self {
        Self {
            inner,
            rx,
            tx,
            method,
        }
    }

    /// What the two sides chose: RC4, or plaintext after the handshake.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The stream beneath.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Splits into a reading and a writing half, given how to split the stream beneath
    /// (e.g. into the two halves of a TCP connection).
    pub fn split_with<R, W>(self, split: impl FnOnce(S) -> (R, W)) -> (MseReader<R>, MseWriter<W>) {
        let (r, w) = split(self.inner);
        (
            MseReader {
                inner: r,
                rx: self.rx,
            },
            MseWriter {
                inner: w,
                tx: self.tx,
            },
        )
    }
}

/// The reading half of an [`MseStream`].
pub struct MseReader<R> {
    inner: R,
    rx: ReadSide,
}

/// The writing half of an [`MseStream`].
pub struct MseWriter<W> {
    inner: W,
    tx: WriteSide,
}

impl<S: AsyncRead + Unpin> AsyncRead for MseStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.rx.poll_read(Pin::new(&mut this.inner), cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MseStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.tx.poll_write(Pin::new(&mut this.inner), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.tx.poll_flush(Pin::new(&mut this.inner), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.tx.poll_shutdown(Pin::new(&mut this.inner), cx)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for MseReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.rx.poll_read(Pin::new(&mut this.inner), cx, buf)
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for MseWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.tx.poll_write(Pin::new(&mut this.inner), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.tx.poll_flush(Pin::new(&mut this.inner), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.tx.poll_shutdown(Pin::new(&mut this.inner), cx)
    }
}
