"""A tracker-less swarm for magnet links: libtorrent DHT nodes that know each other
(scripts/dht_nodes.py), and seeders in DHT mode that announced the torrent there. Only inside a
loopback-only network namespace (harness.netns): a DHT node talks to whatever it learns."""

import os
import queue
import subprocess
import threading
import time

from harness import PYTHON, REPO
from harness.procs import free_port, tail
from harness.swarm import SEEDER_IPS, SWARM_TIMEOUT, make_torrent, seeder_argv, wait_ready_files

DHT_NODES = os.path.join(REPO, "scripts", "dht_nodes.py")
DHT_NODES_COUNT = 5  # libtorrent DHT nodes on 127.0.0.10.. (as tests/dht.rs)
DHT_FIRST_IP = "127.0.0.10"
DHT_PORT = 6900
DHT_STORED_SECS = 120


class DhtWorld:
    """DHT_NODES_COUNT DHT nodes, and two seeders of the torrent of `root` (in `data`) that
    announced it there."""

    def __init__(self, procs, work, data, root):
        self.procs, self.work = procs, work
        torrent = os.path.join(work, "dht.torrent")
        # No trackers: the magnet link and the DHT are all a client has.
        self.info_hash = make_torrent(root, torrent, 256 * 1024)
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
            argv = seeder_argv(torrent, data, ip, port, ready)
            for a in self.addrs:
                argv += ["--dht-node", a]
            p = procs.spawn(argv, os.path.join(work, "seeder-dht%d.log" % i))
            self.seeders.append(("%s:%d" % (ip, port), p, ready))
        want = [a for a, _, _ in self.seeders]
        wait_ready_files([(p, ready) for _, p, ready in self.seeders],
                         time.monotonic() + SWARM_TIMEOUT,
                         lambda i: "DHT seeder %s never became a seed" % want[i - 1])
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
