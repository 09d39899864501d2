#!/usr/bin/python3
"""Benchmark part `magnet`: a bare magnet link's first byte, the DHT its only way to peers.

The swarm, with no tracker: libtorrent DHT nodes (scripts/dht_nodes.py) on 127.0.0.10.. and two
seeders in DHT mode that announced a multi-file torrent there; ours mounts a bare magnet link
with --dht-bootstrap of one node. Only in a loopback-only network namespace. Debian's btfs
cannot join it (see its note), so this part measures ours only. Per run:
  magnet     spawn `btfs mount magnet:...` -> first byte of the torrent's largest file
             (magnet_meta: spawn -> that file stat()s, i.e. metadata fetched and mounted).
             Runs after the first meet the earlier mounts' dead DHT nodes and peer
             addresses, as a client does on the public DHT.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness import MiB
from harness.cli import run_alone
from harness.dht import DhtWorld
from harness.measure import first_byte
from harness.mount import Client, Target
from harness.netns import loopback_only
from harness.procs import log
from harness.report import parse_size
from harness.swarm import make_data

NAME = "magnet"
HELP = "DHT-only magnet first byte"
TOOLS = []


def add_options(p):
    p.add_argument("--magnet-size", type=parse_size, default=64 * MiB,
                   help="the magnet torrent's largest file (64M)")


def check(args, p):
    pass


def magnet_clients(args, clients, bootstrap):
    """Our client for a magnet link in the DHT-only swarm, bootstrapped from the DHT node
    `bootstrap` only (it learns the others through it), with cold state."""
    def ours(magnet, mnt, scratch):
        return clients["ours"].argv(magnet, mnt, scratch) + [
            "--dht-bootstrap", bootstrap, "--dht-state", os.path.join(scratch, "dht.state"),
            "--metadata-cache", os.path.join(scratch, "metadata"),
            "--metadata-timeout", str(int(args.read_timeout))]

    return {"ours": Client("ours", ours, "fusermount3", clients["ours"].env)}


def magnet(bench, client, clients, target):
    """Fresh mount of a bare magnet link: seconds from spawning the client to the first
    byte of the torrent's largest file, with the DHT its only way to peers."""
    def fn(m):
        t = first_byte(m, bench.args.read_timeout)
        bench.record(client, "magnet_meta", m.ready_s)
        bench.record(client, "magnet", m.ready_s + (t - m.ready_at))
    bench.measure(client, "magnet", fn, target, clients, bench.args.read_timeout,
                  ready_metric=None)


def run(bench):
    a = bench.args
    if not loopback_only():
        bench.notes["bench"].append(
            "magnet: skipped, not in a loopback-only network namespace (run bench.sh "
            "as root): DHT nodes would talk to whatever addresses they learn")
        return
    if not a.only or "debian" in a.only:
        bench.notes["debian"].append(
            "magnet: not run: it cannot join a loopback-only DHT. It has no DHT bootstrap "
            "option (a magnet's dht=HOST:PORT would do), but it listens on 0.0.0.0 (no bind "
            "option) and libtorrent opens no DHT socket on loopback when it expands 0.0.0.0 "
            "(tried with libtorrent 2.0 in this namespace: 0 DHT nodes; bound to 127.0.0.1 "
            "instead, it joins). Outside a private namespace it would reach the internet.")
    if a.only and "ours" not in a.only:
        return
    data = os.path.join(bench.work, "dhtdata")
    root = make_data(data, "multi", a.seed + 1, a.magnet_size, "multi")
    files = []
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            full = os.path.join(dirpath, n)
            files.append((os.path.getsize(full), os.path.relpath(full, data)))
    largest = max(files)[1]
    world = DhtWorld(bench.procs, bench.work, data, root)
    log("DHT swarm ready: nodes %s, seeders %s; largest file %r"
        % (world.addrs, [s[0] for s in world.seeders], largest))
    target = Target("magnet:?xt=urn:btih:%s&dn=multi" % world.info_hash, largest)
    clients = magnet_clients(a, bench.clients, world.addrs[0])
    for r, client in bench.order():
        if client == "debian":
            continue
        log("run %d/%d: %s: magnet -> first byte" % (r + 1, a.runs, client))
        magnet(bench, client, clients, target)
        bench.log_results(client, "magnet")
    world.stop()


if __name__ == "__main__":
    run_alone(sys.modules[__name__])
