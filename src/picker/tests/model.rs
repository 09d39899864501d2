//! A random walk over picker events: after every step the invariants in the module doc hold, and
//! `pick` returns exactly what sorting every candidate piece by `order_key` would, and each
//! peer's remembered `interest` what a full scan would.

use std::collections::BTreeSet;

use super::{bits, idx, pairs, picker, want};
use crate::picker::order::{Deadline, OrderKey, Priority};
use crate::picker::*;

/// A reference picker: sort every candidate piece by `order_key`, expand to blocks.
fn reference(p: &Picker, peer: PeerId, has: &Bitfield, max: usize) -> Vec<(u32, u32)> {
    let mut keys: Vec<OrderKey> = p
        .geometry()
        .pieces()
        .filter(|&i| has.get(i.get()))
        .filter(|&i| matches!(p.piece_state(i), PieceState::Missing | PieceState::Partial))
        .filter(|i| !p.deferred.contains(i))
        .map(|i| p.order_key(i))
        .filter(|k| {
            matches!(k.priority, Priority::Reader(_))
                || (p.background
                    && (p.in_scope(k.piece) || p.piece_state(k.piece) == PieceState::Partial))
        })
        .collect();
    keys.sort();
    let urgent = |k: &OrderKey| matches!(k.priority, Priority::Reader(Deadline::Urgent(_)));
    let free_blocks = |k: &OrderKey| -> Vec<(u32, u32)> {
        let n = p.geometry().block_count(k.piece);
        (0..n)
            .filter(|&b| match p.partial.get(&k.piece) {
                None => true,
                Some(part) => matches!(part.blocks[b as usize], Slot::Free),
            })
            .map(|b| (k.piece.get(), b))
            .collect()
    };
    let mut out: Vec<(u32, u32)> = keys
        .iter()
        .filter(|k| urgent(k))
        .flat_map(free_blocks)
        .collect();
    for k in keys.iter().filter(|k| urgent(k)) {
        if let Some(part) = p.partial.get(&k.piece) {
            for (b, slot) in part.blocks.iter().enumerate() {
                let late = p.late.contains(&Block {
                    piece: k.piece,
                    block: b as u32,
                });
                if let Slot::Requested(q) = slot
                    && q.len() < MAX_REQUESTERS
                    && !q.contains(&peer)
                    && late
                {
                    out.push((k.piece.get(), b as u32));
                }
            }
        }
    }
    spread(p, peer, has, max, &mut out);
    out.extend(keys.iter().filter(|k| !urgent(k)).flat_map(free_blocks));
    out.truncate(max);
    out
}

/// The reference's queue-depth endgame: every requested block of every urgent piece (whoever
/// has it), numbered per requester in pick order; the deepest ones `peer` has and may take,
/// while it has fewer in flight than are ahead of them by the margin.
fn spread(p: &Picker, peer: PeerId, has: &Bitfield, max: usize, out: &mut Vec<(u32, u32)>) {
    let mut urgent: Vec<(Deadline, PieceIndex)> = (p.deadlines.iter())
        .filter(|(_, d)| matches!(d, Deadline::Urgent(_)))
        .map(|(&i, &d)| (d, i))
        .collect();
    urgent.sort();
    let mut mine = p.in_flight(peer) + out.len().min(max);
    let mut ahead: std::collections::HashMap<PeerId, usize> = Default::default();
    let mut candidates = Vec::new();
    for (_, i) in urgent {
        let Some(part) = p.partial.get(&i) else {
            continue;
        };
        for (b, slot) in part.blocks.iter().enumerate() {
            let Slot::Requested(q) = slot else { continue };
            let depth = q.iter().map(|x| ahead.get(x).copied().unwrap_or(0)).min();
            for x in q {
                *ahead.entry(*x).or_default() += 1;
            }
            let pair = (i.get(), b as u32);
            if has.get(i.get())
                && q.len() < MAX_REQUESTERS
                && !q.contains(&peer)
                && !out.contains(&pair)
            {
                candidates.push((depth.unwrap_or(0), pair));
            }
        }
    }
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (depth, pair) in candidates {
        if out.len() >= max || mine + SPREAD_MARGIN > depth {
            break;
        }
        out.push(pair);
        mine += 1;
    }
}

/// The invariants written at the top of the module, checked from the raw state.
fn check_invariants(p: &Picker) {
    for d in &p.deferred {
        assert_eq!(p.piece_state(*d), PieceState::Missing, "deferred {d}");
        assert!(
            matches!(p.deadlines.get(d), Some(Deadline::Readahead(r)) if *r >= crate::picker::NEAR),
            "deferred {d} is far in a window"
        );
    }
    for b in &p.late {
        let slot = p
            .partial
            .get(&b.piece)
            .map(|part| &part.blocks[b.block as usize]);
        assert!(
            matches!(slot, Some(Slot::Requested(_))),
            "a late block is a requested one: {b:?}"
        );
    }
    for i in p.geometry().pieces() {
        let s = p.piece_state(i);
        assert_eq!(
            p.partial.contains_key(&i),
            s == PieceState::Partial,
            "piece {i}"
        );
        assert_eq!(p.have(i), s == PieceState::Have, "piece {i}");
        let needed = matches!(s, PieceState::Missing | PieceState::Partial);
        let one = bits(p.geometry().piece_count(), &[i.get()]);
        assert_eq!(p.is_interesting(&one), needed, "piece {i}");
    }
    let mut requested = BTreeSet::new();
    for (&piece, part) in &p.partial {
        assert!(!part.untouched(), "partial piece {piece} has no progress");
        assert!(part.received < p.geometry().block_count(piece));
        let free = part
            .blocks
            .iter()
            .filter(|s| matches!(s, Slot::Free))
            .count();
        assert_eq!(part.free as usize, free);
        for (b, slot) in part.blocks.iter().enumerate() {
            if let Slot::Requested(peers) = slot {
                assert!(!peers.is_empty() && peers.len() <= MAX_REQUESTERS);
                for &q in peers {
                    assert!(requested.insert((q, piece, b as u32)), "{q:?} asked twice");
                }
            }
        }
    }
    let listed: BTreeSet<_> = p
        .in_flight
        .iter()
        .flat_map(|(&q, set)| set.iter().map(move |b| (q, b.piece, b.block)))
        .collect();
    assert_eq!(listed, requested);
}

#[test]
fn pick_follows_the_comparator_in_random_states() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move |n: u32| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % u64::from(n)) as u32
    };
    for _ in 0..300 {
        let n = 1 + rand(150);
        let mut p = picker(n, 1 + rand(3));
        let peers: Vec<PeerId> = (0..5).map(PeerId).collect();
        let mut has: Vec<Bitfield> = Vec::new();
        for &q in &peers {
            let ones: Vec<u32> = (0..n).filter(|_| rand(3) > 0).collect();
            let b = bits(n, &ones);
            p.peer_bitfield(q, &b);
            has.push(b);
        }
        let mut hints = vec![Interest::default(); peers.len()];
        for step in 0..40 {
            let who = rand(5) as usize;
            match rand(10) {
                0 => p.set_reader(ReaderId(u64::from(rand(2))), {
                    let s = rand(n);
                    let u = s + rand(3);
                    want(s..u, u..u + rand(6))
                }),
                1 if rand(3) == 0 => {
                    let s = rand(n);
                    let scope = (rand(2) == 0).then(|| vec![s..s + rand(n), rand(n)..rand(n) + 2]);
                    p.set_background_scope(scope);
                }
                1 => p.set_background(rand(3) > 0),
                2 => {
                    let first = p.blocks_requested(peers[who]).next();
                    if let Some(b) = first {
                        if rand(2) == 0 {
                            p.request_failed(peers[who], b);
                        } else if p.block_received(peers[who], b).piece_complete {
                            match rand(5) {
                                0 => p.piece_failed(b.piece),
                                1 => p.piece_not_kept(b.piece),
                                _ => p.piece_verified(b.piece),
                            }
                        }
                    }
                }
                3 if rand(2) == 0 => p.peer_choked(peers[who]),
                3 => {
                    let requested: Vec<Block> = p.blocks_requested(peers[who]).collect();
                    for b in requested {
                        p.mark_late(b);
                    }
                }
                4 => {
                    p.peer_gone(peers[who], &has[who]);
                    p.peer_bitfield(peers[who], &has[who]);
                }
                5 => {
                    let piece = idx(&p, rand(n));
                    let block = rand(p.geometry().block_count(piece) + 1);
                    if p.block_received(peers[who], Block { piece, block })
                        .piece_complete
                    {
                        p.piece_verified(piece);
                    }
                }
                6 => {
                    let piece = idx(&p, rand(n));
                    p.piece_evicted(piece);
                }
                7 if rand(2) == 0 => {
                    let piece = idx(&p, rand(n));
                    if has[who].set(piece.get()) {
                        p.peer_have(peers[who], piece);
                        p.peer_announced(piece, &mut hints[who]);
                    }
                }
                _ => {
                    let max = 1 + rand(6) as usize;
                    let want = reference(&p, peers[who], &has[who], max);
                    let got = p.pick(peers[who], &has[who], max);
                    assert_eq!(pairs(&got), want, "step {step}");
                }
            }
            check_invariants(&p);
            // Each peer's remembered interest answers as a full scan would.
            for (q, hint) in hints.iter_mut().enumerate() {
                let scan = p.is_interesting(&has[q]);
                assert_eq!(p.interest(&has[q], hint), scan, "step {step}, peer {q}");
            }
        }
    }
}
