#!/usr/bin/python3
"""Benchmark: our btfs against Debian's btfs on the same local swarm, in one run.

The swarm is scripts/swarm.py: one file of --size bytes, three libtorrent seeders on
127.0.1.1, 127.0.2.1 and 127.0.3.1 (Debian's btfs keeps one connection per IP) behind
Debian's opentracker on 127.0.0.1 (HTTP). Both clients find the seeders through the tracker.

Every cold measurement runs on a fresh mount: a new client process and, for Debian's btfs,
a new --data-directory, so nothing is cached. A mount is ready when the kernel lists it in
/proc/self/mountinfo and the torrent's file stat()s (Debian's btfs mounts before it has
loaded the torrent). Per client and per run:
  ttfb     fresh mount; open the file and os.read 1 byte; mount ready -> byte returned
  seek     fresh mount; pread 1 MiB at a seeded random offset (the same for both clients)
  seq      fresh mount; read the whole file in 1 MiB chunks with sha1 (checked); MB/s
  warm     the same mount right after seq: the whole file again
  rss      VmHWM of the client process, read just before that mount is unmounted
  ready    spawn -> mount ready, over every mount
Medians over --runs runs; ratio > 1 means ours is better. MB = 10^6 bytes.

A read that makes no progress for --read-timeout seconds fails its metric: the client is
killed (which fails the blocked read) and the mount lazily unmounted. Every process this
script starts is ended by its PID; every mount is unmounted; the work dir is removed, on
failure and on Ctrl-C/SIGTERM too. Python 3 stdlib only; run by Debian's /usr/bin/python3.
"""

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MiB = 1 << 20
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = "target/release/btfs"  # relative to the repo root, never a bare `btfs`
DEBIAN = "/usr/bin/btfs"
PYTHON = "/usr/bin/python3"  # Debian's, with the libtorrent module
SWARM = os.path.join(REPO, "scripts", "swarm.py")
SEEDER_IPS = ["127.0.1.1", "127.0.2.1", "127.0.3.1"]
GRACE = 5.0  # SIGTERM -> SIGKILL
READY_TIMEOUT = 60.0  # spawn -> mount ready
SWARM_TIMEOUT = 300.0  # seeders hash their data before they are ready
EXIT_AFTER_UNMOUNT = 15.0
POLL = 0.005


def log(msg):
    sys.stderr.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


class Interrupted(Exception):
    pass


class MetricFailed(Exception):
    pass


def on_signal(signum, _frame):
    raise Interrupted("signal %d" % signum)


# ------------------------------------------------------------------ processes

class Procs:
    """Every process we started, each ended by its PID (SIGTERM, grace, SIGKILL)."""

    def __init__(self):
        self.live = []

    def spawn(self, argv, log_path, env=None, cwd=REPO):
        with open(log_path, "ab") as err:
            # Own session: a Ctrl-C in the terminal reaches only us, and we end the
            # children in order (mounts first, then seeders, then the tracker).
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                 cwd=cwd, env=env, start_new_session=True)
        self.live.append(p)
        return p

    def stop(self, p, grace=GRACE):
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.live:
            self.live.remove(p)

    def stop_all(self):
        for p in list(reversed(self.live)):
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.monotonic() + GRACE
        for p in list(self.live):
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.live.clear()


def free_port(ip):
    with socket.socket() as t:
        t.bind((ip, 0))
        return t.getsockname()[1]


def run(argv):
    out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         cwd=REPO, timeout=SWARM_TIMEOUT)
    if out.returncode != 0:
        raise RuntimeError("%s failed (%d):\n%s" % (" ".join(argv), out.returncode, out.stderr))
    return out.stdout.strip()


# ---------------------------------------------------------------------- swarm

class Swarm:
    """opentracker + three seeders of one single-file torrent."""

    def __init__(self, procs, work, size, piece_length, seed_mode, data_seed):
        self.procs, self.work = procs, work
        data = os.path.join(work, "data")
        self.file = run([PYTHON, SWARM, "make-data", data, "--layout", "single",
                         "--seed", str(data_seed), "--size", str(size), "--name", "bench.bin"])
        self.name = os.path.basename(self.file)
        self.torrent = os.path.join(work, "bench.torrent")
        self.http_port = free_port("127.0.0.1")
        udp_port = free_port("127.0.0.1")
        self.info_hash = run([PYTHON, SWARM, "make-torrent", self.file, self.torrent,
                              "--piece-length", str(piece_length), "--tracker",
                              "http://127.0.0.1:%d/announce" % self.http_port])
        self.tracker = procs.spawn(
            [PYTHON, SWARM, "tracker", "--dir", os.path.join(work, "tracker"),
             "--http-port", str(self.http_port), "--udp-port", str(udp_port),
             "--whitelist", self.info_hash], os.path.join(work, "tracker.log"))
        self.wait_tracker()
        self.seeders = []
        for i, ip in enumerate(SEEDER_IPS, 1):
            ready = os.path.join(work, "seeder%d.ready" % i)
            argv = [PYTHON, SWARM, "seed", self.torrent, data, "--bind", ip,
                    "--port", str(free_port(ip)), "--ready-file", ready]
            if seed_mode:
                argv.append("--seed-mode")
            p = procs.spawn(argv, os.path.join(work, "seeder%d.log" % i))
            self.seeders.append((p, ready))
        deadline = time.monotonic() + SWARM_TIMEOUT
        for i, (p, ready) in enumerate(self.seeders, 1):
            while not os.path.exists(ready):
                if p.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("seeder %d never became ready:\n%s"
                                       % (i, tail(os.path.join(work, "seeder%d.log" % i))))
                time.sleep(0.1)
        while self.scrape_complete() != len(SEEDER_IPS):
            if time.monotonic() > deadline:
                raise RuntimeError("tracker never counted %d seeds" % len(SEEDER_IPS))
            time.sleep(0.1)

    def wait_tracker(self):
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.http_port), 1).close()
                return
            except OSError:
                if self.tracker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("opentracker never listened:\n"
                                       + tail(os.path.join(self.work, "tracker.log")))
                time.sleep(0.05)

    def scrape_complete(self):
        q = "".join("%" + self.info_hash[i:i + 2] for i in range(0, 40, 2))
        try:
            with socket.create_connection(("127.0.0.1", self.http_port), 5) as s:
                s.sendall(b"GET /scrape?info_hash=%s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
                          % q.encode())
                body = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    body += chunk
        except OSError:
            return None
        m = re.search(rb"8:completei(\d+)e", body)
        return int(m.group(1)) if m else None


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------- mounts

def is_fuse_mount(path):
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            pre, sep, post = line.partition(b" - ")
            if not sep:
                continue
            fields = pre.split(b" ")
            mp = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4])
            fstype = post.split(b" ")[0]
            if mp == os.fsencode(path) and (fstype == b"fuse" or fstype.startswith(b"fuse.")):
                return True
    return False


class Client:
    def __init__(self, name, argv, unmount, env=None):
        self.name, self.argv, self.unmount, self.env = name, argv, unmount, env


def make_clients(args):
    env = dict(os.environ)
    if args.rust_log:
        env["RUST_LOG"] = args.rust_log

    def ours(torrent, mnt, _scratch):
        return [OURS, "mount", torrent, mnt, "--port", "0", "--bind", "127.0.0.1", "-q",
                "--cache-size", args.cache_size]

    def debian(torrent, mnt, scratch):
        # libtorrent listens on 0.0.0.0 in Debian's btfs; no option to bind elsewhere.
        port = str(free_port("0.0.0.0"))
        return [DEBIAN, "-f", "--data-directory=" + scratch, "--min-port=" + port,
                "--max-port=" + port, torrent, mnt]

    return {"ours": Client("ours", ours, "fusermount3", env),
            "debian": Client("debian", debian, "fusermount")}  # Debian's btfs is FUSE 2


class Mount:
    """One fresh client process on a fresh mountpoint (and data dir)."""

    count = 0

    def __init__(self, procs, work, client, swarm):
        Mount.count += 1
        self.procs, self.client = procs, client
        self.dir = os.path.join(work, "m%03d-%s" % (Mount.count, client.name))
        self.mnt = os.path.join(self.dir, "mnt")
        scratch = os.path.join(self.dir, "data")
        os.makedirs(self.mnt)
        os.makedirs(scratch)
        self.log = os.path.join(work, "logs", "m%03d-%s.log" % (Mount.count, client.name))
        self.path = os.path.join(self.mnt, swarm.name)
        t0 = time.monotonic()
        self.proc = procs.spawn(client.argv(swarm.torrent, self.mnt, scratch), self.log,
                                env=client.env)
        deadline = t0 + READY_TIMEOUT
        while not (is_fuse_mount(self.mnt) and exists(self.path)):
            if self.proc.poll() is not None:
                self.close()
                raise MetricFailed("%s exited (%s) before mounting: %s"
                                   % (client.name, self.proc.returncode, tail(self.log, 5)))
            if time.monotonic() > deadline:
                self.close()
                raise MetricFailed("%s not ready within %ds" % (client.name, READY_TIMEOUT))
            time.sleep(POLL)
        self.ready_at = time.monotonic()
        self.ready_s = self.ready_at - t0

    def vm_hwm(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise MetricFailed("no VmHWM for pid %d" % self.proc.pid)

    def status(self):
        """Our client's status xattr as a dict (empty for Debian's or on error)."""
        try:
            raw = os.getxattr(self.mnt, "user.btfs.status").decode(errors="replace")
        except OSError:
            return {}
        return dict(l.split(": ", 1) for l in raw.splitlines() if ": " in l)

    def abort(self):
        """Ends the client quickly (which fails any blocked read) and unmounts lazily."""
        self.procs.stop(self.proc, grace=2.0)
        self.umount_lazy()
        shutil.rmtree(self.dir, ignore_errors=True)

    def umount_lazy(self):
        if is_fuse_mount(self.mnt):
            for tool in (self.client.unmount, "fusermount3", "fusermount"):
                subprocess.run([tool, "-u", "-z", self.mnt], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                if not is_fuse_mount(self.mnt):
                    break

    def close(self):
        """Unmounts the way a user does, waits for the client to exit, then makes sure."""
        unmounted = True
        if is_fuse_mount(self.mnt):
            unmounted = subprocess.run(
                [self.client.unmount, "-u", self.mnt], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30).returncode == 0
        if unmounted:
            try:
                self.proc.wait(EXIT_AFTER_UNMOUNT)
            except subprocess.TimeoutExpired:
                log("%s pid %d still running %ds after unmount; ending it"
                    % (self.client.name, self.proc.pid, EXIT_AFTER_UNMOUNT))
        self.procs.stop(self.proc)
        self.umount_lazy()
        shutil.rmtree(self.dir, ignore_errors=True)


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def guarded(mount, timeout, fn):
    """Runs fn(progress) in a thread; fails once it makes no progress for `timeout` s
    or the client exits. A blocked FUSE read cannot be cancelled from Python, so a
    stuck read is ended by killing the client."""
    state = {"last": time.monotonic(), "result": None, "error": None}

    def progress():
        state["last"] = time.monotonic()

    def body():
        try:
            state["result"] = fn(progress)
        except BaseException as e:  # reported by the main thread
            state["error"] = e

    t = threading.Thread(target=body, daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.1)
        if not t.is_alive():
            break
        why = None
        if time.monotonic() - state["last"] > timeout:
            why = "no progress for %ds" % timeout
        elif mount.proc.poll() is not None:
            why = "client exited (%s)" % mount.proc.returncode
        if why:
            mount.abort()
            t.join(10)
            raise MetricFailed(why)
    if state["error"] is not None:
        e = state["error"]
        raise e if isinstance(e, MetricFailed) else MetricFailed("%s: %s" % (type(e).__name__, e))
    return state["result"]


# ----------------------------------------------------------------- measuring

def read_all(fd, size, progress):
    h = hashlib.sha1()
    got = 0
    while True:
        b = os.read(fd, MiB)
        if not b:
            break
        h.update(b)
        got += len(b)
        progress()
    if got != size:
        raise MetricFailed("read %d bytes, want %d" % (got, size))
    return h.hexdigest()


class Bench:
    def __init__(self, args, procs, work, swarm, clients):
        self.args, self.procs, self.work, self.swarm = args, procs, work, swarm
        self.clients = clients
        self.size = os.path.getsize(swarm.file)
        self.sha1 = file_sha1(swarm.file)
        # name -> metric -> list of values (None: failed)
        self.results = {c: {} for c in clients}
        self.failures = []
        self.notes = {c: [] for c in clients}

    def record(self, client, metric, value):
        self.results[client].setdefault(metric, []).append(value)

    def measure(self, client, metric, fn):
        """One fresh mount for `fn(mount)`; failures recorded (and raised unless --keep-going)."""
        c = self.clients[client]
        m = None
        try:
            m = Mount(self.procs, self.work, c, self.swarm)
            self.record(client, "ready", m.ready_s)
            fn(m)
        except MetricFailed as e:
            self.record(client, metric, None)
            msg = "%s %s: %s" % (client, metric, e)
            if m is not None:
                msg += " (log %s)" % m.log
            self.failures.append(msg)
            log("FAILED " + msg)
            if not self.args.keep_going:
                raise
        except BaseException:
            # Interrupted (or a bug): no polite unmount, a read may still be blocked.
            if m is not None:
                m.abort()
                m = None
            raise
        finally:
            if m is not None:
                m.close()

    def ttfb(self, client):
        def fn(m):
            def body(progress):
                fd = os.open(m.path, os.O_RDONLY)
                try:
                    b = os.read(fd, 1)
                    t = time.monotonic()
                finally:
                    os.close(fd)
                if len(b) != 1:
                    raise MetricFailed("read returned %d bytes" % len(b))
                return t
            t = guarded(m, self.args.read_timeout, body)
            self.record(client, "ttfb", t - m.ready_at)
        self.measure(client, "ttfb", fn)

    def seek(self, client, offset):
        with open(self.swarm.file, "rb") as f:
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
            self.record(client, "seek", guarded(m, self.args.read_timeout, body))
        self.measure(client, "seek", fn)

    def seq(self, client):
        def fn(m):
            def body(progress):
                out = []
                fd = os.open(m.path, os.O_RDONLY)
                try:
                    for _ in ("cold", "warm"):
                        os.lseek(fd, 0, os.SEEK_SET)
                        t0 = time.monotonic()
                        digest = read_all(fd, self.size, progress)
                        out.append((time.monotonic() - t0, digest))
                finally:
                    os.close(fd)
                return out
            runs = guarded(m, self.args.read_timeout, body)
            for what, (secs, digest) in zip(("seq", "warm"), runs):
                if digest != self.sha1:
                    raise MetricFailed("%s read: sha1 %s, want %s" % (what, digest, self.sha1))
            self.record(client, "seq", self.size / runs[0][0] / 1e6)
            self.record(client, "warm", self.size / runs[1][0] / 1e6)
            self.record(client, "rss", m.vm_hwm())
            st = m.status()
            if st:
                self.notes[client].append("after seq+warm: " + ", ".join(
                    "%s=%s" % (k, st[k]) for k in sorted(st)
                    if k in ("downloaded_bytes", "peers", "cache_bytes", "hash_failures")))
        self.measure(client, "seq", fn)

    def run(self):
        rng = random.Random(self.args.seed)
        offsets = [rng.randrange(0, self.size - MiB + 1) for _ in range(self.args.runs)]
        log("seek offsets: %s" % offsets)
        for r in range(self.args.runs):
            # Alternate who goes first, so neither always meets a cooler swarm.
            order = ["ours", "debian"] if r % 2 == 0 else ["debian", "ours"]
            for client in order:
                if self.args.only and client not in self.args.only:
                    continue
                log("run %d/%d: %s" % (r + 1, self.args.runs, client))
                self.ttfb(client)
                self.seek(client, offsets[r])
                self.seq(client)
                log("  %s" % {k: fmt_list(v) for k, v in self.results[client].items()})


def fmt_list(vs):
    return [None if v is None else round(v, 4) for v in vs]


def file_sha1(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(MiB), b""):
            h.update(b)
    return h.hexdigest()


# -------------------------------------------------------------------- report

# metric, label, unit, better ("lower"/"higher"), target kind
METRICS = [
    ("ready", "spawn -> mount ready", "s", "lower", None),
    ("ttfb", "first byte, cold", "s", "lower", "not slower"),
    ("seek", "1 MiB pread at random offset, cold", "s", "lower", "not slower"),
    ("seq", "sequential read + sha1, cold", "MB/s", "higher", "not slower"),
    ("warm", "sequential re-read, same mount", "MB/s", "higher", None),
    ("rss", "peak RSS (VmHWM) after seq+warm", "MiB", "lower", "budget"),
]


def parse_size(s):
    m = re.fullmatch(r"(\d+)\s*([KMGkmg]?)i?[Bb]?", s.strip())
    if not m:
        raise argparse.ArgumentTypeError("not a size: %r" % s)
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]


def median(vs):
    ok = [v for v in vs if v is not None]
    return statistics.median(ok) if ok else None


def report(bench, args):
    budget = parse_size(args.cache_size) + 64 * MiB
    rows = []
    for key, label, unit, better, target in METRICS:
        ours = bench.results["ours"].get(key, [])
        deb = bench.results["debian"].get(key, [])
        o, d = median(ours), median(deb)
        if key == "rss":
            o = None if o is None else o / MiB
            d = None if d is None else d / MiB
        ratio = None
        if o and d:
            ratio = d / o if better == "lower" else o / d
        if target is None:
            verdict = "info"
        elif target == "budget":
            lim = budget / MiB
            verdict = ("n/a" if o is None else
                       ("PASS" if o <= lim else "FAIL") + " (ours %.0f MiB vs budget %.0f MiB"
                       " = cache %s + 64 MiB)" % (o, lim, args.cache_size))
        else:
            verdict = "n/a" if ratio is None else ("PASS" if ratio >= 1 else "FAIL")
            verdict += " (target: ours at least as fast as Debian's)"
        nfail = sum(v is None for v in ours + deb)
        rows.append({"metric": key, "label": label, "unit": unit, "ours": o, "debian": d,
                     "ratio": ratio, "target": target, "verdict": verdict,
                     "ours_runs": ours if key != "rss" else [v and v / MiB for v in ours],
                     "debian_runs": deb if key != "rss" else [v and v / MiB for v in deb],
                     "failed_runs": nfail})

    def num(v, unit, runs):
        if not runs:
            return "not run"
        if v is None:
            return "FAILED"
        if unit == "s":
            return "%.1f ms" % (v * 1000)
        return "%.1f %s" % (v, unit)

    w = max(len(r["label"]) for r in rows)
    print()
    print("btfs benchmark: %s file, %s pieces, 3 seeders, %d run(s), medians; ours --cache-size %s"
          % (human(bench.size), human(args.piece_length), args.runs, args.cache_size))
    print("%-*s | %12s | %12s | %7s" % (w, "metric", "ours", "debian", "ratio"))
    print("-" * (w + 44))
    for r in rows:
        print("%-*s | %12s | %12s | %7s" % (
            w, r["label"], num(r["ours"], r["unit"], r["ours_runs"]),
            num(r["debian"], r["unit"], r["debian_runs"]),
            "-" if r["ratio"] is None else "%.2fx" % r["ratio"]))
    print("(ratio > 1: ours is better)")
    for r in rows:
        if r["target"]:
            print("verdict %-5s %s" % (r["metric"], r["verdict"]))
    for c, notes in bench.notes.items():
        for n in notes:
            print("%s: %s" % (c, n))
    for f in bench.failures:
        print("failure: " + f)
    if args.json:
        doc = {"size": bench.size, "piece_length": args.piece_length, "runs": args.runs,
               "cache_size": args.cache_size, "seed": args.seed, "metrics": rows,
               "failures": bench.failures, "notes": bench.notes}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
        print("wrote %s" % args.json)


def human(n):
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return "%d %s" % (n >> shift, unit)
    return "%d B" % n


# ---------------------------------------------------------------------- main

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[2:]))
    p.add_argument("--size", type=parse_size, default=256 * MiB, help="file size (256M)")
    p.add_argument("--piece-length", type=parse_size, default=256 * 1024,
                   help="torrent piece length (256K, as mktorrent picks for 256 MiB)")
    p.add_argument("--cache-size", default="512M", help="ours: --cache-size (512M)")
    p.add_argument("--runs", type=int, default=3, help="runs of each cold metric (3)")
    p.add_argument("--keep-going", action="store_true",
                   help="record a failed measurement and go on (default: stop at the first)")
    p.add_argument("--json", help="also write the table as JSON here")
    p.add_argument("--read-timeout", type=float, default=120.0,
                   help="seconds a read may go without progress before its metric fails (120)")
    p.add_argument("--seed", type=int, default=1, help="seed of the data and the seek offsets")
    p.add_argument("--seed-mode", action="store_true",
                   help="seeders skip their startup hash check (they then hash each piece on "
                        "its first request, which slows whichever client reads it first)")
    p.add_argument("--rust-log", help="RUST_LOG for ours (e.g. btfs=debug)")
    p.add_argument("--log-dir", help="keep every client's stderr here")
    p.add_argument("--only", action="append", choices=["ours", "debian"],
                   help="measure only this client (repeatable)")
    args = p.parse_args()
    if args.runs < 1 or args.size < 2 * MiB:
        p.error("--runs >= 1 and --size >= 2M")
    parse_size(args.cache_size)
    for path in (os.path.join(REPO, OURS), DEBIAN):
        if not os.access(path, os.X_OK):
            p.error("%s missing (scripts/bench.sh builds ours; setup.sh installs Debian's)" % path)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    procs = Procs()
    work = tempfile.mkdtemp(prefix="btfs-bench-")
    os.makedirs(os.path.join(work, "logs"))
    bench = None
    rc = 0
    try:
        log("work dir %s; making %s of data and starting the swarm" % (work, human(args.size)))
        swarm = Swarm(procs, work, args.size, args.piece_length, args.seed_mode, args.seed)
        log("swarm ready: tracker 127.0.0.1:%d, seeders %s" % (swarm.http_port, SEEDER_IPS))
        bench = Bench(args, procs, work, swarm, make_clients(args))
        bench.run()
    except MetricFailed:
        rc = 1
    except Interrupted as e:
        log("interrupted (%s); cleaning up" % e)
        rc = 130
    except Exception as e:
        log("error: %s" % e)
        rc = 1
    finally:
        # No second signal may cut the cleanup short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        cleanup(procs, work, args.log_dir)
    if bench is not None:
        report(bench, args)
        if bench.failures:
            rc = rc or 1
    return rc


def cleanup(procs, work, log_dir):
    # Mounts first (a live client process still serves them), then everything else.
    # No walking into mountpoints: a stuck client would block the walk.
    for name in sorted(os.listdir(work)):
        mnt = os.path.join(work, name, "mnt")
        if re.fullmatch(r"m\d+-\w+", name) and is_fuse_mount(mnt):
            for tool in ("fusermount3", "fusermount"):
                subprocess.run([tool, "-u", "-z", mnt], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.stop_all()
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        for src in [os.path.join(work, "logs", n) for n in os.listdir(os.path.join(work, "logs"))] \
                + [os.path.join(work, n) for n in os.listdir(work) if n.endswith(".log")]:
            shutil.copy(src, log_dir)
        log("logs kept in %s" % log_dir)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
