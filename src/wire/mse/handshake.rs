//! The MSE handshake, both sides, over any byte stream:
//!
//! ```text
//! 1 A->B: Ya, PadA
//! 2 B->A: Yb, PadB
//! 3 A->B: HASH('req1', S), HASH('req2', SKEY) xor HASH('req3', S),
//!         ENCRYPT(VC, crypto_provide, len(PadC), PadC, len(IA)), ENCRYPT(IA)
//! 4 B->A: ENCRYPT(VC, crypto_select, len(PadD), PadD), ENCRYPT2(payload)
//! 5 A->B: ENCRYPT2(payload)
//! ```
//! Neither side knows the other's pad length, so each finds the end of it by searching: the
//! receiver for `HASH('req1', S)`, the initiator for the encrypted VC (eight zero bytes under
//! keyB), each within 512 bytes. Every read is bounded by what the step may still need, and
//! every step by one deadline, so a peer sending garbage or nothing fails the handshake fast.
//! Bytes read past the end of the handshake are the start of the payload and are kept.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::keys::{self, Direction, KEY_LEN, KeyPair};
use super::rc4::Rc4;
use super::stream::{MseStream, ReadSide, WriteSide};
use super::{MAX_PAD, Method, Methods, MseError, Serving, Stage};

/// The verification constant: eight zero bytes.
const VC: [u8; 8] = [0; 8];

/// How long each side's pads are; random unless a test fixes them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pads {
    /// PadA or PadB (random bytes after the public key).
    pub(crate) key: usize,
    /// PadC or PadD (zeros, encrypted).
    pub(crate) crypto: usize,
}

impl Pads {
    pub(crate) fn random() -> Pads {
        Pads {
            key: rand::random_range(0..=MAX_PAD),
            crypto: rand::random_range(0..=MAX_PAD),
        }
    }
}

/// Bytes read from the peer during the handshake, and where the next step starts in them.
struct Inbox {
    buf: Vec<u8>,
    at: usize,
    deadline: Instant,
}

impl Inbox {
    fn new(already: &[u8], deadline: Instant) -> Inbox {
        Inbox {
            buf: already.to_vec(),
            at: 0,
            deadline,
        }
    }

    fn available(&self) -> usize {
        self.buf.len() - self.at
    }

    /// Reads until `n` unread bytes are in, never more than `n` (but keeps what an earlier
    /// read brought beyond).
    async fn fill<S: AsyncRead + Unpin>(
        &mut self,
        s: &mut S,
        n: usize,
        stage: Stage,
    ) -> Result<(), MseError> {
        while self.available() < n {
            self.read_some(s, n - self.available(), stage).await?;
        }
        Ok(())
    }

    /// One read of at most `max` bytes, before the deadline.
    async fn read_some<S: AsyncRead + Unpin>(
        &mut self,
        s: &mut S,
        max: usize,
        stage: Stage,
    ) -> Result<(), MseError> {
        let old = self.buf.len();
        self.buf.resize(old + max, 0);
        let read = tokio::time::timeout_at(self.deadline, s.read(&mut self.buf[old..])).await;
        let n = match read {
            Err(_) => Err(MseError::Timeout { stage }),
            Ok(Err(source)) => Err(MseError::Io { stage, source }),
            Ok(Ok(0)) => Err(MseError::Closed { stage }),
            Ok(Ok(n)) => Ok(n),
        };
        self.buf.truncate(old + *n.as_ref().unwrap_or(&0));
        n.map(|_| ())
    }

    /// The next `n` bytes, which [`Inbox::fill`] brought in.
    fn take(&mut self, n: usize) -> &mut [u8] {
        let from = self.at;
        self.at += n;
        &mut self.buf[from..from + n]
    }

    /// Skips past `pattern`, which must start within `window` bytes of here; reads no further
    /// than that window and the pattern.
    async fn find<S: AsyncRead + Unpin>(
        &mut self,
        s: &mut S,
        pattern: &[u8],
        window: usize,
        stage: Stage,
    ) -> Result<(), MseError> {
        let limit = window + pattern.len();
        loop {
            let end = self.buf.len().min(self.at + limit);
            if let Some(i) = self.buf[self.at..end]
                .windows(pattern.len())
                .position(|w| w == pattern)
            {
                self.at += i + pattern.len();
                return Ok(());
            }
            if self.available() >= limit {
                return Err(MseError::NotFound { stage });
            }
            self.read_some(s, limit - self.available(), stage).await?;
        }
    }

    /// What is left: the first bytes of the payload stream.
    fn rest(mut self) -> Vec<u8> {
        self.buf.drain(..self.at);
        self.buf
    }
}

async fn send<S: AsyncWrite + Unpin>(
    s: &mut S,
    bytes: &[u8],
    deadline: Instant,
    stage: Stage,
) -> Result<(), MseError> {
    let write = async {
        s.write_all(bytes).await?;
        s.flush().await
    };
    match tokio::time::timeout_at(deadline, write).await {
        Err(_) => Err(MseError::Timeout { stage }),
        Ok(Err(source)) => Err(MseError::Io { stage, source }),
        Ok(Ok(())) => Ok(()),
    }
}

/// Our public key and `len` random bytes of pad.
fn key_message(keys: &KeyPair, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(KEY_LEN + len);
    out.extend_from_slice(keys.public());
    out.resize(KEY_LEN + len, 0);
    rand::fill(&mut out[KEY_LEN..]);
    out
}

fn their_key(inbox: &mut Inbox) -> [u8; KEY_LEN] {
    let mut y = [0u8; KEY_LEN];
    y.copy_from_slice(inbox.take(KEY_LEN));
    y
}

fn u16_at(b: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([b[0], b[1]]))
}

/// The initiator's side, from our first byte to the payload stream.
pub(crate) async fn initiate<S>(
    mut s: S,
    skey: &[u8; 20],
    provide: Methods,
    ia: &[u8],
    pads: Pads,
    deadline: Instant,
) -> Result<MseStream<S>, MseError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ia_len = u16::try_from(ia.len()).map_err(|_| MseError::InitialPayloadTooLong)?;
    let keys = KeyPair::generate();
    send(
        &mut s,
        &key_message(&keys, pads.key),
        deadline,
        Stage::PublicKey,
    )
    .await?;

    let mut inbox = Inbox::new(&[], deadline);
    inbox.fill(&mut s, KEY_LEN, Stage::PublicKey).await?;
    let secret = keys
        .shared_secret(&their_key(&mut inbox))
        .map_err(|_| MseError::BadPublicKey)?;
    let mut enc = keys::cipher(Direction::FromInitiator, &secret, skey);
    let mut dec = keys::cipher(Direction::FromReceiver, &secret, skey);

    let mut msg = Vec::with_capacity(40 + 16 + pads.crypto + ia.len());
    msg.extend_from_slice(&keys::req1(&secret));
    let (req2, req3) = (keys::req2(skey), keys::req3(&secret));
    msg.extend(req2.iter().zip(req3).map(|(a, b)| a ^ b));
    let secret_from = msg.len();
    msg.extend_from_slice(&VC);
    msg.extend_from_slice(&provide.0.to_be_bytes());
    msg.extend_from_slice(&(pads.crypto as u16).to_be_bytes());
    msg.resize(msg.len() + pads.crypto, 0);
    msg.extend_from_slice(&ia_len.to_be_bytes());
    msg.extend_from_slice(ia);
    enc.apply(&mut msg[secret_from..]);
    send(&mut s, &msg, deadline, Stage::Negotiation).await?;

    // The receiver's VC, encrypted, is the first eight bytes of its keystream.
    let mut vc = VC;
    dec.apply(&mut vc);
    inbox.find(&mut s, &vc, MAX_PAD, Stage::Sync).await?;
    inbox.fill(&mut s, 6, Stage::Negotiation).await?;
    let head = inbox.take(6);
    dec.apply(head);
    let select = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let pad_len = u16_at(&head[4..]);
    let method = match Method::from_bits(select) {
        Some(m) if provide.contains(m) => m,
        _ => return Err(MseError::BadSelect { select }),
    };
    if pad_len > MAX_PAD {
        return Err(MseError::PadTooLong { len: pad_len });
    }
    inbox.fill(&mut s, pad_len, Stage::Negotiation).await?;
    dec.apply(inbox.take(pad_len));
    Ok(finish(s, inbox.rest(), Vec::new(), method, enc, dec))
}

/// What the receiver learned: the stream and the torrent the initiator asked for.
pub struct Accepted<S> {
    pub stream: MseStream<S>,
    /// The info-hash the initiator proved it knows.
    pub skey: [u8; 20],
}

/// The receiver's side. `already` holds bytes read from the stream before (the start of
/// `Ya`); `lookup` names the torrent whose `HASH('req2', SKEY)` the initiator sent, with the
/// methods we accept for it.
pub(crate) async fn accept<S, F>(
    mut s: S,
    already: &[u8],
    lookup: F,
    pads: Pads,
    deadline: Instant,
) -> Result<Accepted<S>, MseError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&[u8; 20]) -> Option<Serving>,
{
    let mut inbox = Inbox::new(already, deadline);
    inbox.fill(&mut s, KEY_LEN, Stage::PublicKey).await?;
    let theirs = their_key(&mut inbox);
    let keys = KeyPair::generate();
    send(
        &mut s,
        &key_message(&keys, pads.key),
        deadline,
        Stage::PublicKey,
    )
    .await?;
    let secret = keys
        .shared_secret(&theirs)
        .map_err(|_| MseError::BadPublicKey)?;

    inbox
        .find(&mut s, &keys::req1(&secret), MAX_PAD, Stage::Sync)
        .await?;
    inbox.fill(&mut s, 20 + 14, Stage::Negotiation).await?;
    let mut req2 = [0u8; 20];
    for ((out, a), b) in req2.iter_mut().zip(inbox.take(20)).zip(keys::req3(&secret)) {
        *out = *a ^ b;
    }
    let Serving { skey, selection } = lookup(&req2).ok_or(MseError::UnknownTorrent)?;
    let mut dec = keys::cipher(Direction::FromInitiator, &secret, &skey);
    let mut enc = keys::cipher(Direction::FromReceiver, &secret, &skey);

    let head = inbox.take(14);
    dec.apply(head);
    if head[..8] != VC {
        return Err(MseError::BadVerification);
    }
    let provide = Methods(u32::from_be_bytes([head[8], head[9], head[10], head[11]]));
    let pad_len = u16_at(&head[12..]);
    if pad_len > MAX_PAD {
        return Err(MseError::PadTooLong { len: pad_len });
    }
    inbox.fill(&mut s, pad_len + 2, Stage::Negotiation).await?;
    let pad_and_len = inbox.take(pad_len + 2);
    dec.apply(pad_and_len);
    let ia_len = u16_at(&pad_and_len[pad_len..]);
    inbox.fill(&mut s, ia_len, Stage::Negotiation).await?;
    let ia = inbox.take(ia_len);
    dec.apply(ia);
    let ia = ia.to_vec();

    let method = selection.choose(provide).ok_or(MseError::NoCommonMethod {
        provided: provide.0,
    })?;
    let mut msg = Vec::with_capacity(14 + pads.crypto);
    msg.extend_from_slice(&VC);
    msg.extend_from_slice(&method.bits().to_be_bytes());
    msg.extend_from_slice(&(pads.crypto as u16).to_be_bytes());
    msg.resize(msg.len() + pads.crypto, 0);
    enc.apply(&mut msg);
    send(&mut s, &msg, deadline, Stage::Negotiation).await?;
    let stream = finish(s, inbox.rest(), ia, method, enc, dec);
    Ok(Accepted { stream, skey })
}

/// The payload stream: `ia` (already plain), then the bytes read past the handshake, then the
/// stream, with RC4 continuing both ways if it was chosen.
fn finish<S>(
    s: S,
    mut rest: Vec<u8>,
    mut ia: Vec<u8>,
    method: Method,
    enc: Rc4,
    mut dec: Rc4,
) -> MseStream<S> {
    let (rx, tx) = match method {
        Method::Rc4 => {
            dec.apply(&mut rest);
            ia.append(&mut rest);
            (ReadSide::new(ia, Some(dec)), WriteSide::new(Some(enc)))
        }
        Method::Plaintext => {
            ia.append(&mut rest);
            (ReadSide::new(ia, None), WriteSide::new(None))
        }
    };
    MseStream::new(s, rx, tx, method)
}
