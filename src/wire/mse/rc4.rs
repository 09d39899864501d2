//! RC4, the stream cipher MSE fixes.
//!
//! Written here rather than taken from RustCrypto's `rc4`: on a download the keystream is
//! nearly all the CPU that encryption adds, and the crate makes it a byte at a time through
//! its `StreamCipher` plumbing, at 1.7 to 1.8 times the time taken here (the state in `u32`s,
//! so no byte loads and stores merge, and eight keystream bytes xored as one word). This is
//! as fast as RC4 gets: OpenSSL's hand-written assembly (`openssl speed -evp rc4`) measures
//! the same 2.4 to 2.7 ns a byte on the machines we bench on, which is most of what a whole
//! plain TCP download costs us per byte (the `encryption` bench shows both).
//! The algorithm is the textbook one; the tests check it against the crate (kept as a
//! dev-dependency for that), RFC 6229 and OpenSSL.

/// An RC4 keystream, at the position of the next byte.
#[derive(Clone)]
pub(crate) struct Rc4 {
    /// The permutation of 0..=255, one entry per `u32`.
    s: [u32; 256],
    i: u32,
    j: u32,
}

impl Rc4 {
    /// The keystream of `key` (1 to 256 bytes; MSE's keys are 20), from its first byte.
    pub(crate) fn new(key: &[u8]) -> Rc4 {
        debug_assert!((1..=256).contains(&key.len()));
        let mut s = [0u32; 256];
        for (n, v) in (0u32..).zip(s.iter_mut()) {
            *v = n;
        }
        let mut j = 0u32;
        for (i, k) in (0..256).zip(key.iter().cycle()) {
            j = (j + s[i] + u32::from(*k)) & 0xff;
            s.swap(i, j as usize);
        }
        Rc4 { s, i: 0, j: 0 }
    }

    #[inline(always)]
    fn next(s: &mut [u32; 256], i: &mut u32, j: &mut u32) -> u32 {
        *i = (*i + 1) & 0xff;
        let a = s[*i as usize];
        *j = (*j + a) & 0xff;
        let b = s[*j as usize];
        s[*i as usize] = b;
        s[*j as usize] = a;
        s[((a + b) & 0xff) as usize]
    }

    /// Xors the next `buf.len()` keystream bytes into `buf` (encrypts or decrypts it).
    pub(crate) fn apply(&mut self, buf: &mut [u8]) {
        let (s, mut i, mut j) = (&mut self.s, self.i, self.j);
        let mut words = buf.chunks_exact_mut(8);
        for w in &mut words {
            let mut ks = 0u64;
            for k in 0..8 {
                ks |= u64::from(Self::next(s, &mut i, &mut j)) << (8 * k);
            }
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(w);
            w.copy_from_slice(&(u64::from_le_bytes(bytes) ^ ks).to_le_bytes());
        }
        for b in words.into_remainder() {
            *b ^= Self::next(s, &mut i, &mut j) as u8;
        }
        (self.i, self.j) = (i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::rc4::{KeyInit, StreamCipher};
    use proptest::prelude::*;

    fn keystream(key: &[u8], n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        Rc4::new(key).apply(&mut out);
        out
    }

    #[test]
    fn rfc_6229_vectors() {
        // Offsets 0 and 1024 (keystream bytes 0..16 and 1024..1040) of the 40- and 128-bit keys.
        let k40 = keystream(&[1, 2, 3, 4, 5], 1040);
        assert_eq!(
            k40[..16],
            [
                0xb2, 0x39, 0x63, 0x05, 0xf0, 0x3d, 0xc0, 0x27, 0xcc, 0xc3, 0x52, 0x4a, 0x0a, 0x11,
                0x18, 0xa8
            ]
        );
        assert_eq!(
            k40[1024..],
            [
                0x30, 0xab, 0xbc, 0xc7, 0xc2, 0x0b, 0x01, 0x60, 0x9f, 0x23, 0xee, 0x2d, 0x5f, 0x6b,
                0xb7, 0xdf
            ]
        );
        let key128: Vec<u8> = (1..=16).collect();
        let k128 = keystream(&key128, 16);
        assert_eq!(
            k128,
            [
                0x9a, 0xc7, 0xcc, 0x9a, 0x60, 0x9d, 0x1e, 0xf7, 0xb2, 0x93, 0x28, 0x99, 0xcd, 0xe4,
                0x1b, 0x97
            ]
        );
    }

    proptest! {
        /// The same bytes as RustCrypto's RC4 for any key, however the stream is cut.
        #[test]
        fn matches_rustcrypto_in_any_chunks(
            key in proptest::collection::vec(any::<u8>(), 1..=64),
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            cuts in proptest::collection::vec(0usize..40, 0..20),
        ) {
            let mut want = data.clone();
            ::rc4::Rc4::new_from_slice(&key).unwrap().apply_keystream(&mut want);
            let mut got = data.clone();
            let mut ours = Rc4::new(&key);
            let mut at = 0;
            for c in cuts {
                let end = (at + c).min(got.len());
                ours.apply(&mut got[at..end]);
                at = end;
            }
            ours.apply(&mut got[at..]);
            prop_assert_eq!(got, want);
        }
    }
}
