"""The shared harness of btfs's Python scripts: Python 3 stdlib only, run by Debian's
/usr/bin/python3 (which has the libtorrent module scripts/swarm.py needs).

  procs    processes we start, each ended by its PID; signals; free ports; VmHWM; CPU time
  mount    FUSE mounts: ready when /proc/self/mountinfo lists them, status xattr, unmount
  swarm    opentracker + libtorrent seeders of one file (scripts/swarm.py)
  thinswarm  the same with capped uplinks, behind a relay that adds latency
  bound    bandwidth bounds: the pieces a read or a player needs, over the swarm's rate
  dht      a tracker-less swarm on libtorrent DHT nodes (scripts/dht_nodes.py)
  web      nginx serving a folder: a web seed (BEP 19)
  netns    re-running a script in a private, loopback-only network namespace
  torrent  bencode, for torrents made by hand
  measure  the benchmark's clients, one fresh mount per measurement, reads that may hang
  report   the benchmark's table: medians, ratios, targets, PASS/FAIL; --json
  cli      the benchmark's options and main(): work dir, Ctrl-C, cleanup, report

A script outside this folder puts the folder's parent on sys.path first.
"""

import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OURS = "target/release/btfs"  # relative to the repo root, never a bare `btfs`
DEBIAN = "/usr/bin/btfs"
PYTHON = "/usr/bin/python3"  # Debian's, with the libtorrent module
MiB = 1 << 20
