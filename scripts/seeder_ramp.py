#!/usr/bin/python3
"""How fast a rate-capped libtorrent seeder delivers from the first request, to a raw client
that keeps Q requests in flight: what any client, ours included, can get from a fresh
connection (the thin-swarm bench's bound assumes the cap from the first byte).

    scripts/seeder_ramp.py [--limit 700000] [--queues 8,32] [--mib 2]

Starts one seeder (scripts/swarm.py, capped like the bench's, on 127.0.9.1), connects a new
TCP connection per queue depth, asks for --mib MiB in 16 KiB blocks, and prints the bytes
delivered by each time mark. Everything it starts is ended by PID and removed on exit.
"""

import argparse
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWARM = [os.path.join(REPO, "scripts", "swarm.py")]
PYTHON = "/usr/bin/python3.11" if os.path.exists("/usr/bin/python3.11") else "/usr/bin/python3"
BLOCK = 16384
MARKS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def swarm(*args):
    return subprocess.run([PYTHON] + SWARM + list(args), check=True, capture_output=True,
                          text=True).stdout.strip()


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise SystemExit("the seeder closed the connection")
        b += c
    return b


def message(s):
    n = struct.unpack(">I", recv_exact(s, 4))[0]
    return (None, b"") if n == 0 else (lambda d: (d[0], d[1:]))(recv_exact(s, n))


def probe(addr, info_hash, queue, blocks):
    """Times (s after the unchoke) at which each block arrived, `queue` kept in flight."""
    s = socket.create_connection(addr, timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"\x13BitTorrent protocol" + bytes(8) + info_hash + b"-RP0001-000000000000")
    recv_exact(s, 68)
    s.sendall(struct.pack(">IB", 1, 2))  # interested
    while message(s)[0] != 1:  # unchoke
        pass
    t0, asked, in_flight, arrivals = time.monotonic(), 0, 0, []
    while len(arrivals) < len(blocks):
        while in_flight < queue and asked < len(blocks):
            piece, begin = blocks[asked]
            s.sendall(struct.pack(">IBIII", 13, 6, piece, begin, BLOCK))
            asked, in_flight = asked + 1, in_flight + 1
        if message(s)[0] == 7:
            arrivals.append(time.monotonic() - t0)
            in_flight -= 1
    s.close()
    return arrivals


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, default=700_000, help="seeder's upload cap, B/s")
    p.add_argument("--queues", default="8,32", help="queue depths to try")
    p.add_argument("--mib", type=int, default=2, help="MiB asked for per connection")
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="btfs-ramp-")
    seeder = None
    try:
        data = os.path.join(work, "data")
        swarm("make-data", "--layout", "single", "--seed", "3", "--size",
              str(args.mib * len(args.queues.split(",")) << 20), data)
        torrent = os.path.join(work, "t.torrent")
        swarm("make-torrent", "--piece-length", str(1 << 20), os.path.join(data, "single.bin"),
              torrent)
        info_hash = bytes.fromhex(swarm("info-hash", torrent))
        ready = os.path.join(work, "ready")
        addr = ("127.0.9.1", 7711)
        seeder = subprocess.Popen(
            [PYTHON] + SWARM + ["seed", "--bind", addr[0], "--port", str(addr[1]),
                                "--upload-limit", str(args.limit), "--no-wait-announce",
                                "--ready-file", ready, torrent, data],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "seeder.log"), "w"))
        deadline = time.monotonic() + 60
        while not os.path.exists(ready):
            if seeder.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the seeder did not start")
            time.sleep(0.1)
        per = args.mib << 20
        print("libtorrent seeder capped at %d B/s; a raw client asks %d MiB per connection"
              % (args.limit, args.mib))
        print("queue | " + " | ".join("%10s" % ("%.2f s" % t) for t in MARKS) + " | all")
        for i, q in enumerate(int(x) for x in args.queues.split(",")):
            # Fresh pieces for each connection (a piece read once may be cached).
            first = i * args.mib
            blocks = [(first + o // (1 << 20), o % (1 << 20)) for o in range(0, per, BLOCK)]
            arrivals = probe(addr, info_hash, q, blocks)
            cells = []
            for t in MARKS:
                n = sum(1 for a in arrivals if a <= t) * BLOCK
                cells.append("%10s" % ("%.0f KB/s" % (n / t / 1000)))
            print("%5d | %s | %.2f s" % (q, " | ".join(cells), arrivals[-1]))
            time.sleep(4)  # the limiter's state settles between connections
        print("(average delivery rate from the unchoke up to each mark)")
    finally:
        if seeder is not None and seeder.poll() is None:
            seeder.terminate()
            try:
                seeder.wait(10)
            except subprocess.TimeoutExpired:
                seeder.kill()
                seeder.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
