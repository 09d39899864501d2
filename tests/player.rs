//! A real player streams through the mount: mpv plays a video served by libtorrent seeders,
//! from the start and from 70 %, and exits 0; also from a thin swarm of rate-capped seeders,
//! where what is queued at each peer is cancelled and asked again as the player jumps.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Swarm, SwarmOptions, Tracker, mount_btfs, run, sha1_file};

/// A 20 s test video (moving test pattern, H.264 + AAC), made by ffmpeg, its container by the
/// name's extension (an mp4's index, `moov`, is written at the end).
fn make_video(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    run(Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args([
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=25:duration=20",
        ])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:duration=20"])
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-g", "50", "-b:v", "2M",
        ])
        .args(["-c:a", "aac", "-shortest"])
        .arg(&out));
    out
}

fn mpv(file: &Path, extra: &[&str]) -> std::process::Output {
    Command::new("mpv")
        .args(["--no-config", "--vo=null", "--ao=null", "--really-quiet"])
        .args(["--length=3"]) // three seconds of playback are enough to prove decoding
        .args(extra)
        .arg(file)
        .output()
        .expect("run mpv")
}

#[test]
fn mpv_plays_a_video_from_the_start_and_from_70_percent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let video = make_video(tmp.path(), "test video.mkv");
    let swarm = Swarm::start(SwarmOptions {
        data: Some(video),
        piece_length: 64 * 1024,
        seeders: 3,
        trackers: vec![Tracker::Http],
        ..SwarmOptions::default()
    });
    let m = mount_btfs(swarm.torrent(), &[]);
    let file = m.path().join("test video.mkv");
    let out = mpv(&file, &[]);
    assert!(
        out.status.success(),
        "mpv from the start: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        m.stderr()
    );
    let out = mpv(&file, &["--start=70%"]);
    assert!(
        out.status.success(),
        "mpv from 70%: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        m.stderr()
    );
}

/// mpv opens an mp4 the way that made the opening order matter (head, `moov` at the end, back
/// to the frames, or on to 70 %) from three seeders capped at 600 kB/s each (a thin swarm:
/// requests queued at a peer are cancelled and asked again as reads jump, and libtorrent
/// answers each cancel with a reject). mpv plays; afterwards every byte of the file read
/// through the mount is the source's.
#[test]
fn mpv_plays_an_mp4_with_its_index_at_the_end_from_a_thin_swarm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let video = make_video(tmp.path(), "thin video.mp4");
    let swarm = Swarm::start(SwarmOptions {
        data: Some(video.clone()),
        piece_length: 256 * 1024,
        seeders: 3,
        upload_limit: Some(600_000),
        trackers: vec![Tracker::Http],
        ..SwarmOptions::default()
    });
    let m = mount_btfs(swarm.torrent(), &[]);
    let file = m.path().join("thin video.mp4");
    for start in [&[][..], &["--start=70%"][..]] {
        let out = mpv(&file, start);
        assert!(
            out.status.success(),
            "mpv {start:?}: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            m.stderr()
        );
    }
    assert_eq!(sha1_file(&file), sha1_file(&video), "{}", m.stderr());
}
