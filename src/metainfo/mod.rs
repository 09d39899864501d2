//! Torrent files (BEP 3) into a [`Torrent`]: the files, the pieces and the info-hash.
//!
//! The `info` dictionary parses from its raw bytes alone ([`Info::from_bytes`]) because a magnet
//! link gets those bytes from peers (BEP 9), not from a file. The info-hash is the SHA1 of those
//! exact bytes, never of a re-encoding: a torrent with odd but valid encoding keeps its identity.
//! Also read: multitracker tiers (BEP 12), the private flag (BEP 27), padding files (BEP 47),
//! DHT nodes (BEP 5, kept for later use) and web seeds (BEP 19, `session::webseed` asks them).
//!
//! Everything in a torrent file is hostile input: bad values give a [`MetainfoError`] naming what
//! failed, file names are made safe in `paths`, and nothing here panics on any input.

pub mod paths;
mod summary;

use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};
use thiserror::Error;

use crate::bencode::{self, BencodeError, Dict, Value};
use crate::piece::Geometry;

/// Larger pieces are refused: no client makes them, and a peer would have to buffer one whole.
pub const MAX_PIECE_LENGTH: u32 = 256 * 1024 * 1024;

/// Larger torrent files are refused before reading them whole (libtorrent's limit is 30 MB).
pub const MAX_TORRENT_FILE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum MetainfoError {
    #[error("cannot read torrent file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("torrent file {} is larger than {MAX_TORRENT_FILE_BYTES} bytes", path.display())]
    FileTooLarge { path: PathBuf },
    #[error("torrent file is not valid bencode: {0}")]
    Bencode(#[source] BencodeError),
    #[error("info dictionary is not valid bencode: {0}")]
    InfoBencode(#[source] BencodeError),
    #[error("torrent file is not a bencoded dictionary")]
    NotADictionary,
    #[error("torrent has no 'info' dictionary")]
    NoInfo,
    #[error("'{key}' missing in {place}")]
    MissingKey { key: &'static str, place: String },
    #[error("'{key}' in {place} is not {expected}")]
    WrongType {
        key: &'static str,
        place: String,
        expected: &'static str,
    },
    #[error("BitTorrent v2-only torrents are not supported (the info has no v1 'pieces')")]
    V2Only,
    #[error("both 'length' and 'files' in info")]
    LengthAndFiles,
    #[error("neither 'length' nor 'files' in info")]
    NoLengthOrFiles,
    #[error("'files' list in info is empty")]
    NoFiles,
    #[error("piece length {0} is out of range (1 byte to {MAX_PIECE_LENGTH} bytes)")]
    PieceLength(i64),
    #[error("'pieces' length {0} is not a multiple of 20")]
    PiecesLength(usize),
    #[error("file length {length} in {place} is negative")]
    NegativeLength { length: i64, place: String },
    #[error("total size of the files overflows 64 bits")]
    TotalSizeOverflow,
    #[error("torrent has no data (total size 0)")]
    NoData,
    #[error(
        "piece count {count} does not match total size {total} with piece length {piece_length} \
         (expected {expected})"
    )]
    PieceCount {
        count: usize,
        total: u64,
        piece_length: u32,
        expected: u64,
    },
    #[error("{place} has an empty path")]
    EmptyPath { place: String },
    #[error("file paths collide: '{first}' and '{second}'")]
    PathCollision { first: String, second: String },
}

/// The v1 info-hash: SHA1 of the bencoded `info` dictionary.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InfoHash(pub [u8; 20]);

impl InfoHash {
    /// The hash of raw info bytes.
    pub fn of(info: &[u8]) -> InfoHash {
        InfoHash(Sha1::digest(info).into())
    }

    /// Parses 40 hex digits, either case.
    pub fn from_hex(s: &str) -> Option<InfoHash> {
        fn nibble(c: u8) -> Option<u8> {
            (c as char).to_digit(16).map(|d| d as u8)
        }
        let s = s.as_bytes();
        if s.len() != 40 {
            return None;
        }
        let mut out = [0u8; 20];
        for (byte, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
            *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(InfoHash(out))
    }
}

impl fmt::LowerHex for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(self, f)
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash({self:x})")
    }
}

/// One file of the torrent, in torrent order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Safe relative path, every component one level (see `paths`). Multi-file torrents start
    /// with the torrent's name, as Debian's btfs shows them; a single file is `[name]`.
    pub path: Vec<String>,
    pub length: u64,
    /// Offset of its first byte in the torrent's concatenated data.
    pub offset: u64,
    /// A BEP 47 padding file: it takes offset space, but the filesystem hides it.
    pub padding: bool,
}

/// Everything read from the `info` dictionary.
#[derive(Clone, Debug)]
pub struct Info {
    /// The sanitized name: the file's name, or the root directory of a multi-file torrent.
    pub name: String,
    pub geometry: Geometry,
    pub piece_hashes: Vec<[u8; 20]>,
    pub files: Vec<FileEntry>,
    pub private: bool,
    /// The exact info bytes, kept to serve metadata to peers (BEP 9).
    pub raw: Vec<u8>,
}

impl Info {
    /// Parses a bencoded `info` dictionary, from a torrent file or from peers (BEP 9).
    pub fn from_bytes(raw: &[u8]) -> Result<Info, MetainfoError> {
        let value = bencode::decode(raw).map_err(MetainfoError::InfoBencode)?;
        let info = value.as_dict().ok_or(MetainfoError::NoInfo)?;
        let place = "info dictionary";

        let Some(pieces) = info.get("pieces") else {
            let v2 = info.get("meta version").and_then(Value::as_int) == Some(2)
                || info.get("file tree").is_some();
            return Err(if v2 {
                MetainfoError::V2Only
            } else {
                missing("pieces", place)
            });
        };
        let pieces = pieces
            .as_bytes()
            .ok_or_else(|| wrong_type("pieces", place, "a byte string"))?;
        if pieces.len() % 20 != 0 {
            return Err(MetainfoError::PiecesLength(pieces.len()));
        }
        let piece_hashes: Vec<[u8; 20]> = pieces
            .chunks_exact(20)
            .map(|c| {
                let mut h = [0u8; 20];
                h.copy_from_slice(c);
                h
            })
            .collect();

        let raw_piece_length = int(info, "piece length", place)?;
        let piece_length = u32::try_from(raw_piece_length)
            .ok()
            .filter(|&n| n > 0 && n <= MAX_PIECE_LENGTH)
            .ok_or(MetainfoError::PieceLength(raw_piece_length))?;

        let raw_name = text(info, "name", place)?;
        // A name that is empty or "." cannot be a file or directory; libtorrent falls back to
        // the info-hash too.
        let name =
            paths::sanitize_component(&raw_name).unwrap_or_else(|| InfoHash::of(raw).to_string());
        let mut changed = usize::from(name != raw_name);

        let files = match (info.get("length"), info.get("files")) {
            (Some(_), Some(_)) => return Err(MetainfoError::LengthAndFiles),
            (None, None) => return Err(MetainfoError::NoLengthOrFiles),
            (Some(_), None) => {
                let length = int(info, "length", place)?;
                let length = u64::try_from(length).map_err(|_| MetainfoError::NegativeLength {
                    length,
                    place: place.to_owned(),
                })?;
                vec![FileEntry {
                    path: vec![name.clone()],
                    length,
                    offset: 0,
                    padding: false,
                }]
            }
            (None, Some(list)) => {
                let list = list
                    .as_list()
                    .ok_or_else(|| wrong_type("files", place, "a list"))?;
                let (files, n) = parse_files(list, &name)?;
                changed += n;
                files
            }
        };
        paths::check_collisions(&files)?;

        let total = files
            .last()
            .map_or(Some(0), |f| f.offset.checked_add(f.length))
            .ok_or(MetainfoError::TotalSizeOverflow)?;
        if total == 0 {
            return Err(MetainfoError::NoData);
        }
        let expected = total.div_ceil(u64::from(piece_length));
        if expected != piece_hashes.len() as u64 {
            return Err(MetainfoError::PieceCount {
                count: piece_hashes.len(),
                total,
                piece_length,
                expected,
            });
        }
        // The count matched hashes held in memory, so it fits a u32 on any real machine.
        let geometry = Geometry::new(piece_length, total).ok_or(MetainfoError::PieceCount {
            count: piece_hashes.len(),
            total,
            piece_length,
            expected,
        })?;

        // BEP 27 says 1; libtorrent treats any non-zero integer as private, and so do we: wrongly
        // leaking a private torrent to the DHT is the worse mistake.
        let private = info
            .get("private")
            .and_then(Value::as_int)
            .is_some_and(|p| p != 0);

        // Only once the torrent is accepted: a refused one gets its error as the one line.
        if changed > 0 {
            tracing::warn!(torrent = %name, changed, "renamed unsafe file name components");
        }
        Ok(Info {
            name,
            geometry,
            piece_hashes,
            files,
            private,
            raw: raw.to_vec(),
        })
    }

    /// SHA1 of [`Info::raw`], computed on each call ([`Torrent::info_hash`] keeps it).
    pub fn info_hash(&self) -> InfoHash {
        InfoHash::of(&self.raw)
    }

    /// Whether the info had a `files` list (its files then live under a directory `name`),
    /// even when that list holds a single file.
    pub fn is_multi_file(&self) -> bool {
        // Single-file paths are `[name]`; multi-file paths always have a level below the name.
        self.files.first().is_some_and(|f| f.path.len() > 1)
    }

    pub fn total_length(&self) -> u64 {
        self.geometry.total_length()
    }
}

/// Reads a `files` list; returns the entries and how many path components were renamed.
fn parse_files(list: &[Value<'_>], root: &str) -> Result<(Vec<FileEntry>, usize), MetainfoError> {
    if list.is_empty() {
        return Err(MetainfoError::NoFiles);
    }
    let mut files = Vec::with_capacity(list.len());
    let mut offset = 0u64;
    let mut changed = 0;
    for (i, entry) in list.iter().enumerate() {
        let place = format!("files[{i}]");
        let dict = entry
            .as_dict()
            .ok_or_else(|| wrong_type("files", "info dictionary", "a list of dictionaries"))?;
        let length = int(dict, "length", &place)?;
        let length = u64::try_from(length).map_err(|_| MetainfoError::NegativeLength {
            length,
            place: place.clone(),
        })?;
        let padding = dict
            .get("attr")
            .and_then(Value::as_bytes)
            .is_some_and(|a| a.contains(&b'p'));
        let (mut path, n) = paths::file_path(root, &path_components(dict, &place)?);
        changed += n;
        if path.len() == 1 {
            // A hidden padding file needs no real name; any other file does.
            if !padding {
                return Err(MetainfoError::EmptyPath { place });
            }
            path.push(".pad".to_owned());
        }
        files.push(FileEntry {
            path,
            length,
            offset,
            padding,
        });
        offset = offset
            .checked_add(length)
            .ok_or(MetainfoError::TotalSizeOverflow)?;
    }
    Ok((files, changed))
}

/// A file's raw path components: `path.utf-8` when present and all valid UTF-8 (written by
/// clients whose `path` is in a legacy encoding), else `path` converted lossily.
fn path_components(dict: &Dict<'_>, place: &str) -> Result<Vec<String>, MetainfoError> {
    let utf8 = dict
        .get("path.utf-8")
        .and_then(Value::as_list)
        .and_then(|l| {
            l.iter()
                .map(|c| c.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
        });
    if let Some(components) = utf8 {
        return Ok(components);
    }
    let list = dict
        .get("path")
        .ok_or_else(|| missing("path", place))?
        .as_list()
        .ok_or_else(|| wrong_type("path", place, "a list of strings"))?;
    list.iter()
        .map(|c| {
            c.as_bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .ok_or_else(|| wrong_type("path", place, "a list of strings"))
        })
        .collect()
}

/// A parsed torrent file.
#[derive(Clone, Debug)]
pub struct Torrent {
    pub info: Info,
    pub info_hash: InfoHash,
    /// Tracker URLs by tier (BEP 12): only http, https and udp, each URL once, no empty tier.
    pub trackers: Vec<Vec<String>>,
    /// DHT bootstrap nodes `(host, port)` (BEP 5).
    pub nodes: Vec<(String, u16)>,
    /// Web seeds (BEP 19): http and https URLs.
    pub url_list: Vec<String>,
    pub comment: Option<String>,
    pub created_by: Option<String>,
    /// Seconds since the Unix epoch, as written.
    pub creation_date: Option<i64>,
}

impl Torrent {
    pub fn from_bytes(bytes: &[u8]) -> Result<Torrent, MetainfoError> {
        let root = bencode::decode(bytes).map_err(MetainfoError::Bencode)?;
        let dict = root.as_dict().ok_or(MetainfoError::NotADictionary)?;
        let raw_info = dict
            .get("info")
            .and_then(Value::as_dict)
            .ok_or(MetainfoError::NoInfo)?
            .raw;
        // Everything outside `info` is advisory: a malformed optional key is skipped, not fatal.
        let trackers = trackers(dict);
        let nodes = nodes(dict);
        let url_list = url_list(dict);
        let comment = text(dict, "comment", "torrent").ok();
        let created_by = text(dict, "created by", "torrent").ok();
        let creation_date = dict.get("creation date").and_then(Value::as_int);
        // The decoded tree of a 100,000-file torrent takes tens of MB; free it before `info` is
        // decoded a second time from its raw bytes.
        drop(root);
        let info = Info::from_bytes(raw_info)?;
        Ok(Torrent {
            info_hash: info.info_hash(),
            info,
            trackers,
            nodes,
            url_list,
            comment,
            created_by,
            creation_date,
        })
    }

    /// Reads and parses a torrent file; read errors name the path.
    pub fn from_file(path: &Path) -> Result<Torrent, MetainfoError> {
        let read_err = |source| MetainfoError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut bytes = Vec::new();
        file.take(MAX_TORRENT_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() as u64 > MAX_TORRENT_FILE_BYTES {
            return Err(MetainfoError::FileTooLarge {
                path: path.to_owned(),
            });
        }
        Torrent::from_bytes(&bytes)
    }

    /// What `btfs info file.torrent` prints.
    pub fn summary(&self) -> String {
        summary::summary(self)
    }
}

/// Tiers from `announce-list`, or the single `announce` when the list has no usable URL (BEP 12
/// says the list wins; libtorrent also falls back when the list is empty).
fn trackers(dict: &Dict<'_>) -> Vec<Vec<String>> {
    let mut seen = HashSet::new();
    let mut tiers = Vec::new();
    for tier in dict
        .get("announce-list")
        .and_then(Value::as_list)
        .unwrap_or_default()
    {
        let urls: Vec<String> = tier
            .as_list()
            .unwrap_or_default()
            .iter()
            .filter_map(|v| url_with_scheme(v, &["http://", "https://", "udp://"]))
            .filter(|u| seen.insert(u.clone()))
            .collect();
        if !urls.is_empty() {
            tiers.push(urls);
        }
    }
    if tiers.is_empty()
        && let Some(url) = dict
            .get("announce")
            .and_then(|v| url_with_scheme(v, &["http://", "https://", "udp://"]))
    {
        tiers.push(vec![url]);
    }
    tiers
}

/// `nodes`: a list of `[host, port]` pairs; malformed pairs are skipped.
fn nodes(dict: &Dict<'_>) -> Vec<(String, u16)> {
    let pairs = dict
        .get("nodes")
        .and_then(Value::as_list)
        .unwrap_or_default();
    pairs
        .iter()
        .filter_map(|pair| match pair.as_list()? {
            [host, port] => {
                let host = host.as_str()?.trim();
                let port = u16::try_from(port.as_int()?).ok().filter(|&p| p != 0)?;
                (!host.is_empty()).then(|| (host.to_owned(), port))
            }
            _ => None,
        })
        .collect()
}

/// `url-list`: one URL or a list of them (BEP 19 allows both).
fn url_list(dict: &Dict<'_>) -> Vec<String> {
    let schemes = ["http://", "https://"];
    let mut seen = HashSet::new();
    match dict.get("url-list") {
        Some(Value::List(list)) => list
            .iter()
            .filter_map(|v| url_with_scheme(v, &schemes))
            .filter(|u| seen.insert(u.clone()))
            .collect(),
        Some(v) => url_with_scheme(v, &schemes).into_iter().collect(),
        None => Vec::new(),
    }
}

/// The trimmed URL when it is UTF-8 and starts with one of `schemes` (any case) plus something.
fn url_with_scheme(v: &Value<'_>, schemes: &[&str]) -> Option<String> {
    let url = v.as_str()?.trim();
    schemes
        .iter()
        // `get`, not indexing: the URL is untrusted text and may have a multi-byte character
        // where the scheme would end.
        .any(|s| {
            url.len() > s.len()
                && url
                    .get(..s.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(s))
        })
        .then(|| url.to_owned())
}

/// A text value: `<key>.utf-8` when present and valid UTF-8, else `key` converted lossily.
fn text(dict: &Dict<'_>, key: &'static str, place: &str) -> Result<String, MetainfoError> {
    if let Some(s) = dict.get(&format!("{key}.utf-8")).and_then(Value::as_str) {
        return Ok(s.to_owned());
    }
    let bytes = dict
        .get(key)
        .ok_or_else(|| missing(key, place))?
        .as_bytes()
        .ok_or_else(|| wrong_type(key, place, "a string"))?;
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

fn int(dict: &Dict<'_>, key: &'static str, place: &str) -> Result<i64, MetainfoError> {
    dict.get(key)
        .ok_or_else(|| missing(key, place))?
        .as_int()
        .ok_or_else(|| wrong_type(key, place, "an integer"))
}

fn missing(key: &'static str, place: &str) -> MetainfoError {
    MetainfoError::MissingKey {
        key,
        place: place.to_owned(),
    }
}

fn wrong_type(key: &'static str, place: &str, expected: &'static str) -> MetainfoError {
    MetainfoError::WrongType {
        key,
        place: place.to_owned(),
        expected,
    }
}

#[cfg(test)]
mod tests;
