//! The UDP port's kernel receive buffer: how big we get it, and how many datagrams it dropped.
//!
//! Every uTP peer shares the one UDP socket, so its buffer must hold what all of them send
//! while the process is busy elsewhere for a moment. When it overflows the kernel drops
//! datagrams, each uTP sender takes that as congestion and slows down: a read from fast uTP
//! peers falls from over 100 to 30-50 MB/s (measured on the loopback bench, where 500-1,000
//! datagrams of a 134 MB read were dropped). An unprivileged process gets at most
//! `net.core.rmem_max` (Debian's default: 208 KiB); one with `CAP_NET_ADMIN` may go past it.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// The receive buffer asked for: a few tens of ms of data at loopback rates.
pub const WANTED: usize = 8 * 1024 * 1024;

/// `SO_MEMINFO` (Linux 4.12): the socket's memory counters, drops among them.
const SO_MEMINFO: libc::c_int = 55;
/// `SO_RCVBUFFORCE`: as `SO_RCVBUF`, past `net.core.rmem_max`, with `CAP_NET_ADMIN`.
const SO_RCVBUFFORCE: libc::c_int = 33;

/// Asks for a receive buffer of `wanted` bytes, past the system's cap if the process may;
/// returns the size the kernel grants (it reports twice what it was asked, its bookkeeping
/// overhead included; this is that value halved, comparable to `wanted`).
pub fn enlarge(socket: &impl AsFd, wanted: usize) -> io::Result<usize> {
    let sock = socket2::SockRef::from(socket);
    let value = libc::c_int::try_from(wanted).unwrap_or(libc::c_int::MAX);
    if set_int(socket, SO_RCVBUFFORCE, value).is_err() {
        sock.set_recv_buffer_size(wanted)?;
    }
    let granted = sock.recv_buffer_size()?;
    Ok(granted / 2)
}

/// Datagrams the kernel dropped on `socket` since it was made (its buffer was full, or a
/// checksum was wrong); `None` where the kernel does not say.
pub fn drops(socket: &impl AsFd) -> Option<u64> {
    let mut info = [0u32; 9];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is a writable buffer of `len` bytes; the kernel writes at most that many
    // and sets `len` to what it wrote.
    let r = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let drops = libc::SK_MEMINFO_DROPS as usize;
    (r == 0 && len as usize >= (drops + 1) * 4).then(|| u64::from(info[drops]))
}

/// A `SOL_SOCKET` option socket2 does not offer.
fn set_int(socket: &impl AsFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the option reads a c_int from a live local of that size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    /// The grant is what was asked or the system's cap, never less than the default; a
    /// datagram that finds the buffer full is counted.
    #[test]
    fn a_full_buffer_drops_and_the_drops_are_counted() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = socket2::SockRef::from(&socket).recv_buffer_size().unwrap() / 2;
        let granted = enlarge(&socket, WANTED).unwrap();
        assert!(granted >= before.min(WANTED), "{granted} < {before}");
        assert!(granted <= WANTED + 4096, "{granted}");

        // A small buffer (the kernel's floor) fills at once.
        socket2::SockRef::from(&socket)
            .set_recv_buffer_size(1)
            .unwrap();
        assert_eq!(drops(&socket), Some(0));
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = socket.local_addr().unwrap();
        for _ in 0..200 {
            sender.send_to(&[7u8; 1400], to).unwrap();
        }
        // Loopback delivers within the send; the wait only guards against a slow softirq.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut dropped = drops(&socket).expect("SO_MEMINFO");
        while dropped == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            dropped = drops(&socket).expect("SO_MEMINFO");
        }
        assert!(
            dropped > 0,
            "200 datagrams into a tiny buffer, none dropped"
        );
        assert!(dropped < 200, "{dropped}: the first fits");
    }
}
