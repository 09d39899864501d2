//! A real player streams through the mount: mpv plays a video served by libtorrent seeders,
//! from the start and from 70 %, and exits 0.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Swarm, SwarmOptions, Tracker, mount_btfs, run};

/// A 20 s test video (moving test pattern, H.264 + AAC in Matroska), made by ffmpeg.
fn make_video(dir: &Path) -> PathBuf {
    let out = dir.join("test video.mkv");
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
    let video = make_video(tmp.path());
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
