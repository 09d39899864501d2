"""A local swarm for the benchmark: Debian's opentracker with a whitelist, and libtorrent
seeders (scripts/swarm.py) on 127.0.1.1, 127.0.2.1 and 127.0.3.1 (Debian's btfs keeps one
connection per IP)."""

import os
import re
import socket
import time

from harness import PYTHON, REPO
from harness.procs import free_port, run, tail

SWARM = os.path.join(REPO, "scripts", "swarm.py")
SEEDER_IPS = ["127.0.1.1", "127.0.2.1", "127.0.3.1"]
SWARM_TIMEOUT = 300.0  # seeders hash their data before they are ready


def make_data(out, layout, seed, size, name):
    """Deterministic content (`swarm.py make-data`); the path of the file or folder made."""
    return run([PYTHON, SWARM, "make-data", out, "--layout", layout, "--seed", str(seed),
                "--size", str(size), "--name", name])


def make_torrent(path, out, piece_length, trackers=(), web_seeds=()):
    """A v1 torrent of `path` (`swarm.py make-torrent`), with these announce URLs and web
    seeds (BEP 19 url-list); its info-hash, hex."""
    argv = [PYTHON, SWARM, "make-torrent", path, out, "--piece-length", str(piece_length)]
    for url in trackers:
        argv += ["--tracker", url]
    for url in web_seeds:
        argv += ["--web-seed", url]
    return run(argv)


def seeder_argv(torrent, data, ip, port, ready, transport="tcp"):
    return [PYTHON, SWARM, "seed", torrent, data, "--bind", ip, "--port", str(port),
            "--ready-file", ready, "--transport", transport]


def wait_ready_files(seeders, deadline, fail):
    """Waits for each (process, ready file); `fail(i)` makes the error of seeder i (from 1)."""
    for i, (p, ready) in enumerate(seeders, 1):
        while not os.path.exists(ready):
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(fail(i))
            time.sleep(0.1)


class Swarm:
    """opentracker + three seeders of one single-file torrent of `file` (in `data`), speaking
    `transport` (tcp, utp: uTP only, or both); `encryption`: the seeders' policy (swarm.py seed
    --encryption; forced: RC4 only); `upload_limit`: each seeder's cap, bytes per second."""

    def __init__(self, procs, work, tag, data, file, piece_length, seed_mode, transport="tcp",
                 encryption="enabled", upload_limit=None):
        self.procs, self.work, self.tag = procs, work, tag
        self.file = file
        self.name = os.path.basename(self.file)
        self.torrent = os.path.join(work, "%s.torrent" % tag)
        self.http_port = free_port("127.0.0.1")
        udp_port = free_port("127.0.0.1")
        self.info_hash = make_torrent(self.file, self.torrent, piece_length,
                                      ["http://127.0.0.1:%d/announce" % self.http_port])
        self.tracker = procs.spawn(
            [PYTHON, SWARM, "tracker", "--dir", os.path.join(work, "tracker-" + tag),
             "--http-port", str(self.http_port), "--udp-port", str(udp_port),
             "--whitelist", self.info_hash], os.path.join(work, "tracker-%s.log" % tag))
        self.wait_tracker()
        self.seeders = []
        for i, ip in enumerate(SEEDER_IPS, 1):
            ready = os.path.join(work, "seeder-%s%d.ready" % (tag, i))
            argv = seeder_argv(self.torrent, data, ip, free_port(ip), ready, transport)
            if seed_mode:
                argv.append("--seed-mode")
            argv += ["--encryption", encryption]
            if upload_limit:
                argv += ["--upload-limit", str(int(upload_limit))]
            p = procs.spawn(argv, os.path.join(work, "seeder-%s%d.log" % (tag, i)))
            self.seeders.append((p, ready))
        deadline = time.monotonic() + SWARM_TIMEOUT
        wait_ready_files(self.seeders, deadline, lambda i: "seeder %d never became ready:\n%s" % (
            i, tail(os.path.join(work, "seeder-%s%d.log" % (tag, i)))))
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
