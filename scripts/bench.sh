#!/usr/bin/env bash
# Compares btfs with Debian's btfs (C++, libtorrent) on the same local swarms: three
# libtorrent seeders on 127.0.{1,2,3}.1 behind a local opentracker (a file, then an mp4 that
# mpv plays), then a tracker-less DHT swarm for a magnet link, all on loopback.
# Every cold measurement runs on a fresh mount; prints a table of medians, ratios
# (ratio > 1: ours is better), targets and PASS/FAIL. Options go to scripts/bench.py
# (see --help), e.g.
#   scripts/bench.sh --runs 3 --json /tmp/bench.json
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
-h | --help) exec /usr/bin/python3 scripts/bench.py --help ;;
esac

# Setup first: it installs what the build links against (libssl-dev) and Debian's btfs.
if [ -x scripts/setup.sh ]; then
    scripts/setup.sh
fi
cargo build --release

# Debian's btfs listens on 0.0.0.0 and bootstraps its DHT from public routers; run the whole
# bench (tracker, seeders, both clients) in a private network namespace that has only
# loopback, so nothing leaves the machine. BTFS_BENCH_NETNS=0 runs it in the host's.
if [ "${BTFS_BENCH_NETNS:-1}" != 0 ] && unshare --net -- true 2>/dev/null; then
    # `exec` at each step: python keeps this PID, so signals reach it directly.
    exec unshare --net -- sh -c 'ip link set lo up && exec /usr/bin/python3 scripts/bench.py "$@"' \
        bench "$@"
fi
echo "bench.sh: no private network namespace (needs root); Debian's btfs may reach out" >&2
exec /usr/bin/python3 scripts/bench.py "$@"
