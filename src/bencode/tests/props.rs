//! Property tests: any bytes decode to a value or an error, never a panic; any value round-trips.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

/// An owned value, to generate and to compare decoded values against.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Owned {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Owned>),
    Dict(BTreeMap<Vec<u8>, Owned>),
}

impl Owned {
    fn encode(&self, e: &mut Encoder) {
        match self {
            Owned::Int(n) => {
                e.int(*n);
            }
            Owned::Bytes(b) => {
                e.bytes(b);
            }
            Owned::List(items) => {
                e.begin_list();
                items.iter().for_each(|i| i.encode(e));
                e.end();
            }
            Owned::Dict(map) => {
                e.begin_dict();
                for (k, v) in map {
                    e.bytes(k);
                    v.encode(e);
                }
                e.end();
            }
        }
    }

    fn of(v: &Value<'_>) -> Owned {
        match v {
            Value::Int(n) => Owned::Int(*n),
            Value::Bytes(b) => Owned::Bytes(b.to_vec()),
            Value::List(l) => Owned::List(l.iter().map(Owned::of).collect()),
            Value::Dict(d) => {
                Owned::Dict(d.iter().map(|(k, v)| (k.to_vec(), Owned::of(v))).collect())
            }
        }
    }
}

fn owned() -> impl Strategy<Value = Owned> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(Owned::Int),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(Owned::Bytes),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Owned::List),
            prop::collection::btree_map(prop::collection::vec(any::<u8>(), 0..12), inner, 0..8)
                .prop_map(Owned::Dict),
        ]
    })
}

fn encoded(v: &Owned) -> Vec<u8> {
    let mut e = Encoder::new();
    v.encode(&mut e);
    e.finish()
}

/// Every dictionary's `raw` span is exactly the bytes that decode back to it.
fn check_spans(v: &Value<'_>) {
    match v {
        Value::List(l) => l.iter().for_each(check_spans),
        Value::Dict(d) => {
            assert_eq!(decode(d.raw).map(|v| Owned::of(&v)), Ok(Owned::of(v)));
            d.iter().for_each(|(_, v)| check_spans(v));
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(v) = decode(&bytes) {
            check_spans(&v);
            // What was accepted re-encodes (keys sorted) to bytes that decode to the same value.
            let again = encoded(&Owned::of(&v));
            prop_assert_eq!(decode(&again).map(|v| Owned::of(&v)), Ok(Owned::of(&v)));
        }
        let _ = decode_prefix(&bytes);
    }

    #[test]
    fn values_round_trip(v in owned()) {
        let bytes = encoded(&v);
        let decoded = decode(&bytes).expect("decodes");
        check_spans(&decoded);
        prop_assert_eq!(Owned::of(&decoded), v);
        let (prefix, used) = decode_prefix(&bytes).expect("decodes");
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(Owned::of(&prefix), Owned::of(&decoded));
    }

    #[test]
    fn mutated_values_decode_or_fail_cleanly(
        v in owned(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..5),
    ) {
        let mut bytes = encoded(&v);
        for (at, byte, op) in edits {
            if bytes.is_empty() {
                break;
            }
            let at = at.index(bytes.len());
            match op {
                0 => { bytes.remove(at); }
                1 => bytes.insert(at, byte),
                _ => bytes[at] = byte,
            }
        }
        if let Ok(v) = decode(&bytes) {
            check_spans(&v);
        }
    }
}
