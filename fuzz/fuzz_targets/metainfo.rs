//! Bencode, torrent files, info dictionaries (as BEP 9 peers send them) and magnet links.
#![no_main]

use btfs::bencode;
use btfs::magnet::link::Magnet;
use btfs::metainfo::{Info, Torrent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = bencode::decode(data);
    let _ = bencode::decode_prefix(data);
    if let Ok(t) = Torrent::from_bytes(data) {
        // What a successful parse promises: contiguous files, one hash per piece.
        let info = &t.info;
        let mut offset = 0u64;
        for f in &info.files {
            assert_eq!(f.offset, offset);
            offset += f.length;
            for c in &f.path {
                assert!(!c.is_empty() && c != "." && c != ".." && !c.contains(['/', '\0']));
            }
        }
        assert_eq!(offset, info.total_length());
        assert_eq!(
            info.piece_hashes.len() as u64,
            u64::from(info.geometry.piece_count())
        );
        let _ = t.summary();
    }
    let _ = Info::from_bytes(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = Magnet::parse(s);
    }
});
