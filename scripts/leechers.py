#!/usr/bin/python3
"""A crowd of leechers in one process, for memory tests: N connections to one peer that
download from it over and over, as fast as it lets them.

    scripts/leechers.py HOST:PORT INFO_HASH_HEX --pieces N --piece-length L --total T
                        [--count 80] [--ready-file F]

Each connection speaks BEP 3 with the Fast extension (BEP 6), says it has nothing
(`have_none`), is interested, and keeps up to 64 block requests in flight for pieces the
peer says it has, starting over once it has asked for all of them. Rejected and unanswered
requests are asked again later. Prints one line a second: connections up, bytes received.
Runs until killed (SIGTERM/SIGINT end it cleanly). Python 3 stdlib only.
"""

import argparse
import asyncio
import signal
import struct
import sys

BLOCK = 16 * 1024
IN_FLIGHT = 64


class Leecher:
    def __init__(self, args, stats, n):
        self.args, self.stats, self.n = args, stats, n
        self.told = set()
        self.next = 0
        self.outstanding = set()

    def blocks(self, piece):
        last = self.args.pieces - 1
        length = self.args.piece_length if piece < last else (
            self.args.total - last * self.args.piece_length)
        return [(piece, b, min(BLOCK, length - b)) for b in range(0, length, BLOCK)]

    async def run(self, host, port):
        reader, writer = await asyncio.open_connection(host, port)
        reserved = bytearray(8)
        reserved[7] |= 0x04  # Fast
        peer_id = b"-LC0001-" + (b"%012d" % self.n)
        writer.write(bytes([19]) + b"BitTorrent protocol" + bytes(reserved)
                     + bytes.fromhex(self.args.info_hash) + peer_id)
        await reader.readexactly(68)
        writer.write(struct.pack(">IB", 1, 0x0F) + struct.pack(">IB", 1, 2))  # have_none, interested
        await writer.drain()
        self.stats["up"] += 1
        unchoked = False
        try:
            while True:
                (length,) = struct.unpack(">I", await reader.readexactly(4))
                if length == 0:
                    continue
                body = await reader.readexactly(length)
                kind = body[0]
                if kind == 1:
                    unchoked = True
                elif kind == 0:
                    unchoked = False
                    self.outstanding.clear()
                elif kind == 4:
                    self.told.add(struct.unpack(">I", body[1:5])[0])
                elif kind == 5:
                    for i, byte in enumerate(body[1:]):
                        for bit in range(8):
                            if byte & (0x80 >> bit):
                                self.told.add(i * 8 + bit)
                elif kind == 0x0E:  # have_all
                    self.told.update(range(self.args.pieces))
                elif kind == 7:
                    piece, begin = struct.unpack(">II", body[1:9])
                    self.outstanding.discard((piece, begin))
                    self.stats["bytes"] += length - 9
                elif kind == 0x10:  # reject_request
                    piece, begin, _ = struct.unpack(">III", body[1:13])
                    self.outstanding.discard((piece, begin))
                if unchoked:
                    self.request_more(writer)
                    await writer.drain()
        finally:
            self.stats["up"] -= 1
            writer.close()

    def request_more(self, writer):
        told = sorted(self.told)
        if not told:
            return
        while len(self.outstanding) < IN_FLIGHT:
            piece = told[self.next % len(told)]
            self.next += 1
            for p, begin, length in self.blocks(piece):
                if len(self.outstanding) >= IN_FLIGHT:
                    break
                if (p, begin) not in self.outstanding:
                    self.outstanding.add((p, begin))
                    writer.write(struct.pack(">IBIII", 13, 6, p, begin, length))


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("peer")
    p.add_argument("info_hash")
    p.add_argument("--pieces", type=int, required=True)
    p.add_argument("--piece-length", type=int, required=True)
    p.add_argument("--total", type=int, required=True)
    p.add_argument("--count", type=int, default=80)
    p.add_argument("--ready-file")
    args = p.parse_args()
    host, port = args.peer.rsplit(":", 1)
    stats = {"up": 0, "bytes": 0}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(Leecher(args, stats, i).run(host, int(port)))
             for i in range(args.count)]
    ready = False
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
        print("up %d bytes %d" % (stats["up"], stats["bytes"]), flush=True)
        if not ready and stats["up"] > 0 and args.ready_file:
            open(args.ready_file, "w").close()
            ready = True
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
