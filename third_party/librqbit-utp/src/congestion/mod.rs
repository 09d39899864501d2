pub mod cubic;
pub mod ledbat;
pub mod tracing;

use std::time::Instant;

use crate::rtte::RttEstimator;

#[allow(unused_variables)]
pub trait CongestionController: Send + Sync + core::fmt::Debug {
    /// Returns the number of bytes that can be sent.
    fn window(&self) -> usize;

    fn sshthresh(&self) -> usize;

    fn set_mss(&mut self, mss: usize);

    fn smss(&self) -> usize;

    fn on_recovered(&mut self, new_cwnd_bytes: usize, new_sshthresh: usize);

    /// Increase the window on ACK
    fn on_ack(&mut self, now: Instant, len: usize, rtt: &RttEstimator);

    // NOT fast retransmit
    // flight_size per rfc5681
    fn on_retransmission_timeout(&mut self, now: Instant);

    fn on_enter_recovery(&mut self, now: Instant);

    fn set_remote_window(&mut self, win: usize);

    /// The one-way delay the peer measured on the last packet of ours it received
    /// (`timestamp_difference_microseconds`, offset by the two clocks' difference; 0 when
    /// it had none). Called before `on_ack` for each packet that carries one.
    fn on_delay_sample(&mut self, now: Instant, their_delay_us: u32) {}

    /// The bytes in flight (sent and not acknowledged) as an ACK arrived, counting those it
    /// acknowledges. Called before `on_ack` for each packet that acknowledges data.
    fn on_flight_size(&mut self, bytes: usize) {}
}
