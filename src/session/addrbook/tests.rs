//! The address book's backoffs, bounds and sources, with the time passed in.

use super::*;

fn a(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

const S: Duration = Duration::from_secs(1);

#[test]
fn a_refusing_peer_backs_off_and_is_given_up() {
    let t0 = Instant::now();
    let mut book = AddressBook::new(100);
    book.learn(a(1), PeerSource::Tracker, t0);
    let mut t = t0;
    let mut waits = Vec::new();
    loop {
        let due = book.due(t, 10);
        if due.is_empty() {
            // Nothing due: jump to the next try, if there is one within a day.
            let next = (0..86_400).map(|s| t + S * s).find(|&x| book.any_due(x));
            match next {
                Some(x) => {
                    waits.push((x - t).as_secs());
                    t = x;
                    continue;
                }
                None => break,
            }
        }
        assert_eq!(due, [(a(1), PeerSource::Tracker, None)]);
        book.finished(a(1), Outcome::Refused, t);
    }
    assert_eq!(waits, [60, 120, 240, 480], "then given up");
    // A read starving brings it back, soon.
    book.starving(t, STARVING_MAX_WAIT);
    assert!(book.any_due(t + STARVING_MAX_WAIT));
}

/// A seeder that closes each connection just after the handshakes (or during them) is
/// still dialled again within [`STARVING_MAX_WAIT`] while a read starves, however often it
/// did so: none of these outcomes drops or buries the address.
#[test]
fn a_peer_that_hangs_up_at_once_is_redialled_while_a_read_starves() {
    let quick = Outcome::Ended {
        lasted: Duration::from_millis(90),
    };
    for outcome in [quick, Outcome::HungUp, Outcome::Refused, Outcome::TimedOut] {
        let t0 = Instant::now();
        let mut book = AddressBook::new(10);
        book.learn(a(1), PeerSource::Tracker, t0);
        let mut t = t0;
        for attempt in 0..20 {
            assert_eq!(book.due(t, 10).len(), 1, "{outcome:?}, attempt {attempt}");
            book.finished(a(1), outcome, t);
            let ended = t;
            // The connector's tick, once a second while the read starves.
            loop {
                t += S;
                book.starving(t, STARVING_MAX_WAIT);
                if book.any_due(t) {
                    break;
                }
                // The first tick after the end starts the wait.
                assert!(
                    t - ended <= STARVING_MAX_WAIT,
                    "{outcome:?}, attempt {attempt}: not due {:?} after",
                    t - ended
                );
            }
        }
        assert_eq!(book.len(), 1, "{outcome:?}: still known");
    }
}

#[test]
fn an_ipv4_mapped_address_is_the_ipv4_address() {
    let t0 = Instant::now();
    let mut book = AddressBook::new(100);
    let mapped: SocketAddr = "[::ffff:10.0.0.1]:1".parse().unwrap();
    assert!(book.learn(mapped, PeerSource::Pex, t0));
    assert!(!book.learn(a(1), PeerSource::Tracker, t0), "the same peer");
    let six: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
    assert!(book.learn(six, PeerSource::Pex, t0));
    let mut due: Vec<SocketAddr> = book.due(t0, 10).iter().map(|d| d.0).collect();
    due.sort();
    assert_eq!(due, [a(1), six]);
}

#[test]
fn dead_addresses_stay_dead_even_when_starving_or_named_again() {
    let t0 = Instant::now();
    let mut book = AddressBook::new(100);
    for (port, outcome) in [
        (1, Outcome::WrongTorrent),
        (2, Outcome::Banned),
        (3, Outcome::Myself),
    ] {
        book.learn(a(port), PeerSource::Dht, t0);
        assert_eq!(book.due(t0, 10).len(), 1);
        book.finished(a(port), outcome, t0);
    }
    book.starving(t0, Duration::ZERO);
    for port in 1..=3 {
        assert!(!book.learn(a(port), PeerSource::Tracker, t0));
    }
    assert!(!book.any_due(t0 + Duration::from_secs(86_400)));
    assert_eq!(book.len(), 0, "not counted as known");
    assert_eq!(book.entries.len(), 3, "kept, so they are not dialled again");
}

#[test]
fn each_outcome_waits_its_own_time() {
    let t0 = Instant::now();
    for (outcome, wait) in [
        (Outcome::Ended { lasted: S * 600 }, 30),
        (Outcome::Ended { lasted: S }, 30),
        (Outcome::TimedOut, 30),
        (Outcome::HungUp, 120),
        (Outcome::Useless, 600),
        (Outcome::Duplicate, 60),
        (Outcome::Full, 10),
        (Outcome::Local, 10),
    ] {
        let mut book = AddressBook::new(10);
        book.learn(a(1), PeerSource::Pex, t0);
        book.due(t0, 1);
        book.finished(a(1), outcome, t0);
        assert!(!book.any_due(t0 + S * (wait - 1)), "{outcome:?}");
        assert!(book.any_due(t0 + S * wait), "{outcome:?}");
    }
}

/// A peer reached over another connection is no failure of its address: however often that
/// repeats, the address is dialled again (within half an hour), for when that connection ends.
#[test]
fn a_duplicate_is_retried_and_never_given_up() {
    let mut t = Instant::now();
    let mut book = AddressBook::new(10);
    book.learn(a(1), PeerSource::Tracker, t);
    for _ in 0..3 * MAX_FAILURES {
        assert_eq!(book.due(t, 1).len(), 1);
        book.finished(a(1), Outcome::Duplicate, t);
        t += S * 30 * 60;
    }
    assert_eq!(book.due(t, 1).len(), 1);
}

#[test]
fn never_tried_addresses_go_first_and_dialling_ones_are_not_due() {
    let t0 = Instant::now();
    let mut book = AddressBook::new(10);
    book.learn(a(1), PeerSource::Tracker, t0);
    book.due(t0, 1);
    book.finished(a(1), Outcome::Full, t0);
    book.learn(a(2), PeerSource::Tracker, t0 + S * 20);
    let due = book.due(t0 + S * 20, 1);
    assert_eq!(due[0].0, a(2));
    assert_eq!(book.due(t0 + S * 20, 5).len(), 1, "a(2) is being dialled");
}

#[test]
fn incoming_addresses_are_counted_not_dialled_and_forgotten_after() {
    let t0 = Instant::now();
    let mut book = AddressBook::new(10);
    book.incoming(a(9), t0);
    assert!(!book.any_due(t0));
    assert_eq!(book.len(), 1);
    book.incoming_ended(a(9));
    assert_eq!(book.len(), 0);
    // Named by a tracker too: kept, and dialable once the connection ended.
    book.incoming(a(8), t0);
    book.learn(a(8), PeerSource::Tracker, t0);
    book.incoming_ended(a(8));
    assert_eq!(book.due(t0, 5), [(a(8), PeerSource::Tracker, None)]);
}

#[test]
fn the_book_is_bounded_and_drops_what_is_least_worth_keeping() {
    let t0 = Instant::now();
    let mut book = AddressBook::new(3);
    book.learn(a(1), PeerSource::Tracker, t0);
    book.learn(a(2), PeerSource::Tracker, t0);
    book.learn(a(3), PeerSource::Tracker, t0);
    // a(1) connected, a(2) failed: a(2) goes first.
    let due = book.due(t0, 2);
    assert_eq!(due.len(), 2);
    book.connected(a(1));
    book.finished(a(2), Outcome::Refused, t0);
    assert!(book.learn(a(4), PeerSource::Pex, t0));
    assert_eq!(book.len(), 3);
    assert!(
        book.learn(a(2), PeerSource::Pex, t0 + S),
        "a(2) was the one dropped"
    );
    assert_eq!(book.len(), 3);
    // Only connected or dialling entries left: a new address does not fit.
    let mut full = AddressBook::new(1);
    full.learn(a(1), PeerSource::Tracker, t0);
    full.due(t0, 1);
    assert!(!full.learn(a(2), PeerSource::Tracker, t0));
}

#[test]
fn an_incoming_peers_listening_port_is_dialled_after_its_backoff() {
    let t0 = Instant::now();
    let mut book = AddressBook::new(10);
    book.incoming(a(40_000), t0);
    book.incoming_ended(a(40_000));
    book.listens(a(6881), Outcome::Ended { lasted: S * 10 }, t0);
    assert_eq!(
        book.len(),
        1,
        "the listening address, not the outgoing port"
    );
    assert!(
        !book.any_due(t0 + S * 29),
        "waits as a dialled peer that ended"
    );
    assert_eq!(
        book.due(t0 + S * 30, 5),
        [(a(6881), PeerSource::Handshake, None)]
    );
    // A wake (starving at once) dials it without waiting.
    let mut book = AddressBook::new(10);
    book.listens(a(6881), Outcome::Ended { lasted: S }, t0);
    book.starving(t0, Duration::ZERO);
    assert_eq!(book.due(t0, 5).len(), 1);
    // Port zero names nothing; a banned peer's claim is never dialled.
    book.listens(a(0), Outcome::Ended { lasted: S }, t0);
    book.listens(a(7000), Outcome::Banned, t0);
    book.starving(t0, Duration::ZERO);
    assert!(!book.any_due(t0 + S * 86_400));
}

/// While a peer is connected to us, the address it said it listens at is not dialled (that
/// would be a second connection to it); when the connection ends, the address waits the
/// backoff of how it ended. An address we are connected to by our own dial is left as it is.
#[test]
fn an_incoming_peers_listening_port_is_not_dialled_while_it_is_connected() {
    let t0 = Instant::now();
    let mut book = AddressBook::new(10);
    book.learn(a(6881), PeerSource::Tracker, t0);
    book.incoming(a(40_000), t0);
    book.listening(a(6881), t0);
    book.starving(t0, Duration::ZERO);
    assert!(
        !book.any_due(t0 + S * 86_400),
        "connected, from another port"
    );
    book.incoming_ended(a(40_000));
    book.listens(a(6881), Outcome::Ended { lasted: S * 10 }, t0 + S);
    assert!(
        !book.any_due(t0 + S * 30),
        "waits as a dialled peer that ended"
    );
    assert_eq!(
        book.due(t0 + S * 31, 5),
        [(a(6881), PeerSource::Tracker, None)]
    );

    // Our own dial connected to it: an incoming connection from the peer ending (a
    // duplicate, say) does not make it dialable.
    let mut book = AddressBook::new(10);
    book.learn(a(7000), PeerSource::Tracker, t0);
    assert_eq!(book.due(t0, 5).len(), 1);
    book.connected(a(7000));
    book.listening(a(7000), t0);
    book.listens(a(7000), Outcome::Ended { lasted: S }, t0);
    book.starving(t0, Duration::ZERO);
    assert!(
        !book.any_due(t0 + S * 86_400),
        "still connected by our dial"
    );
}

#[test]
fn a_peer_naming_many_ports_keeps_only_a_few() {
    let t0 = Instant::now();
    let mut book = AddressBook::new(100);
    book.learn(a(1), PeerSource::Tracker, t0);
    for port in 1000..1100 {
        // One connection each, each naming another port.
        book.listens(
            a(port),
            Outcome::Ended { lasted: S },
            t0 + S * u32::from(port),
        );
    }
    let other = SocketAddr::from(([10, 0, 0, 2], 6881));
    book.listens(other, Outcome::Ended { lasted: S }, t0);
    assert_eq!(
        book.len(),
        1 + CLAIMS_PER_IP + 1,
        "the tracker's, 4 claims, the other IP's"
    );
    book.starving(t0, Duration::ZERO);
    let mut due: Vec<u16> = book.due(t0, 100).iter().map(|d| d.0.port()).collect();
    due.sort_unstable();
    assert_eq!(
        due,
        [1, 1096, 1097, 1098, 1099, 6881],
        "the newest claims kept"
    );
}

#[test]
fn known_counts_by_source() {
    let t0 = Instant::now();
    let mut book = AddressBook::new(10);
    book.learn(a(1), PeerSource::Tracker, t0);
    book.learn(a(1), PeerSource::Dht, t0);
    book.learn(a(2), PeerSource::Dht, t0);
    let counts = book.known_by_source();
    let known = |s| counts.iter().find(|c| c.source == s).unwrap().known;
    assert_eq!(known(PeerSource::Tracker), 1);
    assert_eq!(known(PeerSource::Dht), 2);
    assert_eq!(known(PeerSource::Pex), 0);
}
