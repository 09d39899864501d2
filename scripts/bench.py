#!/usr/bin/python3
"""Benchmark: our btfs against Debian's btfs on the same local swarms, in one run.

Three parts (--skip leaves one out), each on its own swarm, stopped before the next:
  file    scripts/swarm.py: one file of --size bytes, three libtorrent seeders on 127.0.1.1,
          127.0.2.1 and 127.0.3.1 (Debian's btfs keeps one connection per IP) behind
          Debian's opentracker on 127.0.0.1 (HTTP). Both clients find the seeders there.
  video   the same kind of swarm for an mp4 made with ffmpeg (--video-seconds at
          --video-bitrate, H.264 720p + AAC, index (moov) at the end, no +faststart).
  magnet  no tracker: libtorrent DHT nodes (scripts/dht_nodes.py) on 127.0.0.10.. and two
          seeders in DHT mode that announced a multi-file torrent there; ours mounts a bare
          magnet link with --dht-bootstrap of one node. Only in a loopback-only network
          namespace (bench.sh makes one). Debian's btfs cannot join it (see its note).

Every cold measurement runs on a fresh mount: a new client process and, for Debian's btfs,
a new --data-directory (ours: a new --dht-state and --metadata-cache), so nothing is cached.
A mount is ready when the kernel lists it in /proc/self/mountinfo and the file to read
stat()s (Debian's btfs mounts before it has loaded the torrent). Per client and per run:
  ttfb       fresh mount; open the file and os.read 1 byte; mount ready -> byte returned
  seek       fresh mount; pread 1 MiB at a seeded random offset (the same for both clients)
  seq        fresh mount; read the whole file in 1 MiB chunks with sha1 (checked); MB/s
  warm       the same mount right after seq: the whole file again, with sha1
  warm_cat   then `cat FILE > /dev/null` on the mount; tmpfs_cat: the same cat of a copy on
             tmpfs (/dev/shm, best of 3) right after; warm_frac = warm_cat / tmpfs_cat
             (Debian's btfs only with --debian-cat: its cat re-read runs at a few MB/s)
  rss        VmHWM of the client process, read just before that mount is unmounted
  frame0/70  fresh mount; `mpv --no-config --vo=null --ao=null --frames=1 --msg-time`
             (--start=70% for frame70); mpv's own clock from its start to its log line
             "first video frame after restart shown": the first frame at the start position
             decoded and handed to the video output (after an hr-seek, the first frame at 70%)
  magnet     spawn `btfs mount magnet:...` -> first byte of the torrent's largest file
             (magnet_meta: spawn -> that file stat()s, i.e. metadata fetched and mounted).
             Runs after the first meet the earlier mounts' dead DHT nodes and peer
             addresses, as a client does on the public DHT.
  ready      spawn -> mount ready, over every .torrent mount
Medians over --runs runs; ratio > 1 means ours is better. MB = 10^6 bytes. Targets (issues
3 and 4): first byte, seek, first frame, magnet first byte at most half Debian's time; cold
sequential at least Debian's rate; warm cat re-read at least 70% of cat from tmpfs; peak RSS
within --cache-size + 64 MiB.

A read that makes no progress for --read-timeout seconds fails its metric: the client is
killed (which fails the blocked read) and the mount lazily unmounted. Every process this
script starts is ended by its PID; every mount is unmounted; the work dir and the tmpfs
copy are removed, on failure and on Ctrl-C/SIGTERM too. Python 3 stdlib only; run by
Debian's /usr/bin/python3.
"""

import argparse
import hashlib
import json
import os
import queue
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
DHT_NODES = os.path.join(REPO, "scripts", "dht_nodes.py")
MPV = "/usr/bin/mpv"
FFMPEG = "/usr/bin/ffmpeg"
DHT_NODES_COUNT = 5  # libtorrent DHT nodes on 127.0.0.10.. (as tests/dht.rs)
DHT_FIRST_IP = "127.0.0.10"
DHT_PORT = 6900
DHT_STORED_SECS = 120
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

    def spawn(self, argv, log_path, env=None, cwd=REPO, stdin=subprocess.DEVNULL, stdout=None):
        with open(log_path, "ab") as err:
            # Own session: a Ctrl-C in the terminal reaches only us, and we end the
            # children in order (mounts first, then seeders, then the tracker).
            p = subprocess.Popen(argv, stdin=stdin, stdout=err if stdout is None else stdout,
                                 stderr=err, cwd=cwd, env=env, start_new_session=True)
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
    """opentracker + three seeders of one single-file torrent of `file` (in `data`)."""

    def __init__(self, procs, work, tag, data, file, piece_length, seed_mode):
        self.procs, self.work, self.tag = procs, work, tag
        self.file = file
        self.name = os.path.basename(self.file)
        self.torrent = os.path.join(work, "%s.torrent" % tag)
        self.http_port = free_port("127.0.0.1")
        udp_port = free_port("127.0.0.1")
        self.info_hash = run([PYTHON, SWARM, "make-torrent", self.file, self.torrent,
                              "--piece-length", str(piece_length), "--tracker",
                              "http://127.0.0.1:%d/announce" % self.http_port])
        self.tracker = procs.spawn(
            [PYTHON, SWARM, "tracker", "--dir", os.path.join(work, "tracker-" + tag),
             "--http-port", str(self.http_port), "--udp-port", str(udp_port),
             "--whitelist", self.info_hash], os.path.join(work, "tracker-%s.log" % tag))
        self.wait_tracker()
        self.seeders = []
        for i, ip in enumerate(SEEDER_IPS, 1):
            ready = os.path.join(work, "seeder-%s%d.ready" % (tag, i))
            argv = [PYTHON, SWARM, "seed", self.torrent, data, "--bind", ip,
                    "--port", str(free_port(ip)), "--ready-file", ready]
            if seed_mode:
                argv.append("--seed-mode")
            p = procs.spawn(argv, os.path.join(work, "seeder-%s%d.log" % (tag, i)))
            self.seeders.append((p, ready))
        deadline = time.monotonic() + SWARM_TIMEOUT
        for i, (p, ready) in enumerate(self.seeders, 1):
            while not os.path.exists(ready):
                if p.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("seeder %d never became ready:\n%s" % (
                        i, tail(os.path.join(work, "seeder-%s%d.log" % (tag, i)))))
                time.sleep(0.1)
        while self.scrape_complete() != len(SEEDER_IPS):
            if time.monotonic() > deadline:
                raise RuntimeError("tracker never counted %d seeds" % len(SEEDER_IPS))
            time.sleep(0.1)

    def stop(self):
        """Ends the seeders, then the tracker, by PID."""
        for p, _ in self.seeders:
            self.procs.stop(p)
        self.procs.stop(self.tracker)

    def wait_tracker(self):
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.http_port), 1).close()
                return
            except OSError:
                if self.tracker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("opentracker never listened:\n" + tail(
                        os.path.join(self.work, "tracker-%s.log" % self.tag)))
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


class DhtWorld:
    """A tracker-less swarm for magnet links: DHT_NODES_COUNT libtorrent DHT nodes that know
    each other (scripts/dht_nodes.py), and seeders in DHT mode that announced the torrent there.
    Only inside a loopback-only network namespace: a DHT node talks to whatever it learns."""

    def __init__(self, procs, work, data, root):
        self.procs, self.work = procs, work
        torrent = os.path.join(work, "dht.torrent")
        # No trackers: the magnet link and the DHT are all a client has.
        self.info_hash = run([PYTHON, SWARM, "make-torrent", root, torrent,
                              "--piece-length", str(256 * 1024)])
        self.log = os.path.join(work, "dht_nodes.log")
        # TMPDIR: dht_nodes.py's scratch dir lands in the work dir, removed whatever happens.
        env = dict(os.environ, TMPDIR=work)
        self.nodes = procs.spawn([PYTHON, DHT_NODES, "--count", str(DHT_NODES_COUNT),
                                  "--first-ip", DHT_FIRST_IP, "--port", str(DHT_PORT),
                                  "--timeout", "90"], self.log, env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.addrs = []
        while True:
            words = self.line(120).split()
            if words[:1] == ["node"]:
                self.addrs.append(words[2])
            elif words == ["ready"]:
                break
            else:
                raise RuntimeError("dht_nodes.py: %s\n%s" % (" ".join(words), tail(self.log)))
        self.seeders = []
        for i, ip in enumerate(SEEDER_IPS[:2], 1):
            port = free_port(ip)
            ready = os.path.join(work, "seeder-dht%d.ready" % i)
            argv = [PYTHON, SWARM, "seed", torrent, data, "--bind", ip, "--port", str(port),
                    "--ready-file", ready]
            for a in self.addrs:
                argv += ["--dht-node", a]
            p = procs.spawn(argv, os.path.join(work, "seeder-dht%d.log" % i))
            self.seeders.append(("%s:%d" % (ip, port), p, ready))
        deadline = time.monotonic() + SWARM_TIMEOUT
        for addr, p, ready in self.seeders:
            while not os.path.exists(ready):
                if p.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("DHT seeder %s never became a seed" % addr)
                time.sleep(0.1)
        want = [a for a, _, _ in self.seeders]
        self.send("stored %s %d %s" % (self.info_hash, DHT_STORED_SECS, " ".join(want)))
        words = self.line(DHT_STORED_SECS + 30).split()
        if not set(want) <= set(words[2:]):
            raise RuntimeError("the DHT stored %s, not every seeder of %s" % (words[2:], want))

    def _read(self):
        for raw in self.nodes.stdout:
            self.lines.put(raw.decode(errors="replace").strip())
        self.lines.put(None)

    def line(self, secs):
        try:
            line = self.lines.get(timeout=secs)
        except queue.Empty:
            line = None
        if line is None:
            raise RuntimeError("dht_nodes.py: no answer\n" + tail(self.log))
        return line

    def send(self, line):
        self.nodes.stdin.write(line.encode() + b"\n")
        self.nodes.stdin.flush()

    def stop(self):
        for _, p, _ in self.seeders:
            self.procs.stop(p)
        try:
            self.send("quit")
            self.nodes.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.procs.stop(self.nodes)


def loopback_only():
    """True in a network namespace whose only interface is loopback (bench.sh makes one)."""
    # /proc/self/net follows our network namespace (/sys/class/net follows sysfs's mount).
    try:
        with open("/proc/self/net/dev") as f:
            names = [l.split(":")[0].strip() for l in f.readlines()[2:]]
    except OSError:
        return False
    return names == ["lo"]


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


def mount_fstype(path):
    """The filesystem type of the mount at exactly `path` (the last one, on top), or None."""
    fstype = None
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            pre, sep, post = line.partition(b" - ")
            if sep and pre.split(b" ")[4] == os.fsencode(path):
                fstype = post.split(b" ")[0].decode()
    return fstype


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


def make_magnet_clients(args, clients, bootstrap):
    """Our client for a magnet link in the DHT-only swarm, bootstrapped from the DHT node
    `bootstrap` only (it learns the others through it), with cold state. (Debian's btfs
    cannot join it: see Bench.phase_magnet.)"""
    def ours(magnet, mnt, scratch):
        return clients["ours"].argv(magnet, mnt, scratch) + [
            "--dht-bootstrap", bootstrap, "--dht-state", os.path.join(scratch, "dht.state"),
            "--metadata-cache", os.path.join(scratch, "metadata"),
            "--metadata-timeout", str(int(args.read_timeout))]

    return {"ours": Client("ours", ours, "fusermount3", clients["ours"].env)}


class Target:
    def __init__(self, torrent, name):
        self.torrent, self.name = torrent, name


class Mount:
    """One fresh client process on a fresh mountpoint (and data dir)."""

    count = 0

    def __init__(self, procs, work, client, target, ready_timeout=READY_TIMEOUT):
        """`target`: what to mount (.torrent: a path or link, .name: the file to read)."""
        Mount.count += 1
        self.procs, self.client = procs, client
        self.dir = os.path.join(work, "m%03d-%s" % (Mount.count, client.name))
        self.mnt = os.path.join(self.dir, "mnt")
        scratch = os.path.join(self.dir, "data")
        os.makedirs(self.mnt)
        os.makedirs(scratch)
        self.log = os.path.join(work, "logs", "m%03d-%s.log" % (Mount.count, client.name))
        self.path = os.path.join(self.mnt, target.name)
        t0 = time.monotonic()
        self.proc = procs.spawn(client.argv(target.torrent, self.mnt, scratch), self.log,
                                env=client.env)
        deadline = t0 + ready_timeout
        while not (is_fuse_mount(self.mnt) and exists(self.path)):
            if self.proc.poll() is not None:
                self.close()
                raise MetricFailed("%s exited (%s) before mounting: %s"
                                   % (client.name, self.proc.returncode, tail(self.log, 5)))
            if time.monotonic() > deadline:
                self.close()
                raise MetricFailed("%s not ready within %ds" % (client.name, ready_timeout))
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


class Bench:
    def __init__(self, args, procs, work, clients):
        self.args, self.procs, self.work = args, procs, work
        self.clients = clients
        self.size = None
        # name -> metric -> list of values (None: failed)
        self.results = {c: {} for c in clients}
        self.failures = []
        self.notes = {c: [] for c in clients}
        self.notes["bench"] = []

    def record(self, client, metric, value):
        self.results[client].setdefault(metric, []).append(value)

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

    # ---------------------------------------------------------- one file, tracker

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
        self.measure(client, "ttfb", fn, self.swarm)

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
        self.measure(client, "seek", fn, self.swarm)

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
            # The yardstick: `cat` of the mounted file (a third pass, every byte
            # already fetched) against `cat` of the same bytes on tmpfs, right after.
            # Debian's btfs serves cat's 128 KiB reads at a few MB/s (minutes for 256 MiB),
            # and the target is ours against tmpfs: its cat only with --debian-cat.
            if client == "ours" or self.args.debian_cat:
                secs = guarded(m, self.args.read_timeout,
                               lambda progress: self.cat_secs(m.path, progress, client + "-cat"))
                self.record(client, "warm_cat", self.size / secs / 1e6)
            if self.tmpfs_file and "warm_cat" in self.results[client]:
                # Best of three: spawning cat is a visible part of a ~50 ms read.
                best = min(self.cat_secs(self.tmpfs_file, lambda: None, "tmpfs-cat")
                           for _ in range(3))
                self.record(client, "tmpfs_cat", self.size / best / 1e6)
            self.record(client, "rss", m.vm_hwm())
            st = m.status()
            if st:
                self.notes[client].append("after seq+warm: " + ", ".join(
                    "%s=%s" % (k, st[k]) for k in sorted(st)
                    if k in ("downloaded_bytes", "peers", "cache_bytes", "hash_failures")))
        self.measure(client, "seq", fn, self.swarm)

    def phase_file(self):
        args = self.args
        data = os.path.join(self.work, "data")
        file = run([PYTHON, SWARM, "make-data", data, "--layout", "single", "--seed",
                    str(args.seed), "--size", str(args.size), "--name", "bench.bin"])
        self.size = os.path.getsize(file)
        self.sha1 = file_sha1(file)
        self.tmpfs_file = None
        if self.tmpfs_dir:
            self.tmpfs_file = os.path.join(self.tmpfs_dir, "bench.bin")
            shutil.copyfile(file, self.tmpfs_file)
        self.swarm = Swarm(self.procs, self.work, "file", data, file, args.piece_length,
                           args.seed_mode)
        log("file swarm ready: tracker 127.0.0.1:%d, seeders %s"
            % (self.swarm.http_port, SEEDER_IPS))
        rng = random.Random(args.seed)
        offsets = [rng.randrange(0, self.size - MiB + 1) for _ in range(args.runs)]
        log("seek offsets: %s" % offsets)
        for r, client in self.order():
            log("run %d/%d: %s: first byte, seek, sequential" % (r + 1, args.runs, client))
            self.ttfb(client)
            self.seek(client, offsets[r])
            self.seq(client)
            log("  %s" % {k: fmt_list(v) for k, v in self.results[client].items()})
        self.swarm.stop()
        if self.tmpfs_file:
            os.unlink(self.tmpfs_file)

    def order(self):
        """(run, client) pairs; who goes first alternates, so neither always meets a
        cooler swarm."""
        for r in range(self.args.runs):
            for client in (["ours", "debian"] if r % 2 == 0 else ["debian", "ours"]):
                if not self.args.only or client in self.args.only:
                    yield r, client

    # ---------------------------------------------------------------- video, mpv

    def make_video(self, path):
        a = self.args
        t0 = time.monotonic()
        # Noise keeps x264 at the bitrate asked for (a test pattern alone compresses to far
        # less); no +faststart, so the index (moov) is at the end and a player reads there
        # first, as with many real downloads.
        run([FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
             "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25,noise=alls=12:allf=t+u",
             "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
             "-t", str(a.video_seconds), "-c:v", "libx264", "-preset", "ultrafast",
             "-b:v", str(a.video_bitrate), "-maxrate", str(a.video_bitrate),
             "-bufsize", str(2 * a.video_bitrate), "-g", "50", "-pix_fmt", "yuv420p",
             "-c:a", "aac", "-b:a", "128k", path])
        size = os.path.getsize(path)
        log("video: %s, %d s, %.1f Mbit/s, %.1f MB, made in %.0f s"
            % (os.path.basename(path), a.video_seconds, size * 8 / a.video_seconds / 1e6,
               size / 1e6, time.monotonic() - t0))
        return size

    def first_frame(self, client, start, metric):
        """mpv on a fresh mount: seconds from mpv's start to its first video frame at the
        start position (mpv's own clock, --msg-time), after which --frames=1 quits."""
        def fn(m):
            argv = [MPV, "--no-config", "--vo=null", "--ao=null", "--frames=1", "--msg-time",
                    "--msg-level=all=status,cplayer=v"]
            if start:
                argv.append("--start=" + start)
            argv.append(m.path)
            held = {}

            def body(progress):
                p, held["log"] = self.spawn_tool(argv, "%s-mpv" % client, stdout=None)
                held["p"] = p
                watch_rchar(p, progress)
                return p.wait()

            try:
                rc = guarded(m, self.args.read_timeout, body)
            finally:
                if "p" in held:
                    self.procs.stop(held["p"])
            text = tail(held["log"], 400)
            shown = re.search(r"^\[\s*([\d.]+)\]\s*\[cplayer\] first video frame after "
                              r"restart shown", text, re.M)
            if rc != 0 or not shown:
                raise MetricFailed("mpv exited %s%s: %s" % (
                    rc, "" if shown else " with no frame shown", text[-600:]))
            self.record(client, metric, float(shown.group(1)))
        self.measure(client, metric, fn, self.video)

    def phase_video(self):
        a = self.args
        vdir = os.path.join(self.work, "video")
        os.makedirs(vdir)
        path = os.path.join(vdir, "bench.mp4")
        self.video_size = self.make_video(path)
        self.video = Swarm(self.procs, self.work, "video", vdir, path, a.piece_length,
                           a.seed_mode)
        log("video swarm ready: tracker 127.0.0.1:%d" % self.video.http_port)
        for r, client in self.order():
            log("run %d/%d: %s: mpv first frame from the start and from 70%%"
                % (r + 1, a.runs, client))
            self.first_frame(client, None, "frame0")
            self.first_frame(client, "70%", "frame70")
            log("  %s" % {k: fmt_list(v) for k, v in self.results[client].items()
                          if k.startswith("frame")})
        self.video.stop()

    # ------------------------------------------------------------ magnet, DHT only

    def magnet(self, client, clients, target):
        """Fresh mount of a bare magnet link: seconds from spawning the client to the first
        byte of the torrent's largest file, with the DHT its only way to peers."""
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
            self.record(client, "magnet_meta", m.ready_s)
            self.record(client, "magnet", m.ready_s + (t - m.ready_at))
        self.measure(client, "magnet", fn, target, clients, self.args.read_timeout,
                     ready_metric=None)

    def phase_magnet(self):
        a = self.args
        if not loopback_only():
            self.notes["bench"].append(
                "magnet: skipped, not in a loopback-only network namespace (run bench.sh "
                "as root): DHT nodes would talk to whatever addresses they learn")
            return
        if not self.args.only or "debian" in self.args.only:
            self.notes["debian"].append(
                "magnet: not run: it cannot join a loopback-only DHT. It has no DHT bootstrap "
                "option (a magnet's dht=HOST:PORT would do), but it listens on 0.0.0.0 (no bind "
                "option) and libtorrent opens no DHT socket on loopback when it expands 0.0.0.0 "
                "(tried with libtorrent 2.0 in this namespace: 0 DHT nodes; bound to 127.0.0.1 "
                "instead, it joins). Outside a private namespace it would reach the internet.")
        if self.args.only and "ours" not in self.args.only:
            return
        data = os.path.join(self.work, "dhtdata")
        root = run([PYTHON, SWARM, "make-data", data, "--layout", "multi", "--seed",
                    str(a.seed + 1), "--size", str(a.magnet_size), "--name", "multi"])
        files = []
        for dirpath, _dirs, names in os.walk(root):
            for n in names:
                full = os.path.join(dirpath, n)
                files.append((os.path.getsize(full), os.path.relpath(full, data)))
        largest = max(files)[1]
        world = DhtWorld(self.procs, self.work, data, root)
        log("DHT swarm ready: nodes %s, seeders %s; largest file %r"
            % (world.addrs, [s[0] for s in world.seeders], largest))
        magnet = "magnet:?xt=urn:btih:%s&dn=multi" % world.info_hash
        target = Target(magnet, largest)
        clients = make_magnet_clients(a, self.clients, world.addrs[0])
        for r, client in self.order():
            if client == "debian":
                continue
            log("run %d/%d: %s: magnet -> first byte" % (r + 1, a.runs, client))
            self.magnet(client, clients, target)
            log("  %s" % {k: fmt_list(v) for k, v in self.results[client].items()
                          if k.startswith("magnet")})
        world.stop()

    def run(self):
        self.tmpfs_dir = self.args.tmpfs_dir
        if "file" not in self.args.skip:
            self.phase_file()
        if "video" not in self.args.skip:
            self.phase_video()
        if "magnet" not in self.args.skip:
            self.phase_magnet()


def fmt_list(vs):
    return [None if v is None else round(v, 4) for v in vs]


def file_sha1(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(MiB), b""):
            h.update(b)
    return h.hexdigest()


# -------------------------------------------------------------------- report

# metric, label, unit, better ("lower"/"higher"), target kind:
#   half: ours takes at most half Debian's time; rate: ours at least Debian's rate;
#   tmpfs: ours at least TMPFS_TARGET of cat from tmpfs; budget: RSS <= cache + 64 MiB.
METRICS = [
    ("ready", "spawn -> mount ready (.torrent)", "s", "lower", None),
    ("ttfb", "first byte, cold", "s", "lower", "half"),
    ("seek", "1 MiB pread at random offset, cold", "s", "lower", "half"),
    ("seq", "sequential read + sha1, cold", "MB/s", "higher", "rate"),
    ("warm", "re-read + sha1, same mount", "MB/s", "higher", None),
    ("warm_cat", "re-read with cat, same mount", "MB/s", "higher", None),
    ("tmpfs_cat", "cat of the same file on tmpfs", "MB/s", "higher", None),
    ("warm_frac", "cat re-read / cat from tmpfs", "%", "higher", "tmpfs"),
    ("rss", "peak RSS (VmHWM) after the reads", "MiB", "lower", "budget"),
    ("frame0", "mpv first frame from start, cold", "s", "lower", "half"),
    ("frame70", "mpv first frame from 70%, cold", "s", "lower", "half"),
    ("magnet_meta", "magnet (DHT only): spawn -> file seen", "s", "lower", None),
    ("magnet", "magnet (DHT only): spawn -> 1st byte", "s", "lower", "half"),
]
TMPFS_TARGET = 0.70
TARGETS = {"half": "<= 1/2 debian", "rate": ">= debian", "tmpfs": ">= 70% tmpfs",
           "budget": "<= cache+64M"}


def parse_size(s):
    m = re.fullmatch(r"(\d+)\s*([KMGkmg]?)i?[Bb]?", s.strip())
    if not m:
        raise argparse.ArgumentTypeError("not a size: %r" % s)
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]


def parse_rate(s):
    """Bits per second: 6M = 6,000,000 (as ffmpeg reads it)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMkm]?)", s.strip())
    if not m:
        raise argparse.ArgumentTypeError("not a bitrate: %r" % s)
    return int(float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()])


def median(vs):
    ok = [v for v in vs if v is not None]
    return statistics.median(ok) if ok else None


def report(bench, args):
    budget = parse_size(args.cache_size) + 64 * MiB
    rows = []
    for key, label, unit, better, target in METRICS:
        runs = {}
        for c in ("ours", "debian"):
            if key == "warm_frac":
                w = median(bench.results[c].get("warm_cat", []))
                t = median(bench.results[c].get("tmpfs_cat", []))
                if not t:  # no tmpfs reference
                    runs[c] = []
                else:
                    runs[c] = [w / t * 100 if w else None]
            elif key == "rss":
                runs[c] = [v and v / MiB for v in bench.results[c].get(key, [])]
            else:
                runs[c] = bench.results[c].get(key, [])
        o, d = median(runs["ours"]), median(runs["debian"])
        if not runs["ours"] and not runs["debian"]:
            continue
        ratio = None
        if o and d and key != "warm_frac":
            ratio = d / o if better == "lower" else o / d
        verdict = ""
        if target == "half":
            verdict = "n/a" if ratio is None else ("PASS" if ratio >= 2 else "FAIL")
        elif target == "rate":
            verdict = "n/a" if ratio is None else ("PASS" if ratio >= 1 else "FAIL")
        elif target == "tmpfs":
            verdict = "n/a" if o is None else ("PASS" if o >= TMPFS_TARGET * 100 else "FAIL")
        elif target == "budget":
            verdict = "n/a" if o is None else ("PASS" if o <= budget / MiB else "FAIL")
        nfail = sum(v is None for v in runs["ours"] + runs["debian"])
        rows.append({"metric": key, "label": label, "unit": unit, "ours": o, "debian": d,
                     "ratio": ratio, "target": TARGETS.get(target), "verdict": verdict,
                     "ours_runs": runs["ours"], "debian_runs": runs["debian"],
                     "failed_runs": nfail})

    def num(v, unit, runs):
        if not runs:
            return "not run"
        if v is None:
            return "FAILED"
        if unit == "s":
            return "%.1f ms" % (v * 1000)
        if unit == "%":
            return "%.0f %%" % v
        return "%.1f %s" % (v, unit)

    w = max([len(r["label"]) for r in rows] + [6])
    print()
    parts = []
    if bench.size:
        parts.append("%s file, %s pieces, 3 seeders + tracker" % (
            human(bench.size), human(args.piece_length)))
    if getattr(bench, "video_size", None):
        parts.append("video %.0f MB (%d s, %.1f Mbit/s mp4, index at end)" % (
            bench.video_size / 1e6, args.video_seconds, args.video_bitrate / 1e6))
    if bench.results["ours"].get("magnet") or bench.results["debian"].get("magnet"):
        parts.append("magnet: %s largest file, %d DHT nodes + 2 seeders, no tracker" % (
            human(args.magnet_size), DHT_NODES_COUNT))
    print("btfs benchmark, %d run(s), medians, ours --cache-size %s: %s"
          % (args.runs, args.cache_size, "; ".join(parts)))
    head = "%-*s | %12s | %12s | %8s | %-14s | %s" % (
        w, "metric", "ours", "debian", "ratio", "target", "verdict")
    print(head)
    print("-" * len(head))
    for r in rows:
        print("%-*s | %12s | %12s | %8s | %-14s | %s" % (
            w, r["label"], num(r["ours"], r["unit"], r["ours_runs"]),
            num(r["debian"], r["unit"], r["debian_runs"]),
            "-" if r["ratio"] is None else
            ("%.2fx" if r["ratio"] < 100 else "%.0fx") % r["ratio"],
            r["target"] or "", r["verdict"]))
    print("(ratio > 1: ours is better; 'half' targets need ratio >= 2; rss budget %.0f MiB "
          "= cache %s + 64 MiB; first frame: mpv's clock from its start to 'first video "
          "frame after restart shown', --vo=null --ao=null --frames=1)"
          % (budget / MiB, args.cache_size))
    for c, notes in bench.notes.items():
        for n in notes:
            print("%s: %s" % (c, n))
    for f in bench.failures:
        print("failure: " + f)
    if args.json:
        doc = {"size": bench.size, "piece_length": args.piece_length, "runs": args.runs,
               "cache_size": args.cache_size, "seed": args.seed,
               "video_seconds": args.video_seconds, "video_bitrate": args.video_bitrate,
               "magnet_size": args.magnet_size, "metrics": rows,
               "failures": bench.failures, "notes": bench.notes}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
        print("wrote %s" % args.json)
    return rows


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
    p.add_argument("--skip", action="append", default=[], choices=["file", "video", "magnet"],
                   help="skip a part: file (first byte, seek, sequential, re-read vs tmpfs), "
                        "video (mpv first frame), magnet (DHT-only magnet first byte)")
    p.add_argument("--debian-cat", action="store_true",
                   help="also time cat's re-read on Debian's btfs (slow: minutes at 256M)")
    p.add_argument("--video-seconds", type=int, default=150,
                   help="length of the video mpv plays (150)")
    p.add_argument("--video-bitrate", type=parse_rate, default=6_000_000,
                   help="its video bitrate, bits/s (6M)")
    p.add_argument("--magnet-size", type=parse_size, default=64 * MiB,
                   help="the magnet torrent's largest file (64M)")
    args = p.parse_args()
    if args.runs < 1 or args.size < 2 * MiB:
        p.error("--runs >= 1 and --size >= 2M")
    if args.video_seconds < 5:
        p.error("--video-seconds >= 5")
    parse_size(args.cache_size)
    tools = [os.path.join(REPO, OURS), DEBIAN]
    if "video" not in args.skip:
        tools += [MPV, FFMPEG]
    for path in tools:
        if not os.access(path, os.X_OK):
            p.error("%s missing (scripts/bench.sh builds ours; setup.sh installs Debian's)" % path)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    procs = Procs()
    work = tempfile.mkdtemp(prefix="btfs-bench-")
    os.makedirs(os.path.join(work, "logs"))
    # The reference for the warm re-read: the same bytes on tmpfs.
    args.tmpfs_dir = None
    if mount_fstype("/dev/shm") == "tmpfs":
        args.tmpfs_dir = tempfile.mkdtemp(prefix="btfs-bench-", dir="/dev/shm")
    bench = None
    rc = 0
    try:
        log("work dir %s (tmpfs copy in %s)" % (work, args.tmpfs_dir))
        bench = Bench(args, procs, work, make_clients(args))
        if not args.tmpfs_dir:
            bench.notes["bench"].append("no tmpfs at /dev/shm: no tmpfs reference")
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
        if args.tmpfs_dir:
            shutil.rmtree(args.tmpfs_dir, ignore_errors=True)
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
