"""A thin swarm: libtorrent seeders with capped uplinks, reached only through a relay that can
add latency (scripts/delay_relay.py), behind opentracker.

Seeder i (from 1) listens on 127.0.i.2, an address no client is told; the relay listens on
127.0.i.1 (one address per seeder: Debian's btfs keeps one connection per IP) and forwards to
it. The seeders get a copy of the torrent without its tracker (the info-hash is the same), so
they announce nothing and learn of no peer to dial; the harness announces each relay address
to the tracker itself (from that address, as left=0: a seed), so the clients' announces
return the relay addresses and nothing else. The seeders speak TCP only (swarm.py's sessions
turn uTP off both ways) behind scripts/delay_relay.py, or with transport="utp", uTP only
behind scripts/udp_relay.py, which also loses datagrams and varies their delay (use_delay's
`loss` and `jitter_ms`); a client's TCP dial of a relay address is refused. Their caps hold
on loopback: swarm.py seed --upload-limit puts every address in libtorrent's global peer
class (by default loopback is in its "local" class, which no limit applies to); check_rate()
measures it. But libtorrent's limit saves up to 3 s of unused quota (its bandwidth channel
caps the quota at 3x the limit), so a seeder idle before a fresh mount sends up to 2.1 MB at
once: the TCP relay's link holds each seeder to the same cap again (--rate), saving up no
more than LINK_SLACK while idle (the UDP relay has no link). libtorrent's limit stays: it
keeps a seeder's backlog in the seeder, where a client's cancel still reaches it, rather than
in the link.
"""

import json
import os
import random
import shutil
import socket
import subprocess
import time
import urllib.parse

from harness import PYTHON, REPO
from harness.procs import free_port, tail
from harness.swarm import SWARM, SWARM_TIMEOUT, Swarm, make_torrent, seeder_argv, \
    wait_ready_files

RELAY = os.path.join(REPO, "scripts", "delay_relay.py")
UDP_RELAY = os.path.join(REPO, "scripts", "udp_relay.py")
# opentracker forgets a peer that has not announced for about its interval (30 min).
REANNOUNCE_SECS = 600.0
# Seconds of its rate a relay link lets through at once after an idle spell: enough to
# absorb libtorrent's tick-by-tick sending (with none, the two caps in series lose ~4%).
LINK_SLACK = 0.1


def relay_ip(i):
    return "127.0.%d.1" % i


def seeder_ip(i):
    return "127.0.%d.2" % i


class ThinSwarm(Swarm):
    """opentracker, `seeders` libtorrent seeders of `file` each capped at `upload_limit`
    bytes/s, and a relay in front of them (start it with use_delay)."""

    def __init__(self, procs, work, tag, file, piece_length, seeders, upload_limit,
                 seed_mode, transport="tcp"):
        self.procs, self.work, self.tag = procs, work, tag
        self.transport = transport
        self.stats_file = os.path.join(work, "relay-%s.json" % tag)  # udp_relay.py's counters
        self.file = file
        self.name = os.path.basename(file)
        self.count, self.upload_limit = seeders, upload_limit
        data = os.path.dirname(file)
        self.torrent = os.path.join(work, "%s.torrent" % tag)
        seed_torrent = os.path.join(work, "%s-seed.torrent" % tag)
        self.http_port = free_port("127.0.0.1")
        self.info_hash = make_torrent(file, self.torrent, piece_length,
                                      ["http://127.0.0.1:%d/announce" % self.http_port])
        if make_torrent(file, seed_torrent, piece_length) != self.info_hash:
            raise RuntimeError("the tracker-less copy has another info-hash")
        self.tracker = procs.spawn(
            [PYTHON, SWARM, "tracker", "--dir", os.path.join(work, "tracker-" + tag),
             "--http-port", str(self.http_port), "--udp-port", str(free_port("127.0.0.1")),
             "--whitelist", self.info_hash], os.path.join(work, "tracker-%s.log" % tag))
        self.wait_tracker()
        self.seeders = []
        self.routes = []  # (relay (ip, port), seeder (ip, port))
        for i in range(1, seeders + 1):
            ip = seeder_ip(i)
            port = free_port(ip)
            ready = os.path.join(work, "seeder-%s%d.ready" % (tag, i))
            argv = seeder_argv(seed_torrent, data, ip, port, ready, transport) + [
                "--upload-limit", str(upload_limit)]
            if seed_mode:
                argv.append("--seed-mode")
            p = procs.spawn(argv, os.path.join(work, "seeder-%s%d.log" % (tag, i)))
            self.seeders.append((p, ready))
            self.routes.append(((relay_ip(i), free_port(relay_ip(i))), (ip, port)))
        wait_ready_files(self.seeders, time.monotonic() + SWARM_TIMEOUT,
                         lambda i: "seeder %d never became ready:\n%s" % (i, tail(
                             os.path.join(work, "seeder-%s%d.log" % (tag, i)))))
        self.relay = None
        self.delay_ms = None
        self.announced_at = None
        self.peer_id = b"-BR0001-" + bytes(random.Random(1).randrange(256) for _ in range(12))

    def use_delay(self, delay_ms, jitter_ms=0.0, loss=0.0):
        """(Re)starts the relay, now delaying each direction by `delay_ms` (uTP: plus up to
        `jitter_ms`, and losing a `loss` share of datagrams each way); the same addresses, so
        the tracker's entries stay right."""
        if self.relay is not None:
            self.procs.stop(self.relay)
        ready = os.path.join(self.work, "relay-%s.ready" % self.tag)
        if os.path.exists(ready):
            os.unlink(ready)
        logp = os.path.join(self.work, "relay-%s.log" % self.tag)
        if self.transport == "utp":
            argv = [PYTHON, UDP_RELAY, "--delay-ms", str(delay_ms), "--jitter-ms",
                    str(jitter_ms), "--loss", str(loss), "--ready-file", ready,
                    "--stats-file", self.stats_file]
        else:
            argv = [PYTHON, RELAY, "--delay-ms", str(delay_ms), "--ready-file", ready,
                    "--rate", str(self.upload_limit), "--slack-ms", str(LINK_SLACK * 1000)]
        for (lip, lport), (tip, tport) in self.routes:
            argv += ["--route", "%s:%d=%s:%d" % (lip, lport, tip, tport)]
        self.relay = self.procs.spawn(argv, logp)
        wait_ready_files([(self.relay, ready)], time.monotonic() + 30,
                         lambda _: "relay never listened:\n" + tail(logp))
        self.delay_ms = delay_ms
        if self.announced_at is None:
            self.announce("started")
            deadline = time.monotonic() + 30
            while self.scrape_complete() != self.count:
                if time.monotonic() > deadline:
                    raise RuntimeError("tracker never counted the %d relay addresses"
                                       % self.count)
                time.sleep(0.1)

    def keep_announced(self):
        """Announces the relay addresses again once REANNOUNCE_SECS have passed."""
        if time.monotonic() - self.announced_at > REANNOUNCE_SECS:
            self.announce()

    def announce(self, event=None):
        """Announces every relay address as a seed, each from its own IP (opentracker
        takes the address from the connection)."""
        for n, ((ip, port), _) in enumerate(self.routes):
            q = {"info_hash": bytes.fromhex(self.info_hash),
                 "peer_id": self.peer_id[:-1] + bytes([n]), "port": port, "uploaded": 0,
                 "downloaded": 0, "left": 0, "compact": 1, "numwant": 0}
            if event:
                q["event"] = event
            path = "/announce?" + urllib.parse.urlencode(q)
            with socket.socket() as s:
                s.settimeout(5)
                s.bind((ip, 0))
                s.connect(("127.0.0.1", self.http_port))
                s.sendall(b"GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" % path.encode())
                body = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    body += chunk
            status = body.split(b"\r\n", 1)[0].split()
            if status[1:2] != [b"200"] or b"failure reason" in body:
                raise RuntimeError("announce of %s:%d failed: %r" % (ip, port, body[:300]))
        self.announced_at = time.monotonic()

    def check_rate(self, secs):
        """A libtorrent leech through the relay for `secs` seconds: its payload rate, bytes/s
        (None if it got nothing). What a plain download gets from this swarm."""
        out = os.path.join(self.work, "rate-check")
        logp = os.path.join(self.work, "rate-check-%s.log" % self.tag)
        argv = [PYTHON, SWARM, "leech", self.torrent, out, "--bind", "127.0.0.1",
                "--timeout", str(secs)]
        for (ip, port), _ in self.routes:
            argv += ["--peer", "%s:%d" % (ip, port)]
        with open(os.path.join(self.work, "rate-check.json"), "wb") as f:
            p = self.procs.spawn(argv, logp, stdout=f)
            try:
                p.wait(secs + 60)
            except subprocess.TimeoutExpired:
                pass
            self.procs.stop(p)
        try:
            with open(os.path.join(self.work, "rate-check.json")) as f:
                summary = json.loads(f.read().strip().splitlines()[-1])
        except (OSError, ValueError, IndexError):
            raise RuntimeError("rate check printed no summary:\n" + tail(logp))
        finally:
            shutil.rmtree(out, ignore_errors=True)
        return summary.get("payload_rate")

    def stop(self):
        """Ends the relay, the seeders, then the tracker, by PID."""
        if self.relay is not None:
            self.procs.stop(self.relay)
            self.relay = None
        super().stop()

    def relay_stats(self):
        """The UDP relay's datagram counters (udp_relay.py --stats-file), {} for TCP."""
        try:
            with open(self.stats_file) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def describe(self):
        how = ("libtorrent's limit), uTP only" if self.transport == "utp"
               else "libtorrent's limit and the relay's link), TCP only")
        return ("%d seeders capped at %.0f kB/s each (%.2f MB/s in all; %s"
                % (self.count, self.upload_limit / 1e3, self.count * self.upload_limit / 1e6,
                   how))
