"""The benchmark's frame: the two clients, one fresh mount per cold measurement, reads
guarded against hangs, and the results of every run.

A read that makes no progress for --read-timeout seconds fails its metric: the client is
killed (which fails the blocked read) and the mount lazily unmounted."""

import hashlib
import os
import signal
import subprocess
import threading
import time

from harness import DEBIAN, OURS, MiB
from harness.mount import READY_TIMEOUT, Client, Mount
from harness.procs import MetricFailed, cpu_secs, free_port, log, settle, tail


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


class Bench:
    """What every part of the benchmark shares: clients, processes, work dir, results."""

    def __init__(self, args, procs, work):
        self.args, self.procs, self.work = args, procs, work
        self.clients = make_clients(args)
        # name -> metric -> list of values (None: failed)
        self.results = {c: {} for c in self.clients}
        self.failures = []
        self.notes = {c: [] for c in self.clients}
        self.notes["bench"] = []
        self.size = None  # the file part's file, for the table's heading
        self.video_size = None
        self.utp_size = None  # the utp part's file
        self.enc_size = None  # the encryption part's file
        self.tmp_dirs = []  # removed at the end, as the work dir is
        # A part's own table, printed after the main one: fn() -> (lines, JSON value), by name.
        self.reports = {}

    def record(self, client, metric, value):
        self.results[client].setdefault(metric, []).append(value)

    def log_results(self, client, prefix=""):
        log("  %s" % {k: [None if v is None else round(v, 4) for v in vs]
                      for k, vs in self.results[client].items() if k.startswith(prefix)})

    def order(self):
        """(run, client) pairs; who goes first alternates, so neither always meets a
        cooler swarm."""
        for r in range(self.args.runs):
            for client in (["ours", "debian"] if r % 2 == 0 else ["debian", "ours"]):
                if not self.args.only or client in self.args.only:
                    yield r, client

    def measure(self, client, metric, fn, target, clients=None, ready_timeout=READY_TIMEOUT,
                ready_metric="ready"):
        """One fresh mount for `fn(mount)`; failures recorded (and raised unless --keep-going)."""
        c = (clients or self.clients)[client]
        m = None
        try:
            m = Mount(self.procs, self.work, c, target, ready_timeout)
            if ready_metric:
                self.record(client, ready_metric, m.ready_s)
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

    def spawn_tool(self, argv, name, stdout=subprocess.DEVNULL):
        """A reader process (cat, mpv) in Procs, so cleanup ends it too."""
        logp = os.path.join(self.work, "logs", "m%03d-%s.log" % (Mount.count, name))
        return self.procs.spawn(argv, logp, stdout=stdout), logp

    def cat_secs(self, path, progress, name):
        """Seconds `cat PATH > /dev/null` takes (the issue's yardstick for a re-read)."""
        p, logp = self.spawn_tool(["/bin/cat", path], name)
        try:
            t0 = time.monotonic()
            watch_rchar(p, progress)
            rc = p.wait()
            secs = time.monotonic() - t0
        finally:
            self.procs.stop(p)
        if rc != 0:
            raise MetricFailed("cat %s exited %d: %s" % (path, rc, tail(logp, 3)))
        return secs


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


def first_byte(mount, timeout):
    """Opens the mount's file and reads 1 byte, guarded; the monotonic time it returned."""
    def body(_progress):
        fd = os.open(mount.path, os.O_RDONLY)
        try:
            b = os.read(fd, 1)
            t = time.monotonic()
        finally:
            os.close(fd)
        if len(b) != 1:
            raise MetricFailed("read returned %d bytes" % len(b))
        return t
    return guarded(mount, timeout, body)


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


def start_perf(args, client, metric, pid):
    """`perf record` of `pid` (with call graphs) into --perf-dir, if given."""
    d = args.perf_dir
    if not d:
        return None
    os.makedirs(d, exist_ok=True)
    n = len([f for f in os.listdir(d) if f.startswith("%s-%s-" % (client, metric))])
    out = os.path.join(d, "%s-%s-%d.data" % (client, metric, n))
    events = [a for e in args.perf_event for a in ("-e", e)]
    cmd = ["perf", "record", "-q", "--call-graph", args.perf_call_graph] + events
    proc = subprocess.Popen(cmd + ["-p", str(pid), "-o", out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)  # perf attaches
    return proc


def stop_perf(proc):
    if proc is not None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def cold_read(bench, client, m, size, sha1, rate_metric, cpu_metric, probe=None):
    """The whole of mount `m`'s file in 1 MiB reads, guarded, once the client has settled
    (its startup work is not the read's); the sha1 must be `sha1`. Records its MB/s as
    `rate_metric` (if given) and the client's CPU ms per MB over the read as `cpu_metric`,
    and returns (seconds, what `probe()`, a dict of counters, grew by over the read). The one
    way the parts measure CPU per byte, so that their ratios compare; profiled into
    --perf-dir if given."""
    args = bench.args

    def body(progress):
        settle(m.proc.pid)
        fd = os.open(m.path, os.O_RDONLY)
        perf = start_perf(args, client, cpu_metric, m.proc.pid)
        try:
            before = probe() if probe else {}
            cpu0, t0 = cpu_secs(m.proc.pid), time.monotonic()
            digest = read_all(fd, size, progress)
            secs, cpu1 = time.monotonic() - t0, cpu_secs(m.proc.pid)
            grew = {k: v - before.get(k, 0) for k, v in probe().items()} if probe else {}
        finally:
            os.close(fd)
            stop_perf(perf)
        if cpu0 is None or cpu1 is None:
            raise MetricFailed("no CPU time for pid %d" % m.proc.pid)
        return secs, cpu1 - cpu0, digest, grew
    secs, cpu, digest, grew = guarded(m, args.read_timeout, body)
    if digest != sha1:
        raise MetricFailed("sequential read: sha1 %s, want %s" % (digest, sha1))
    if rate_metric:
        bench.record(client, rate_metric, size / secs / 1e6)
    bench.record(client, cpu_metric, cpu / (size / 1e6) * 1000)
    return secs, grew


def watch_rchar(proc, progress):
    """Calls progress() while `proc` reads more bytes (/proc/PID/io rchar); ends with it."""
    def body():
        last = -1
        while proc.poll() is None:
            try:
                with open("/proc/%d/io" % proc.pid) as f:
                    rchar = int(next(l for l in f if l.startswith("rchar:")).split()[1])
            except (OSError, StopIteration, ValueError):
                rchar = last
            if rchar != last:
                last = rchar
                progress()
            time.sleep(0.1)
    threading.Thread(target=body, daemon=True).start()


def file_sha1(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(MiB), b""):
            h.update(b)
    return h.hexdigest()
