#!/usr/bin/python3
"""How long btfs takes to go away under load: 8 readers blocked, 50 peers connected.

Mounts a torrent nobody seeds with target/release/btfs, connects it to 50 fake peers on
127.0.9.1 that handshake and then stall, starts 8 `cat`s that block on a file, then takes it
down, once with SIGTERM and once with `fusermount3 -u -z`, and prints, in milliseconds from
the signal/unmount: when every cat had failed, when the mount was gone, when btfs exited.

Usage: scripts/unmount_time.py [--btfs target/release/btfs] [--rounds 3]
Needs root or fusermount3 (FUSE), python3; everything stays on loopback.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from harness import OURS, REPO
from harness.mount import is_fuse_mount, status_text, unmount_lazy
from harness.swarm import make_data, make_torrent

PEERS = 50
READERS = 8


def stallers(n, info_hash, stop):
    """n listeners that answer a handshake for info_hash and then send nothing."""
    addrs = []
    for i in range(n):
        ls = socket.socket()
        ls.bind(("127.0.9.1", 0))
        ls.listen(8)
        ls.settimeout(0.1)
        addrs.append("127.0.9.1:%d" % ls.getsockname()[1])

        def serve(ls=ls, i=i):
            held = []
            while not stop.is_set():
                try:
                    s, _ = ls.accept()
                except socket.timeout:
                    continue
                s.settimeout(5)
                try:
                    got = b""
                    while len(got) < 68:
                        chunk = s.recv(68 - len(got))
                        if not chunk:
                            break
                        got += chunk
                    hs = bytes([19]) + b"BitTorrent protocol" + bytes(8) + info_hash
                    hs += ("-ST0001-%012d" % i).encode()
                    s.sendall(hs)
                    held.append(s)
                except OSError:
                    s.close()
            for s in held:
                s.close()
            ls.close()

        threading.Thread(target=serve, daemon=True).start()
    return addrs


def wait(cond, what, limit=120):
    end = time.monotonic() + limit
    while not cond():
        if time.monotonic() > end:
            sys.exit("unmount_time: never: %s" % what)
        time.sleep(0.05)


def one_round(btfs, torrent, big, addrs, how, work):
    mnt = tempfile.mkdtemp(prefix="mnt-", dir=work)
    args = [btfs, "mount", torrent, mnt, "--port", "0", "--bind", "127.0.0.1", "-q", "--no-dht"]
    for a in addrs:
        args += ["--peer", a]
    log = open(os.path.join(work, "btfs.log"), "w")
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    cats = []
    try:
        wait(lambda: is_fuse_mount(mnt), "mounted")
        wait(lambda: "peers: %d\n" % len(addrs) in status_text(mnt), "%d peers" % len(addrs))
        path = os.path.join(mnt, big)
        cats = [subprocess.Popen(["cat", path], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL) for _ in range(READERS)]
        wait(lambda: status_text(mnt).count("reader: ") == READERS, "%d readers" % READERS)
        t0 = time.monotonic()
        if how == "SIGTERM":
            proc.send_signal(signal.SIGTERM)
        else:
            subprocess.run(["fusermount3", "-u", "-z", mnt], check=True)
        marks = {}
        while len(marks) < 3:
            now = (time.monotonic() - t0) * 1000
            if "cats failed" not in marks and all(c.poll() is not None for c in cats):
                marks["cats failed"] = now
            if "mount gone" not in marks and not is_fuse_mount(mnt):
                marks["mount gone"] = now
            if "btfs exited" not in marks and proc.poll() is not None:
                marks["btfs exited"] = now
            if now > 120000:
                sys.exit("unmount_time: %s: not down after 120 s: %s" % (how, marks))
            time.sleep(0.002)
        failed = sum(1 for c in cats if c.returncode != 0)
        print("%-14s readers failed %d/%d; %s; btfs exit code %d" % (
            how, failed, READERS,
            ", ".join("%s at %.0f ms" % kv for kv in marks.items()), proc.returncode))
    finally:
        for c in cats:
            if c.poll() is None:
                c.kill()
                c.wait()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        unmount_lazy(mnt, ("fusermount3",))
        log.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--btfs", default=os.path.join(REPO, OURS))
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    btfs = os.path.abspath(args.btfs)
    with tempfile.TemporaryDirectory(prefix="btfs-unmount-") as work:
        data = make_data(os.path.join(work, "data"), "single", 1, 4000000, "single.bin")
        torrent = os.path.join(work, "t.torrent")
        ih = make_torrent(data, torrent, 65536)
        stop = threading.Event()
        addrs = stallers(PEERS, bytes.fromhex(ih), stop)
        try:
            for _ in range(args.rounds):
                for how in ("SIGTERM", "fusermount -z"):
                    one_round(btfs, torrent, os.path.basename(data), addrs, how, work)
        finally:
            stop.set()


if __name__ == "__main__":
    main()
