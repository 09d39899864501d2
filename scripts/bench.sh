#!/usr/bin/env bash
# Compares btfs with Debian's btfs (C++, libtorrent) on the same local swarms: three
# libtorrent seeders on 127.0.{1,2,3}.1 behind a local opentracker (a file, then an mp4 that
# mpv plays), then a tracker-less DHT swarm for a magnet link, then a torrent served only by
# a web seed (nginx, BEP 19; the same file over TCP as the CPU yardstick), then seeders that
# require encryption, then seeders that speak only uTP (and ours' CPU per byte there against
# TCP), all on loopback, in a private network namespace. Every cold measurement runs on a
# fresh mount; prints a table of medians, ratios (ratio > 1: ours is better), targets and
# PASS/FAIL. Options go to scripts/bench/all.py (see --help), e.g.
#   scripts/bench.sh --runs 3 --json /tmp/bench.json
# Each part runs alone too: scripts/bench/{file,video,magnet,webseed,encryption,utp}.py (after
# a build). A seventh part, thin (scripts/bench/thin.py), runs only with --with thin (15-20
# min): seeders with capped uplinks behind a relay that adds latency, each client's first
# byte, seek, mpv first frames and stalls against the bandwidth bound.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
-h | --help) exec /usr/bin/python3 scripts/bench/all.py --help ;;
esac

# Setup first: it installs what the build links against (libssl-dev) and Debian's btfs.
if [ -x scripts/setup.sh ]; then
    scripts/setup.sh
fi
cargo build --release

# all.py re-runs itself in a network namespace that has only loopback (harness/netns.py).
exec /usr/bin/python3 scripts/bench/all.py "$@"
