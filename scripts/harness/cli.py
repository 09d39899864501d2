"""The benchmark's options and main(), shared by scripts/bench/all.py and each part's script.

A part is a module with NAME, HELP (a line for --skip), TOOLS (programs it needs),
add_options(parser), check(args, parser) and run(bench); its docstring says what it measures.
A part with OPTIONAL = True (a long one) runs in the all-parts run only when asked for with
--with NAME; its own script always runs it."""

import argparse
import os
import shutil
import sys
import tempfile

from harness import DEBIAN, OURS, REPO, netns
from harness.measure import Bench
from harness.mount import unmount_work
from harness.procs import (Interrupted, MetricFailed, Procs, catch_signals, ignore_signals,
                           log)
from harness.report import parse_size, report

RULES = """\
Every cold measurement runs on a fresh mount: a new client process and, for Debian's btfs,
a new --data-directory (ours: a new --dht-state and --metadata-cache), so nothing is cached.
A mount is ready when the kernel lists it in /proc/self/mountinfo and the file to read
stat()s (Debian's btfs mounts before it has loaded the torrent). Medians over --runs runs;
ratio > 1 means ours is better. MB = 10^6 bytes. Targets (issues 3 and 4): first byte, seek,
first frame, magnet first byte at most half Debian's time; cold sequential at least Debian's
rate; warm cat re-read at least 70% of cat from tmpfs; peak RSS within --cache-size + 64 MiB;
(issue 13) from a uTP-only swarm at least Debian's rate, CPU per byte within 1.5x of TCP.

A read that makes no progress for --read-timeout seconds fails its metric: the client is
killed (which fails the blocked read) and the mount lazily unmounted. Every process this
script starts is ended by its PID; every mount is unmounted; the work dir and the tmpfs
copy are removed, on failure and on Ctrl-C/SIGTERM too. It runs in a private network
namespace that has only loopback (it re-runs itself under `unshare --net`, which needs root;
BTFS_BENCH_NETNS=0: in the host's), so nothing leaves the machine. Python 3 stdlib only;
run by Debian's /usr/bin/python3.
"""


def parser(doc, parts):
    first, _, rest = doc.strip().partition("\n")
    epilog = rest.strip() + "\n\n"
    if len(parts) > 1:
        epilog += "".join(part.__doc__.strip() + "\n\n" for part in parts)
    p = argparse.ArgumentParser(description=first,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=epilog + RULES)
    p.add_argument("--runs", type=int, default=3, help="runs of each cold metric (3)")
    p.add_argument("--keep-going", action="store_true",
                   help="record a failed measurement and go on (default: stop at the first)")
    p.add_argument("--json", help="also write the table as JSON here")
    p.add_argument("--only", action="append", choices=["ours", "debian"],
                   help="measure only this client (repeatable)")
    p.add_argument("--cache-size", default="512M", help="ours: --cache-size (512M)")
    p.add_argument("--read-timeout", type=float, default=120.0,
                   help="seconds a read may go without progress before its metric fails (120)")
    p.add_argument("--seed", type=int, default=1, help="seed of the data and the seek offsets")
    p.add_argument("--piece-length", type=parse_size, default=256 * 1024,
                   help="torrent piece length (256K, as mktorrent picks for 256 MiB)")
    p.add_argument("--seed-mode", action="store_true",
                   help="seeders skip their startup hash check (they then hash each piece on "
                        "its first request, which slows whichever client reads it first)")
    p.add_argument("--rust-log", help="RUST_LOG for ours (e.g. btfs=debug)")
    p.add_argument("--log-dir", help="keep every client's stderr here")
    p.add_argument("--perf-dir", default=None,
                   help="profile each read whose CPU is measured (the utp, encryption and "
                        "webseed parts) with `perf record` of the client, one file per read "
                        "here (CLIENT-METRIC-N.data)")
    p.add_argument("--perf-event", action="append", default=[],
                   help="with --perf-dir: record this event (perf's -e) instead of cpu-clock; "
                        "repeatable")
    p.add_argument("--perf-call-graph", default="fp",
                   help="with --perf-dir: perf's --call-graph (fp; dwarf also walks through "
                        "libc, whose frames have no frame pointers)")
    for part in parts:
        part.add_options(p)
    if len(parts) > 1:
        p.add_argument("--skip", action="append", default=[], choices=[x.NAME for x in parts],
                       help="skip a part: " + ", ".join(
                           "%s (%s)" % (x.NAME, x.HELP) for x in parts))
        optional = [x for x in parts if getattr(x, "OPTIONAL", False)]
        if optional:
            p.add_argument("--with", dest="with_parts", action="append", default=[],
                           choices=[x.NAME for x in optional],
                           help="also run a part that is off by default: " + ", ".join(
                               "%s (%s)" % (x.NAME, x.HELP) for x in optional))
    return p


def main(doc, parts):
    """Runs `parts` (modules, in order) on one work dir and prints one table; the exit code."""
    p = parser(doc, parts)
    args = p.parse_args()
    chosen = getattr(args, "with_parts", [])
    parts = [part for part in parts if part.NAME not in getattr(args, "skip", [])
             and (len(parts) == 1 or not getattr(part, "OPTIONAL", False)
                  or part.NAME in chosen)]
    if args.runs < 1:
        p.error("--runs >= 1")
    parse_size(args.cache_size)
    for part in parts:
        part.check(args, p)
    for path in [os.path.join(REPO, OURS), DEBIAN] + [t for part in parts for t in part.TOOLS]:
        if not os.access(path, os.X_OK):
            p.error("%s missing (scripts/bench.sh builds ours; setup.sh installs Debian's)" % path)
    netns.enter()

    catch_signals()
    procs = Procs()
    work = tempfile.mkdtemp(prefix="btfs-bench-")
    os.makedirs(os.path.join(work, "logs"))
    bench = None
    rc = 0
    try:
        log("work dir %s" % work)
        bench = Bench(args, procs, work)
        for part in parts:
            part.run(bench)
    except MetricFailed:
        rc = 1
    except Interrupted as e:
        log("interrupted (%s); cleaning up" % e)
        rc = 130
    except Exception as e:
        log("error: %s" % e)
        rc = 1
    finally:
        ignore_signals()
        cleanup(procs, work, args.log_dir)
        for d in bench.tmp_dirs if bench else []:
            shutil.rmtree(d, ignore_errors=True)
    if bench is not None:
        report(bench, args)
        if bench.failures:
            rc = rc or 1
    return rc


def cleanup(procs, work, log_dir):
    # Mounts first (a live client process still serves them), then everything else.
    unmount_work(work)
    procs.stop_all()
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        for src in [os.path.join(work, "logs", n) for n in os.listdir(os.path.join(work, "logs"))] \
                + [os.path.join(work, n) for n in os.listdir(work) if n.endswith(".log")]:
            shutil.copy(src, log_dir)
        log("logs kept in %s" % log_dir)
    shutil.rmtree(work, ignore_errors=True)


def run_alone(part):
    """main() of a part's own script."""
    sys.exit(main(part.__doc__, [part]))
