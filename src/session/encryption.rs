//! Protocol encryption as a session uses it: the `--encryption` policy (which attempts a dial
//! makes, in which order, and what an incoming connection may choose), and telling an
//! encrypted incoming connection from a plaintext one. The handshake itself is `wire::mse`;
//! dialling with the policy is `dial`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::stream::PeerStream;
use crate::wire::mse::{self, Method, Methods, MseError, Selection, Serving};
use crate::wire::{Handshake, PROTOCOL, WireError, read_handshake};

/// Which connections are encrypted (`--encryption`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Encryption {
    /// Incoming: plaintext and encrypted both. Outgoing: plaintext first; a peer that hangs
    /// up on it is dialled again at once, encrypted.
    #[default]
    Allow,
    /// Outgoing: encrypted first (RC4 preferred, plaintext accepted), plaintext again if the
    /// peer does not speak MSE. Incoming: both, RC4 chosen when offered.
    Prefer,
    /// RC4-encrypted connections only, both ways.
    Require,
    /// Plaintext only; encrypted incoming connections are refused.
    Disable,
}

impl Encryption {
    pub const ALL: [Encryption; 4] = [
        Encryption::Allow,
        Encryption::Prefer,
        Encryption::Require,
        Encryption::Disable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Encryption::Allow => "allow",
            Encryption::Prefer => "prefer",
            Encryption::Require => "require",
            Encryption::Disable => "disable",
        }
    }

    /// The attempt to dial with first and the one to fall back on: plaintext -> encrypted
    /// when the peer hung up on our plaintext handshake, encrypted -> plaintext when it does
    /// not speak MSE. `worked`: what connected to this address before, tried first.
    pub(crate) fn attempts(self, worked: Option<Attempt>) -> (Attempt, Option<Attempt>) {
        use Attempt::*;
        match (self, worked) {
            (Encryption::Disable, _) => (Plaintext, None),
            (Encryption::Require, _) => (Encrypted, None),
            (Encryption::Allow, Some(Encrypted)) => (Encrypted, Some(Plaintext)),
            (Encryption::Allow, _) => (Plaintext, Some(Encrypted)),
            (Encryption::Prefer, Some(Plaintext)) => (Plaintext, Some(Encrypted)),
            (Encryption::Prefer, _) => (Encrypted, Some(Plaintext)),
        }
    }

    /// The methods offered when we dial encrypted.
    pub(crate) fn provide(self) -> Methods {
        match self {
            Encryption::Require => Methods::RC4,
            _ => Methods::BOTH,
        }
    }

    /// What an encrypted incoming connection may choose; `None`: refused.
    pub(crate) fn selection(self) -> Option<Selection> {
        let (allowed, prefer) = match self {
            Encryption::Disable => return None,
            // Plaintext costs no CPU, and a peer offering it is content with it.
            Encryption::Allow => (Methods::BOTH, Method::Plaintext),
            Encryption::Prefer => (Methods::BOTH, Method::Rc4),
            Encryption::Require => (Methods::RC4, Method::Rc4),
        };
        Some(Selection { allowed, prefer })
    }

    /// Whether an incoming plaintext BitTorrent handshake is answered.
    pub(crate) fn accepts_plaintext(self) -> bool {
        self != Encryption::Require
    }
}

impl fmt::Display for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Encryption {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Encryption::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| format!("{s:?} is none of allow, prefer, require, disable"))
    }
}

/// How one dial speaks to the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attempt {
    Plaintext,
    Encrypted,
}

/// Why an incoming connection was dropped before its handshake was routed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IncomingError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Mse(#[from] MseError),
    #[error("encrypted connection refused: no torrent here accepts encryption")]
    EncryptedRefused,
    #[error("the handshake names another torrent than the encryption handshake")]
    TorrentMismatch,
}

/// Reads an incoming connection's BitTorrent handshake, after running the MSE receiver if
/// the connection does not open as a plaintext handshake does (19, then "BitTorrent
/// protocol"; a public key starts so once in 2^160). `lookup` finds the torrent an encrypted
/// connection asks for (see `mse::accept`); `None` when no torrent accepts encryption.
pub(crate) async fn read_incoming<F>(
    mut stream: PeerStream,
    lookup: Option<F>,
    within: Duration,
) -> Result<(PeerStream, Handshake), IncomingError>
where
    F: FnOnce(&[u8; 20]) -> Option<Serving>,
{
    let mut first = [0u8; Handshake::LEN];
    read_full(&mut stream, &mut first[..20]).await?;
    if usize::from(first[0]) == PROTOCOL.len() && &first[1..20] == PROTOCOL {
        read_full(&mut stream, &mut first[20..])
            .await
            .map_err(|e| match e {
                WireError::Closed => WireError::Truncated,
                e => e,
            })?;
        return Ok((stream, Handshake::decode(&first)?));
    }
    let lookup = lookup.ok_or(IncomingError::EncryptedRefused)?;
    let accepted = mse::accept(stream, &first[..20], lookup, within).await?;
    let mut stream = PeerStream::encrypted(accepted.stream);
    let theirs = read_handshake(&mut stream).await?;
    if theirs.info_hash != accepted.skey {
        return Err(IncomingError::TorrentMismatch);
    }
    Ok((stream, theirs))
}

/// Fills `buf`; [`WireError::Closed`] if the stream ends before the first byte.
async fn read_full(stream: &mut PeerStream, buf: &mut [u8]) -> Result<(), WireError> {
    use tokio::io::AsyncReadExt;
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]).await? {
            0 if filled == 0 => return Err(WireError::Closed),
            0 => return Err(WireError::Truncated),
            n => filled += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Host;
    use crate::wire::write_handshake;
    use Attempt::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const WITHIN: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn the_host_routes_each_peer_as_its_torrent_allows() {
        let host = Host::bind("127.0.0.1:0".parse().unwrap(), WITHIN)
            .await
            .unwrap();
        let at = SocketAddr::from(([127, 0, 0, 1], host.port()));
        let (required, disabled) = ([1; 20], [2; 20]);
        let mut req = host.register(required, Encryption::Require);
        let mut dis = host.register(disabled, Encryption::Disable);

        // Encrypted, for the torrent that requires it: routed, and the bytes after the
        // handshake come through decrypted.
        let tcp = TcpStream::connect(at).await.unwrap();
        let mut s = mse::initiate(tcp, &required, Methods::BOTH, &[], WITHIN)
            .await
            .unwrap();
        assert_eq!(s.method(), Method::Rc4);
        write_handshake(&mut s, &Handshake::new(required, [9; 20]))
            .await
            .unwrap();
        s.write_all(b"hello").await.unwrap();
        s.flush().await.unwrap();
        let mut got = req.recv().await.unwrap();
        assert!(got.stream.is_encrypted());
        assert_eq!(got.theirs.peer_id, [9; 20]);
        let mut hello = [0u8; 5];
        got.stream.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello");

        // Plaintext, for the torrent that requires encryption: closed unanswered.
        let mut plain = TcpStream::connect(at).await.unwrap();
        write_handshake(&mut plain, &Handshake::new(required, [8; 20]))
            .await
            .unwrap();
        assert_eq!(plain.read(&mut [0u8; 1]).await.unwrap(), 0, "closed");

        // Encrypted, for the torrent that refuses encryption: the handshake fails.
        let tcp = TcpStream::connect(at).await.unwrap();
        let r = mse::initiate(tcp, &disabled, Methods::BOTH, &[], WITHIN).await;
        assert!(
            r.is_err(),
            "encrypted connection to a plaintext-only torrent"
        );

        // Plaintext for it: routed.
        let mut plain = TcpStream::connect(at).await.unwrap();
        write_handshake(&mut plain, &Handshake::new(disabled, [7; 20]))
            .await
            .unwrap();
        let got = dis.recv().await.unwrap();
        assert!(!got.stream.is_encrypted());
        assert_eq!(got.theirs.peer_id, [7; 20]);
        assert!(
            req.try_recv().is_err() && dis.try_recv().is_err(),
            "nothing else"
        );
    }

    #[tokio::test]
    async fn a_host_where_nothing_accepts_encryption_hangs_up_at_once() {
        let host = Host::bind("127.0.0.1:0".parse().unwrap(), WITHIN)
            .await
            .unwrap();
        let at = SocketAddr::from(([127, 0, 0, 1], host.port()));
        let _rx = host.register([2; 20], Encryption::Disable);
        let tcp = TcpStream::connect(at).await.unwrap();
        let e = mse::initiate(tcp, &[2; 20], Methods::BOTH, &[], WITHIN)
            .await
            .err()
            .unwrap();
        assert!(e.peer_does_not_speak_mse(), "{e:?}");
    }

    #[test]
    fn each_policy_dials_in_its_order_and_remembers() {
        let cases = [
            (Encryption::Allow, None, (Plaintext, Some(Encrypted))),
            (
                Encryption::Allow,
                Some(Plaintext),
                (Plaintext, Some(Encrypted)),
            ),
            (
                Encryption::Allow,
                Some(Encrypted),
                (Encrypted, Some(Plaintext)),
            ),
            (Encryption::Prefer, None, (Encrypted, Some(Plaintext))),
            (
                Encryption::Prefer,
                Some(Plaintext),
                (Plaintext, Some(Encrypted)),
            ),
            (Encryption::Require, None, (Encrypted, None)),
            (Encryption::Require, Some(Plaintext), (Encrypted, None)),
            (Encryption::Disable, None, (Plaintext, None)),
            (Encryption::Disable, Some(Encrypted), (Plaintext, None)),
        ];
        for (policy, worked, want) in cases {
            assert_eq!(policy.attempts(worked), want, "{policy} after {worked:?}");
        }
    }

    #[test]
    fn each_policy_accepts_what_it_says() {
        assert_eq!(Encryption::Require.provide(), Methods::RC4);
        assert_eq!(Encryption::Prefer.provide(), Methods::BOTH);
        assert!(Encryption::Disable.selection().is_none());
        let require = Encryption::Require.selection().unwrap();
        assert_eq!(require.choose(Methods::BOTH), Some(Method::Rc4));
        assert_eq!(require.choose(Methods(0x01)), None);
        let prefer = Encryption::Prefer.selection().unwrap();
        assert_eq!(prefer.choose(Methods::BOTH), Some(Method::Rc4));
        assert_eq!(prefer.choose(Methods(0x01)), Some(Method::Plaintext));
        let allow = Encryption::Allow.selection().unwrap();
        assert_eq!(allow.choose(Methods::RC4), Some(Method::Rc4));
        assert!(!Encryption::Require.accepts_plaintext());
        assert!(Encryption::Disable.accepts_plaintext());
        for e in Encryption::ALL {
            assert_eq!(e.name().parse::<Encryption>(), Ok(e));
        }
        assert!("forced".parse::<Encryption>().is_err());
    }
}
