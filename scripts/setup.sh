#!/usr/bin/env bash
# Installs what btfs's build, tests and benchmarks need on a Debian machine.
# Idempotent and non-interactive (safe as root with no TTY, e.g. from .ci/run):
# apt runs only when a package is missing, and `apt-get update` only before an install.
set -euo pipefail

PACKAGES=(
    fuse3              # fusermount3, /dev/fuse users
    python3-libtorrent # scripts/swarm.py: seeders and leechers (Debian's /usr/bin/python3)
    opentracker        # the tracker of the test swarm
    transmission-daemon # swarm.py transmission-seed: a second independent client (encryption)
    mktorrent          # a second, independent torrent maker
    openssl            # bench: RC4 alone (openssl speed), the floor of encryption's CPU
    btfs               # Debian's btfs (C++/libtorrent), a reference to compare against
    ffmpeg mpv         # streaming demos and benchmarks
    libssl-dev pkg-config # reqwest's native-tls links the system OpenSSL
    attr               # getfattr/setfattr
    psmisc             # fuser
    iproute2           # ss
    strace             # tests/stream.rs: the xattr calls `ls -l` makes on a mount
    nginx-light        # a real HTTP server for web seeds (BEP 19): tests/webseed.rs, the bench
)

missing=()
for p in "${PACKAGES[@]}"; do
    # "install ok installed" only; a removed package can leave a "deinstall" record.
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done

if ((${#missing[@]})); then
    echo "setup.sh: installing ${missing[*]}" >&2
    sudo=()
    if [ "$(id -u)" != 0 ]; then sudo=(sudo); fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
else
    echo "setup.sh: all Debian packages present" >&2
fi

# Debian's opentracker package may start a system service on port 6969, and nginx-light one
# on port 80; the tests start their own trackers and web servers on free loopback ports (each
# nginx with its own config in a temp dir), so they do not get in the way.

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup.sh: cargo not found (install a Rust toolchain)" >&2
    exit 1
fi

if [ ! -c /dev/fuse ]; then
    echo "setup.sh: /dev/fuse missing: mount tests cannot run on this machine" >&2
    exit 1
fi

/usr/bin/python3 -c 'import libtorrent' || {
    echo "setup.sh: /usr/bin/python3 cannot import libtorrent" >&2
    exit 1
}
echo "setup.sh: ready ($(cargo --version))" >&2
