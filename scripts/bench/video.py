#!/usr/bin/python3
"""Benchmark part `video`: mpv's first frame from the start and from 70%; ours and Debian's.

The swarm: the file part's kind (three seeders behind opentracker) for an mp4 made with ffmpeg
(--video-seconds at --video-bitrate, H.264 720p + AAC, index (moov) at the end, no
+faststart). Per client and per run:
  frame0/70  fresh mount; `mpv --no-config --vo=null --ao=null --frames=1 --msg-time`
             (--start=70% for frame70); mpv's own clock from its start to its log line
             "first video frame after restart shown": the first frame at the start position
             decoded and handed to the video output (after an hr-seek, the first frame at 70%)
  ready      spawn -> mount ready, over every .torrent mount
"""

import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness.cli import run_alone
from harness.measure import guarded, watch_rchar
from harness.procs import MetricFailed, log, run as run_tool
from harness.report import parse_rate
from harness.swarm import Swarm

MPV = "/usr/bin/mpv"
FFMPEG = "/usr/bin/ffmpeg"

NAME = "video"
HELP = "mpv first frame"
TOOLS = [MPV, FFMPEG]


def add_options(p):
    p.add_argument("--video-seconds", type=int, default=150,
                   help="length of the video mpv plays (150)")
    p.add_argument("--video-bitrate", type=parse_rate, default=6_000_000,
                   help="its video bitrate, bits/s (6M)")


def check(args, p):
    if args.video_seconds < 5:
        p.error("--video-seconds >= 5")


def make_video(args, path):
    return encode_video(path, args.video_seconds, args.video_bitrate)


def encode_video(path, seconds, bitrate, fps=25, vbv_secs=2.0):
    """An mp4 of `seconds` at `bitrate` bits/s and `fps` frames/s, a keyframe every 2 s;
    its size. `vbv_secs`: x264's rate buffer, in seconds of the bitrate; below 2 it also
    starts nearly empty (as streaming encodes do), so the first second is no bigger than
    the others."""
    vbv = ["-bufsize", str(int(vbv_secs * bitrate))]
    if vbv_secs < 2:
        vbv += ["-rc_init_occupancy", str(bitrate // 8)]
    t0 = time.monotonic()
    # Noise keeps x264 at the bitrate asked for (a test pattern alone compresses to far
    # less); no +faststart, so the index (moov) is at the end and a player reads there
    # first, as with many real downloads.
    run_tool([FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
              "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=%d,noise=alls=12:allf=t+u" % fps,
              "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
              "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast",
              "-b:v", str(bitrate), "-maxrate", str(bitrate)] + vbv + [
              "-g", str(2 * fps), "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", path])
    size = os.path.getsize(path)
    log("video: %s, %d s, %.1f Mbit/s, %.1f MB, made in %.0f s"
        % (os.path.basename(path), seconds, size * 8 / seconds / 1e6,
           size / 1e6, time.monotonic() - t0))
    return size


MPV_ARGV = [MPV, "--no-config", "--vo=null", "--ao=null", "--msg-time",
            "--msg-level=all=status,cplayer=v"]


def mpv_on_mount(bench, client, m, args):
    """`mpv ARGS FILE` on the mount, guarded like any read; its log."""
    held = {}

    def body(progress):
        p, held["log"] = bench.spawn_tool(MPV_ARGV + args + [m.path], "%s-mpv" % client,
                                          stdout=None)
        held["p"] = p
        watch_rchar(p, progress)
        return p.wait()

    try:
        rc = guarded(m, bench.args.read_timeout, body)
    finally:
        if "p" in held:
            bench.procs.stop(held["p"])
    with open(held["log"], errors="replace") as f:
        text = f.read()
    if rc != 0 or shown_at(text) is None:
        raise MetricFailed("mpv exited %s%s: %s" % (
            rc, "" if shown_at(text) is not None else " with no frame shown", text[-600:]))
    return text


def shown_at(text):
    """mpv's clock (s) at its first frame shown at the start position, from its log."""
    shown = re.search(r"^\[\s*([\d.]+)\]\s*\[cplayer\] first video frame after "
                      r"restart shown", text, re.M)
    return float(shown.group(1)) if shown else None


def first_frame(bench, client, swarm, start, metric):
    """mpv on a fresh mount: seconds from mpv's start to its first video frame at the
    start position (mpv's own clock, --msg-time), after which --frames=1 quits."""
    def fn(m):
        args = ["--frames=1"] + (["--start=" + start] if start else [])
        bench.record(client, metric, shown_at(mpv_on_mount(bench, client, m, args)))
    bench.measure(client, metric, fn, swarm)


def run(bench):
    args = bench.args
    vdir = os.path.join(bench.work, "video")
    os.makedirs(vdir)
    path = os.path.join(vdir, "bench.mp4")
    bench.video_size = make_video(args, path)
    swarm = Swarm(bench.procs, bench.work, "video", vdir, path, args.piece_length,
                  args.seed_mode)
    log("video swarm ready: tracker 127.0.0.1:%d" % swarm.http_port)
    for r, client in bench.order():
        log("run %d/%d: %s: mpv first frame from the start and from 70%%"
            % (r + 1, args.runs, client))
        first_frame(bench, client, swarm, None, "frame0")
        first_frame(bench, client, swarm, "70%", "frame70")
        bench.log_results(client, "frame")
    swarm.stop()


if __name__ == "__main__":
    run_alone(sys.modules[__name__])
