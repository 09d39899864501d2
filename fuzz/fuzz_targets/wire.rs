//! Peer messages and the BEP 10 extension payloads (handshake, ut_metadata, ut_pex).
#![no_main]

use btfs::wire::extension::{ExtendedHandshake, MetadataMsg, Pex};
use btfs::wire::message::{Handshake, Message};
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Message::decode(Bytes::copy_from_slice(data)) {
        // A decoded frame re-encodes to the same bytes, after its length prefix.
        let mut out = BytesMut::new();
        msg.encode(&mut out);
        assert_eq!(&out[4..], data);
    }
    if let Ok(buf) = <&[u8; Handshake::LEN]>::try_from(data) {
        if let Ok(h) = Handshake::decode(buf) {
            assert_eq!(&h.encode(), buf);
        }
    }
    if let Ok(h) = ExtendedHandshake::decode(data) {
        let again = ExtendedHandshake::decode(&h.encode()).expect("re-decode");
        assert_eq!(again.ut_metadata, h.ut_metadata);
        assert_eq!(again.ut_pex, h.ut_pex);
        assert_eq!(again.metadata_size, h.metadata_size);
    }
    if let Ok(m) = MetadataMsg::decode(data) {
        assert_eq!(MetadataMsg::decode(&m.encode()).expect("re-decode"), m);
    }
    if let Ok(p) = Pex::decode(data) {
        let again = Pex::decode(&p.encode()).expect("re-decode");
        assert_eq!(again.dropped.len(), p.dropped.len());
        assert_eq!(again.added.len(), p.added.len());
    }
});
