#!/usr/bin/env bash
# Runs every check and test btfs has, on a fresh Debian machine: installs the system packages
# it needs, then formatting, lints, unit tests and the integration tests that mount real
# torrents served by libtorrent seeders behind opentracker (all on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --release -- -D warnings
# Release build: the integration tests hash and move hundreds of MiB through the mount.
echo "== cargo test"
cargo test --release -- --test-threads=2
