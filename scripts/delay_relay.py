#!/usr/bin/python3
"""A TCP relay that adds latency, and optionally a link rate: what `netem delay` (and a slow
uplink) would do, for a kernel without netem.

    delay_relay.py --delay-ms 50 [--rate B/s] --route 127.0.1.1:7001=127.0.1.2:6881
                   [--route ...] [--ready-file F]

Listens on each route's first address and, for every connection accepted there, connects to
its second address and forwards bytes both ways, each byte held --delay-ms after it arrived
before it is sent on (so a request and its answer take two delays: a round trip). Order is
kept: one FIFO per direction, every slice due no earlier than the one before it. An end of
stream (or a reset) on one side is passed on after the same delay, then both sides close.
TCP's own handshake is not delayed (the kernel answers it before the relay sees the
connection): a connection costs no round trip here, every byte over it does.

--rate: the bytes coming back from a route's target (its uplink) pass a link of this rate
first, one link per route shared by all its connections, then the delay. The link is a
virtual clock, not a token bucket: it never saves up unused time, so an idle sender gets no
burst (libtorrent's own upload limit saves up to 3 s of quota while idle). Bytes wait in
the link's FIFO as they would in a modem's buffer.

Python 3 stdlib (asyncio) only. Writes F ("LISTEN=TARGET" lines) once every route listens;
runs until SIGTERM/SIGINT. Logs one line per connection closed, with its bytes each way.
"""

import argparse
import asyncio
import os
import signal
import sys
import time

CHUNK = 64 * 1024
# The link's unit: a BitTorrent block; a slice leaves the link when its last byte has.
SLICE = 16 * 1024
# Slices held per direction before the relay stops reading (TCP then pushes back on the
# sender): 4 MiB, far more than rate x delay on any link this emulates.
QUEUE_SLICES = 256


def log(msg):
    sys.stderr.write("[relay %s %d] %s\n" % (time.strftime("%H:%M:%S"), os.getpid(), msg))
    sys.stderr.flush()


def parse_addr(s):
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("not IP:PORT: %r" % s)
    return host, int(port)


def parse_route(s):
    listen, sep, target = s.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError("not LISTEN=TARGET: %r" % s)
    return parse_addr(listen), parse_addr(target)


class Link:
    """A link of `rate` bytes/s (None: unlimited) that lets through at most `slack` seconds'
    worth at once after an idle spell: when bytes handed to it now have left."""

    def __init__(self, rate, slack=0.0):
        self.rate, self.slack = rate, slack
        self.free_at = 0.0  # when the link has sent everything handed to it

    def send(self, now, n):
        if not self.rate:
            return now
        self.free_at = max(self.free_at, now - self.slack) + n / self.rate
        return max(self.free_at, now)


async def pump(reader, writer, delay, link, counter):
    """Copies reader -> writer, each slice sent `delay` s after it left `link`. Returns at
    the end of stream (or when either side fails)."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue(QUEUE_SLICES)

    async def receive():
        while True:
            try:
                data = await reader.read(CHUNK)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                await queue.put((loop.time() + delay, data))
                return
            for i in range(0, len(data), SLICE):
                piece = data[i:i + SLICE]
                await queue.put((link.send(loop.time(), len(piece)) + delay, piece))

    async def send():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                return
            writer.write(data)
            counter[0] += len(data)
            await writer.drain()

    rx = asyncio.ensure_future(receive())
    try:
        await send()
    except (ConnectionError, OSError):
        pass  # the other side went away: the connection ends
    finally:
        rx.cancel()


async def relay(client_r, client_w, target, delay, link):
    peer = client_w.get_extra_info("peername")
    up = [0]
    down = [0]
    try:
        server_r, server_w = await asyncio.open_connection(*target)
    except OSError as e:
        log("%s -> %s:%d: connect failed: %s" % (peer, target[0], target[1], e))
        client_w.close()
        return
    t0 = time.monotonic()
    tasks = [asyncio.ensure_future(pump(client_r, server_w, delay, Link(None), up)),
             asyncio.ensure_future(pump(server_r, client_w, delay, link, down))]
    try:
        # Either direction ending (a close or a reset) ends the connection.
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for w in (client_w, server_w):
            w.close()
    log("%s -> %s:%d closed after %.1f s: %d bytes up, %d down"
        % (peer, target[0], target[1], time.monotonic() - t0, up[0], down[0]))


async def serve(args):
    delay = args.delay_ms / 1000.0
    servers = []
    for listen, target in args.route:
        def handler(r, w, target=target, link=Link(args.rate, args.slack_ms / 1000.0)):
            return relay(r, w, target, delay, link)
        servers.append(await asyncio.start_server(handler, listen[0], listen[1],
                                                  reuse_address=True))
        log("%s:%d -> %s:%d, %g ms each way, back at %s" % (
            listen + target + (args.delay_ms, "%d B/s" % args.rate if args.rate else "any rate")))
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("".join("%s:%d=%s:%d\n" % (l + t) for l, t in args.route))
        os.rename(tmp, args.ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        s.close()
    log("stopped")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--route", type=parse_route, action="append", required=True,
                   help="LISTEN_IP:PORT=TARGET_IP:PORT (repeatable)")
    p.add_argument("--delay-ms", type=float, default=50.0,
                   help="delay of each direction, milliseconds (50; 0 relays at once)")
    p.add_argument("--rate", type=int, default=0,
                   help="bytes/s of each route's link back from its target (0: unlimited)")
    p.add_argument("--slack-ms", type=float, default=0.0,
                   help="--rate: time the link may save up while idle, ms (0: none)")
    p.add_argument("--ready-file", help="written once every route listens")
    args = p.parse_args()
    if args.delay_ms < 0 or args.rate < 0:
        p.error("--delay-ms and --rate >= 0")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
