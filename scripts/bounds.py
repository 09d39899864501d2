#!/usr/bin/python3
"""Mount time and peak memory of btfs on two large torrents, with no peer at all.

    scripts/bounds.py [path/to/btfs]      (default target/release/btfs)

Makes a torrent of 100,000 files and one of 1,000,000 pieces in a temp dir, mounts each with
--no-dht on loopback, lists it (`find`, `ls -lR`), then unmounts. Prints per torrent: the
.torrent size, seconds until the mount appears, seconds to list it, and the peak RSS (VmHWM)
of the btfs process. Numbers only, no thresholds: tests/bounds.rs checks correctness.
"""
import os
import subprocess
import sys
import tempfile
import time

from harness import MiB
from harness.mount import is_fuse_mount
from harness.procs import vm_hwm
from harness.torrent import bencode


def many_files(n=100_000, pl=256 * 1024):
    files = [{"length": i % 1000 + 1, "path": ["d%03d" % (i // 1000), "f%06d.bin" % i]} for i in range(n)]
    total = sum(f["length"] for f in files)
    pieces = os.urandom(20 * -(-total // pl))
    return bencode({"info": {"files": files, "name": "many", "piece length": pl, "pieces": pieces}}), n


def many_pieces(n=1_000_000, pl=16 * 1024):
    info = {"length": n * pl - 1, "name": "big.bin", "piece length": pl, "pieces": os.urandom(20 * n)}
    return bencode({"info": info}), 1


def measure(btfs, name, data, nfiles, tmp):
    torrent = os.path.join(tmp, name + ".torrent")
    with open(torrent, "wb") as f:
        f.write(data)
    mnt = os.path.join(tmp, name)
    os.mkdir(mnt)
    start = time.monotonic()
    proc = subprocess.Popen(
        [btfs, "mount", torrent, mnt, "--no-dht", "--port", "0", "--bind", "127.0.0.1", "--quiet"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        while not is_fuse_mount(mnt):
            if proc.poll() is not None:
                sys.exit("%s: btfs exited %d before mounting" % (name, proc.returncode))
            time.sleep(0.01)
        mount_s = time.monotonic() - start
        start = time.monotonic()
        found = subprocess.run(["find", mnt, "-type", "f"], capture_output=True, check=True).stdout.count(b"\n")
        subprocess.run(["ls", "-lR", mnt], stdout=subprocess.DEVNULL, check=True)
        list_s = time.monotonic() - start
        hwm = vm_hwm(proc.pid)
    finally:
        subprocess.run(["fusermount3", "-u", mnt], check=False)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    status = "ok" if found == nfiles else "MISSING FILES: %d of %d" % (found, nfiles)
    print(
        "%-12s torrent %5.1f MB  mount %6.2f s  find+ls -lR %6.2f s  peak RSS %5d MB  files %d %s"
        % (name, len(data) / 1e6, mount_s, list_s, hwm // MiB if hwm else -1, found, status)
    )


def main():
    btfs = sys.argv[1] if len(sys.argv) > 1 else "target/release/btfs"
    btfs = os.path.abspath(btfs)
    with tempfile.TemporaryDirectory(prefix="btfs-bounds-") as tmp:
        data, n = many_files()
        measure(btfs, "100k-files", data, n, tmp)
        data, n = many_pieces()
        measure(btfs, "1M-pieces", data, n, tmp)


if __name__ == "__main__":
    main()
