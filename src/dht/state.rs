//! The routing tables saved between mounts, so the next start bootstraps from nodes that were
//! alive minutes ago instead of from the public routers, and keeps its place (node id) in the
//! DHT. The file is small (at most 1,280 nodes of each family), written whole and renamed into
//! place: `d2:id20:<our id>5:nodes<6-byte compact IPv4 addresses>6:nodes6<18-byte compact IPv6
//! addresses>e` (`nodes6` left out when there are none; a file without it reads as IPv4 only).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::node::{Dht, DhtConfig};
use crate::bencode::{self, Encoder};
use crate::dht::krpc::{COMPACT_PEER_LEN, COMPACT_PEER6_LEN, NodeId, decode_peer, encode_peer};
use crate::net::Family;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("DHT state file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("DHT state file {path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: &'static str },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedState {
    pub id: NodeId,
    /// Both families' nodes.
    pub nodes: Vec<SocketAddr>,
}

impl SavedState {
    /// What to save of a running node.
    pub fn of(dht: &Dht) -> SavedState {
        SavedState {
            id: dht.id(),
            nodes: dht.routing_nodes(),
        }
    }

    /// Puts the saved id and nodes into a config for the next start.
    pub fn apply(self, config: &mut DhtConfig) {
        config.id = Some(self.id);
        config.nodes.extend(self.nodes);
    }

    pub fn encode(&self) -> Vec<u8> {
        let compact = |family: Family| -> Vec<u8> {
            (self.nodes.iter())
                .filter(|a| Family::of(a) == family)
                .flat_map(|a| encode_peer(*a))
                .collect()
        };
        let nodes6 = compact(Family::V6);
        let mut e = Encoder::new();
        e.begin_dict().str("id").bytes(&self.id);
        e.str("nodes").bytes(&compact(Family::V4));
        if !nodes6.is_empty() {
            e.str("nodes6").bytes(&nodes6);
        }
        e.end().finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<SavedState, &'static str> {
        let v = bencode::decode(bytes).map_err(|_| "not bencode")?;
        let id = v
            .get("id")
            .and_then(|v| v.as_bytes())
            .and_then(|b| NodeId::try_from(b).ok())
            .ok_or("no 20-byte `id`")?;
        let compact = v
            .get("nodes")
            .and_then(|v| v.as_bytes())
            .filter(|b| b.len() % COMPACT_PEER_LEN == 0)
            .ok_or("`nodes` is not a list of 6-byte addresses")?;
        let compact6 = match v.get("nodes6") {
            None => &[][..],
            Some(v) => v
                .as_bytes()
                .filter(|b| b.len() % COMPACT_PEER6_LEN == 0)
                .ok_or("`nodes6` is not a list of 18-byte addresses")?,
        };
        let nodes = (compact.chunks_exact(COMPACT_PEER_LEN))
            .chain(compact6.chunks_exact(COMPACT_PEER6_LEN))
            .filter_map(decode_peer)
            .collect();
        Ok(SavedState { id, nodes })
    }

    pub fn load(path: &Path) -> Result<SavedState, StateError> {
        let bytes = std::fs::read(path).map_err(|source| StateError::Io {
            path: path.to_owned(),
            source,
        })?;
        SavedState::decode(&bytes).map_err(|reason| StateError::Malformed {
            path: path.to_owned(),
            reason,
        })
    }

    /// Writes a temporary file beside `path`, then renames it over `path`: a crash leaves the
    /// old file or the new one, never half of one.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let io_err = |source| StateError::Io {
            path: path.to_owned(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, self.encode()).map_err(io_err)?;
        std::fs::rename(&tmp, path).map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_id_and_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dht.state");
        let state = SavedState {
            id: *b"abcdefghij0123456789",
            nodes: vec![
                "127.0.0.2:6881".parse().unwrap(),
                "10.0.0.1:65535".parse().unwrap(),
                "[::1]:6882".parse().unwrap(),
            ],
        };
        state.save(&path).unwrap();
        let mut want = b"d2:id20:abcdefghij01234567895:nodes12:\x7f\x00\x00\x02\x1a\xe1\x0a\x00\x00\x01\xff\xff6:nodes618:".to_vec();
        want.extend_from_slice(&[0; 15]);
        want.extend_from_slice(b"\x01\x1a\xe2e");
        assert_eq!(std::fs::read(&path).unwrap(), want);
        assert_eq!(SavedState::load(&path).unwrap(), state);
        let mut config = DhtConfig {
            bootstrap: vec![],
            ..DhtConfig::default()
        };
        state.clone().apply(&mut config);
        assert_eq!(config.id, Some(state.id));
        assert_eq!(config.nodes, state.nodes);
    }

    #[test]
    fn a_file_without_nodes6_reads_as_ipv4_only() {
        let old = b"d2:id20:abcdefghij01234567895:nodes6:\x7f\x00\x00\x02\x1a\xe1e";
        let state = SavedState::decode(old).unwrap();
        assert_eq!(state.nodes, vec!["127.0.0.2:6881".parse().unwrap()]);
        assert_eq!(state.encode(), old, "no nodes6 written when there are none");
    }

    #[test]
    fn refuses_broken_or_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dht.state");
        assert!(matches!(
            SavedState::load(&path),
            Err(StateError::Io { .. })
        ));
        for bad in [
            &b"garbage"[..],
            b"d2:id3:abc5:nodes0:e",
            b"d2:id20:abcdefghij01234567895:nodes5:12345e",
            b"d2:id20:abcdefghij01234567895:nodes0:6:nodes66:123456e",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(matches!(
                SavedState::load(&path),
                Err(StateError::Malformed { .. })
            ));
        }
    }
}
