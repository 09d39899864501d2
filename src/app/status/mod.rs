//! What a running mount reports about itself: one [`Report`], built in the mount process and
//! shown three ways: as JSON on the mount's status socket (`btfs status --json`), as
//! `key: value` text (`btfs status MOUNT` and the `user.btfs.status` attribute of the mount
//! root), and as a two-line summary (`btfs status` with no mountpoint, and the live status
//! line).
//!
//! [`Live`] is the mount's side: it samples the session once a second for the transfer rates
//! and the said-once warnings ([`crate::app::alerts`]). [`socket`] serves reports and asks for them.
//! A mount of several torrents reports their sum, with one entry per torrent ([`library`]).

pub mod library;
mod rate;
pub mod request;
pub mod socket;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::app::alerts::{Alerts, Condition};
use crate::session::{DiskStats, Session, SourceCount, Stats, WebSeedState, WebSeedStatus};
use crate::units::format_bytes;

pub use library::{LibraryLive, Reporter, TorrentReport};
pub use rate::RateMeter;
pub use socket::StatusError;

/// One mount's state, as `btfs status` shows it. Sizes in bytes, rates in bytes/s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub name: String,
    /// `active`, or `asleep` after `--idle-after` without a read (a library: `active` while
    /// any torrent is).
    #[serde(default)]
    pub state: String,
    pub info_hash: String,
    pub mountpoint: PathBuf,
    pub pid: u32,
    pub listen_port: u16,
    /// Connected peers, and every address discovery named.
    pub peers: usize,
    /// Connected peers whose connection is RC4-encrypted (`--encryption`).
    pub encrypted_peers: usize,
    pub known_peers: usize,
    /// The same per source (tracker, dht, pex, lsd, incoming, manual, handshake).
    pub peer_sources: Vec<SourceCount>,
    /// Connected peers by transport.
    #[serde(default)]
    pub tcp_peers: usize,
    #[serde(default)]
    pub utp_peers: usize,
    /// Over the last few seconds (`rate::WINDOW`).
    pub download_rate: u64,
    pub upload_rate: u64,
    pub downloaded_bytes: u64,
    pub uploaded_bytes: u64,
    pub verified_pieces: u32,
    pub total_pieces: u32,
    pub verified_bytes: u64,
    pub total_bytes: u64,
    pub cache_used_bytes: u64,
    pub cache_budget_bytes: u64,
    pub hash_failures: u64,
    /// Our plaintext handshakes a peer hung up on, not retried encrypted: peers that likely
    /// require encryption.
    pub refused_plaintext: u64,
    pub banned_peers: usize,
    /// Good nodes in the DHT routing tables; `None` without DHT.
    pub dht_nodes: Option<usize>,
    /// Of them, in the IPv4 and in the IPv6 table.
    #[serde(default)]
    pub dht_nodes_v4: Option<usize>,
    #[serde(default)]
    pub dht_nodes_v6: Option<usize>,
    /// Datagrams the kernel dropped on the UDP port, its receive buffer full: each slows a
    /// uTP peer down (`net.core.rmem_max` caps the buffer). `None` without UDP.
    #[serde(default)]
    pub udp_drops: Option<u64>,
    /// The disk cache (`--cache-dir`); `None` without one.
    pub disk_cache: Option<DiskStats>,
    /// Urgent blocks asked of a second peer (endgame: the first was late with them, or had
    /// them queued deep).
    pub rerequested_blocks: u64,
    /// Of `downloaded_bytes`, bytes of copies another source had delivered first.
    #[serde(default)]
    pub wasted_bytes: u64,
    pub trackers: Vec<TrackerReport>,
    /// The torrent's web seeds (BEP 19), in `url-list` order.
    #[serde(default)]
    pub web_seeds: Vec<WebSeedReport>,
    pub readers: Vec<ReaderReport>,
    /// Problems raised now, in plain words.
    pub warnings: Vec<String>,
    /// A mount of several torrents: each of them (the fields above are their sums); empty
    /// for a mount of one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub torrents: Vec<TorrentReport>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerReport {
    pub url: String,
    pub tier: usize,
    /// The last announce: `ok`, `error`, or `pending` (none answered yet).
    pub result: String,
    /// Peers of the last good answer.
    pub peers: Option<usize>,
    pub error: Option<String>,
}

/// One web seed: its state (`active`, `backing off`, `dropped`) and why, and what it sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebSeedReport {
    pub url: String,
    pub state: String,
    /// Backing off: the last error; dropped: why.
    pub reason: Option<String>,
    /// Backing off: seconds until it is asked again.
    pub retry_in_secs: Option<u64>,
    pub downloaded_bytes: u64,
    /// Files it does not have (HTTP 404 and the like).
    pub missing_files: usize,
}

impl WebSeedReport {
    fn new(w: WebSeedStatus) -> Self {
        let (reason, retry_in_secs) = match &w.state {
            WebSeedState::Active => (None, None),
            WebSeedState::BackingOff { retry_in, reason } => (
                Some(reason.clone()),
                Some(retry_in.as_secs_f64().ceil() as u64),
            ),
            WebSeedState::Dropped { reason } => (Some(reason.clone()), None),
        };
        WebSeedReport {
            state: w.state.name().to_string(),
            url: w.url,
            reason,
            retry_in_secs,
            downloaded_bytes: w.downloaded,
            missing_files: w.missing_files,
        }
    }

    /// `http://h/x (active, 12.0 MiB)`, `... (backing off 4 s: HTTP 503, 0 B)`.
    fn to_text(&self) -> String {
        let mut state = self.state.clone();
        if let Some(secs) = self.retry_in_secs {
            state.push_str(&format!(" {secs} s"));
        }
        if let Some(r) = &self.reason {
            state.push_str(&format!(": {r}"));
        }
        let mut v = format!(
            "{} ({state}, {})",
            self.url,
            format_bytes(self.downloaded_bytes)
        );
        if self.missing_files > 0 {
            v.insert_str(
                v.len() - 1,
                &format!(", {} files missing", self.missing_files),
            );
        }
        v
    }
}

/// One open file: where its reader is, the window fetched ahead of it, how far ahead the data
/// is (seconds of the reader's consumption) and how often a read had to wait.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReaderReport {
    pub path: String,
    pub position: u64,
    pub window_start: u64,
    pub window: u64,
    #[serde(default)]
    pub ahead_secs: Option<f64>,
    #[serde(default)]
    pub stalls: u64,
}

impl Report {
    fn new(session: &Session, s: Stats, mountpoint: PathBuf, rates: (u64, u64)) -> Report {
        let t = session.torrent();
        Report {
            name: t.info.name.clone(),
            state: library::state_name(s.asleep).to_string(),
            info_hash: t.info_hash.to_string(),
            mountpoint,
            pid: std::process::id(),
            listen_port: session.listen_port(),
            peers: s.peers,
            encrypted_peers: s.encrypted_peers,
            known_peers: s.known_peers,
            peer_sources: s.by_source,
            tcp_peers: s.tcp_peers,
            utp_peers: s.utp_peers,
            download_rate: rates.0,
            upload_rate: rates.1,
            downloaded_bytes: s.downloaded,
            uploaded_bytes: s.uploaded,
            verified_pieces: s.verified_pieces,
            total_pieces: s.total_pieces,
            verified_bytes: s.verified_bytes,
            total_bytes: s.total_bytes,
            cache_used_bytes: s.cache_used,
            cache_budget_bytes: s.cache_budget,
            hash_failures: s.hash_failures,
            refused_plaintext: s.refused_plaintext,
            banned_peers: s.banned,
            dht_nodes: s.dht_nodes,
            dht_nodes_v4: s.dht_nodes_v4,
            dht_nodes_v6: s.dht_nodes_v6,
            udp_drops: s.udp_drops,
            disk_cache: s.disk,
            rerequested_blocks: s.rerequests,
            wasted_bytes: s.wasted,
            trackers: s
                .trackers
                .into_iter()
                .map(|tr| {
                    let (result, peers, error) = match tr.last {
                        None => ("pending", None, None),
                        Some(Ok(n)) => ("ok", Some(n), None),
                        Some(Err(e)) => ("error", None, Some(e)),
                    };
                    TrackerReport {
                        url: tr.url,
                        tier: tr.tier,
                        result: result.to_string(),
                        peers,
                        error,
                    }
                })
                .collect(),
            web_seeds: s.web_seeds.into_iter().map(WebSeedReport::new).collect(),
            readers: s
                .readers
                .into_iter()
                .map(|r| ReaderReport {
                    path: r.path,
                    position: r.position,
                    window_start: r.window_start,
                    window: r.window,
                    ahead_secs: r.ahead_secs,
                    stalls: r.stalls,
                })
                .collect(),
            warnings: Vec::new(),
            torrents: Vec::new(),
        }
    }

    /// One `key: value` per line: readable by people and by `grep`/`cut`. Keys repeat for lists
    /// (`reader:`, `tracker:`, `warning:`).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: &dyn std::fmt::Display| out.push_str(&format!("{k}: {v}\n"));
        line("name", &self.name);
        line("state", &self.state);
        if !self.info_hash.is_empty() {
            // A library has one per torrent, in its block below.
            line("info_hash", &self.info_hash);
        }
        line("mountpoint", &self.mountpoint.display());
        line("pid", &self.pid);
        line("listen_port", &self.listen_port);
        line("peers", &self.peers);
        line("encrypted_peers", &self.encrypted_peers);
        line("known_peers", &self.known_peers);
        for c in &self.peer_sources {
            let v = format!("{} connected, {} known", c.connected, c.known);
            line(&format!("peers_{}", c.source.name()), &v);
        }
        line("peers_tcp", &self.tcp_peers);
        line("peers_utp", &self.utp_peers);
        line(
            "download_rate",
            &format!("{}/s", format_bytes(self.download_rate)),
        );
        line(
            "upload_rate",
            &format!("{}/s", format_bytes(self.upload_rate)),
        );
        line("downloaded_bytes", &self.downloaded_bytes);
        line("uploaded_bytes", &self.uploaded_bytes);
        line("verified_pieces", &self.verified_pieces);
        line("total_pieces", &self.total_pieces);
        line("verified_bytes", &self.verified_bytes);
        line("total_bytes", &self.total_bytes);
        line("cache_used_bytes", &self.cache_used_bytes);
        line("cache_budget_bytes", &self.cache_budget_bytes);
        line("hash_failures", &self.hash_failures);
        line("refused_plaintext", &self.refused_plaintext);
        line("banned_peers", &self.banned_peers);
        let off = |n: Option<usize>| n.map_or("off".to_string(), |n| n.to_string());
        line("dht_nodes", &off(self.dht_nodes));
        line("dht_nodes_v4", &off(self.dht_nodes_v4));
        line("dht_nodes_v6", &off(self.dht_nodes_v6));
        line(
            "udp_drops",
            &self.udp_drops.map_or("off".into(), |n| n.to_string()),
        );
        if let Some(d) = &self.disk_cache {
            line("disk_cache_used_bytes", &d.used);
            line("disk_cache_dir_used_bytes", &d.dir_used);
            line("disk_cache_budget_bytes", &d.budget);
            line("disk_cache_errors", &d.errors);
            line("disk_cache_bad_pieces", &d.bad_pieces);
            line("disk_cache_refused_pieces", &d.refused);
        }
        line("rerequested_blocks", &self.rerequested_blocks);
        line("wasted_bytes", &self.wasted_bytes);
        for r in &self.readers {
            let ahead = r.ahead_secs.map_or("-".to_string(), |s| format!("{s:.1}s"));
            let v = format!(
                "{} position={} window_start={} window={} ahead={} stalls={}",
                r.path, r.position, r.window_start, r.window, ahead, r.stalls
            );
            line("reader", &v);
        }
        for tr in &self.trackers {
            let last = match (tr.result.as_str(), tr.peers, &tr.error) {
                ("ok", Some(n), _) => format!("ok, {n} peers"),
                ("error", _, Some(e)) => format!("error: {e}"),
                _ => "not yet".to_string(),
            };
            line("tracker", &format!("{} ({last})", tr.url));
        }
        for w in &self.web_seeds {
            line("web_seed", &w.to_text());
        }
        for w in &self.warnings {
            line("warning", w);
        }
        library::torrents_text(&self.torrents, &mut out);
        out
    }

    /// `peers 3/5 (2 uTP, 1 encrypted) | down 12.3 MiB/s up 0 B/s | 120/1024 pieces | cache
    /// 30.0 MiB/256.0 MiB | DHT: 80 nodes (12 IPv6)`
    pub fn summary_line(&self) -> String {
        // IPv6 nodes named only when there are any: most machines have none to reach.
        let dht = match (self.dht_nodes, self.dht_nodes_v6) {
            (None, _) => String::new(),
            (Some(n), Some(v6)) if v6 > 0 => format!(" | DHT: {n} nodes ({v6} IPv6)"),
            (Some(n), _) => format!(" | DHT: {n} nodes"),
        };
        // The budget is the directory's: what it counts there, torrents not mounted included.
        let disk = self.disk_cache.map_or(String::new(), |d| {
            format!(
                " | disk {}/{}",
                format_bytes(d.dir_used.max(d.used)),
                format_bytes(d.budget)
            )
        });
        // What connected peers speak, when it is not plain TCP.
        let kinds: Vec<String> = [(self.utp_peers, "uTP"), (self.encrypted_peers, "encrypted")]
            .into_iter()
            .filter(|&(n, _)| n > 0)
            .map(|(n, kind)| format!("{n} {kind}"))
            .collect();
        let kinds = if kinds.is_empty() {
            String::new()
        } else {
            format!(" ({})", kinds.join(", "))
        };
        let web = if self.web_seeds.is_empty() {
            String::new()
        } else {
            let active = self.web_seeds.iter().filter(|w| w.state == "active");
            format!(" | web seeds {}/{}", active.count(), self.web_seeds.len())
        };
        format!(
            "peers {}/{}{kinds}{web} | down {}/s up {}/s | {}/{} pieces | cache {}/{}{disk}{dht}",
            self.peers,
            self.known_peers,
            format_bytes(self.download_rate),
            format_bytes(self.upload_rate),
            self.verified_pieces,
            self.total_pieces,
            format_bytes(self.cache_used_bytes),
            format_bytes(self.cache_budget_bytes),
        )
    }

    /// A short block for the list of every mount: where, what, the summary, the warnings.
    pub fn to_short(&self) -> String {
        let hash = match self.info_hash.as_str() {
            "" => String::new(),
            h => format!("{h}, "),
        };
        let mut out = format!(
            "{}: {} ({hash}pid {})\n  {}\n",
            self.mountpoint.display(),
            self.name,
            self.pid,
            self.summary_line()
        );
        for w in &self.warnings {
            out.push_str(&format!("  warning: {w}\n"));
        }
        out
    }
}

/// The mount process's view of its session for reports: rates and warnings need a memory of
/// the last seconds, which [`Live::tick`] keeps.
pub struct Live {
    session: Session,
    mountpoint: PathBuf,
    /// Locked briefly by the tick and by report builders; never across an `.await`.
    inner: Mutex<Inner>,
}

struct Inner {
    rates: RateMeter,
    alerts: Alerts,
}

impl Live {
    pub fn new(session: Session, mountpoint: PathBuf) -> Live {
        Live {
            session,
            mountpoint,
            inner: Mutex::new(Inner {
                rates: RateMeter::default(),
                alerts: Alerts::default(),
            }),
        }
    }

    /// Once a second: sample the transfer totals and say (once) what went wrong.
    pub fn tick(&self) {
        // A library's problems name their torrent.
        let _span = self.session.span().enter();
        let now = Instant::now();
        if self.session.is_asleep() {
            // No traffic to sample and no peers by design (nothing to say), and no `stats`
            // taken: a library of a thousand sleeping torrents costs nothing each second.
            self.lock().alerts.forget(Condition::NoPeers);
            return;
        }
        let s = self.session.stats();
        let mut inner = self.lock();
        inner.rates.sample(now, s.downloaded, s.uploaded);
        for (condition, problem) in problems(&s, self.session.has_dht()) {
            inner.alerts.observe(now, condition, problem);
        }
    }

    pub fn report(&self) -> Report {
        let stats = self.session.stats();
        let inner = self.lock();
        let rates = inner
            .rates
            .rates_at(Instant::now(), stats.downloaded, stats.uploaded);
        let mut r = Report::new(&self.session, stats, self.mountpoint.clone(), rates);
        r.warnings = inner.alerts.raised();
        r
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::sync::lock(&self.inner)
    }
}

/// How long a read may wait for its data before the user hears of it.
const READ_STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// Each condition, with the sentence to say if it holds now.
fn problems(s: &Stats, dht: bool) -> Vec<(Condition, Option<String>)> {
    let all_failing =
        !s.trackers.is_empty() && s.trackers.iter().all(|t| matches!(t.last, Some(Err(_))));
    let trackers = all_failing.then(|| {
        let last = s
            .trackers
            .iter()
            .filter_map(|t| match &t.last {
                Some(Err(e)) => Some(format!("{}: {e}", t.url)),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("; ");
        let rest = if dht {
            "peers come from the DHT only"
        } else {
            "no other way to find peers but --peer"
        };
        format!("every tracker fails ({last}); {rest}")
    });
    // A web seed that is not dropped is a source too: no peers is then no problem.
    let web_seed = (s.web_seeds.iter()).any(|w| !matches!(w.state, WebSeedState::Dropped { .. }));
    // Asleep, a torrent has no peers by design.
    let no_peers = (s.peers == 0 && !web_seed && !s.asleep).then(|| {
        let waiting = if s.longest_wait.is_some() {
            "; a read is waiting"
        } else {
            ""
        };
        let refused = match s.refused_plaintext {
            0 => String::new(),
            n => format!(
                "; {n} hung up on our plaintext handshake and may require encryption \
                 (see --encryption)"
            ),
        };
        format!(
            "no peer connected for a minute ({} addresses known){waiting}{refused}",
            s.known_peers
        )
    });
    let stalled = s.longest_wait.filter(|w| *w >= READ_STALL).map(|w| {
        format!(
            "a read has waited {} s for its data ({} peers connected, none has sent it)",
            w.as_secs(),
            s.peers
        )
    });
    let disk = s
        .disk_failing
        .as_ref()
        .map(|e| format!("the disk cache cannot write ({e}); new pieces stay in memory only"));
    vec![
        (Condition::TrackersFailing, trackers),
        (Condition::NoPeers, no_peers),
        (Condition::ReadStalled, stalled),
        (Condition::DiskFailing, disk),
    ]
}

#[cfg(test)]
mod tests;
