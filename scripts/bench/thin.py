#!/usr/bin/python3
"""Benchmark part `thin`: a thin swarm, with and without latency; ours and Debian's, each
against the bandwidth bound.

The swarm (harness/thinswarm.py): --thin-seeders libtorrent seeders (3), each uplink capped at
--thin-upload-limit bytes/s (700k: 2.1 MB/s in all; by libtorrent's upload limit, and again
by the relay, as libtorrent's lets an idle seeder burst), TCP only, reached only through a
userspace relay (scripts/delay_relay.py) that delays each direction by each of --thin-delays
in turn (0,50 ms: no added latency, then a 100 ms round trip), behind opentracker. The file:
an mp4 made with ffmpeg (--thin-video-seconds at --thin-video-bitrate, 30 frames/s, H.264
720p + AAC, a keyframe every 2 s, index at the end) in --thin-piece-length pieces (1M). For
each delay a libtorrent leech first measures what a plain download gets through the relay
(its payload rate, to check the caps hold). Per delay, client and run, each on a fresh mount:
  ttfb     open the file and read 1 byte; mount ready -> byte returned
  seek     pread 1 MiB at a seeded random offset (the same for both clients)
  frame0   mpv's first frame from the start (mpv's clock, as in the video part)
  frame70  the same at --start=70%
  stall    mpv playing --thin-play-frames frames (300: 10 s) in real time (--vo=null and
           --ao=null still pace frames by mpv's clock; on a FUSE file mpv's cache pauses
           playback while it waits for data, so every wait adds to the time): its clock
           from the first frame to the last on the mount, minus the same on the local file
           (the same run also gives "playback": mpv's start to its last frame, the issue's
           "10 s of real-time playback")
The bound of each: the whole pieces it needs (harness/bound.py: the pieces a read touches;
for mpv, from the mp4's own packet map, the head, the index at the end and the frames it
decodes) over the swarm's total cap (seeders x limit), less the 0.1 s the relay's links may
save up while idle, plus the round trips it cannot overlap (RTT = twice the delay): 2 for
every read on a fresh mount (the handshake with `interested` to the unchoke, then the
request to its block), one more for frame70 (where mpv seeks is known only once it asks;
the index at the end a client can fetch with the head). mpv's bounds add its time on the
local file (median of --runs). The stall bound: the least stall if the swarm delivers the
rest of the 300 frames' pieces in order of need from the first frame on (0 when the swarm
outruns the bitrate); playback's: frame0's bound, the local file's playback and the stall
bound.
The ideal column (--thin-ideal): the cap-based bound assumes every seeder sends at its cap
from the first byte, which a capped libtorrent seeder does not do for a new connection
(scripts/seeder_ramp.py). So before each run a raw client (harness/ideal.py) connects to
every seeder, waits to be unchoked, then fetches each metric's pieces perfectly pipelined,
verifying nothing; its time from the first request (plus mpv's local time, plus one round
trip for 70%) is what this swarm allows.
Targets (issue 11, ours): seek and frame0 within 1.1x the bound, frame70 within 1.3x,
stalls under 5% of the playback time; first byte has none. Debian's are for comparison.
Takes 15-20 minutes (Debian's btfs needs up to a minute for some reads): scripts/bench.sh
runs it only with --with thin.
"""

import os
import random
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import file as file_part
import video as video_part
from harness import MiB
from harness.bound import FFPROBE, Pieces, VideoMap
from harness.cli import run_alone
from harness.ideal import fetch_time
from harness.procs import MetricFailed, log
from harness.report import median, parse_rate, parse_size
from harness.thinswarm import LINK_SLACK, ThinSwarm

NAME = "thin"
HELP = "thin swarm: capped seeders, added latency, against the bandwidth bound; 15-20 min"
TOOLS = [video_part.MPV, video_part.FFMPEG, FFPROBE]
OPTIONAL = True

FPS = 30
START_FRAC = 0.7
LOCAL_TIMEOUT = 120.0
# metric, label, target (ours / bound at most), round trips it cannot overlap
ROWS = [
    ("ttfb", "first byte", None, 2),
    ("seek", "1 MiB pread at random offset", 1.1, 2),
    ("frame0", "mpv first frame", 1.1, 2),
    ("frame70", "mpv first frame at 70%", 1.3, 3),
    ("play_total", "playback: start -> last frame", None, 0),
]
STALL_TARGET = 0.05  # of the playback time
# Idle seconds before each ideal fetch: a seeder that just sent at its cap owes its limiter
# for a moment; a client's mount meets seeders idle for about this long.
IDEAL_PAUSE = 3.0


def add_options(p):
    p.add_argument("--thin-seeders", type=int, default=3, help="thin part: seeders (3)")
    p.add_argument("--thin-upload-limit", type=parse_rate, default=700_000,
                   help="thin part: each seeder's upload cap, bytes/s (700k)")
    p.add_argument("--thin-delays", default="0,50",
                   help="thin part: the relay's delay each way, ms, one swarm run each (0,50)")
    p.add_argument("--thin-video-seconds", type=int, default=120,
                   help="thin part: length of the video (120)")
    p.add_argument("--thin-video-bitrate", type=parse_rate, default=8_000_000,
                   help="thin part: its video bitrate, bits/s (8M: about 1 MB/s)")
    p.add_argument("--thin-piece-length", type=parse_size, default=MiB,
                   help="thin part: torrent piece length (1M)")
    p.add_argument("--thin-play-frames", type=int, default=300,
                   help="thin part: frames mpv plays for the stall time (300: 10 s)")
    p.add_argument("--thin-ideal", type=int, default=1,
                   help="thin part: measure the ideal client before each run (1; 0: no)")
    p.add_argument("--thin-rate-check", type=float, default=8.0,
                   help="thin part: seconds of the plain libtorrent download that checks "
                        "the caps, per delay (8; 0: none)")


def check(args, p):
    try:
        args.thin_delay_list = [float(d) for d in args.thin_delays.split(",")]
    except ValueError:
        p.error("--thin-delays: milliseconds, comma-separated")
    if any(d < 0 for d in args.thin_delay_list):
        p.error("--thin-delays >= 0")
    if not 1 <= args.thin_seeders <= 200:
        p.error("--thin-seeders in 1..200")
    if args.thin_upload_limit < 1000:
        p.error("--thin-upload-limit >= 1k")
    if args.thin_play_frames < FPS:
        p.error("--thin-play-frames >= %d" % FPS)
    if args.thin_video_seconds < 2 * args.thin_play_frames / FPS:
        p.error("--thin-video-seconds >= twice the playback (%d s)"
                % (2 * args.thin_play_frames / FPS))


def key(delay, metric):
    return "thin%g_%s" % (delay, metric)


def last_frame_at(text):
    """mpv's clock (s) when it quit after its last frame (--frames), from its log."""
    m = re.search(r"^\[\s*([\d.]+)\]\s*Exiting\.\.\. \(End of file\)", text, re.M)
    return float(m.group(1)) if m else None


def waited(text):
    """Seconds mpv says it paused to buffer."""
    return sum(float(x) for x in re.findall(r"End buffering \(waited ([\d.]+) secs\)", text))


def play_span(text):
    first, last = video_part.shown_at(text), last_frame_at(text)
    if first is None or last is None:
        raise MetricFailed("mpv did not play to its last frame: %s" % text[-600:])
    return last - first


def local_mpv(path, args):
    """mpv on a local file; its log (mpv writes its messages to stdout, its status line to
    stderr)."""
    out = subprocess.run(video_part.MPV_ARGV + args + [path], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         errors="replace", timeout=LOCAL_TIMEOUT)
    if out.returncode != 0 or video_part.shown_at(out.stdout) is None:
        raise RuntimeError("mpv on %s exited %d: %s" % (path, out.returncode, out.stdout[-600:]))
    return out.stdout


def play(bench, client, swarm, delay):
    frames = bench.args.thin_play_frames

    def fn(m):
        text = video_part.mpv_on_mount(bench, client, m, ["--frames=%d" % frames])
        bench.record(client, key(delay, "play"), play_span(text))
        bench.record(client, key(delay, "play_total"), last_frame_at(text))
        bench.record(client, key(delay, "buffering"), waited(text))
    bench.measure(client, key(delay, "play"), fn, swarm)


class Thin:
    """What the part knows for its table: the swarm, the bounds' inputs, local mpv times."""

    def __init__(self, bench, swarm, vmap):
        self.bench, self.swarm, self.vmap = bench, swarm, vmap
        args = bench.args
        self.rate = args.thin_seeders * args.thin_upload_limit
        self.pieces = Pieces(os.path.getsize(swarm.file), args.thin_piece_length)
        self.local = {"frame0": [], "frame70": [], "play": []}
        self.measured = {}  # delay -> plain libtorrent download rate, bytes/s
        self.ideal = {}  # key(delay, metric) -> the ideal client's fetch time, per run
        self.seek_pieces = []  # per run
        self.start = vmap.start_pieces(self.pieces)
        self.need = {"ttfb": {0}, "frame0": self.start,
                     "frame70": vmap.seek_pieces(self.pieces, START_FRAC)}

    def measure_local(self):
        for _ in range(self.bench.args.runs):
            self.local["frame0"].append(video_part.shown_at(
                local_mpv(self.swarm.file, ["--frames=1"])))
            self.local["frame70"].append(video_part.shown_at(
                local_mpv(self.swarm.file, ["--frames=1", "--start=%d%%" % (START_FRAC * 100)])))
            self.local["play"].append(play_span(local_mpv(
                self.swarm.file, ["--frames=%d" % self.bench.args.thin_play_frames])))
        log("local file: %s" % {k: [round(v, 3) for v in vs] for k, vs in self.local.items()})

    def bound(self, metric, delay, run=None):
        """Seconds; None if mpv's local time is unknown (it failed)."""
        if metric == "play_total":
            start, span = self.bound("frame0", delay), median(self.local["play"])
            return None if start is None or span is None else start + span + self.stall_bound()
        rtt = 2 * delay / 1000.0
        rtts = {m: n for m, _, _, n in ROWS}[metric]
        pieces = self.seek_pieces[run] if metric == "seek" else self.need[metric]
        b = max(0.0, self.pieces.bytes(pieces) / self.rate - LINK_SLACK) + rtts * rtt
        if metric in self.local:
            local = median(self.local[metric])
            b = None if local is None else b + local
        return b

    def measure_ideal(self, delay, run):
        """The ideal client's time for each metric's pieces over unchoked connections (before the
        clients of `run`, as each of them meets the swarm: a second after its last use)."""
        addrs = [relay for relay, _ in self.swarm.routes]
        info_hash = bytes.fromhex(self.swarm.info_hash)
        for metric, _, _, _ in ROWS:
            if metric not in self.need and metric != "seek":
                continue
            pieces = self.seek_pieces[run] if metric == "seek" else self.need[metric]
            time.sleep(IDEAL_PAUSE)
            t = fetch_time(addrs, info_hash, sorted(pieces), self.pieces.length,
                           self.pieces.size)
            self.ideal.setdefault(key(delay, metric), []).append(t)
        # The client under test meets the seeders as the ideal client did: idle, and done with
        # the ideal client's connections (libtorrent takes one connection per IP, and the relay
        # closes the old ones while a client that dials within milliseconds of its spawn
        # connects; that cost ours 0.1-0.25 s of its first byte).
        time.sleep(IDEAL_PAUSE)
        log("ideal client, delay %g ms, run %d: %s" % (delay, run + 1, {
            m: round(self.ideal[key(delay, m)][-1], 3) for m in ("ttfb", "seek", "frame0",
                                                                 "frame70")}))

    def ideal_bound(self, metric, delay, run):
        """The ideal client's time for `run`, as a bound on `metric`: plus the round trip
        it could overlap and a player cannot (where mpv seeks is known once it asks), plus
        mpv's local time. None where not measured."""
        vals = self.ideal.get(key(delay, metric), [])
        if run >= len(vals):
            return None
        b = vals[run] + (2 * delay / 1000.0 if metric == "frame70" else 0.0)
        if metric in self.local:
            local = median(self.local[metric])
            b = None if local is None else b + local
        return b

    def stall_bound(self):
        return self.vmap.stall_bound(self.pieces, self.start, self.rate,
                                     self.bench.args.thin_play_frames)

    def ratio(self, client, metric, delay, ideal=False):
        """Median over the runs of value / bound (the seek's bound differs per run; the
        ideal client's, per run for every metric)."""
        vals = self.bench.results[client].get(key(delay, metric), [])
        bound = self.ideal_bound if ideal else self.bound
        bounds = [bound(metric, delay, r) for r in range(len(vals))]
        return median([v / b if v is not None and b else None for v, b in zip(vals, bounds)])

    def report(self):
        """The part's table (lines) and its JSON."""
        args = self.bench.args
        res = self.bench.results
        playback = args.thin_play_frames / FPS
        lines = ["thin swarm: %s; %s; video %.0f MB (%d s, %.1f Mbit/s, %d fps, index at end); "
                 "%s pieces; %d run(s), medians"
                 % (self.swarm.describe(), "plain libtorrent download through the relay: "
                    + ", ".join("%s ms %s" % (d, "%.2f MB/s" % (r / 1e6) if r else "n/a")
                                for d, r in self.measured.items()),
                    self.pieces.size / 1e6, args.thin_video_seconds,
                    args.thin_video_bitrate / 1e6, FPS,
                    "%d KiB" % (self.pieces.length // 1024), args.runs)]
        doc = {"seeders": args.thin_seeders, "upload_limit": args.thin_upload_limit,
               "rate": self.rate, "measured_rate": self.measured,
               "piece_length": self.pieces.length, "size": self.pieces.size,
               "local": self.local, "delays": {}}
        fmt = "%-30s | %8s | %8s | %8s | %6s | %6s | %8s | %6s | %6s | %-7s | %s"
        head = fmt % ("metric", "bound", "ideal", "ours", "/bound", "/ideal", "debian",
                      "/bound", "/ideal", "target", "ours: bound, ideal")
        for delay in args.thin_delay_list:
            lines += ["", "delay %g ms each way (RTT %g ms):" % (delay, 2 * delay), head,
                      "-" * len(head)]
            rows = doc["delays"]["%g" % delay] = []
            for metric, label, target, _ in ROWS:
                o = median(res["ours"].get(key(delay, metric), []))
                d = median(res["debian"].get(key(delay, metric), []))
                ro, rd = self.ratio("ours", metric, delay), self.ratio("debian", metric, delay)
                io_, id_ = (self.ratio(c, metric, delay, ideal=True) for c in ("ours", "debian"))
                b = median([self.bound(metric, delay, r) for r in range(len(self.seek_pieces))]
                           ) if metric == "seek" else self.bound(metric, delay)
                ib = median([self.ideal_bound(metric, delay, r)
                             for r in range(len(self.ideal.get(key(delay, metric), [])))])

                def judge(r):
                    return "n/a" if r is None else ("PASS" if r <= target else "FAIL")
                verdict = "" if target is None else "%s, %s" % (judge(ro), judge(io_))
                lines.append(fmt % (
                    label, secs(b), secs(ib), secs(o), times(ro), times(io_), secs(d),
                    times(rd), times(id_), "<= %.1fx" % target if target else "", verdict))
                rows.append({"metric": metric, "bound": b, "ideal": ib, "ours": o, "debian": d,
                             "ours_ratio": ro, "debian_ratio": rd, "target": target,
                             "ours_ideal_ratio": io_, "debian_ideal_ratio": id_,
                             "ideal_runs": self.ideal.get(key(delay, metric), []),
                             "verdict": verdict,
                             "ours_runs": res["ours"].get(key(delay, metric), []),
                             "debian_runs": res["debian"].get(key(delay, metric), [])})
            base = median(self.local["play"])
            stall = {c: median([None if v is None or base is None else max(0.0, v - base)
                                for v in res[c].get(key(delay, "play"), [])])
                     for c in ("ours", "debian")}
            waits = {c: median(res[c].get(key(delay, "buffering"), [])) for c in res}
            sb = self.stall_bound()
            verdict = "n/a" if stall["ours"] is None else (
                "PASS" if stall["ours"] < STALL_TARGET * playback else "FAIL")
            lines.append(fmt % (
                "stalls in %d frames (%g s)" % (args.thin_play_frames, playback), secs(sb), "",
                secs(stall["ours"]), pct(stall["ours"], playback), "", secs(stall["debian"]),
                pct(stall["debian"], playback), "", "< %d%%" % (STALL_TARGET * 100), verdict))
            lines.append(fmt % (
                "  (mpv's own buffering count)", "", "", secs(waits.get("ours")), "", "",
                secs(waits.get("debian")), "", "", "", ""))
            rows.append({"metric": "stall", "bound": sb, "ours": stall["ours"],
                         "debian": stall["debian"], "playback": playback,
                         "target": STALL_TARGET, "verdict": verdict,
                         "mpv_buffering": waits,
                         "ours_runs": res["ours"].get(key(delay, "play"), []),
                         "debian_runs": res["debian"].get(key(delay, "play"), [])})
        lines.append("(bound: the whole pieces a read needs over the swarm's cap %.2f MB/s less "
                     "%.1f s, plus 2 round trips (3 for 70%%), plus mpv's time on the local file; "
                     "/bound: median of each run's time over its bound; stall: playback time "
                     "beyond the local file's %.2f s; ideal: a raw client's fetch of the same "
                     "pieces over connections already unchoked, before each run (harness/ideal.py), "
                     "plus a round trip for 70%%, plus mpv's local time; targets for ours)"
                     % (self.rate / 1e6, LINK_SLACK, median(self.local["play"]) or 0))
        return lines, doc


def secs(v):
    return "-" if v is None else "%.2f s" % v


def times(v):
    return "-" if v is None else "%.2fx" % v


def pct(v, of):
    return "-" if v is None else "%.0f%%" % (v / of * 100)


def run(bench):
    args = bench.args
    vdir = os.path.join(bench.work, "thin")
    os.makedirs(vdir)
    path = os.path.join(vdir, "thin.mp4")
    # A streaming encode: a 1 s rate buffer that starts nearly empty, so no second of the
    # video is much bigger than another.
    video_part.encode_video(path, args.thin_video_seconds, args.thin_video_bitrate, FPS,
                            vbv_secs=1.0)
    vmap = VideoMap(path)
    swarm = ThinSwarm(bench.procs, bench.work, "thin", path, args.thin_piece_length,
                      args.thin_seeders, args.thin_upload_limit, args.seed_mode)
    thin = Thin(bench, swarm, vmap)
    bench.reports[NAME] = thin.report
    log("bounds: frame0 needs pieces %s, frame70 %s; stall bound %.2f s"
        % (sorted(thin.need["frame0"]), sorted(thin.need["frame70"]), thin.stall_bound()))
    log("thin swarm ready: %s; tracker 127.0.0.1:%d" % (swarm.describe(), swarm.http_port))
    thin.measure_local()
    size = thin.pieces.size
    rng = random.Random(args.seed)
    offsets = [rng.randrange(0, size - MiB + 1) for _ in range(args.runs)]
    thin.seek_pieces = [thin.pieces.covering(o, o + MiB) for o in offsets]
    log("seek offsets: %s" % offsets)
    for delay in args.thin_delay_list:
        swarm.use_delay(delay)
        if args.thin_rate_check > 0:
            thin.measured["%g" % delay] = swarm.check_rate(args.thin_rate_check)
            log("delay %g ms: a plain libtorrent download gets %s (cap %.2f MB/s)"
                % (delay, "%.2f MB/s" % (thin.measured["%g" % delay] / 1e6)
                   if thin.measured["%g" % delay] else "nothing", thin.rate / 1e6))
        for r, client in bench.order():
            if args.thin_ideal and len(thin.ideal.get(key(delay, "seek"), [])) == r:
                thin.measure_ideal(delay, r)
            log("delay %g ms, run %d/%d: %s" % (delay, r + 1, args.runs, client))
            swarm.keep_announced()
            file_part.ttfb(bench, client, swarm, key(delay, "ttfb"))
            file_part.seek(bench, client, swarm, offsets[r], key(delay, "seek"))
            video_part.first_frame(bench, client, swarm, None, key(delay, "frame0"))
            video_part.first_frame(bench, client, swarm, "%d%%" % (START_FRAC * 100),
                                   key(delay, "frame70"))
            play(bench, client, swarm, delay)
            bench.log_results(client, "thin%g_" % delay)
    swarm.stop()
    shutil.rmtree(vdir, ignore_errors=True)


if __name__ == "__main__":
    run_alone(sys.modules[__name__])
