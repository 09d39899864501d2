//! Local Service Discovery (BEP 14): peers of a torrent on the local network, found with no
//! tracker and no DHT. Each client multicasts a `BT-SEARCH` announce naming its torrents and
//! its port (`message`) to 239.192.152.143:6771 (and `[ff15::efc0:988f]:6771` on IPv6); whoever
//! serves one of them learns a peer: the sender's address with the announced port.
//!
//! One task serves every torrent of a process: a session registers its info-hash, its port
//! and where found peers go ([`Lsd::register`]), and the task announces it and passes on the
//! peers others announce for it. When to announce and what to take in is `policy` (pure,
//! time passed in); the sockets and interfaces are `socket`. Our own announces come back to
//! us (multicast loops back, so that two clients on one machine find each other): the cookie
//! we send tells them apart. Private torrents are never announced (BEP 27): the session does
//! not register them.
//!
//! The task ends when the last [`Lsd`] handle and [`Registration`] are dropped.

pub mod message;
mod policy;
mod socket;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::metainfo::InfoHash;
use policy::{Intake, Schedule};
use socket::Channel;

#[derive(Debug, Error)]
pub enum LsdError {
    #[error("cannot bind UDP port {port}: {source}")]
    Bind { port: u16, source: io::Error },
    #[error("cannot set up a UDP socket: {0}")]
    Socket(io::Error),
    #[error("cannot list the network interfaces: {0}")]
    Interfaces(io::Error),
    #[error("no network interface that is up and does multicast")]
    NoInterface,
    #[error("cannot join the multicast group on {interface}: {source}")]
    Join {
        interface: String,
        source: io::Error,
    },
}

/// The handle to the process's discovery task; cheap to clone.
#[derive(Clone)]
pub struct Lsd {
    cmds: mpsc::UnboundedSender<Cmd>,
    ids: Arc<AtomicU64>,
}

enum Cmd {
    Add {
        id: u64,
        info_hash: InfoHash,
        port: u16,
        peers: mpsc::Sender<Vec<SocketAddr>>,
    },
    Remove {
        id: u64,
        info_hash: InfoHash,
    },
}

impl std::fmt::Debug for Lsd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lsd").finish_non_exhaustive()
    }
}

/// A torrent announced and listened for until this is dropped.
pub struct Registration {
    cmds: mpsc::UnboundedSender<Cmd>,
    id: u64,
    info_hash: InfoHash,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = self.cmds.send(Cmd::Remove {
            id: self.id,
            info_hash: self.info_hash,
        });
    }
}

impl Lsd {
    /// Joins the group of each family listened on (the first address of each in `listen`) on
    /// that address's interfaces (every interface for an unspecified address), and starts the
    /// task. Fails only if no family could be set up; call it inside a tokio runtime.
    pub fn start(listen: &[IpAddr]) -> Result<Lsd, LsdError> {
        let mut channels = Vec::new();
        let mut failed = None;
        let v4 = listen.iter().find_map(|ip| match ip {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        });
        let v6 = listen.iter().find_map(|ip| match ip {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        });
        let opened = v4.map(Channel::v4).into_iter().chain(v6.map(Channel::v6));
        for channel in opened {
            match channel {
                Ok(c) => channels.push(c),
                Err(e) => {
                    tracing::debug!("LSD: {e}");
                    failed = Some(e);
                }
            }
        }
        match failed {
            Some(e) if channels.is_empty() => Err(e),
            _ => Ok(Lsd::spawn(channels)),
        }
    }

    fn spawn(channels: Vec<Channel>) -> Lsd {
        let (cmds, rx) = mpsc::unbounded_channel();
        let cookie = format!("{:08x}", rand::random::<u32>());
        tokio::spawn(Task::new(channels, cookie).run(rx));
        Lsd {
            cmds,
            ids: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Announces `info_hash` with `port` and sends the peers others announce for it to
    /// `peers`, until the registration is dropped (a later registration of the same torrent
    /// replaces this one).
    pub fn register(
        &self,
        info_hash: InfoHash,
        port: u16,
        peers: mpsc::Sender<Vec<SocketAddr>>,
    ) -> Registration {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let _ = self.cmds.send(Cmd::Add {
            id,
            info_hash,
            port,
            peers,
        });
        Registration {
            cmds: self.cmds.clone(),
            id,
            info_hash,
        }
    }

    /// [`Lsd::register`] for a session: registered until `shutdown` turns true or `peers`
    /// closes.
    pub fn spawn_announce(
        &self,
        info_hash: InfoHash,
        port: u16,
        peers: mpsc::Sender<Vec<SocketAddr>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let registration = self.register(info_hash, port, peers.clone());
        tokio::spawn(async move {
            let _registration = registration;
            tokio::select! {
                _ = shutdown.wait_for(|&s| s) => {}
                () = peers.closed() => {}
            }
        });
    }
}

/// A registered torrent, as the task knows it.
struct Torrent {
    id: u64,
    peers: mpsc::Sender<Vec<SocketAddr>>,
}

struct Task {
    channels: Vec<Channel>,
    cookie: String,
    torrents: HashMap<InfoHash, Torrent>,
    schedule: Schedule,
    intake: Intake,
}

impl Task {
    fn new(channels: Vec<Channel>, cookie: String) -> Task {
        Task {
            channels,
            cookie,
            torrents: HashMap::new(),
            schedule: Schedule::default(),
            intake: Intake::new(Instant::now()),
        }
    }

    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        let (heard, mut datagrams) = mpsc::channel(64);
        for c in &self.channels {
            tokio::spawn(receive(c.socket.clone(), heard.clone()));
        }
        drop(heard);
        loop {
            let wake = self.schedule.next_due();
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => self.command(cmd, Instant::now()),
                    None => return,
                },
                Some((from, datagram)) = datagrams.recv() => {
                    self.heard(from, &datagram, Instant::now());
                }
                () = sleep_until(wake) => {}
            }
            self.announce_due(Instant::now()).await;
        }
    }

    fn command(&mut self, cmd: Cmd, now: Instant) {
        match cmd {
            Cmd::Add {
                id,
                info_hash,
                port,
                peers,
            } => {
                self.torrents.insert(info_hash, Torrent { id, peers });
                self.schedule.add(info_hash, port, now);
            }
            Cmd::Remove { id, info_hash } => {
                if self.torrents.get(&info_hash).is_some_and(|t| t.id == id) {
                    self.remove(&info_hash);
                }
            }
        }
    }

    fn remove(&mut self, info_hash: &InfoHash) {
        self.torrents.remove(info_hash);
        self.schedule.remove(info_hash);
        self.intake.forget(info_hash);
    }

    /// A datagram from `from`: peers for the torrents it names that we serve.
    fn heard(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) {
        if !self.intake.datagram(now) {
            tracing::trace!(%from, "LSD: too many announces; dropped");
            return;
        }
        let announce = match message::parse(datagram) {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(%from, "LSD: ignored a datagram: {e}");
                return;
            }
        };
        if announce.has_cookie(&self.cookie) {
            return;
        }
        let mut peer = from;
        peer.set_port(announce.port);
        if peer.ip().is_unspecified() || peer.ip().is_multicast() {
            return;
        }
        for info_hash in announce.info_hashes {
            let Some(t) = self.torrents.get(&info_hash) else {
                continue;
            };
            if !self.intake.fresh(info_hash, peer, now) {
                continue;
            }
            tracing::debug!(%peer, %info_hash, "LSD: found a peer");
            match t.peers.try_send(vec![peer]) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.remove(&info_hash);
                    continue;
                }
            }
            self.schedule.answer(&info_hash, now);
        }
    }

    async fn announce_due(&mut self, now: Instant) {
        for (port, hashes) in self.schedule.take_due(now) {
            for c in &self.channels {
                for datagram in message::encode(c.host, port, &self.cookie, &hashes) {
                    let interfaces = c.send(&datagram).await;
                    let torrents = hashes.len();
                    if interfaces == 0 {
                        tracing::debug!(group = c.host, "LSD: announce sent nowhere");
                    } else {
                        tracing::debug!(
                            port,
                            torrents,
                            group = c.host,
                            interfaces,
                            "LSD: announced"
                        );
                    }
                }
            }
        }
    }
}

/// Reads datagrams from one socket for the task until the task is gone.
async fn receive(socket: Arc<tokio::net::UdpSocket>, heard: mpsc::Sender<(SocketAddr, Vec<u8>)>) {
    // One byte more than an announce may have: a longer datagram shows as too long.
    let mut buf = vec![0u8; message::MAX_RECEIVED + 1];
    loop {
        tokio::select! {
            got = socket.recv_from(&mut buf) => match got {
                Ok((n, from)) => {
                    // Full: the task is behind, and the intake would drop it anyway.
                    if let Err(mpsc::error::TrySendError::Closed(_)) =
                        heard.try_send((from, buf[..n].to_vec()))
                    {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!("LSD: receive failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            () = heard.closed() => return,
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
