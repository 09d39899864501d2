//! A reader's readahead window in a running session, on tokio's paused clock: it follows the
//! rate the reader consumes, and a seek snaps it back and drops the old window at once.

use std::time::Duration;

use super::{check_read, content};
use crate::session::{Config, Session};

const KIB: u64 = 1024;
const PIECE: u32 = 32 * 1024;

#[tokio::test(start_paused = true)]
async fn the_window_follows_the_reading_rate_and_a_seek_resets_it() {
    let c = content(7, PIECE, &[8 * 1024 * KIB]);
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        cache_bytes: 64 * 1024 * KIB,
        readahead_bytes: 64 * KIB,
        max_readahead_bytes: 4 * 1024 * KIB,
        ..Config::default()
    };
    let host = super::host_for(&config).await;
    let session = Session::start(c.torrent.clone(), config, &host)
        .await
        .expect("session starts");
    // Everything already held, so reads return at once and only the clock sets the pace.
    {
        let mut st = session.shared.lock();
        let g = c.torrent.info.geometry.clone();
        for i in 0..g.piece_count() {
            let p = g.piece(i).unwrap();
            let start = g.piece_offset(p) as usize;
            let data =
                bytes::Bytes::copy_from_slice(&c.data[start..start + g.piece_len(p) as usize]);
            st.piece_passed(p, data);
            assert!(st.residency.in_memory(p));
        }
    }
    let window = || session.stats().readers[0].window;
    let h = session.open_reader(0);

    // 100 KB/s in 16 KB reads: 20 s of it is 2 MB.
    let mut offset = 0;
    for _ in 0..100 {
        check_read(&session, &c, h, 0, offset, 16_000).await;
        offset += 16_000;
        tokio::time::advance(Duration::from_millis(160)).await;
    }
    let slow = window();
    assert!(slow.abs_diff(2_000_000) < 100_000, "window {slow}");

    // Four times the rate: 8 MB wanted.
    for _ in 0..200 {
        check_read(&session, &c, h, 0, offset, 16_000).await;
        offset += 16_000;
        tokio::time::advance(Duration::from_millis(40)).await;
    }
    let fast = window();
    assert_eq!(
        fast,
        4 * 1024 * KIB,
        "8 MB wanted, capped at --max-readahead"
    );

    // A seek: the window starts over at the new place, and the old window's pieces are no
    // reader's any more.
    let old_window = session.stats().readers[0].window_start;
    check_read(&session, &c, h, 0, 7 * 1024 * KIB, 16_000).await;
    // The rate starts over: one 16 KB read counts as 16 KB/s (MIN_SPAN), 20 s of it.
    assert_eq!(window(), 20 * 16_000);
    let (wanted, readers) = {
        let st = session.shared.lock();
        let g = &c.torrent.info.geometry;
        let old_piece = g.piece((old_window / u64::from(PIECE)) as u32 + 1).unwrap();
        (
            st.picker.is_wanted_by_reader(old_piece),
            st.readers
                .status(&c.torrent.info.files, g, |p| st.picker.have(p)),
        )
    };
    assert!(
        !wanted,
        "the old window at {old_window} is still wanted: {readers:?}"
    );
    session.close_reader(h);
    session.shutdown().await;
}
