#!/usr/bin/python3
"""Benchmark part `file`: first byte, seek, sequential and warm reads, RSS; ours and Debian's.

The swarm: one file of --size bytes (scripts/swarm.py make-data), three libtorrent seeders on
127.0.1.1, 127.0.2.1 and 127.0.3.1 (Debian's btfs keeps one connection per IP) behind Debian's
opentracker on 127.0.0.1 (HTTP). Both clients find the seeders there. Per client and per run:
  ttfb       fresh mount; open the file and os.read 1 byte; mount ready -> byte returned
  seek       fresh mount; pread 1 MiB at a seeded random offset (the same for both clients)
  seq        fresh mount; read the whole file in 1 MiB chunks with sha1 (checked); MB/s
  warm       the same mount right after seq: the whole file again, with sha1
  warm_cat   then `cat FILE > /dev/null` on the mount; tmpfs_cat: the same cat of a copy on
             tmpfs (/dev/shm, best of 3) right after; warm_frac = warm_cat / tmpfs_cat
             (Debian's btfs only with --debian-cat: its cat re-read runs at a few MB/s)
  rss        VmHWM of the client process, read just before that mount is unmounted
  ready      spawn -> mount ready, over every .torrent mount
"""

import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness import MiB
from harness.cli import run_alone
from harness.measure import file_sha1, first_byte, guarded, read_all
from harness.mount import mount_fstype
from harness.procs import MetricFailed, log
from harness.report import parse_size
from harness.swarm import SEEDER_IPS, Swarm, make_data

NAME = "file"
HELP = "first byte, seek, sequential, re-read vs tmpfs"
TOOLS = []


def add_options(p):
    p.add_argument("--size", type=parse_size, default=256 * MiB, help="file size (256M)")
    p.add_argument("--debian-cat", action="store_true",
                   help="also time cat's re-read on Debian's btfs (slow: minutes at 256M)")


def check(args, p):
    if args.size < 2 * MiB:
        p.error("--size >= 2M")


def ttfb(bench, client, swarm, metric="ttfb"):
    def fn(m):
        bench.record(client, metric, first_byte(m, bench.args.read_timeout) - m.ready_at)
    bench.measure(client, metric, fn, swarm)


def seek(bench, client, swarm, offset, metric="seek"):
    with open(swarm.file, "rb") as f:
        f.seek(offset)
        want = f.read(MiB)

    def fn(m):
        def body(progress):
            fd = os.open(m.path, os.O_RDONLY)
            try:
                t0 = time.monotonic()
                buf = b""
                while len(buf) < len(want):
                    b = os.pread(fd, len(want) - len(buf), offset + len(buf))
                    if not b:
                        break
                    buf += b
                    progress()
                t1 = time.monotonic()
            finally:
                os.close(fd)
            if buf != want:
                raise MetricFailed("bytes at offset %d differ from the source" % offset)
            return t1 - t0
        bench.record(client, metric, guarded(m, bench.args.read_timeout, body))
    bench.measure(client, metric, fn, swarm)


def seq(bench, client, swarm, sha1, tmpfs_file):
    size = bench.size

    def fn(m):
        def body(progress):
            out = []
            fd = os.open(m.path, os.O_RDONLY)
            try:
                for _ in ("cold", "warm"):
                    os.lseek(fd, 0, os.SEEK_SET)
                    t0 = time.monotonic()
                    digest = read_all(fd, size, progress)
                    out.append((time.monotonic() - t0, digest))
            finally:
                os.close(fd)
            return out
        runs = guarded(m, bench.args.read_timeout, body)
        for what, (secs, digest) in zip(("seq", "warm"), runs):
            if digest != sha1:
                raise MetricFailed("%s read: sha1 %s, want %s" % (what, digest, sha1))
        bench.record(client, "seq", size / runs[0][0] / 1e6)
        bench.record(client, "warm", size / runs[1][0] / 1e6)
        # The yardstick: `cat` of the mounted file (a third pass, every byte
        # already fetched) against `cat` of the same bytes on tmpfs, right after.
        # Debian's btfs serves cat's 128 KiB reads at a few MB/s (minutes for 256 MiB),
        # and the target is ours against tmpfs: its cat only with --debian-cat.
        if client == "ours" or bench.args.debian_cat:
            secs = guarded(m, bench.args.read_timeout,
                           lambda progress: bench.cat_secs(m.path, progress, client + "-cat"))
            bench.record(client, "warm_cat", size / secs / 1e6)
        if tmpfs_file and "warm_cat" in bench.results[client]:
            # Best of three: spawning cat is a visible part of a ~50 ms read.
            best = min(bench.cat_secs(tmpfs_file, lambda: None, "tmpfs-cat") for _ in range(3))
            bench.record(client, "tmpfs_cat", size / best / 1e6)
        bench.record(client, "rss", m.vm_hwm())
        st = m.status()
        if st:
            bench.notes[client].append("after seq+warm: " + ", ".join(
                "%s=%s" % (k, st[k]) for k in sorted(st)
                if k in ("downloaded_bytes", "peers", "cache_bytes", "hash_failures")))
    bench.measure(client, "seq", fn, swarm)


def run(bench):
    args = bench.args
    data = os.path.join(bench.work, "data")
    file = make_data(data, "single", args.seed, args.size, "bench.bin")
    bench.size = os.path.getsize(file)
    sha1 = file_sha1(file)
    # The reference for the warm re-read: the same bytes on tmpfs.
    tmpfs_file = None
    if mount_fstype("/dev/shm") == "tmpfs":
        tmpfs_dir = tempfile.mkdtemp(prefix="btfs-bench-", dir="/dev/shm")
        bench.tmp_dirs.append(tmpfs_dir)
        tmpfs_file = os.path.join(tmpfs_dir, "bench.bin")
        log("tmpfs copy in %s" % tmpfs_dir)
        shutil.copyfile(file, tmpfs_file)
    else:
        bench.notes["bench"].append("no tmpfs at /dev/shm: no tmpfs reference")
    swarm = Swarm(bench.procs, bench.work, "file", data, file, args.piece_length,
                  args.seed_mode)
    log("file swarm ready: tracker 127.0.0.1:%d, seeders %s" % (swarm.http_port, SEEDER_IPS))
    rng = random.Random(args.seed)
    offsets = [rng.randrange(0, bench.size - MiB + 1) for _ in range(args.runs)]
    log("seek offsets: %s" % offsets)
    for r, client in bench.order():
        log("run %d/%d: %s: first byte, seek, sequential" % (r + 1, args.runs, client))
        ttfb(bench, client, swarm)
        seek(bench, client, swarm, offsets[r])
        seq(bench, client, swarm, sha1, tmpfs_file)
        bench.log_results(client)
    swarm.stop()
    if tmpfs_file:
        os.unlink(tmpfs_file)


if __name__ == "__main__":
    run_alone(sys.modules[__name__])
