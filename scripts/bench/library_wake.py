"""The wake part of scripts/bench/library.py: torrents of the library that a seeder serves,
read once they sleep, against fresh mounts of ours and of Debian's btfs.

`Live`: K torrents of one file each (--wake-size bytes of distinct data), each served by its
own libtorrent seeder (scripts/swarm.py seed, TCP) on 127.0.(10+i).1, all behind one
opentracker on 127.0.0.1 (HTTP). library.py mounts them beside its N torrents nobody seeds,
so each learns its seeder from the tracker and connects before it falls asleep.

`wake(...)`, once every torrent sleeps: the tracker is stopped first, so a wake can only use
what the torrent kept (the seeder's address); then
  wake one   each of the first --wake-one torrents in turn: open its file, read 1 byte
             (first byte: open -> byte), then the rest (whole: open -> last byte, sha1 checked)
  at once    the other --wake-together torrents the same way, all at the same moment, each
             in its own thread; the slowest first byte and the slowest whole file
`fresh(...)`, the baseline, tracker up: a fresh single-torrent mount of the first live torrent
(ours: `btfs mount T MNT`; Debian's: `/usr/bin/btfs T MNT`, one process per torrent, which
has no library), --wake-runs times each: mount ready (the file stat()s) -> first byte, and
-> the whole file.
"""

import os
import socket
import statistics
import threading
import time

from harness import DEBIAN, PYTHON, MiB
from harness.measure import file_sha1, guarded, read_all
from harness.mount import Client, Mount, Target
from harness.procs import MetricFailed, free_port, log, tail
from harness.swarm import (SWARM, SWARM_TIMEOUT, make_data, make_torrent, seeder_argv,
                           wait_ready_files)

READ_TIMEOUT = 120.0  # a read with no progress this long fails the benchmark


def add_options(p):
    p.add_argument("--wake-one", type=int, default=3,
                   help="sleeping torrents woken one at a time, each read whole (3; "
                        "0 and --wake-together 0: no wake part)")
    p.add_argument("--wake-together", type=int, default=3,
                   help="sleeping torrents woken at the same moment after those (3)")
    p.add_argument("--wake-size", type=int, default=16 * MiB,
                   help="bytes of each seeded torrent's file (16 MiB)")
    p.add_argument("--wake-runs", type=int, default=3,
                   help="fresh single-torrent mounts of each client, for the baseline (3)")
    p.add_argument("--no-debian", action="store_true",
                   help="no fresh mounts of Debian's btfs")


def wanted(args):
    return args.wake_one + args.wake_together > 0


class Live:
    """The seeded torrents: data, .torrent files, seeders and their tracker."""

    def __init__(self, procs, work, count, size, torrents_dir):
        self.procs, self.work = procs, work
        self.http_port = free_port("127.0.0.1")
        url = "http://127.0.0.1:%d/announce" % self.http_port
        self.files, self.torrents, self.hashes, self.sha1s = [], [], [], []
        for i in range(count):
            data = os.path.join(work, "live-data-%d" % i)
            path = make_data(data, "single", 1000 + i, size, "live-%02d.bin" % i)
            torrent = os.path.join(torrents_dir, "live-%02d.torrent" % i)
            self.hashes.append(make_torrent(path, torrent, 256 * 1024, [url]))
            self.files.append(path)
            self.torrents.append(torrent)
            self.sha1s.append(file_sha1(path))
        self.tracker = procs.spawn(
            [PYTHON, SWARM, "tracker", "--dir", os.path.join(work, "live-tracker"),
             "--http-port", str(self.http_port), "--udp-port", str(free_port("127.0.0.1"))]
            + [a for h in self.hashes for a in ("--whitelist", h)],
            os.path.join(work, "live-tracker.log"))
        wait_listening("127.0.0.1", self.http_port, self.tracker,
                       os.path.join(work, "live-tracker.log"))
        self.seeders = []
        for i, torrent in enumerate(self.torrents):
            ip = "127.0.%d.1" % (10 + i)
            ready = os.path.join(work, "live-seeder-%d.ready" % i)
            argv = seeder_argv(torrent, os.path.dirname(self.files[i]), ip, free_port(ip), ready)
            p = procs.spawn(argv, os.path.join(work, "live-seeder-%d.log" % i))
            self.seeders.append((p, ready))
        wait_ready_files(self.seeders, time.monotonic() + SWARM_TIMEOUT,
                         lambda i: "live seeder %d never became ready:\n%s" % (
                             i, tail(os.path.join(work, "live-seeder-%d.log" % (i - 1)))))

    def name(self, i):
        return os.path.basename(self.files[i])

    def stop_tracker(self):
        self.procs.stop(self.tracker)


def wait_listening(ip, port, proc, log_path):
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection((ip, port), 1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("opentracker never listened:\n" + tail(log_path))
            time.sleep(0.05)


def timed_read(path, size, sha1, start, progress):
    """Opens `path` at `start` (monotonic; None: now), reads 1 byte, then the rest; the
    seconds from `start` to the first byte and to the last. Checks the size and sha1."""
    start = time.monotonic() if start is None else start
    fd = os.open(path, os.O_RDONLY)
    try:
        first = os.read(fd, 1)
        t_first = time.monotonic()
        if len(first) != 1:
            raise MetricFailed("%s: first read returned %d bytes" % (path, len(first)))
        progress()
        os.lseek(fd, 0, os.SEEK_SET)
        digest = read_all(fd, size, progress)
        t_all = time.monotonic()
    finally:
        os.close(fd)
    if digest != sha1:
        raise MetricFailed("%s: sha1 %s, want %s" % (path, digest, sha1))
    return t_first - start, t_all - start


class Guard:
    """What `guarded` needs of a mount: the client process, and how to end it."""

    def __init__(self, proc, abort):
        self.proc, self.abort = proc, abort


def wake(live, args, proc, mnt, folder_of, abort):
    """The wake measurements on a library mount whose torrents all sleep (see the module
    doc); `folder_of(name)` is the torrent's folder. Returns a dict of results."""
    guard = Guard(proc, abort)
    live.stop_tracker()
    log("tracker stopped; waking %d torrents one at a time, then %d at once"
        % (args.wake_one, args.wake_together))
    path = lambda i: os.path.join(mnt, folder_of(live.name(i)), live.name(i))
    out = {"one": [], "together": []}
    for i in range(args.wake_one):
        out["one"].append(guarded(guard, READ_TIMEOUT, lambda progress, i=i: timed_read(
            path(i), args.wake_size, live.sha1s[i], None, progress)))
    together = range(args.wake_one, args.wake_one + args.wake_together)
    if together:
        out["together"] = guarded(guard, READ_TIMEOUT, lambda progress: at_once(
            [(path(i), live.sha1s[i]) for i in together], args.wake_size, progress))
    return out


def at_once(reads, size, progress):
    """Every (path, sha1) of `reads` read by its own thread, all started at one moment."""
    results, errors = [None] * len(reads), []
    go = threading.Barrier(len(reads) + 1)

    def one(k, path, sha1):
        try:
            go.wait()
            results[k] = timed_read(path, size, sha1, start, progress)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(k, p, s), daemon=True)
               for k, (p, s) in enumerate(reads)]
    for t in threads:
        t.start()
    start = time.monotonic()  # read by the threads once the barrier lets them go
    go.wait()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def fresh(live, args, procs, work, rust_env):
    """The baseline: fresh single-torrent mounts of the first live torrent, ours and Debian's
    in turn, --wake-runs times; {client: [(first byte s, whole s)]} from mount ready."""
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)

    def ours(torrent, mnt, scratch):
        return [args.btfs, "mount", torrent, mnt, "--port", "0", "--bind", "127.0.0.1", "-q",
                "--no-lsd", "--dht-bootstrap", "127.0.0.1:1",
                "--dht-state", os.path.join(scratch, "dht")]

    def debian(torrent, mnt, scratch):
        port = str(free_port("0.0.0.0"))
        return [DEBIAN, "-f", "--data-directory=" + scratch, "--min-port=" + port,
                "--max-port=" + port, torrent, mnt]

    clients = [Client("ours", ours, "fusermount3", rust_env)]
    if not args.no_debian:
        clients.append(Client("debian", debian, "fusermount"))
    target = Target(live.torrents[0], live.name(0))
    out = {c.name: [] for c in clients}
    for r in range(args.wake_runs):
        for c in (clients if r % 2 == 0 else clients[::-1]):
            log("fresh mount %d/%d: %s" % (r + 1, args.wake_runs, c.name))
            m = Mount(procs, work, c, target)
            try:
                out[c.name].append(guarded(m, READ_TIMEOUT, lambda progress: timed_read(
                    m.path, args.wake_size, live.sha1s[0], m.ready_at, progress)))
            except BaseException:
                m.abort()
                raise
            m.close()
    return out


def print_table(n, mode, woken, known, fresh_runs, size):
    """The wake rows: medians of the one-at-a-time wakes and of the fresh mounts, the
    slowest of the wakes at once."""
    def ms(v):
        return "%8.0f ms" % (v * 1000)

    def row(what, pairs, pick):
        if pairs:
            print("  %-52s first byte %s  whole %s" % (
                what, ms(pick(p[0] for p in pairs)), ms(pick(p[1] for p in pairs))))

    print("wake: %d torrents asleep (%s), files of %.0f MiB, tracker stopped before the wakes; "
          "known peers of the seeded ones at sleep: %s" % (n, mode, size / MiB, known))
    med = lambda xs: statistics.median(list(xs))
    row("asleep, woken by a read (median of %d)" % len(woken["one"]), woken["one"], med)
    row("asleep, %d woken at once (slowest)" % len(woken["together"]), woken["together"], max)
    for client, pairs in fresh_runs.items():
        row("fresh mount, %s (median of %d, from ready)" % (
            "ours" if client == "ours" else "Debian's btfs", len(pairs)), pairs, med)
    for what, pairs in [("wake one", woken["one"]), ("at once", woken["together"])] + list(
            fresh_runs.items()):
        print("    %-8s %s" % (what, ", ".join("%.3f/%.3f" % p for p in pairs)))
