//! The process's UDP port and what runs on it: [`udp`] owns the socket and hands each
//! datagram to its protocol (the DHT or uTP); [`utp`] is uTP (BEP 29) on it. Below both the
//! DHT and the session, knowing neither.

pub mod udp;
pub mod utp;
