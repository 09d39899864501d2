#!/usr/bin/python3
"""Benchmark part `webseed`: a torrent whose only source is a web seed; ours and Debian's.

The swarm: one file of --webseed-size bytes served by Debian's nginx on 127.0.0.1 (sendfile,
keep-alive), named in the torrent's url-list (BEP 19); no tracker, no peer. For the CPU
yardstick, the same file from a plain TCP swarm: three libtorrent seeders behind opentracker,
as in the `file` part. Per client and per run, each on a fresh mount:
  ws_ttfb    open the file and os.read 1 byte; mount ready -> byte returned
  ws_seq     once the client has settled (no CPU for 0.2 s), read the whole file in 1 MiB
             chunks with sha1 (checked); MB/s
  ws_cpu     the client's CPU time (utime + stime of its process, /proc/PID/stat) over that
             read, in ms per MB read
  tcp_seq    the same read from the TCP swarm; tcp_cpu its CPU time, ms per MB
Targets: ws_seq at least Debian's rate; ours' ws_cpu within 1.5x of ours' tcp_cpu.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness import MiB
from harness.cli import run_alone
from harness.measure import cold_read, file_sha1, first_byte
from harness.mount import Target
from harness.procs import log
from harness.report import parse_size
from harness.swarm import SEEDER_IPS, Swarm, make_data, make_torrent
from harness.web import NGINX, Nginx

NAME = "webseed"
HELP = "web-seed-only first byte, sequential, CPU per byte"
TOOLS = [NGINX]


def add_options(p):
    p.add_argument("--webseed-size", type=parse_size, default=256 * MiB,
                   help="the web-seeded file's size (256M)")


def check(args, p):
    if args.webseed_size < 2 * MiB:
        p.error("--webseed-size >= 2M")


def ttfb(bench, client, target):
    def fn(m):
        bench.record(client, "ws_ttfb", first_byte(m, bench.args.read_timeout) - m.ready_at)
    bench.measure(client, "ws_ttfb", fn, target)


def seq_cpu(bench, client, target, sha1, size, rate_key, cpu_key):
    """Fresh mount; once the client has settled, the whole file read with sha1: MB/s and the
    client's CPU ms per MB."""
    def fn(m):
        cold_read(bench, client, m, size, sha1, rate_key, cpu_key)
        st = m.status()
        if st and rate_key == "ws_seq":
            bench.notes[client].append("after ws_seq: " + ", ".join(
                "%s=%s" % (k, st[k]) for k in sorted(st)
                if k in ("downloaded_bytes", "peers", "hash_failures", "web_seed")))
    bench.measure(client, rate_key, fn, target)


def run(bench):
    args = bench.args
    data = os.path.join(bench.work, "ws-data")
    file = make_data(data, "single", args.seed, args.webseed_size, "webseed.bin")
    size = os.path.getsize(file)
    bench.webseed_size = size
    sha1 = file_sha1(file)
    nginx = Nginx(bench.procs, bench.work, "webseed", data)
    torrent = os.path.join(bench.work, "webseed.torrent")
    make_torrent(file, torrent, args.piece_length, web_seeds=[nginx.url])
    web = Target(torrent, os.path.basename(file))
    log("web seed ready: nginx at %s" % nginx.url)
    tcp = Swarm(bench.procs, bench.work, "wstcp", data, file, args.piece_length,
                args.seed_mode)
    log("TCP swarm ready: tracker 127.0.0.1:%d, seeders %s" % (tcp.http_port, SEEDER_IPS))
    for r, client in bench.order():
        log("run %d/%d: %s: web seed first byte, sequential; TCP sequential"
            % (r + 1, args.runs, client))
        ttfb(bench, client, web)
        seq_cpu(bench, client, web, sha1, size, "ws_seq", "ws_cpu")
        seq_cpu(bench, client, tcp, sha1, size, "tcp_seq", "tcp_cpu")
        bench.log_results(client, "ws_")
        bench.log_results(client, "tcp_")
    tcp.stop()
    nginx.stop()


if __name__ == "__main__":
    run_alone(sys.modules[__name__])
