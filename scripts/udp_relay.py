#!/usr/bin/python3
"""A UDP relay that delays, reorders and loses datagrams: what `netem delay J loss P` would do
to uTP, for a kernel without netem.

    udp_relay.py --delay-ms 30 [--jitter-ms 10] [--loss 0.02] [--seed 1]
                 --route 127.0.101.1:7001=127.0.1.1:6881 [--route ...]
                 [--ready-file F] [--stats-file F]

Listens on each route's first address. Every client address that sends there gets its own
socket towards the route's second address (bound to the listening IP, so the target sees
the relay's address, one per client): datagrams go on that way, and the target's answers
come back to the client from the listening address. Each datagram, either way, is dropped
with probability --loss, else sent on after --delay-ms plus a uniform 0..--jitter-ms, but
never before the one that came before it on its way: a path's delay varies, its order
mostly does not (a jitter that reordered every datagram it exceeded the gap of would be
read by uTP senders as loss, over and over; losses reorder enough: what follows a lost
datagram arrives before its resend). The drops come from a generator seeded with --seed.

Python 3 stdlib (asyncio) only. Writes F ("LISTEN=TARGET" lines) once every route listens.
--stats-file gets a JSON object of datagrams forwarded and dropped each way ("to_target",
"to_client", "dropped_to_target", "dropped_to_client"), rewritten every 0.2 s and on exit.
Runs until SIGTERM/SIGINT.
"""

import argparse
import asyncio
import json
import os
import random
import signal
import socket


def addr(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class Link:
    """The path's behaviour: loss, delay and jitter, with counters by direction."""

    def __init__(self, args):
        self.loop = asyncio.get_running_loop()
        self.delay = args.delay_ms / 1000.0
        self.jitter = args.jitter_ms / 1000.0
        self.loss = args.loss
        self.rng = random.Random(args.seed)
        self.stats = {"to_target": 0, "to_client": 0,
                      "dropped_to_target": 0, "dropped_to_client": 0}
        self.last_due = {}  # (way, client) -> when its latest datagram leaves

    def pass_on(self, way, client, send):
        """Calls `send()` later, unless the datagram is lost; `way` names the direction, and
        with `client` the FIFO it keeps its place in."""
        if self.rng.random() < self.loss:
            self.stats["dropped_" + way] += 1
            return
        self.stats[way] += 1
        due = self.loop.time() + self.delay + self.rng.random() * self.jitter
        due = max(due, self.last_due.get((way, client), 0.0))
        self.last_due[(way, client)] = due
        self.loop.call_at(due, send)


class Upstream(asyncio.DatagramProtocol):
    """One client's socket towards the target: what comes back goes to that client."""

    def __init__(self, link, listener, client):
        self.link, self.listener, self.client = link, listener, client
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, _from):
        listener, client = self.listener, self.client
        self.link.pass_on("to_client", client, lambda: listener.send_to_client(data, client))

    def error_received(self, exc):
        pass  # an ICMP error for an earlier datagram: the path loses it, nothing more


class Listener(asyncio.DatagramProtocol):
    """A route's listening socket: datagrams from clients go on to the target."""

    def __init__(self, link, target):
        self.link, self.target = link, target
        self.transport = None
        self.upstreams = {}  # client address -> Upstream (or a future of one)

    def connection_made(self, transport):
        self.transport = transport

    def send_to_client(self, data, client):
        if not self.transport.is_closing():
            self.transport.sendto(data, client)

    def datagram_received(self, data, client):
        self.link.pass_on("to_target", client, lambda: self.forward(data, client))

    def forward(self, data, client):
        up = self.upstreams.get(client)
        if isinstance(up, Upstream):
            if not up.transport.is_closing():
                up.transport.sendto(data, self.target)
            return
        pending = up if up is not None else []
        pending.append(data)
        if up is None:
            self.upstreams[client] = pending
            asyncio.ensure_future(self.open_upstream(client))

    async def open_upstream(self, client):
        ip = self.transport.get_extra_info("sockname")[0]
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        _, up = await self.link.loop.create_datagram_endpoint(
            lambda: Upstream(self.link, self, client), local_addr=(ip, 0), family=family)
        pending = self.upstreams[client]
        self.upstreams[client] = up
        for data in pending:
            up.transport.sendto(data, self.target)


def write_stats(path, stats):
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(stats, f)
        os.replace(tmp, path)


async def main(args):
    link = Link(args)
    listeners = []
    for route in args.route:
        listen, _, target = route.partition("=")
        host, port = addr(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        transport, _ = await link.loop.create_datagram_endpoint(
            lambda t=addr(target): Listener(link, t), local_addr=(host, port), family=family)
        listeners.append(transport)
    if args.ready_file:
        with open(args.ready_file + ".tmp", "w") as f:
            f.write("".join(r + "\n" for r in args.route))
        os.replace(args.ready_file + ".tmp", args.ready_file)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        link.loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        write_stats(args.stats_file, link.stats)
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except asyncio.TimeoutError:
            pass
    write_stats(args.stats_file, link.stats)
    for t in listeners:
        t.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--loss", type=float, default=0.0, help="probability a datagram is lost")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--route", action="append", required=True, help="LISTEN=TARGET")
    p.add_argument("--ready-file")
    p.add_argument("--stats-file")
    a = p.parse_args()
    if not 0.0 <= a.loss < 1.0:
        p.error("--loss must be in [0, 1)")
    asyncio.run(main(a))
