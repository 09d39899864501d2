//! Where peer addresses come from. Every address reaches the connector tagged with its source,
//! and every connection keeps the tag, so `btfs status` can say which source actually yields
//! peers (a swarm that only answers through the DHT, a tracker that lists dead peers).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Where an address came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerSource {
    Tracker,
    Dht,
    /// Peer exchange (BEP 11): addresses other peers told us about.
    Pex,
    /// Local service discovery (BEP 14): a client on the local network announced the torrent.
    Lsd,
    /// The peer connected to us.
    Incoming,
    /// `--peer` on the command line (and peers a magnet's metadata fetch already found).
    Manual,
    /// A peer that connected to us named the port it listens on (extended handshake `p`,
    /// BEP 10): dialled there once its connection ended, as when a sleeping torrent wakes.
    Handshake,
}

impl PeerSource {
    pub const ALL: [PeerSource; 7] = [
        PeerSource::Tracker,
        PeerSource::Dht,
        PeerSource::Pex,
        PeerSource::Lsd,
        PeerSource::Incoming,
        PeerSource::Manual,
        PeerSource::Handshake,
    ];

    /// The word `btfs status` prints.
    pub fn name(self) -> &'static str {
        match self {
            PeerSource::Tracker => "tracker",
            PeerSource::Dht => "dht",
            PeerSource::Pex => "pex",
            PeerSource::Lsd => "lsd",
            PeerSource::Incoming => "incoming",
            PeerSource::Manual => "manual",
            PeerSource::Handshake => "handshake",
        }
    }

    pub(crate) fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// Connected and known peers of one source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCount {
    pub source: PeerSource,
    /// Connections whose address came from this source (each counted under one source: the
    /// one that first named it).
    pub connected: usize,
    /// Distinct addresses this source named (an address two sources named counts under both).
    pub known: usize,
}

/// A plain address sender for a discovery task that knows nothing of sources (the announcer,
/// the DHT loop): what it sends reaches `discovered` tagged with `source`. The forwarder ends
/// when the returned sender (and its clones) are dropped or the connector is gone.
pub(crate) fn tagged(
    discovered: &mpsc::Sender<(PeerSource, Vec<SocketAddr>)>,
    source: PeerSource,
) -> mpsc::Sender<Vec<SocketAddr>> {
    let (tx, mut rx) = mpsc::channel::<Vec<SocketAddr>>(16);
    let out = discovered.clone();
    tokio::spawn(async move {
        while let Some(addrs) = rx.recv().await {
            if out.send((source, addrs)).await.is_err() {
                return;
            }
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn a_tagged_sender_delivers_with_its_source() {
        let (tx, mut rx) = mpsc::channel(4);
        let dht = tagged(&tx, PeerSource::Dht);
        dht.send(vec![a(7)]).await.expect("forwarder running");
        assert_eq!(rx.recv().await, Some((PeerSource::Dht, vec![a(7)])));
    }
}
