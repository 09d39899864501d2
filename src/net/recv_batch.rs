//! Several datagrams in one system call (Linux `recvmmsg`): at uTP's rates a `recvfrom` per
//! datagram (one per 1.4 kB) is most of the kernel's share of uTP's CPU, the entry and exit
//! of a call costing about as much as the copy it makes.
//!
//! Each datagram gets a fixed slot; one that does not fit is dropped (its `MSG_TRUNC`). The
//! slots hold any uTP packet (peers size them to the path MTU, at most 1,500 bytes on
//! Ethernet) and any KRPC message (under 1,500 bytes); the loopback's MTU is 64 KiB, but
//! peers do not probe past Ethernet's.
//!
//! A datagram is handed on as a slice of the buffer it was received into ([`Bytes`]), not
//! copied out: at uTP's rates a copy and an allocation per datagram cost more CPU than the
//! rest of the uTP stack's own work on it. A slice keeps its whole buffer alive until the
//! payload is read, so the buffers come from a [`Pool`] that bounds how many may be pinned
//! at once ([`PINNED_MAX`]); past it (readers far behind) datagrams are copied out of a spare
//! buffer, as they all were before.

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::sync::lock;

/// Datagrams one call takes at most.
pub const BATCH: usize = 32;
/// Room for each datagram.
const SLOT: usize = 4096;
/// Bytes of one call's buffer.
const BUFFER: usize = BATCH * SLOT;
/// Buffers that may exist at once (in use, pinned by datagrams not yet read, or free):
/// 8 MiB. Readers that keep up pin a few; more than this means they are far behind, and
/// copying then costs nothing that matters. A buffer once made is kept for reuse (a new one
/// costs a zeroing and its page faults).
pub const PINNED_MAX: usize = 64;

/// The buffers of one reader's calls, shared with the [`Bytes`] that slice them.
#[derive(Default)]
pub struct Pool {
    free: std::sync::Mutex<Vec<Box<[u8]>>>,
    /// Buffers made: taken, pinned or free.
    live: AtomicUsize,
}

impl Pool {
    /// A buffer to receive into: a free one, else a new one while fewer than
    /// [`PINNED_MAX`] exist.
    fn take(&self) -> Option<Box<[u8]>> {
        if let Some(buf) = lock(&self.free).pop() {
            return Some(buf);
        }
        let live = self.live.fetch_add(1, Ordering::Relaxed);
        if live >= PINNED_MAX {
            self.live.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        // Zeroed once; a buffer is reused as it is (the kernel overwrites what it fills).
        Some(vec![0u8; BUFFER].into_boxed_slice())
    }

    fn give_back(&self, buf: Box<[u8]>) {
        lock(&self.free).push(buf);
    }

    /// Buffers that exist now.
    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}

/// A received buffer as the datagrams sliced from it own it: back to its pool when the last
/// of them is dropped.
struct Pinned {
    buf: Option<Box<[u8]>>,
    pool: Arc<Pool>,
}

impl AsRef<[u8]> for Pinned {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_deref().unwrap_or_default()
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.give_back(buf);
        }
    }
}

/// The slots of one `recvmmsg` and what it put in them.
pub struct RecvBatch {
    pool: Arc<Pool>,
    /// The buffer of the next call, if one was free (else `spare`'s turn).
    next: Option<Box<[u8]>>,
    /// The last call's buffer, shared: its datagrams are slices of it.
    shared: Option<Bytes>,
    /// The buffer for calls while the pool has none to give; its datagrams are copied.
    spare: Box<[u8]>,
    addrs: Box<[libc::sockaddr_storage]>,
    /// Per slot of the last call: its length, or `None` if it was cut or has no address.
    got: Vec<Option<(usize, SocketAddr)>>,
}

impl RecvBatch {
    pub fn new() -> RecvBatch {
        RecvBatch {
            pool: Arc::default(),
            next: None,
            shared: None,
            spare: vec![0u8; BUFFER].into_boxed_slice(),
            // SAFETY: an all-zero sockaddr_storage is a valid (AF_UNSPEC) value.
            addrs: vec![unsafe { MaybeUninit::zeroed().assume_init() }; BATCH].into_boxed_slice(),
            got: Vec::with_capacity(BATCH),
        }
    }

    /// The pool its buffers come from.
    #[cfg(test)]
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Takes up to `max` (at most [`BATCH`]) datagrams waiting on `socket` without waiting;
    /// how many (including dropped ones, see [`RecvBatch::take`]). `WouldBlock` when none
    /// waits. The socket's tokio readiness is cleared once it is empty, so that a
    /// `poll_recv_ready` after it waits.
    ///
    /// A call that got fewer than it asked for emptied the socket (a non-blocking `recvmmsg`
    /// stops short only there): the readiness is cleared then and there, which saves the call
    /// that would only have found it empty. A datagram that arrives after the call is a new
    /// readiness event, which the clearing leaves alone (tokio clears only the event it saw).
    pub fn recv(&mut self, socket: &UdpSocket, max: usize) -> io::Result<usize> {
        let n = max.clamp(1, BATCH);
        self.shared = None;
        if self.next.is_none() {
            self.next = self.pool.take();
        }
        let mut short = 0;
        let r = socket.try_io(Interest::READABLE, || {
            let got = self.recv_raw(socket.as_raw_fd(), n)?;
            if got < n {
                short = got;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(got)
        });
        let r = match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && short > 0 => Ok(short),
            r => r,
        };
        if matches!(r, Ok(got) if got > 0)
            && let Some(buf) = self.next.take()
        {
            self.shared = Some(Bytes::from_owner(Pinned {
                buf: Some(buf),
                pool: self.pool.clone(),
            }));
        }
        r
    }

    fn recv_raw(&mut self, fd: std::os::fd::RawFd, n: usize) -> io::Result<usize> {
        let bufs = self.next.as_deref_mut().unwrap_or(&mut self.spare);
        // SAFETY (zeroed): iovec and mmsghdr are plain C structs, valid all zero.
        let mut iovs: [libc::iovec; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
        for (i, (iov, hdr)) in iovs.iter_mut().zip(hdrs.iter_mut()).enumerate().take(n) {
            iov.iov_base = bufs[i * SLOT..].as_mut_ptr().cast();
            iov.iov_len = SLOT;
            hdr.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the first `n` headers point at live, exclusively borrowed buffers of the
        // sizes given; the kernel writes nothing else.
        let got = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = got as usize;
        self.got.clear();
        for (hdr, addr) in hdrs.iter().zip(self.addrs.iter()).take(got) {
            let cut = hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let from = socket_addr(addr, hdr.msg_hdr.msg_namelen);
            self.got.push(match from {
                Some(from) if !cut => Some((hdr.msg_len as usize, from)),
                _ => None,
            });
        }
        Ok(got)
    }

    /// The `i`th datagram of the last call and its sender; `None` if it was dropped. A slice
    /// of the call's buffer, or a copy when the call went to the spare buffer.
    pub fn take(&self, i: usize) -> Option<(Bytes, SocketAddr)> {
        let (len, from) = (*self.got.get(i)?)?;
        let range = i * SLOT..i * SLOT + len;
        Some(match &self.shared {
            Some(shared) => (shared.slice(range), from),
            None => (Bytes::copy_from_slice(&self.spare[range]), from),
        })
    }
}

/// The address the kernel wrote, if it is IPv4 or IPv6.
fn socket_addr(addr: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match addr.ss_family as libc::c_int {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel wrote a sockaddr_in here (its family says so), and storage
            // is aligned for every sockaddr type.
            let a =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, a sockaddr_in6.
            let a =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn wait_readable(socket: &UdpSocket) {
        tokio::time::timeout(Duration::from_secs(5), socket.readable())
            .await
            .expect("hang")
            .unwrap();
    }

    /// One call's worth of what waits on `socket` (waiting for some).
    async fn recv_some(batch: &mut RecvBatch, socket: &UdpSocket) -> usize {
        loop {
            wait_readable(socket).await;
            match batch.recv(socket, BATCH) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r.unwrap(),
            }
        }
    }

    /// What a reader holds on to pins at most [`PINNED_MAX`] buffers: past them datagrams
    /// still come whole (copied), and once the held ones are dropped their buffers are
    /// reused, none made anew.
    #[tokio::test]
    async fn held_datagrams_pin_a_bounded_number_of_buffers() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let at = socket.local_addr().unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut batch = RecvBatch::new();
        let mut held = Vec::new();
        for i in 0..PINNED_MAX + 10 {
            let want: Vec<u8> = (0..100 + i).map(|j| (j * 7 + i) as u8).collect();
            peer.send_to(&want, at).await.unwrap();
            assert_eq!(recv_some(&mut batch, &socket).await, 1);
            let (data, from) = batch.take(0).unwrap();
            assert_eq!(from, peer.local_addr().unwrap());
            held.push((data, want));
        }
        assert_eq!(
            batch.pool().live(),
            PINNED_MAX,
            "a buffer per held call, up to the cap"
        );
        for (data, want) in &held {
            assert_eq!(data[..], want[..], "every datagram whole, shared or copied");
        }
        held.clear();
        for i in 0..PINNED_MAX + 10 {
            peer.send_to(&[i as u8; 50], at).await.unwrap();
            assert_eq!(recv_some(&mut batch, &socket).await, 1);
            assert_eq!(batch.take(0).unwrap().0[..], [i as u8; 50]);
        }
        assert_eq!(batch.pool().live(), PINNED_MAX, "freed buffers reused");
    }

    /// Datagrams come whole, in order, with their senders, several per call; one too big for
    /// a slot is dropped without hiding the ones after it.
    #[tokio::test]
    async fn one_call_takes_several_datagrams_with_their_senders() {
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let socket = UdpSocket::bind(local).await.unwrap();
            let at = socket.local_addr().unwrap();
            let (a, b) = (
                UdpSocket::bind(local).await.unwrap(),
                UdpSocket::bind(local).await.unwrap(),
            );
            let mut sent = Vec::new();
            for i in 0..40u16 {
                let from = if i % 2 == 0 { &a } else { &b };
                let len = if i == 5 {
                    SLOT + 1
                } else {
                    20 + i as usize * 37
                };
                let data: Vec<u8> = (0..len).map(|j| (j as u16 * 3 + i) as u8).collect();
                from.send_to(&data, at).await.unwrap();
                sent.push((data, from.local_addr().unwrap()));
            }
            let mut batch = RecvBatch::new();
            let mut got = Vec::new();
            let mut calls = 0;
            while got.len() < sent.len() {
                wait_readable(&socket).await;
                let n = match batch.recv(&socket, BATCH) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => r.unwrap(),
                };
                calls += 1;
                for i in 0..n {
                    got.push(batch.take(i).map(|(d, from)| (d.to_vec(), from)));
                }
            }
            assert!(
                calls < sent.len(),
                "{calls} calls for {} datagrams",
                sent.len()
            );
            for (i, (want, got)) in sent.into_iter().zip(got).enumerate() {
                if i == 5 {
                    assert_eq!(got, None, "too big for a slot");
                } else {
                    assert_eq!(got, Some(want), "datagram {i} ({local})");
                }
            }
        }
    }
}
