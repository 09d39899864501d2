//! DHT datagrams (BEP 5 KRPC).
#![no_main]

use btfs::dht::krpc::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        // What we decoded encodes to something that decodes to the same message.
        assert_eq!(Message::decode(&m.encode()).as_ref(), Ok(&m));
    }
});
