//! The report of a mount of several torrents: each torrent keeps its own [`Live`] (rates and
//! said-once warnings are per torrent); the mount's [`Report`] is their sum, so every reader of
//! the single-torrent fields (the status line, `btfs status` of every mount, scripts) sees the
//! whole process, and [`Report::torrents`] holds one [`TorrentReport`] per torrent.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{Live, ReaderReport, Report};
use crate::session::DiskStats;
use crate::store::MemoryPool;
use crate::units::format_bytes;

/// What a mount reports (status socket, root attribute, status line): one torrent's [`Live`],
/// or a library's ([`LibraryLive`]).
pub trait Reporter: Send + Sync + 'static {
    /// Once a second: sample the rates, say (once) what went wrong.
    fn tick(&self);
    fn report(&self) -> Report;
}

impl Reporter for Live {
    fn tick(&self) {
        Live::tick(self);
    }

    fn report(&self) -> Report {
        Live::report(self)
    }
}

/// What a report's `state` says.
pub(crate) fn state_name(asleep: bool) -> &'static str {
    if asleep { "asleep" } else { "active" }
}

/// One torrent of a library mount, as `btfs status` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TorrentReport {
    /// Its folder under the mountpoint.
    pub folder: String,
    pub name: String,
    pub info_hash: String,
    /// `active` or `asleep`.
    #[serde(default)]
    pub state: String,
    pub peers: usize,
    pub known_peers: usize,
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
    /// Its pieces in the disk cache (`--cache-dir`, whose budget the torrents share).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_cache_used_bytes: Option<u64>,
    /// Its verified pieces the disk cache had no room for (kept in memory only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_cache_refused_pieces: Option<u64>,
    pub warnings: Vec<String>,
}

impl TorrentReport {
    fn of(folder: &str, r: &Report) -> TorrentReport {
        TorrentReport {
            folder: folder.to_string(),
            name: r.name.clone(),
            info_hash: r.info_hash.clone(),
            state: r.state.clone(),
            peers: r.peers,
            known_peers: r.known_peers,
            download_rate: r.download_rate,
            upload_rate: r.upload_rate,
            downloaded_bytes: r.downloaded_bytes,
            uploaded_bytes: r.uploaded_bytes,
            verified_pieces: r.verified_pieces,
            total_pieces: r.total_pieces,
            verified_bytes: r.verified_bytes,
            total_bytes: r.total_bytes,
            cache_used_bytes: r.cache_used_bytes,
            cache_budget_bytes: r.cache_budget_bytes,
            disk_cache_used_bytes: r.disk_cache.map(|d| d.used),
            disk_cache_refused_pieces: r.disk_cache.map(|d| d.refused),
            warnings: r.warnings.clone(),
        }
    }
}

/// Lines of sources left out kept at most: a watch directory of broken files must not grow
/// every report without bound.
const MAX_LEFT_OUT: usize = 50;

/// The mount's side for a library: one [`Live`] per torrent, under its folder's name; torrents
/// come and go while mounted. Each lock is held to copy or change its list, never with the
/// other, never across an `.await`.
pub struct LibraryLive {
    torrents: Mutex<Vec<(String, Arc<Live>)>>,
    /// Sources left out (at mount time or added later), each a sentence naming it and why;
    /// said in every report, the latest [`MAX_LEFT_OUT`] only.
    left_out: Mutex<Vec<String>>,
    mountpoint: PathBuf,
    /// The process's listen port, said even when no torrent is mounted.
    listen_port: u16,
    /// The memory budget every torrent shares: the mount's `cache_used_bytes` is read from it
    /// at once, not added up from the torrents' reports, which are taken one after another
    /// while pieces move between them.
    memory: Option<MemoryPool>,
}

impl LibraryLive {
    pub fn new(torrents: Vec<(String, Live)>, left_out: Vec<String>, mountpoint: PathBuf) -> Self {
        LibraryLive {
            listen_port: 0,
            memory: None,
            torrents: Mutex::new(
                torrents
                    .into_iter()
                    .map(|(f, l)| (f, Arc::new(l)))
                    .collect(),
            ),
            left_out: Mutex::new(left_out),
            mountpoint,
        }
    }

    /// The process's listen port, for the report of a library with no torrent.
    pub fn with_listen_port(mut self, port: u16) -> Self {
        self.listen_port = port;
        self
    }

    /// The memory pool the torrents share (see the field).
    pub fn with_memory(mut self, pool: MemoryPool) -> Self {
        self.memory = Some(pool);
        self
    }

    /// A torrent mounted in `folder`.
    pub fn add(&self, folder: String, live: Live) {
        crate::sync::lock(&self.torrents).push((folder, Arc::new(live)));
    }

    /// The torrent in `folder` unmounted.
    pub fn remove(&self, folder: &str) {
        crate::sync::lock(&self.torrents).retain(|(f, _)| f != folder);
    }

    /// A source that could not be mounted, said in every report from now on.
    pub fn leave_out(&self, line: String) {
        let mut lines = crate::sync::lock(&self.left_out);
        if lines.len() >= MAX_LEFT_OUT {
            lines.remove(0);
        }
        lines.push(line);
    }
}

impl Reporter for LibraryLive {
    fn tick(&self) {
        let torrents: Vec<Arc<Live>> = (crate::sync::lock(&self.torrents).iter())
            .map(|(_, l)| l.clone())
            .collect();
        for live in torrents {
            live.tick();
        }
    }

    fn report(&self) -> Report {
        let torrents: Vec<(String, Arc<Live>)> = crate::sync::lock(&self.torrents).clone();
        let parts = (torrents.into_iter())
            .map(|(folder, live)| (folder, live.report()))
            .collect();
        let left_out = crate::sync::lock(&self.left_out).clone();
        let mut report = sum(self.mountpoint.clone(), parts, &left_out);
        if report.torrents.is_empty() {
            report.listen_port = self.listen_port;
        }
        if let Some(pool) = &self.memory {
            report.cache_used_bytes = pool.used();
        }
        report
    }
}

/// The torrent in `folder` of a library's report, and the readers of its files.
pub fn one_torrent(report: &Report, folder: &str) -> Option<(TorrentReport, Vec<ReaderReport>)> {
    let t = report.torrents.iter().find(|t| t.folder == folder)?;
    let prefix = format!("{folder}/");
    let readers = (report.readers.iter())
        .filter(|r| r.path.starts_with(&prefix))
        .cloned()
        .collect();
    Some((t.clone(), readers))
}

/// [`one_torrent`] as `btfs status MOUNT NAME` prints it: the torrent's block, then a line per
/// reader.
pub fn one_torrent_text(t: &TorrentReport, readers: &[ReaderReport]) -> String {
    let mut out = String::new();
    torrents_text(std::slice::from_ref(t), &mut out);
    for r in readers {
        out.push_str(&format!(
            "  reader: {} position={} window={}\n",
            r.path, r.position, r.window
        ));
    }
    out
}

/// The library's report: the torrents' numbers added up, their lists joined (readers named by
/// their path under the mountpoint, warnings by the torrent's folder), the process-wide ones
/// (listen port, DHT nodes) said once, and each torrent's own entry.
fn sum(mountpoint: PathBuf, parts: Vec<(String, Report)>, left_out: &[String]) -> Report {
    let first = parts.first().map(|(_, r)| r);
    let mut out = Report {
        name: format!("library of {} torrents", parts.len()),
        state: state_name(true).to_string(),
        info_hash: String::new(),
        mountpoint,
        pid: std::process::id(),
        listen_port: first.map_or(0, |r| r.listen_port),
        peers: 0,
        encrypted_peers: 0,
        known_peers: 0,
        peer_sources: first.map_or(Vec::new(), |r| r.peer_sources.clone()),
        tcp_peers: 0,
        utp_peers: 0,
        download_rate: 0,
        upload_rate: 0,
        downloaded_bytes: 0,
        uploaded_bytes: 0,
        verified_pieces: 0,
        total_pieces: 0,
        verified_bytes: 0,
        total_bytes: 0,
        cache_used_bytes: 0,
        cache_budget_bytes: 0,
        hash_failures: 0,
        refused_plaintext: 0,
        banned_peers: 0,
        dht_nodes: first.and_then(|r| r.dht_nodes),
        dht_nodes_v4: first.and_then(|r| r.dht_nodes_v4),
        dht_nodes_v6: first.and_then(|r| r.dht_nodes_v6),
        udp_drops: first.and_then(|r| r.udp_drops),
        disk_cache: None,
        rerequested_blocks: 0,
        wasted_bytes: 0,
        trackers: Vec::new(),
        web_seeds: Vec::new(),
        readers: Vec::new(),
        warnings: left_out.to_vec(),
        torrents: Vec::new(),
    };
    for c in &mut out.peer_sources {
        (c.connected, c.known) = (0, 0);
    }
    for (folder, r) in parts {
        out.torrents.push(TorrentReport::of(&folder, &r));
        if r.state != state_name(true) {
            out.state = r.state.clone();
        }
        out.peers += r.peers;
        out.encrypted_peers += r.encrypted_peers;
        out.known_peers += r.known_peers;
        for c in &r.peer_sources {
            if let Some(o) = out.peer_sources.iter_mut().find(|o| o.source == c.source) {
                o.connected += c.connected;
                o.known += c.known;
            }
        }
        out.tcp_peers += r.tcp_peers;
        out.utp_peers += r.utp_peers;
        out.download_rate += r.download_rate;
        out.upload_rate += r.upload_rate;
        out.downloaded_bytes += r.downloaded_bytes;
        out.uploaded_bytes += r.uploaded_bytes;
        out.verified_pieces += r.verified_pieces;
        out.total_pieces += r.total_pieces;
        out.verified_bytes += r.verified_bytes;
        out.total_bytes += r.total_bytes;
        out.cache_used_bytes += r.cache_used_bytes;
        // One memory budget, shared by every torrent (`store::pool`): each reports it whole.
        out.cache_budget_bytes = out.cache_budget_bytes.max(r.cache_budget_bytes);
        out.hash_failures += r.hash_failures;
        out.refused_plaintext += r.refused_plaintext;
        out.banned_peers += r.banned_peers;
        out.rerequested_blocks += r.rerequested_blocks;
        out.wasted_bytes += r.wasted_bytes;
        if let Some(d) = r.disk_cache {
            let o = out.disk_cache.get_or_insert(DiskStats::default());
            o.used += d.used;
            // One disk pool too: each reports its budget and its count of the directory.
            o.budget = o.budget.max(d.budget);
            o.dir_used = o.dir_used.max(d.dir_used);
            o.errors += d.errors;
            o.bad_pieces += d.bad_pieces;
            o.refused += d.refused;
        }
        out.trackers.extend(r.trackers);
        out.web_seeds.extend(r.web_seeds);
        for mut reader in r.readers {
            reader.path = path_in_folder(&folder, &r.name, &reader.path);
            out.readers.push(reader);
        }
        (out.warnings).extend(r.warnings.iter().map(|w| format!("{folder}: {w}")));
    }
    out
}

/// Where a torrent's file (`path` as the torrent names it) is under the mountpoint: a
/// multi-file torrent's root folder is replaced by the library's folder; a single file goes
/// into it.
fn path_in_folder(folder: &str, name: &str, path: &str) -> String {
    let rest = path
        .strip_prefix(name)
        .and_then(|p| p.strip_prefix('/'))
        .unwrap_or(path);
    format!("{folder}/{rest}")
}

/// One indented block per torrent after the mount's `key: value` lines (nothing for a mount
/// of one torrent): `torrent: FOLDER`, then its own keys, two spaces in, so that a reader of
/// the top-level keys never mistakes them.
pub(super) fn torrents_text(torrents: &[TorrentReport], out: &mut String) {
    for t in torrents {
        out.push_str(&format!("torrent: {}\n", t.folder));
        let mut line = |k: &str, v: &dyn std::fmt::Display| out.push_str(&format!("  {k}: {v}\n"));
        line("name", &t.name);
        line("info_hash", &t.info_hash);
        line("state", &t.state);
        line("peers", &t.peers);
        line("known_peers", &t.known_peers);
        line(
            "download_rate",
            &format!("{}/s", format_bytes(t.download_rate)),
        );
        line("upload_rate", &format!("{}/s", format_bytes(t.upload_rate)));
        line("downloaded_bytes", &t.downloaded_bytes);
        line("uploaded_bytes", &t.uploaded_bytes);
        line("verified_pieces", &t.verified_pieces);
        line("total_pieces", &t.total_pieces);
        line("verified_bytes", &t.verified_bytes);
        line("total_bytes", &t.total_bytes);
        line("cache_used_bytes", &t.cache_used_bytes);
        line("cache_budget_bytes", &t.cache_budget_bytes);
        if let Some(d) = t.disk_cache_used_bytes {
            line("disk_cache_used_bytes", &d);
        }
        if let Some(n) = t.disk_cache_refused_pieces {
            line("disk_cache_refused_pieces", &n);
        }
        for w in &t.warnings {
            line("warning", w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::status::ReaderReport;
    use crate::session::{PeerSource, SourceCount};

    fn report(name: &str, peers: usize, verified: u32, total: u32) -> Report {
        Report {
            name: name.into(),
            state: "active".into(),
            info_hash: format!("{name}-hash"),
            mountpoint: "/mnt/x".into(),
            pid: 1,
            listen_port: 6881,
            peers,
            encrypted_peers: 0,
            known_peers: peers + 1,
            peer_sources: vec![SourceCount {
                source: PeerSource::Tracker,
                connected: peers,
                known: peers + 1,
            }],
            tcp_peers: peers,
            utp_peers: 0,
            download_rate: 100,
            upload_rate: 10,
            downloaded_bytes: 1000,
            uploaded_bytes: 0,
            verified_pieces: verified,
            total_pieces: total,
            verified_bytes: u64::from(verified) * 16,
            total_bytes: u64::from(total) * 16,
            cache_used_bytes: 5,
            cache_budget_bytes: 50,
            hash_failures: 0,
            refused_plaintext: 0,
            banned_peers: 0,
            dht_nodes: Some(7),
            dht_nodes_v4: Some(7),
            dht_nodes_v6: Some(0),
            udp_drops: Some(0),
            disk_cache: None,
            rerequested_blocks: 0,
            wasted_bytes: 0,
            trackers: Vec::new(),
            web_seeds: Vec::new(),
            readers: vec![ReaderReport {
                path: format!("{name}/sub/a.bin"),
                position: 0,
                window_start: 0,
                window: 0,
                ahead_secs: None,
                stalls: 0,
            }],
            warnings: vec!["no peer connected for a minute".into()],
            torrents: Vec::new(),
        }
    }

    #[test]
    fn the_summary_line_says_what_peers_speak_and_the_dht_families() {
        let mut r = report("a", 3, 1, 4);
        let plain = r.summary_line();
        assert!(plain.starts_with("peers 3/4 | down"), "{plain}");
        assert!(plain.ends_with("| DHT: 7 nodes"), "{plain}");
        (r.utp_peers, r.encrypted_peers) = (2, 1);
        r.dht_nodes_v6 = Some(3);
        r.dht_nodes = Some(10);
        let line = r.summary_line();
        assert!(
            line.starts_with("peers 3/4 (2 uTP, 1 encrypted) | down"),
            "{line}"
        );
        assert!(line.ends_with("| DHT: 10 nodes (3 IPv6)"), "{line}");
        r.utp_peers = 0;
        assert!(r.summary_line().starts_with("peers 3/4 (1 encrypted) | "));
        r.dht_nodes = None;
        assert!(!r.summary_line().contains("DHT"));
    }

    #[test]
    fn the_library_report_sums_the_torrents_and_lists_each() {
        let disk = |used| DiskStats {
            used,
            budget: 1000,
            dir_used: 700,
            errors: 1,
            bad_pieces: 0,
            refused: 3,
        };
        let mut parts = vec![
            ("a".to_string(), report("a", 2, 3, 10)),
            ("a (2)".to_string(), report("a", 1, 0, 4)),
        ];
        parts[0].1.disk_cache = Some(disk(200));
        parts[1].1.disk_cache = Some(disk(300));
        let left_out = vec!["not mounted: bad.torrent: not a torrent".to_string()];
        let r = sum("/mnt/x".into(), parts, &left_out);
        assert_eq!((r.peers, r.known_peers), (3, 5));
        assert_eq!(r.peer_sources[0].connected, 3);
        assert_eq!((r.verified_pieces, r.total_pieces), (3, 14));
        // Rates add up; the memory budget is one, shared.
        assert_eq!((r.download_rate, r.cache_budget_bytes), (200, 50));
        assert_eq!(r.cache_used_bytes, 10);
        // So does the disk: one budget and one directory, each torrent's bytes its own.
        let d = r.disk_cache.expect("disk stats");
        assert_eq!(
            (d.used, d.budget, d.dir_used, d.errors),
            (500, 1000, 700, 2)
        );
        assert_eq!(
            d.refused, 6,
            "writes refused for want of room, every torrent's"
        );
        assert_eq!(r.torrents[1].disk_cache_used_bytes, Some(300));
        assert_eq!(r.dht_nodes, Some(7), "one DHT node, counted once");
        assert_eq!(r.info_hash, "");
        assert_eq!(r.readers[1].path, "a (2)/sub/a.bin");
        assert_eq!(r.warnings[0], left_out[0]);
        assert_eq!(r.warnings[2], "a (2): no peer connected for a minute");
        let folders: Vec<_> = r.torrents.iter().map(|t| t.folder.as_str()).collect();
        assert_eq!(folders, ["a", "a (2)"]);
        assert_eq!(r.torrents[1].total_pieces, 4);

        let text = r.to_text();
        assert!(text.contains("\npeers: 3\n"), "{text}");
        assert!(text.contains("torrent: a (2)\n  name: a\n"), "{text}");
        assert!(
            text.contains("  verified_pieces: 3\n  total_pieces: 10\n"),
            "{text}"
        );
        assert!(
            text.contains("\ndisk_cache_dir_used_bytes: 700\n"),
            "{text}"
        );
        assert!(text.contains("\ndisk_cache_refused_pieces: 6\n"), "{text}");
        assert!(
            text.contains("  disk_cache_used_bytes: 300\n  disk_cache_refused_pieces: 3\n"),
            "each torrent's own refused writes: {text}"
        );
        let json = serde_json::to_value(&r).expect("serializes");
        assert_eq!(json["torrents"][1]["folder"], "a (2)");
        let back: Report = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, r);
    }

    #[test]
    fn a_single_torrent_report_has_no_torrents_key() {
        let r = report("a", 1, 1, 2);
        let json = serde_json::to_value(&r).expect("serializes");
        assert!(json.get("torrents").is_none(), "{json}");
        assert!(!r.to_text().contains("torrent:"));
    }

    #[test]
    fn a_file_path_is_shown_under_its_folder() {
        assert_eq!(path_in_folder("x (2)", "x", "x/a/b.bin"), "x (2)/a/b.bin");
        assert_eq!(path_in_folder("m.mkv", "m.mkv", "m.mkv"), "m.mkv/m.mkv");
        assert_eq!(path_in_folder("xy", "x", "xy/c"), "xy/xy/c");
    }
}
