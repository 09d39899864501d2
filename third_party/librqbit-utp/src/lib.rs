// RTT, RTO, congestion
// Recent RFCs that we might try to implement exactly to make everyting super explicit
// RFC 9293 https://datatracker.ietf.org/doc/html/rfc9293 (TCP) (2022, standard)
// RFC 6298 https://datatracker.ietf.org/doc/html/rfc6298 (2011, draft) - RTO calculation, references RTT calculation
// RFC 5681 https://datatracker.ietf.org/doc/html/rfc5681 (2009, draft) - congestion control, fast retransmit, fast recovery
//
// rfc8985 (draft, 2021) - RACK algorithm

// LEDBAT congestion control (RFC 6817): src/congestion/ledbat.rs, the default.

#[macro_use]
mod macros;
mod congestion;
mod constants;
#[cfg(test)]
mod e2e_tests;
mod error;
mod message;
mod metrics;
pub mod mtu;
pub mod raw;
mod recovery;
mod rtte;
mod seq_nr;
mod socket;
mod spawn_utils;
mod stream;
mod stream_dispatch;
mod stream_rx;
mod stream_set;
mod stream_tx;
mod stream_tx_segments;
#[cfg(test)]
mod test_util;
mod traits;
mod utils;

pub use error::{Error, Result};
pub use librqbit_dualstack_sockets::BindDevice;
pub use socket::{
    CongestionConfig, CongestionControllerKind, SocketOpts, UtpSocket, UtpSocketUdp,
    UtpSocketUdpOpts,
};
pub use stream::UtpStream;
pub use stream_rx::{UtpStreamReadHalf, WakeThreshold};
pub use stream_tx::UtpStreamWriteHalf;
pub use traits::Transport;

/// A packet's payload: a slice of the datagram as the transport received it, shared rather
/// than copied out (see `Transport::poll_recv_batch`).
type Payload = bytes::Bytes;
