//! What `btfs mount` was given: a `.torrent` file, an `http(s)://` URL of one, or a magnet
//! link. Magnet metadata is fetched from peers once and kept in the user's cache directory, so
//! mounting the same link again starts at once.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use tokio::sync::watch;

use crate::bencode::Encoder;
use crate::magnet::fetch::{FetchStatus, MagnetFetchError, fetch_info};
use crate::magnet::link::{Magnet, MagnetError};
use crate::metainfo::{InfoHash, MAX_TORRENT_FILE_BYTES, MetainfoError, Torrent};

#[derive(Debug, Error)]
pub enum SourceError {
    #[error(transparent)]
    Metainfo(#[from] MetainfoError),
    #[error("bad magnet link: {0}")]
    Magnet(#[from] MagnetError),
    #[error("cannot download {url}: {reason}")]
    Download { url: String, reason: String },
    #[error("fetching the magnet's metadata failed: {0}")]
    Fetch(#[from] MagnetFetchError),
}

/// A mount target, checked for syntax before anything touches the network.
#[derive(Debug, Clone)]
pub enum Target {
    File(PathBuf),
    Url(String),
    Magnet(Magnet),
}

impl Target {
    pub fn parse(s: &str) -> Result<Target, SourceError> {
        if s.starts_with("magnet:") {
            Ok(Target::Magnet(Magnet::parse(s)?))
        } else if s.starts_with("http://") || s.starts_with("https://") {
            Ok(Target::Url(s.to_string()))
        } else {
            Ok(Target::File(PathBuf::from(s)))
        }
    }

    /// A local file is read now, so a typo fails before anything else happens.
    pub fn load_local(&self) -> Result<Option<Torrent>, SourceError> {
        match self {
            Target::File(p) => Ok(Some(Torrent::from_file(p)?)),
            _ => Ok(None),
        }
    }
}

pub struct ResolveOptions {
    pub peers: Vec<SocketAddr>,
    pub listen_port: u16,
    pub metadata_timeout: Duration,
    /// Where fetched magnet metadata is kept; `None`: not kept.
    pub cache_dir: Option<PathBuf>,
    /// Finds the magnet's peers without a tracker.
    pub dht: Option<crate::dht::Dht>,
    /// Reaches peers that speak only uTP.
    pub utp: Option<crate::net::utp::Utp>,
    /// Draw a magnet fetch's progress on stderr when it is a terminal (not when several
    /// sources resolve at once: their lines would overwrite each other).
    pub progress: bool,
}

/// The torrent behind `target`, plus peers already found (magnets).
pub async fn resolve(
    target: &Target,
    opts: &ResolveOptions,
    interrupt: watch::Receiver<bool>,
) -> Result<(Torrent, Vec<SocketAddr>), SourceError> {
    match target {
        Target::File(p) => Ok((Torrent::from_file(p)?, Vec::new())),
        Target::Url(url) => Ok((download(url).await?, Vec::new())),
        Target::Magnet(m) => {
            let cached = opts
                .cache_dir
                .as_deref()
                .map(|d| cache_path(d, m.info_hash));
            if let Some(path) = &cached
                && let Ok(t) = Torrent::from_file(path)
                && t.info_hash == m.info_hash
            {
                tracing::info!("metadata from cache: {}", path.display());
                return Ok((m.add_hints_to(t), Vec::new()));
            }
            let tty = opts.progress && std::io::stderr().is_terminal();
            let (info, peers) = fetch_info(
                m,
                &opts.peers,
                opts.dht.as_ref(),
                opts.utp.as_ref(),
                opts.listen_port,
                opts.metadata_timeout,
                |s: FetchStatus| {
                    if tty {
                        let mut e = std::io::stderr().lock();
                        let _ = write!(
                            e,
                            "\r\x1b[Kfetching metadata: {}/{} pieces, {} peers answering, {} tried",
                            s.pieces_have, s.pieces_total, s.peers_answering, s.peers_tried
                        );
                        let _ = e.flush();
                    }
                },
                interrupt,
            )
            .await
            .inspect_err(|_| {
                if tty {
                    eprint!("\r\x1b[K");
                }
            })?;
            if tty {
                eprint!("\r\x1b[K");
            }
            let bytes = torrent_file(&info.raw, m);
            let torrent = Torrent::from_bytes(&bytes)?;
            if let Some(path) = &cached {
                save(path, &bytes);
            }
            Ok((m.add_hints_to(torrent), peers))
        }
    }
}

/// The default place for fetched metadata: `$XDG_CACHE_HOME/btfs/metadata`, else
/// `~/.cache/btfs/metadata`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("btfs").join("metadata"))
}

fn cache_path(dir: &Path, hash: InfoHash) -> PathBuf {
    dir.join(format!("{hash}.torrent"))
}

/// A `.torrent` holding exactly the fetched info bytes (so its info-hash is the link's), with
/// the link's trackers and web seeds beside it, where a `.torrent` keeps them.
fn torrent_file(info_raw: &[u8], m: &Magnet) -> Vec<u8> {
    let mut e = Encoder::new();
    e.begin_dict();
    if !m.trackers.is_empty() {
        e.str("announce-list").begin_list();
        for t in &m.trackers {
            e.begin_list().str(t).end();
        }
        e.end();
    }
    e.str("info").raw(info_raw);
    if !m.web_seeds.is_empty() {
        e.str("url-list").begin_list();
        for w in &m.web_seeds {
            e.str(w);
        }
        e.end();
    }
    e.end().finish()
}

/// Written through a temporary file, so a crash never leaves half a torrent under the name.
fn save(path: &Path, bytes: &[u8]) {
    let result = (|| {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        tracing::warn!("cannot keep the metadata in {}: {e}", path.display());
    }
}

async fn download(url: &str) -> Result<Torrent, SourceError> {
    let fail = |reason: String| SourceError::Download {
        url: url.to_string(),
        reason,
    };
    let client = crate::net::tls::client_builder()
        .map_err(fail)?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .user_agent(concat!("btfs/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(fail(format!("HTTP {}", resp.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
        body.extend_from_slice(&chunk);
        if body.len() as u64 > MAX_TORRENT_FILE_BYTES {
            return Err(fail("larger than any torrent file".into()));
        }
    }
    Ok(Torrent::from_bytes(&body)?)
}
