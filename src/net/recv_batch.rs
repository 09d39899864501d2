//! Several datagrams in one system call (Linux `recvmmsg`): at uTP's rates a `recvfrom` per
//! datagram (one per 1.4 kB) is most of the kernel's share of uTP's CPU, the entry and exit
//! of a call costing about as much as the copy it makes.
//!
//! Each datagram gets a fixed slot; one that does not fit is dropped (its `MSG_TRUNC`). The
//! slots hold any uTP packet (peers size them to the path MTU, at most 1,500 bytes on
//! Ethernet) and any KRPC message (under 1,500 bytes); the loopback's MTU is 64 KiB, but
//! peers do not probe past Ethernet's.

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams one call takes at most.
pub const BATCH: usize = 32;
/// Room for each datagram.
const SLOT: usize = 4096;

/// The slots of one `recvmmsg` and what it put in them.
pub struct RecvBatch {
    bufs: Box<[u8]>,
    addrs: Box<[libc::sockaddr_storage]>,
    /// Per slot of the last call: its length, or `None` if it was cut or has no address.
    got: Vec<Option<(usize, SocketAddr)>>,
}

impl RecvBatch {
    pub fn new() -> RecvBatch {
        RecvBatch {
            bufs: vec![0u8; BATCH * SLOT].into_boxed_slice(),
            // SAFETY: an all-zero sockaddr_storage is a valid (AF_UNSPEC) value.
            addrs: vec![unsafe { MaybeUninit::zeroed().assume_init() }; BATCH].into_boxed_slice(),
            got: Vec::with_capacity(BATCH),
        }
    }

    /// Takes up to `max` (at most [`BATCH`]) datagrams waiting on `socket` without waiting;
    /// how many (including dropped ones, see [`RecvBatch::get`]). `WouldBlock` when none
    /// waits. The socket's tokio readiness is cleared once it is empty, so that a
    /// `poll_recv_ready` after it waits.
    ///
    /// A call that got fewer than it asked for emptied the socket (a non-blocking `recvmmsg`
    /// stops short only there): the readiness is cleared then and there, which saves the call
    /// that would only have found it empty. A datagram that arrives after the call is a new
    /// readiness event, which the clearing leaves alone (tokio clears only the event it saw).
    pub fn recv(&mut self, socket: &UdpSocket, max: usize) -> io::Result<usize> {
        let n = max.clamp(1, BATCH);
        let mut short = 0;
        let r = socket.try_io(Interest::READABLE, || {
            let got = self.recv_raw(socket.as_raw_fd(), n)?;
            if got < n {
                short = got;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(got)
        });
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && short > 0 => Ok(short),
            r => r,
        }
    }

    fn recv_raw(&mut self, fd: std::os::fd::RawFd, n: usize) -> io::Result<usize> {
        // SAFETY (zeroed): iovec and mmsghdr are plain C structs, valid all zero.
        let mut iovs: [libc::iovec; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
        for (i, (iov, hdr)) in iovs.iter_mut().zip(hdrs.iter_mut()).enumerate().take(n) {
            iov.iov_base = self.bufs[i * SLOT..].as_mut_ptr().cast();
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

    /// The `i`th datagram of the last call and its sender; `None` if it was dropped.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let (len, from) = (*self.got.get(i)?)?;
        Some((&self.bufs[i * SLOT..i * SLOT + len], from))
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
                    got.push(batch.get(i).map(|(d, from)| (d.to_vec(), from)));
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
