"""The ideal client: what a swarm delivers at best, measured on it.

A bound computed from the seeders' caps assumes each sends at its cap from the first byte.
Real seeders do not: a capped libtorrent seeder gives a new connection about half its cap in
its first second (scripts/seeder_ramp.py). So the thin-swarm bench also measures, on the
same swarm and just before the clients, a raw client that no real one can beat: it connects
to every seeder, waits until each has unchoked it, and only then starts the clock and asks
for the blocks of the pieces a read needs, QUEUE in flight at each, the last ones spread
over every connection (endgame); it verifies nothing. Its time, from the first request to
the last block, is what the swarm allows for those pieces (a client that connected as the
mount came up, before the read, has no more to wait for).
"""

import socket
import struct
import threading
import time

BLOCK = 16384
QUEUE = 16
TIMEOUT = 60.0


class _Fetch:
    """The blocks still wanted, shared by every connection."""

    def __init__(self, blocks):
        self.lock = threading.Lock()
        self.todo = list(reversed(blocks))  # pop() takes the first needed
        self.asked = {}  # block -> connections that asked for it
        self.done = set()
        self.total = len(blocks)
        self.finished = threading.Event()
        self.last = None
        self.socks = []
        self.unchoked = 0
        self.ready = threading.Event()  # every connection unchoked (or gave up)
        self.go = threading.Event()  # the clock runs: ask
        self.waiting = 0  # connections still to unchoke or fail

    def take(self, conn):
        """The next block for `conn`: a fresh one, else (endgame) one asked of others only."""
        with self.lock:
            if self.todo:
                b = self.todo.pop()
                self.asked[b] = {conn}
                return b
            spare = [b for b, who in self.asked.items()
                     if b not in self.done and conn not in who]
            if not spare:
                return None
            b = min(spare, key=lambda b: len(self.asked[b]))
            self.asked[b].add(conn)
            return b

    def got(self, block):
        with self.lock:
            if block in self.done:
                return
            self.done.add(block)
            if len(self.done) == self.total:
                self.last = time.monotonic()
                self.finished.set()


def _recv_exact(s, n):
    b = bytearray()
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise ConnectionError("the seeder closed the connection")
        b += c
    return bytes(b)


def _settled(fetch, unchoked):
    """One connection is unchoked (or failed): when all are, the clock may start."""
    with fetch.lock:
        fetch.unchoked += unchoked
        fetch.waiting -= 1
        if fetch.waiting == 0:
            fetch.ready.set()


def _connection(addr, info_hash, peer_id, fetch, piece_len, size, errors):
    settled = False
    try:
        s = socket.create_connection(addr, timeout=TIMEOUT)
    except OSError as e:
        errors.append("%s: %s" % (addr, e))
        _settled(fetch, 0)
        return
    with fetch.lock:
        fetch.socks.append(s)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"\x13BitTorrent protocol" + bytes(8) + info_hash + peer_id)
        _recv_exact(s, 68)
        s.sendall(struct.pack(">IB", 1, 2))  # interested
        choked, in_flight = True, 0
        while not fetch.finished.is_set():
            if not choked and not settled:
                settled = True
                _settled(fetch, 1)
                fetch.go.wait(TIMEOUT)
            while not choked and in_flight < QUEUE:
                b = fetch.take(addr)
                if b is None:
                    break
                piece, begin = b
                length = min(BLOCK, min(piece_len, size - piece * piece_len) - begin)
                s.sendall(struct.pack(">IBIII", 13, 6, piece, begin, length))
                in_flight += 1
            n = struct.unpack(">I", _recv_exact(s, 4))[0]
            if n == 0:
                continue
            body = _recv_exact(s, n)
            kind = body[0]
            if kind == 1:
                choked = False
            elif kind == 0:
                choked = True
            elif kind == 7:
                piece, begin = struct.unpack(">II", body[1:9])
                fetch.got((piece, begin))
                in_flight -= 1
    except (OSError, ConnectionError) as e:
        if not fetch.finished.is_set():
            errors.append("%s: %s" % (addr, e))
    finally:
        if not settled:
            _settled(fetch, 0)
        s.close()


def fetch_time(addrs, info_hash, pieces, piece_len, size, peer_id=b"-ID0001-000000000000"):
    """Seconds from the first request (every connection to `addrs` open and unchoked) until
    every block of `pieces` (in order) arrived; raises if it did not finish within TIMEOUT
    or a seeder never unchoked."""
    blocks = []
    for p in pieces:
        plen = min(piece_len, size - p * piece_len)
        blocks += [(p, o) for o in range(0, plen, BLOCK)]
    fetch = _Fetch(blocks)
    fetch.waiting = len(addrs)
    errors = []
    threads = [threading.Thread(target=_connection, daemon=True,
                                args=(a, info_hash, peer_id[:12] + b"%08d" % i, fetch,
                                      piece_len, size, errors))
               for i, a in enumerate(addrs)]
    for t in threads:
        t.start()
    fetch.ready.wait(TIMEOUT)
    if fetch.unchoked < len(addrs):
        errors.append("only %d of %d seeders unchoked" % (fetch.unchoked, len(addrs)))
    start = time.monotonic()
    fetch.go.set()
    fetch.finished.wait(TIMEOUT)
    fetch.finished.set()
    with fetch.lock:
        for s in fetch.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv
            except OSError:
                pass
    for t in threads:
        t.join(5)
    if fetch.last is None or fetch.unchoked < len(addrs):
        raise RuntimeError("the ideal client did not get its pieces: %s" % "; ".join(errors))
    return fetch.last - start
