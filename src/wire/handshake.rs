//! The 68-byte handshake (BEP 3) and the reserved bits we read and set: extension protocol
//! (BEP 10), DHT (BEP 5) and Fast (BEP 6). Pure encode/decode, no I/O.

use super::WireError;

/// The protocol string every BitTorrent handshake starts with (after its length byte, 19).
pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";

/// The 68-byte greeting each side sends first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub reserved: [u8; 8],
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
}

impl Handshake {
    pub const LEN: usize = 68;

    /// A handshake advertising the extension protocol (BEP 10), which we need for magnet links,
    /// and the Fast extension (BEP 6), so a peer rejects what it will not serve.
    pub fn new(info_hash: [u8; 20], peer_id: [u8; 20]) -> Self {
        let mut reserved = [0; 8];
        reserved[5] |= 0x10;
        reserved[7] |= 0x04;
        Self {
            reserved,
            info_hash,
            peer_id,
        }
    }

    /// Whether the peer speaks BEP 10 (so `Extended` messages may be sent to it).
    pub fn supports_extensions(&self) -> bool {
        self.reserved[5] & 0x10 != 0
    }

    /// Whether the peer runs a DHT node (BEP 5), so its `Port` message is worth reading.
    pub fn supports_dht(&self) -> bool {
        self.reserved[7] & 0x01 != 0
    }

    /// Whether the peer speaks the Fast extension (BEP 6); it is on only if both sides do.
    pub fn supports_fast(&self) -> bool {
        self.reserved[7] & 0x04 != 0
    }

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0; Self::LEN];
        out[0] = PROTOCOL.len() as u8;
        out[1..20].copy_from_slice(PROTOCOL);
        out[20..28].copy_from_slice(&self.reserved);
        out[28..48].copy_from_slice(&self.info_hash);
        out[48..68].copy_from_slice(&self.peer_id);
        out
    }

    /// Fails with [`WireError::BadHandshake`] unless the bytes start with `\x13BitTorrent
    /// protocol`. The info-hash is not checked here: only the session knows which it expects.
    pub fn decode(buf: &[u8; Self::LEN]) -> Result<Self, WireError> {
        if usize::from(buf[0]) != PROTOCOL.len() || &buf[1..20] != PROTOCOL {
            return Err(WireError::BadHandshake);
        }
        let mut h = Self {
            reserved: [0; 8],
            info_hash: [0; 20],
            peer_id: [0; 20],
        };
        h.reserved.copy_from_slice(&buf[20..28]);
        h.info_hash.copy_from_slice(&buf[28..48]);
        h.peer_id.copy_from_slice(&buf[48..68]);
        Ok(h)
    }
}

/// A fresh peer id for this client.
pub fn new_peer_id() -> [u8; 20] {
    // Azureus-style client id (BEP 20), then random characters. ("BF" is Bitflu's code.)
    let mut id = *b"-Bf0001-000000000000";
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    for b in &mut id[8..] {
        *b = ALPHABET[rand::random_range(0..ALPHABET.len())];
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_matches_bep3_bytes() {
        let h = Handshake::new([0xaa; 20], *b"-BT0001-abcdefghijkl");
        let wire = h.encode();
        assert_eq!(wire[0], 19);
        assert_eq!(&wire[1..20], b"BitTorrent protocol");
        assert_eq!(wire[20..28], [0, 0, 0, 0, 0, 0x10, 0, 0x04]);
        assert_eq!(wire[28..48], [0xaa; 20]);
        assert_eq!(&wire[48..68], b"-BT0001-abcdefghijkl");
        let back = Handshake::decode(&wire).unwrap();
        assert_eq!(back, h);
        assert!(back.supports_extensions());
        assert!(back.supports_fast());
        assert!(!back.supports_dht());
    }

    #[test]
    fn handshake_reserved_bits_are_read() {
        let mut h = Handshake::new([1; 20], [2; 20]);
        h.reserved = [0, 0, 0, 0, 0, 0, 0, 0x01];
        let back = Handshake::decode(&h.encode()).unwrap();
        assert!(!back.supports_extensions());
        assert!(back.supports_dht());
        assert!(!back.supports_fast());
        h.reserved = [0, 0, 0, 0, 0, 0, 0, 0x04];
        let back = Handshake::decode(&h.encode()).unwrap();
        assert!(back.supports_fast());
        assert!(!back.supports_dht());
    }

    #[test]
    fn handshake_with_other_protocol_is_rejected() {
        let good = Handshake::new([1; 20], [2; 20]).encode();
        let mut short = good;
        short[0] = 18;
        let mut other = good;
        other[1] = b'b';
        let mut http = [0u8; 68];
        http[..16].copy_from_slice(b"GET / HTTP/1.1\r\n");
        for bad in [short, other, http] {
            assert!(matches!(
                Handshake::decode(&bad),
                Err(WireError::BadHandshake)
            ));
        }
    }
}
