//! The BEP 9 state machine: pieces spread over peers, failures handed on, bad data blamed,
//! a liar's size outlived, and our own info dictionary served and assembled again.

use crate::bencode::{self, Encoder};
use crate::magnet::metadata::{
    MAX_METADATA_SIZE, METADATA_PIECE_LEN, MetadataError, MetadataFetch, Progress, metadata_piece,
    metadata_piece_count,
};
use crate::metainfo::{Info, InfoHash, MetainfoError};
use crate::wire::extension::MetadataMsg;

/// The raw info dictionary of a libtorrent-made torrent (one metadata piece).
fn fixture_info() -> Vec<u8> {
    let torrent = include_bytes!("../../../tests/fixtures/lt_multi_v1.torrent");
    let root = bencode::decode(torrent).unwrap();
    root.get("info").unwrap().as_dict().unwrap().raw.to_vec()
}

/// A valid single-file info dictionary of 2000 pieces: 40,072 bytes, so three metadata
/// pieces, the last 7,304 bytes long.
fn big_info() -> Vec<u8> {
    let hashes: Vec<u8> = (0..2000 * 20).map(|i| (i * 7 % 251) as u8).collect();
    let raw = Encoder::new()
        .begin_dict()
        .str("length")
        .int(2000 * 16384 - 5)
        .str("name")
        .str("big.file")
        .str("piece length")
        .int(16384)
        .str("pieces")
        .bytes(&hashes)
        .end()
        .finish();
    assert!(Info::from_bytes(&raw).is_ok());
    raw
}

fn piece(raw: &[u8], i: u32) -> &[u8] {
    metadata_piece(raw, i).unwrap()
}

fn complete<P: std::fmt::Debug>(p: Result<Progress<P>, MetadataError>) -> Box<Info> {
    match p {
        Ok(Progress::Complete(info)) => info,
        other => panic!("not complete: {other:?}"),
    }
}

#[test]
fn one_peer_fetches_a_real_info_dictionary() {
    let raw = fixture_info();
    let mut f = MetadataFetch::new(InfoHash::of(&raw));
    assert_eq!(
        f.next_request(1),
        None,
        "nothing to ask before a size is known"
    );
    f.set_size(1, raw.len() as u32).unwrap();
    assert_eq!(f.progress(), (0, 1));
    assert_eq!(f.next_request(1), Some(0));
    assert_eq!(f.next_request(1), None);
    let info = complete(f.on_data(1, 0, &raw));
    assert_eq!(info.raw, raw);
    assert_eq!(info.name, Info::from_bytes(&raw).unwrap().name);
    assert!(f.is_done());
    assert_eq!(f.progress(), (1, 1));
    assert_eq!(f.next_request(1), None);
    assert!(matches!(f.on_data(1, 0, &raw), Ok(Progress::Ignored)));
}

#[test]
fn pieces_spread_over_peers_and_arrive_in_any_order() {
    let raw = big_info();
    assert_eq!(raw.len(), 40_072);
    let mut f = MetadataFetch::new(InfoHash::of(&raw));
    for peer in ['a', 'b', 'c'] {
        f.set_size(peer, raw.len() as u32).unwrap();
    }
    assert_eq!(f.next_request('a'), Some(0));
    assert_eq!(f.next_request('b'), Some(1));
    assert_eq!(f.next_request('c'), Some(2));
    assert_eq!(f.next_request('a'), None);
    assert_eq!(piece(&raw, 2).len(), 7_304);
    assert!(matches!(
        f.on_data('c', 2, piece(&raw, 2)),
        Ok(Progress::Stored)
    ));
    assert!(matches!(
        f.on_data('a', 0, piece(&raw, 0)),
        Ok(Progress::Stored)
    ));
    assert_eq!(f.progress(), (2, 3));
    let info = complete(f.on_data('b', 1, piece(&raw, 1)));
    assert_eq!((info.raw.len(), info.piece_hashes.len()), (raw.len(), 2000));
}

#[test]
fn one_peer_gets_at_most_two_requests_at_once() {
    let raw = big_info();
    let mut f = MetadataFetch::new(InfoHash::of(&raw));
    f.set_size(7u64, raw.len() as u32).unwrap();
    assert_eq!(f.next_request(7), Some(0));
    assert_eq!(f.next_request(7), Some(1));
    assert_eq!(f.next_request(7), None);
    f.on_data(7, 0, piece(&raw, 0)).unwrap();
    assert_eq!(f.next_request(7), Some(2));
}

#[test]
fn rejected_timed_out_and_orphaned_pieces_go_to_other_peers() {
    let raw = fixture_info();
    let mut f = MetadataFetch::new(InfoHash::of(&raw));
    for peer in 1..=4 {
        f.set_size(peer, raw.len() as u32).unwrap();
    }
    assert_eq!(f.next_request(1), Some(0));
    assert_eq!(f.next_request(2), None, "piece 0 is in flight");
    f.request_failed(1, 0); // a reject
    assert_eq!(
        f.next_request(1),
        None,
        "never asked again of the peer that rejected it"
    );
    assert_eq!(f.next_request(2), Some(0));
    f.request_failed(3, 0); // not asked of 3: no effect
    assert_eq!(f.next_request(3), None);
    f.request_failed(2, 0); // a timeout
    assert_eq!(f.next_request(3), Some(0));
    f.peer_gone(3);
    assert_eq!(f.next_request(3), None, "a gone peer is not asked");
    assert_eq!(f.next_request(4), Some(0));
    complete(f.on_data(4, 0, &raw));
}

#[test]
fn a_late_answer_counts_and_the_duplicate_is_ignored() {
    let raw = big_info();
    let mut f = MetadataFetch::new(InfoHash::of(&raw));
    f.set_size(1, raw.len() as u32).unwrap();
    f.set_size(2, raw.len() as u32).unwrap();
    assert_eq!(f.next_request(1), Some(0));
    f.request_failed(1, 0);
    assert_eq!(f.next_request(2), Some(0));
    assert!(matches!(
        f.on_data(1, 0, piece(&raw, 0)),
        Ok(Progress::Stored)
    ));
    assert!(matches!(
        f.on_data(2, 0, piece(&raw, 0)),
        Ok(Progress::Ignored)
    ));
    assert_eq!(f.progress(), (1, 3));
}

#[test]
fn bad_data_blames_its_senders_and_the_fetch_starts_over() {
    let raw = big_info();
    let size = raw.len() as u32;
    let mut f = MetadataFetch::new(InfoHash::of(&raw));
    for peer in ['a', 'b', 'c'] {
        f.set_size(peer, size).unwrap();
    }
    let mut bad = piece(&raw, 1).to_vec();
    bad[100] ^= 1;
    f.on_data('a', 0, piece(&raw, 0)).unwrap();
    f.on_data('b', 1, &bad).unwrap();
    match f.on_data('a', 2, piece(&raw, 2)) {
        Ok(Progress::HashMismatch { blamed }) => assert_eq!(blamed, ['a', 'b']),
        other => panic!("expected a mismatch: {other:?}"),
    }
    assert!(!f.is_done());
    assert_eq!(f.progress(), (0, 3));
    assert_eq!(f.next_request('a'), None, "blamed peers are dropped");
    assert!(matches!(
        f.on_data('b', 0, piece(&raw, 0)),
        Err(MetadataError::UnknownSize)
    ));
    for i in 0..3 {
        assert_eq!(f.next_request('c'), Some(i));
        f.on_data('c', i, piece(&raw, i)).map(|_| ()).unwrap();
    }
    assert!(f.is_done());
}

#[test]
fn a_liars_size_wins_first_and_then_gives_way() {
    let raw = fixture_info();
    let size = raw.len() as u32;
    let mut f = MetadataFetch::new(InfoHash::of(&raw));
    f.set_size("liar", 100).unwrap();
    assert!(matches!(
        f.set_size("honest", size),
        Err(MetadataError::SizeDisagrees { announced, in_use: 100 }) if announced == size
    ));
    assert_eq!(f.next_request("honest"), None);
    assert!(matches!(
        f.on_data("honest", 0, &raw),
        Err(MetadataError::UnknownSize)
    ));
    assert_eq!(f.next_request("liar"), Some(0));
    match f.on_data("liar", 0, &[0; 100]) {
        Ok(Progress::HashMismatch { blamed }) => assert_eq!(blamed, ["liar"]),
        other => panic!("expected a mismatch: {other:?}"),
    }
    assert_eq!(f.size(), Some(size));
    assert_eq!(f.next_request("honest"), Some(0));
    complete(f.on_data("honest", 0, &raw));

    // The liar leaving before sending anything also hands the fetch to the next size.
    let mut f = MetadataFetch::new(InfoHash::of(&raw));
    f.set_size("liar", 100).unwrap();
    assert!(f.set_size("honest", size).is_err());
    assert_eq!(f.next_request("liar"), Some(0));
    f.peer_gone("liar");
    assert_eq!(f.size(), Some(size));
    assert_eq!(f.next_request("honest"), Some(0));
}

#[test]
fn wrong_sizes_and_lengths_are_refused() {
    let raw = big_info();
    let size = raw.len() as u32;
    let mut f = MetadataFetch::new(InfoHash::of(&raw));
    assert!(matches!(
        f.on_data(1, 0, piece(&raw, 0)),
        Err(MetadataError::UnknownSize)
    ));
    assert!(matches!(f.set_size(1, 0), Err(MetadataError::Size(0))));
    assert!(matches!(
        f.set_size(1, MAX_METADATA_SIZE + 1),
        Err(MetadataError::Size(_))
    ));
    assert_eq!(f.size(), None);
    f.set_size(1, size).unwrap();
    let full = vec![0; METADATA_PIECE_LEN as usize];
    let cases = [
        (0, &full[..100], 16384),
        (2, &full[..], 7304),
        (2, &full[..7303], 7304),
    ];
    for (i, data, expected) in cases {
        let err = f.on_data(1, i, data).unwrap_err();
        assert!(
            matches!(err, MetadataError::DataLength { piece, expected: e, .. }
                if piece == i && e == expected),
            "{err}"
        );
    }
    assert!(matches!(
        f.on_data(1, 3, &full),
        Err(MetadataError::PieceOutOfRange { piece: 3, count: 3 })
    ));
    assert_eq!(f.progress(), (0, 3));
}

#[test]
fn matching_bytes_that_are_no_info_dictionary_end_the_fetch() {
    let raw = b"d4:name1:xe";
    let mut f = MetadataFetch::new(InfoHash::of(raw));
    f.set_size(1, raw.len() as u32).unwrap();
    let err = f.on_data(1, 0, raw).unwrap_err();
    assert!(matches!(
        err,
        MetadataError::Info(MetainfoError::MissingKey { key: "pieces", .. })
    ));
    assert!(f.is_done());
    assert_eq!(f.next_request(1), None);
}

#[test]
fn serving_cuts_16_kib_pieces_and_the_last_short() {
    let raw = big_info();
    assert_eq!(metadata_piece_count(raw.len() as u32), 3);
    let pieces: Vec<&[u8]> = (0..3).map(|i| piece(&raw, i)).collect();
    assert_eq!(
        pieces.iter().map(|p| p.len()).collect::<Vec<_>>(),
        [16384, 16384, 7304]
    );
    assert_eq!(pieces.concat(), raw);
    assert_eq!(metadata_piece(&raw, 3), None);
    assert_eq!(metadata_piece(&raw, u32::MAX), None);
    assert_eq!(metadata_piece(&[], 0), None);
    let small = fixture_info();
    assert_eq!(metadata_piece(&small, 0), Some(&small[..]));
}

/// What one side serves, encoded and decoded as on the wire, the other side assembles.
#[test]
fn served_pieces_assemble_through_the_wire_encoding() {
    let raw = big_info();
    let total_size = raw.len() as u32;
    let mut f = MetadataFetch::new(InfoHash::of(&raw));
    f.set_size(0, total_size).unwrap();
    let mut result = None;
    while let Some(i) = f.next_request(0) {
        let wire = MetadataMsg::Data {
            piece: i,
            total_size,
            data: piece(&raw, i),
        }
        .encode();
        let MetadataMsg::Data { piece, data, .. } = MetadataMsg::decode(&wire).unwrap() else {
            panic!("not data");
        };
        result = Some(f.on_data(0, piece, data));
    }
    assert_eq!(complete(result.unwrap()).raw, raw);
}
