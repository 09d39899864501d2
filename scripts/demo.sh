#!/usr/bin/env bash
# The main job, end to end and offline: builds btfs, makes a sample torrent, seeds it from three
# local libtorrent seeders behind a local opentracker (all on loopback), mounts it with btfs,
# lists it, checks every file against its source with sha1sum, and unmounts.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
py=/usr/bin/python3 # Debian's python, which has the libtorrent module
swarm="$repo/scripts/swarm.py"

scripts/setup.sh
cargo build --release
btfs="$repo/target/release/btfs"

work=$(mktemp -d /tmp/btfs-demo.XXXXXX)
pids=()
cleanup() {
    if grep -qs " $work/mnt " /proc/mounts; then
        fusermount3 -u "$work/mnt" 2>/dev/null || fusermount3 -u -z "$work/mnt" 2>/dev/null || true
    fi
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

echo "== making a sample torrent (about 64 MiB in several files)"
"$py" "$swarm" make-data "$work/data" --layout multi --seed 7 --size $((64 << 20)) --name demo >/dev/null
http_port=$(free_port)
udp_port=$(free_port)
hash=$("$py" "$swarm" make-torrent "$work/data/demo" "$work/demo.torrent" \
    --piece-length 262144 --tracker "http://127.0.0.1:$http_port/announce")
"$btfs" info "$work/demo.torrent"

echo "== starting opentracker and three libtorrent seeders on 127.0.{1,2,3}.1"
"$py" "$swarm" tracker --dir "$work/tracker" --http-port "$http_port" --udp-port "$udp_port" \
    --whitelist "$hash" 2>"$work/tracker.log" &
pids+=($!)
for i in 1 2 3; do
    "$py" "$swarm" seed "$work/demo.torrent" "$work/data" --bind "127.0.$i.1" --port "$(free_port)" \
        --ready-file "$work/seed$i.ready" 2>"$work/seed$i.log" &
    pids+=($!)
done
for i in 1 2 3; do
    for _ in $(seq 600); do [ -e "$work/seed$i.ready" ] && break; sleep 0.1; done
    [ -e "$work/seed$i.ready" ] || { echo "seeder $i did not start:"; cat "$work/seed$i.log"; exit 1; }
done

echo "== btfs mount"
mkdir "$work/mnt"
"$btfs" mount "$work/demo.torrent" "$work/mnt" --port 0 --bind 127.0.0.1 -q --no-dht 2>"$work/btfs.log" &
btfs_pid=$!
pids+=($btfs_pid)
for _ in $(seq 600); do grep -qs " $work/mnt " /proc/mounts && break; sleep 0.1; done
grep -qs " $work/mnt " /proc/mounts || { echo "btfs did not mount:"; cat "$work/btfs.log"; exit 1; }

ls -lR "$work/mnt"
echo "== checking every file through the mount"
bad=0
while IFS= read -r -d '' f; do
    rel=${f#"$work/data/"}
    want=$(sha1sum <"$f" | cut -d' ' -f1)
    start=$(date +%s%N)
    got=$(sha1sum <"$work/mnt/$rel" | cut -d' ' -f1)
    ms=$((($(date +%s%N) - start) / 1000000))
    if [ "$want" = "$got" ]; then echo "ok   $rel (${ms} ms)"; else echo "BAD  $rel"; bad=1; fi
done < <(find "$work/data/demo" -type f -print0 | sort -z)
getfattr --absolute-names --only-values -n user.btfs.status "$work/mnt"

echo "== unmounting"
fusermount3 -u "$work/mnt"
wait "$btfs_pid"
echo "btfs exited with status $?"
[ "$bad" = 0 ] && echo "demo: every file matched its source"
exit "$bad"
