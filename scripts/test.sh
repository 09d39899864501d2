#!/usr/bin/env bash
# Runs every check and test btfs has, on a fresh Debian machine: installs the system packages
# it needs, then formatting, lints, unit tests and the integration tests that mount real
# torrents served by libtorrent seeders behind opentracker (all on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "== layout (no import circles, no production file over 600 lines)"
/usr/bin/python3 scripts/check_layout.py
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --release -- -D warnings
echo "== cargo doc (no broken links)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --release --quiet
# Release build: the integration tests hash and move hundreds of MiB through the mount.
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Unit and integration tests (no doc-tests: the crate has none to run).
set +e
cargo test --release --lib --bins --tests -- --test-threads=2 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One total over every test binary, as the last line.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
