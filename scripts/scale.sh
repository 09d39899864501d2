#!/usr/bin/env bash
# The scale benchmark (issue 12): CPU per verified piece with 1,000,000 pieces and 500 peers
# (fake peers in-process, serving zeros: the session's own cost, not the network's), then
# mount and list times and peak RSS for a torrent of 100,000 files and one of 1,000,000
# pieces (scripts/bounds.py). Numbers only; the tests check correctness.
#   scripts/scale.sh                 # both
#   BTFS_SCALE_PIECES=100000 BTFS_SCALE_PEERS=200 BTFS_SCALE_EMPTY=100 scripts/scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
# 500 peer connections and their listeners, both ends in this process.
ulimit -n 4096 2>/dev/null || true
cargo test --release --lib -- --ignored --nocapture scale_cpu_per_verified_piece 2>&1 |
    grep -E '^scale:|panicked|FAILED' || true
/usr/bin/python3 scripts/bounds.py target/release/btfs
