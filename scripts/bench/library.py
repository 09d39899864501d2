#!/usr/bin/python3
"""Benchmark: a library of many torrents in one mount: mount, listing, memory and CPU while
asleep, and how fast a read wakes a sleeping torrent.

    scripts/bench/library.py [-n 1000] [--btfs target/release/btfs] [--mode watch|args|both]
                             [--idle-after 1s] [--wake-one 3 --wake-together 3 ...]

Makes N small distinct torrents (different random data; every third one of several files, the
others of one file), each announcing to a tracker on loopback that is not there
(http://127.0.0.1:1/announce), and mounts them all in one btfs process with `--idle-after` (1s),
bound to 127.0.0.1, the DHT bootstrapping from a loopback port nobody listens on (so every
torrent has a DHT announce loop, and nothing leaves the machine), no local service discovery.
Either from a watch directory (`--watch DIR`) or all of them on the command line (`args`).
Prints, per mode:
  mount       spawn -> the mount is listed by the kernel
  root        spawn -> `ls` of the root shows every torrent's folder
  ls -lR      one `ls -lR` of the whole mount, once all are there
  status      one `btfs status MOUNT` (the text, every torrent's block)
  asleep      spawn -> `btfs status --json` says every torrent is asleep
  RSS         VmRSS and VmHWM once all are listed, and again once all are asleep
  threads, fds   of the btfs process once all are asleep
  idle CPU    the process's CPU time (utime + stime) over --idle-secs once all are asleep, as
              a share of one core
Then the wake part (library_wake.py, its doc says how; --wake-one 0 --wake-together 0 leaves
it out): K more torrents in the library, each served by a libtorrent seeder behind a tracker,
read once every torrent sleeps (one at a time, then several at once), against fresh
single-torrent mounts of ours and Debian's btfs; in the last mode only (the tracker is stopped
for the wakes). It runs in a loopback-only network namespace (harness/netns.py: Debian's btfs
bootstraps its DHT from public routers).
Numbers only, no thresholds. Everything it starts is ended by its PID, and its temp dir
removed, on exit, on failure or Ctrl-C alike.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import library_wake
from harness import MiB, REPO, netns
from harness.mount import is_fuse_mount, unmount_work
from harness.procs import Interrupted, Procs, catch_signals, cpu_secs, ignore_signals, log, tail
from harness.torrent import bencode

TRACKER = "http://127.0.0.1:1/announce"  # refused at once: a tracker that is not there
READY_TIMEOUT = 300.0


def make_torrents(n, folder):
    """N distinct torrents in `folder`; each one's info dictionary differs by its random pieces,
    names and sizes (no data is written: nobody seeds them)."""
    os.makedirs(folder)
    pl = 16 * 1024
    for i in range(n):
        if i % 3 == 0:
            files = [{"length": 1000 + 37 * j + i, "path": ["sub%d" % (j % 2), "f%02d.bin" % j]}
                     for j in range(1 + i % 7)]
            total = sum(f["length"] for f in files)
            info = {"files": files, "name": "multi-%05d" % i}
        else:
            total = 20_000 + i * 13
            info = {"length": total, "name": "single-%05d.bin" % i}
        info["piece length"] = pl
        info["pieces"] = os.urandom(20 * -(-total // pl))
        with open(os.path.join(folder, "t%05d.torrent" % i), "wb") as f:
            f.write(bencode({"announce": TRACKER, "info": info}))


def proc_status(pid):
    """The fields of /proc/PID/status we print: VmRSS, VmHWM (bytes), Threads."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
                elif key == "Threads":
                    out[key] = int(value)
    except OSError:
        pass
    return out


def open_fds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return -1


def wait_for(what, proc, cond, log_path, poll=0.01):
    """Polls `cond` until true; fails if btfs exits first or it takes READY_TIMEOUT."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not cond():
        if proc.poll() is not None:
            sys.exit("btfs exited %d before %s:\n%s" % (proc.returncode, what, tail(log_path)))
        if time.monotonic() > deadline:
            sys.exit("no %s after %.0f s:\n%s" % (what, READY_TIMEOUT, tail(log_path)))
        time.sleep(poll)


def listed(mnt, n):
    try:
        return len(os.listdir(mnt)) >= n
    except OSError:
        return False


def status_torrents(btfs, mnt):
    """The torrents of `btfs status --json MNT`; [] if it fails."""
    out = subprocess.run([btfs, "status", "--json", mnt], capture_output=True, text=True)
    if out.returncode != 0:
        return []
    try:
        return json.loads(out.stdout).get("torrents", [])
    except ValueError:
        return []


def all_asleep(btfs, mnt, n):
    torrents = status_torrents(btfs, mnt)
    return len(torrents) >= n and all(t.get("state") == "asleep" for t in torrents)


def measure(args, procs, tmp, mode, torrents, live=None):
    """One mount of the library; with `live` (the seeded torrents), the wakes too."""
    mnt = os.path.join(tmp, "mnt-" + mode)
    os.mkdir(mnt)
    state = os.path.join(tmp, "state-" + mode)
    log_path = os.path.join(tmp, "btfs-%s.log" % mode)
    argv = [args.btfs, "mount", "--library", "--idle-after", args.idle_after,
            "--bind", "127.0.0.1", "--port", "0", "--no-lsd", "--quiet", "--state-dir", state,
            "--metadata-cache", os.path.join(tmp, "meta")]
    if args.no_dht:
        argv.append("--no-dht")
    else:
        argv += ["--dht-bootstrap", "127.0.0.1:1", "--dht-state", os.path.join(tmp, "dht-" + mode)]
    if mode == "watch":
        argv += ["--watch", torrents, mnt]
    else:
        argv += [os.path.join(torrents, f) for f in sorted(os.listdir(torrents))] + [mnt]
    env = dict(os.environ)
    if args.rust_log:
        env["RUST_LOG"] = args.rust_log
    row = {"mode": mode}
    n = args.n + (len(live.torrents) if live else 0)
    start = time.monotonic()
    proc = procs.spawn(argv, log_path, env=env)
    try:
        wait_for("the mount", proc, lambda: is_fuse_mount(mnt), log_path)
        row["mount_s"] = time.monotonic() - start
        wait_for("every folder", proc, lambda: listed(mnt, n), log_path)
        row["root_s"] = time.monotonic() - start
        row["listed"] = proc_status(proc.pid)
        t = time.monotonic()
        subprocess.run(["ls", "-lR", mnt], stdout=subprocess.DEVNULL, check=True)
        row["lslR_s"] = time.monotonic() - t
        t = time.monotonic()
        subprocess.run([args.btfs, "status", mnt], stdout=subprocess.DEVNULL, check=True)
        row["status_s"] = time.monotonic() - t
        wait_for("every torrent asleep", proc, lambda: all_asleep(args.btfs, mnt, n),
                 log_path, poll=0.5)
        row["asleep_s"] = time.monotonic() - start
        time.sleep(1.0)  # the last ones' goodbyes (trackers told `stopped`) end
        before = cpu_secs(proc.pid)
        time.sleep(args.idle_secs)
        after = cpu_secs(proc.pid)
        row["idle_cpu"] = (after - before) / args.idle_secs if None not in (before, after) else None
        row["asleep"] = proc_status(proc.pid)
        row["fds"] = open_fds(proc.pid)
        if live:
            report = {t["name"]: t for t in status_torrents(args.btfs, mnt)}
            row["known"] = [report[live.name(i)]["known_peers"] for i in range(len(live.files))]

            def abort():
                procs.stop(proc, grace=2)
                subprocess.run(["fusermount3", "-uz", mnt], check=False)
            row["woken"] = library_wake.wake(live, args, proc, mnt,
                                             lambda name: report[name]["folder"], abort)
    finally:
        subprocess.run(["fusermount3", "-u", mnt], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        procs.stop(proc, grace=30)
    return row


def mb(v):
    return "%6.1f" % (v / MiB) if v is not None else "     ?"


def print_row(n, r):
    li, asl = r["listed"], r["asleep"]
    print("%5d torrents %-5s  mount %6.2f s  root %6.2f s  ls -lR %6.2f s  status %5.2f s  "
          "asleep %6.2f s" % (n, r["mode"], r["mount_s"], r["root_s"], r["lslR_s"],
                              r["status_s"], r["asleep_s"]))
    print("      RSS listed %s MB (peak %s)  asleep %s MB (peak %s)  threads %d  fds %d  "
          "idle CPU %5.1f %% of a core"
          % (mb(li.get("VmRSS")), mb(li.get("VmHWM")), mb(asl.get("VmRSS")),
             mb(asl.get("VmHWM")), asl.get("Threads", -1), r["fds"],
             100 * r["idle_cpu"] if r["idle_cpu"] is not None else -1))
    sys.stdout.flush()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=1000, help="torrents in the library (1000)")
    p.add_argument("--btfs", default=os.path.join(REPO, "target/release/btfs"))
    p.add_argument("--mode", choices=["watch", "args", "both"], default="both",
                   help="a watch directory, every torrent on the command line, or both (both)")
    p.add_argument("--idle-secs", type=float, default=10.0,
                   help="how long the idle CPU is measured (10)")
    p.add_argument("--no-dht", action="store_true", help="mount with --no-dht")
    p.add_argument("--rust-log", default="", help="RUST_LOG for btfs (its log in the temp dir)")
    p.add_argument("--keep-logs", metavar="DIR", help="copy btfs's logs here before cleaning up")
    p.add_argument("--idle-after", default="1s", help="btfs mount --idle-after (1s)")
    library_wake.add_options(p)
    args = p.parse_args()
    args.btfs = os.path.abspath(args.btfs)
    if args.n < 1:
        p.error("-n >= 1")
    if min(args.wake_one, args.wake_together, args.wake_runs) < 0 or args.wake_size < 1:
        p.error("--wake-one, --wake-together, --wake-runs >= 0; --wake-size >= 1")
    netns.enter()
    catch_signals()
    procs = Procs()
    tmp = tempfile.mkdtemp(prefix="btfs-library-")
    try:
        torrents = os.path.join(tmp, "torrents")
        t = time.monotonic()
        make_torrents(args.n, torrents)
        log("%d torrents made in %.1f s" % (args.n, time.monotonic() - t))
        live = fresh = None
        if library_wake.wanted(args):
            live = library_wake.Live(procs, tmp, args.wake_one + args.wake_together,
                                     args.wake_size, torrents)
            log("%d seeded torrents ready; fresh single-torrent mounts first" % len(live.files))
            env = dict(os.environ, RUST_LOG=args.rust_log) if args.rust_log else None
            fresh = library_wake.fresh(live, args, procs, tmp, env)
        modes = ["watch", "args"] if args.mode == "both" else [args.mode]
        for k, mode in enumerate(modes):
            log("mounting %d torrents (%s)" % (args.n, mode))
            last = k == len(modes) - 1
            row = measure(args, procs, tmp, mode, torrents, live if last else None)
            print_row(args.n, row)
            if "woken" in row:
                library_wake.print_table(args.n, mode, row["woken"], row["known"], fresh,
                                         args.wake_size)
    except Interrupted as e:
        log("interrupted (%s)" % e)
        return 1
    finally:
        ignore_signals()
        procs.stop_all()
        for d in os.listdir(tmp):
            mnt = os.path.join(tmp, d)
            if d.startswith("mnt-") and is_fuse_mount(mnt):
                subprocess.run(["fusermount3", "-uz", mnt], check=False)
        unmount_work(tmp)  # the fresh single-torrent mounts
        if args.keep_logs:
            os.makedirs(args.keep_logs, exist_ok=True)
            for d in (tmp, os.path.join(tmp, "logs")):
                for f in os.listdir(d) if os.path.isdir(d) else []:
                    if f.endswith(".log"):
                        shutil.copy(os.path.join(d, f), args.keep_logs)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
