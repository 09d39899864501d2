//! The key material of MSE: a Diffie-Hellman exchange over the spec's 768-bit prime with
//! generator 2, the SHA1 hashes derived from its shared secret `S` and the torrent's info-hash
//! (`SKEY`), and RC4 keyed from them with the first 1024 bytes of keystream dropped.
//!
//! None of this is secret-grade cryptography (the spec's aim is obfuscation: an observer who
//! knows the info-hash can follow the stream), so nothing here needs constant time.

use std::sync::OnceLock;

use num_bigint::BigUint;
use sha1::{Digest, Sha1};

use super::rc4::Rc4;

/// Bytes of a public key (`Ya`, `Yb`) and of the shared secret `S`: the prime's width.
pub(crate) const KEY_LEN: usize = 96;
/// The spec's prime P, big-endian.
const PRIME_HEX: &[u8] =
    b"FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA6\
    3B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44\
    C42E9A63A36210000000000090563";
/// Private keys of 160 bits: the spec asks for at least 128, and more than 180 adds nothing.
const PRIVATE_LEN: usize = 20;
/// Keystream bytes thrown away before use, as the spec requires (RC4's first bytes are biased).
const DISCARD: usize = 1024;

fn prime() -> &'static BigUint {
    static P: OnceLock<BigUint> = OnceLock::new();
    P.get_or_init(|| {
        let hex: Vec<u8> = PRIME_HEX
            .iter()
            .copied()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        BigUint::parse_bytes(&hex, 16).unwrap_or_default()
    })
}

/// The other side's public key is not a number in 2..P-2: no peer makes such a key, and
/// with it `S` would be predictable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BadPublicKey;

/// One side's Diffie-Hellman key pair, made fresh for every connection.
pub(crate) struct KeyPair {
    private: BigUint,
    public: [u8; KEY_LEN],
}

impl KeyPair {
    pub(crate) fn generate() -> KeyPair {
        let mut private = [0u8; PRIVATE_LEN];
        rand::fill(&mut private);
        // Never 0 or 1 (whose public keys are 1 and 2): one of 2^159 draws, made impossible.
        private[0] |= 0x80;
        KeyPair::from_private(&private)
    }

    /// The pair of a given private key (big-endian), for known-answer tests.
    pub(crate) fn from_private(private: &[u8]) -> KeyPair {
        let private = BigUint::from_bytes_be(private);
        let public = to_key_bytes(&BigUint::from(2u8).modpow(&private, prime()));
        KeyPair { private, public }
    }

    /// `G^X mod P`, 96 bytes big-endian (zero-padded on the left).
    pub(crate) fn public(&self) -> &[u8; KEY_LEN] {
        &self.public
    }

    /// `S = Y^X mod P` from the other side's public key `Y`.
    pub(crate) fn shared_secret(
        &self,
        theirs: &[u8; KEY_LEN],
    ) -> Result<[u8; KEY_LEN], BadPublicKey> {
        let y = BigUint::from_bytes_be(theirs);
        let p = prime();
        if y < BigUint::from(2u8) || y >= p - 1u8 {
            return Err(BadPublicKey);
        }
        Ok(to_key_bytes(&y.modpow(&self.private, p)))
    }
}

fn to_key_bytes(n: &BigUint) -> [u8; KEY_LEN] {
    let bytes = n.to_bytes_be();
    let mut out = [0u8; KEY_LEN];
    // Below P, so never wider than KEY_LEN.
    let from = KEY_LEN.saturating_sub(bytes.len());
    out[from..].copy_from_slice(&bytes[bytes.len().saturating_sub(KEY_LEN)..]);
    out
}

/// SHA1 of the parts, one after the other: the spec's `HASH(a, b, ...)`.
pub(crate) fn hash(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// `HASH('req1', S)`: what the receiver looks for to find the end of `PadA`.
pub(crate) fn req1(s: &[u8; KEY_LEN]) -> [u8; 20] {
    hash(&[b"req1", s])
}

/// `HASH('req2', SKEY)`: how an encrypted connection names its torrent without showing the
/// info-hash (it comes xor'ed with `req3`).
pub fn req2(skey: &[u8; 20]) -> [u8; 20] {
    hash(&[b"req2", skey])
}

pub(crate) fn req3(s: &[u8; KEY_LEN]) -> [u8; 20] {
    hash(&[b"req3", s])
}

/// Which direction a cipher is for: the initiator sends with `keyA`, the receiver with `keyB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    FromInitiator,
    FromReceiver,
}

/// RC4 keyed with `HASH('keyA' or 'keyB', S, SKEY)`, its first 1024 bytes discarded.
pub(crate) fn cipher(direction: Direction, s: &[u8; KEY_LEN], skey: &[u8; 20]) -> Rc4 {
    let label: &[u8] = match direction {
        Direction::FromInitiator => b"keyA",
        Direction::FromReceiver => b"keyB",
    };
    rc4_discarded(&hash(&[label, s, skey]))
}

/// RC4 keyed with `key`, after dropping the first [`DISCARD`] keystream bytes.
pub(crate) fn rc4_discarded(key: &[u8; 20]) -> Rc4 {
    let mut rc4 = Rc4::new(key);
    rc4.apply(&mut [0u8; DISCARD]);
    rc4
}

#[cfg(test)]
mod tests {
    //! Known answers computed apart from this code: the DH values and hashes with Python's
    //! `pow` and `hashlib`, the keystream (its bytes 1024..1040) with Python's `cryptography`
    //! ARC4 on OpenSSL. (Not `openssl enc -rc4`: it cuts keys to 16 bytes.)
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    const XA: [u8; 20] = [
        1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
    ];
    const YA: &str = "96e112dab29e8c5272accb9b17b26887ce54a144a4e3b697c7d159b7a817e556b0918db2b4c658e0\
        2a87f7e5fb14b18a553e084cbf3dad2d30f16596ccb982d406258c61b30c5c1dae2ddc60bdbd48d79896312aad63\
        238c39e1a633821eb693";
    const YB: &str = "8f9c9f400fe9b3258f3e48598a95c7805cc90c995cd770283322679d132ebdae09b75eeadc01de69\
        8ef86945cf38314a95fad08c2ad5641802bd5f658eb3ea0db2712c04aa5efed03deecc5104f75d869d2d197e4336\
        c61f0d71d763bee99416";
    const S: &str = "cd8536d5f2c98f01f8f5a648f69f6f2d6a6aafd044666b01fc8beb81f63ddbea0a862b2b6306431f\
        7a308b063f795d181ca711b22ab0602a9c4b5d1c53269837773ff53a4de47d9aace6b6a1b789ea37077507842742\
        eb7581ea180b16748826";
    const SKEY: &str = "d2474e86c95b19b8bcfdb92bc12c9d44667cfa36";

    fn strip(s: &str) -> String {
        s.split_whitespace().collect()
    }

    fn arr<const N: usize>(s: &str) -> [u8; N] {
        hex(&strip(s)).try_into().unwrap()
    }

    #[test]
    fn diffie_hellman_matches_known_answers_both_ways() {
        let xb: Vec<u8> = (0x21..0x35).collect();
        let a = KeyPair::from_private(&XA);
        let b = KeyPair::from_private(&xb);
        assert_eq!(a.public(), &arr::<96>(YA));
        assert_eq!(b.public(), &arr::<96>(YB));
        let s = arr::<96>(S);
        assert_eq!(a.shared_secret(b.public()).unwrap(), s);
        assert_eq!(b.shared_secret(a.public()).unwrap(), s);
    }

    #[test]
    fn hashes_match_known_answers() {
        let s = arr::<96>(S);
        let skey = arr::<20>(SKEY);
        assert_eq!(
            req1(&s),
            arr(&strip("361e3668027ecec9d1086d5f839d191781e8de17"))
        );
        assert_eq!(
            req2(&skey),
            arr(&strip("6aed632e76c85548eb1ef11765a5a9d35d061581"))
        );
        assert_eq!(
            req3(&s),
            arr(&strip("3636fc5ac2a9bdd097857f8b02403004817d467d"))
        );
    }

    #[test]
    fn ciphers_drop_1024_bytes_of_keystream() {
        let s = arr::<96>(S);
        let skey = arr::<20>(SKEY);
        for (dir, want) in [
            (Direction::FromInitiator, "1bb9bbbe328a5de9059acf5be4aaadd8"),
            (Direction::FromReceiver, "b91ec39f6fc6213a5555bdd72060ce73"),
        ] {
            let mut ks = [0u8; 16];
            cipher(dir, &s, &skey).apply(&mut ks);
            assert_eq!(ks.to_vec(), hex(want), "{dir:?}");
        }
        // The same from the key itself (keyA = HASH('keyA', S, SKEY)).
        let mut ks = [0u8; 16];
        rc4_discarded(&arr(&strip("045430267ecc78c5ef82d8e1edba7ed506fe3aab"))).apply(&mut ks);
        assert_eq!(ks.to_vec(), hex("1bb9bbbe328a5de9059acf5be4aaadd8"));
    }

    #[test]
    fn degenerate_public_keys_are_refused() {
        let a = KeyPair::generate();
        let mut p_minus_1 = [0u8; 96];
        p_minus_1.copy_from_slice(&to_key_bytes(&(prime() - 1u8)));
        let mut one = [0u8; 96];
        one[95] = 1;
        for bad in [[0u8; 96], one, p_minus_1, [0xff; 96]] {
            assert_eq!(a.shared_secret(&bad), Err(BadPublicKey));
        }
        let b = KeyPair::generate();
        assert_eq!(
            a.shared_secret(b.public()).unwrap(),
            b.shared_secret(a.public()).unwrap()
        );
    }
}
