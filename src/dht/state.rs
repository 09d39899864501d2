//! The routing table saved between mounts, so the next start bootstraps from nodes that were
//! alive minutes ago instead of from the public routers, and keeps its place (node id) in the
//! DHT. The file is small (at most 1,280 nodes x 6 bytes), written whole and renamed into place:
//! `d2:id20:<our id>5:nodes<6-byte compact IPv4 addresses>e`.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::node::{Dht, DhtConfig};
use crate::bencode::{self, Encoder};
use crate::dht::krpc::{COMPACT_PEER_LEN, NodeId, decode_peer, encode_peer};

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
    /// IPv4 only (the DHT speaks only IPv4).
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
        let compact: Vec<u8> = self
            .nodes
            .iter()
            .filter_map(|a| match a {
                SocketAddr::V4(v4) => Some(encode_peer(*v4)),
                SocketAddr::V6(_) => None,
            })
            .flatten()
            .collect();
        Encoder::new()
            .begin_dict()
            .str("id")
            .bytes(&self.id)
            .str("nodes")
            .bytes(&compact)
            .end()
            .finish()
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
        let nodes = compact
            .chunks_exact(COMPACT_PEER_LEN)
            .filter_map(decode_peer)
            .map(SocketAddr::V4)
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
            ],
        };
        state.save(&path).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"d2:id20:abcdefghij01234567895:nodes12:\x7f\x00\x00\x02\x1a\xe1\x0a\x00\x00\x01\xff\xffe"
        );
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
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(matches!(
                SavedState::load(&path),
                Err(StateError::Malformed { .. })
            ));
        }
    }
}
