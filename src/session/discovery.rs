//! Where peer addresses come from. Every address reaches the connector tagged with its source,
//! and every connection keeps the tag, so `btfs status` can say which source actually yields
//! peers (a swarm that only answers through the DHT, a tracker that lists dead peers).

use std::collections::HashMap;
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
    /// The peer connected to us.
    Incoming,
    /// `--peer` on the command line (and peers a magnet's metadata fetch already found).
    Manual,
}

impl PeerSource {
    pub const ALL: [PeerSource; 5] = [
        PeerSource::Tracker,
        PeerSource::Dht,
        PeerSource::Pex,
        PeerSource::Incoming,
        PeerSource::Manual,
    ];

    /// The word `btfs status` prints.
    pub fn name(self) -> &'static str {
        match self {
            PeerSource::Tracker => "tracker",
            PeerSource::Dht => "dht",
            PeerSource::Pex => "pex",
            PeerSource::Incoming => "incoming",
            PeerSource::Manual => "manual",
        }
    }

    fn bit(self) -> u8 {
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

/// Every address discovery named, with the set of sources that named it.
#[derive(Debug, Default)]
pub(crate) struct Known(HashMap<SocketAddr, u8>);

impl Known {
    /// Records that `source` named `addr`; true if no source had named it before.
    pub(crate) fn insert(&mut self, addr: SocketAddr, source: PeerSource) -> bool {
        let bits = self.0.entry(addr).or_insert(0);
        let new = *bits == 0;
        *bits |= source.bit();
        new
    }

    /// Forgets an address (it turned out to be our own).
    pub(crate) fn remove(&mut self, addr: &SocketAddr) {
        self.0.remove(addr);
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Addresses worth dialling, each with the first source that named it: an incoming
    /// peer's address alone is its outgoing port, where nobody listens.
    pub(crate) fn dialable(&self) -> impl Iterator<Item = (SocketAddr, PeerSource)> + '_ {
        self.0.iter().filter_map(|(&addr, &bits)| {
            PeerSource::ALL
                .into_iter()
                .filter(|&s| s != PeerSource::Incoming)
                .find(|s| bits & s.bit() != 0)
                .map(|s| (addr, s))
        })
    }

    fn count(&self, source: PeerSource) -> usize {
        self.0.values().filter(|&&b| b & source.bit() != 0).count()
    }
}

/// One [`SourceCount`] per source, in [`PeerSource::ALL`] order.
pub(crate) fn by_source(
    known: &Known,
    connected: impl Iterator<Item = PeerSource> + Clone,
) -> Vec<SourceCount> {
    PeerSource::ALL
        .iter()
        .map(|&source| SourceCount {
            source,
            connected: connected.clone().filter(|&s| s == source).count(),
            known: known.count(source),
        })
        .collect()
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

    #[test]
    fn an_address_counts_under_every_source_that_named_it() {
        let mut k = Known::default();
        assert!(k.insert(a(1), PeerSource::Tracker));
        assert!(!k.insert(a(1), PeerSource::Dht));
        assert!(k.insert(a(2), PeerSource::Dht));
        assert!(k.insert(a(3), PeerSource::Pex));
        assert_eq!(k.len(), 3);
        let connected = [
            PeerSource::Tracker,
            PeerSource::Incoming,
            PeerSource::Tracker,
        ];
        let counts = by_source(&k, connected.iter().copied());
        let get = |s| *counts.iter().find(|c| c.source == s).expect("every source");
        assert_eq!(get(PeerSource::Tracker).known, 1);
        assert_eq!(get(PeerSource::Tracker).connected, 2);
        assert_eq!(get(PeerSource::Dht).known, 2);
        assert_eq!(get(PeerSource::Pex).known, 1);
        assert_eq!(get(PeerSource::Incoming).connected, 1);
        assert_eq!(
            get(PeerSource::Manual),
            SourceCount {
                source: PeerSource::Manual,
                connected: 0,
                known: 0
            }
        );
    }

    #[tokio::test]
    async fn a_tagged_sender_delivers_with_its_source() {
        let (tx, mut rx) = mpsc::channel(4);
        let dht = tagged(&tx, PeerSource::Dht);
        dht.send(vec![a(7)]).await.expect("forwarder running");
        assert_eq!(rx.recv().await, Some((PeerSource::Dht, vec![a(7)])));
    }
}
