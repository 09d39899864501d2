//! Property tests of the HTTP reply decoder: any body decodes or fails cleanly, never a panic,
//! and what decodes keeps the promises of [`AnnounceResponse`].

use proptest::prelude::*;

use crate::bencode::Encoder;
use crate::tracker::reply::parse_reply;
use crate::tracker::{AnnounceResponse, MAX_INTERVAL, MIN_INTERVAL};

/// A well-formed reply with random values, then a few bytes overwritten.
fn mangled_reply() -> impl Strategy<Value = Vec<u8>> {
    let reply = (
        any::<i64>(),
        prop::collection::vec(any::<u8>(), 0..40),
        prop::collection::vec((any::<[u8; 4]>(), any::<i64>()), 0..4),
    )
        .prop_map(|(interval, compact, dicts)| {
            let mut e = Encoder::new();
            e.begin_dict().str("interval").int(interval);
            e.str("peers").bytes(&compact);
            e.str("peers6").begin_list();
            for (ip, port) in dicts {
                let ip = std::net::Ipv4Addr::from(ip).to_string();
                e.begin_dict()
                    .str("ip")
                    .str(&ip)
                    .str("port")
                    .int(port)
                    .end();
            }
            e.end().end().finish()
        });
    (
        reply,
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    )
        .prop_map(|(mut body, edits)| {
            for (at, byte) in edits {
                let at = at.index(body.len());
                body[at] = byte;
            }
            body
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bodies_decode_or_fail_cleanly(body in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(r) = parse_reply(&body) {
            keeps_promises(&r)?;
        }
    }

    #[test]
    fn mangled_replies_decode_or_fail_cleanly(body in mangled_reply()) {
        if let Ok(r) = parse_reply(&body) {
            keeps_promises(&r)?;
        }
    }
}

fn keeps_promises(r: &AnnounceResponse) -> Result<(), TestCaseError> {
    prop_assert!((MIN_INTERVAL..=MAX_INTERVAL).contains(&r.interval), "{r:?}");
    prop_assert!(r.min_interval.is_none_or(|m| m <= MAX_INTERVAL), "{r:?}");
    prop_assert!(r.peers.iter().all(|p| p.port() != 0), "{r:?}");
    Ok(())
}
