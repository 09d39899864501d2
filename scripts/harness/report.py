"""The benchmark's table: medians over the runs, ratio (> 1: ours is better), target and
PASS/FAIL per metric; and the same rows as JSON (--json). A metric nobody measured has no row,
so a script that runs one part prints that part's rows."""

import argparse
import json
import re
import statistics

from harness import MiB
from harness.dht import DHT_NODES_COUNT

# metric, label, unit, better ("lower"/"higher"), target kind:
#   half: ours takes at most half Debian's time; rate: ours at least Debian's rate;
#   tmpfs: ours at least TMPFS_TARGET of cat from tmpfs; budget: RSS <= cache + 64 MiB;
#   cpu: ours' CPU per byte at most CPU_TARGET times ours' on the plain TCP swarm (tcp_cpu).
#   cpu_frac: ours' CPU per byte over encryption (uTP) at most CPU_TARGET of it over plain TCP.
METRICS = [
    ("ready", "spawn -> mount ready (.torrent)", "s", "lower", None),
    ("ttfb", "first byte, cold", "s", "lower", "half"),
    ("seek", "1 MiB pread at random offset, cold", "s", "lower", "half"),
    ("seq", "sequential read + sha1, cold", "MB/s", "higher", "rate"),
    ("warm", "re-read + sha1, same mount", "MB/s", "higher", None),
    ("warm_cat", "re-read with cat, same mount", "MB/s", "higher", None),
    ("tmpfs_cat", "cat of the same file on tmpfs", "MB/s", "higher", None),
    ("warm_frac", "cat re-read / cat from tmpfs", "%", "higher", "tmpfs"),
    ("rss", "peak RSS (VmHWM) after the reads", "MiB", "lower", "budget"),
    ("frame0", "mpv first frame from start, cold", "s", "lower", "half"),
    ("frame70", "mpv first frame from 70%, cold", "s", "lower", "half"),
    ("magnet_meta", "magnet (DHT only): spawn -> file seen", "s", "lower", None),
    ("magnet", "magnet (DHT only): spawn -> 1st byte", "s", "lower", "half"),
    ("ws_ttfb", "web seed only: first byte, cold", "s", "lower", None),
    ("ws_seq", "web seed only: sequential + sha1, cold", "MB/s", "higher", "rate"),
    ("ws_cpu", "web seed only: client CPU per MB read", "ms/MB", "lower", "cpu"),
    ("tcp_seq", "TCP swarm: sequential + sha1, cold", "MB/s", "higher", None),
    ("tcp_cpu", "TCP swarm: client CPU per MB read", "ms/MB", "lower", None),
    ("enc_ttfb", "encrypted swarm: first byte, cold", "s", "lower", None),
    ("enc_seq", "encrypted swarm: sequential + sha1", "MB/s", "higher", "rate"),
    ("enc_cpu", "encrypted swarm: CPU per MB read", "ms/MB", "lower", None),
    ("plain_cpu", "plain swarm: CPU per MB read", "ms/MB", "lower", None),
    ("enc_cpu_frac", "CPU per byte, encrypted / plain", "%", "lower", "cpu_frac"),
    ("rc4_cpu", "RC4 alone (OpenSSL's asm): CPU per MB", "ms/MB", "lower", None),
    ("enc_floor_frac", "(plain + RC4 alone) / plain", "%", "lower", None),
    ("utp_ttfb", "uTP-only swarm: first byte, cold", "s", "lower", None),
    ("utp_seq", "uTP-only swarm: sequential + sha1", "MB/s", "higher", "rate"),
    ("utp_cpu", "uTP-only swarm: CPU per MB read", "ms/MB", "lower", None),
    ("utp_tcp_cpu", "its file over TCP: CPU per MB read", "ms/MB", "lower", None),
    ("utp_cpu_frac", "CPU per byte, uTP / TCP", "%", "lower", "cpu_frac"),
    ("utp_same_seq", "over TCP at its uTP rate: sequential", "MB/s", "higher", None),
    ("utp_same_cpu", "over TCP at its uTP rate: CPU per MB", "ms/MB", "lower", None),
    ("utp_same_frac", "CPU per byte, uTP / TCP at one rate", "%", "lower", None),
    ("utp_lossy_ttfb", "lossy uTP path: first byte, cold", "s", "lower", None),
    ("utp_lossy_seq", "lossy uTP path: sequential + sha1", "MB/s", "higher", "rate"),
    ("utp_lossy_cpu", "lossy uTP path: CPU per MB read", "ms/MB", "lower", None),
]
# The rows that are one metric's median over another's, in per cent: key -> (numerator,
# denominator); a numerator that is a tuple is the sum of its metrics' medians.
FRACTIONS = {"warm_frac": ("warm_cat", "tmpfs_cat"),
             "enc_cpu_frac": ("enc_cpu", "plain_cpu"),
             "enc_floor_frac": (("plain_cpu", "rc4_cpu"), "plain_cpu"),
             "utp_cpu_frac": ("utp_cpu", "utp_tcp_cpu"),
             "utp_same_frac": ("utp_cpu", "utp_same_cpu")}
TMPFS_TARGET = 0.70
CPU_TARGET = 1.5
TARGETS = {"half": "<= 1/2 debian", "rate": ">= debian", "tmpfs": ">= 70% tmpfs",
           "budget": "<= cache+64M", "cpu": "<= 1.5x TCP", "cpu_frac": "<= 150% plain"}


def parse_size(s):
    m = re.fullmatch(r"(\d+)\s*([KMGkmg]?)i?[Bb]?", s.strip())
    if not m:
        raise argparse.ArgumentTypeError("not a size: %r" % s)
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]


def parse_rate(s):
    """Bits per second: 6M = 6,000,000 (as ffmpeg reads it)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMkm]?)", s.strip())
    if not m:
        raise argparse.ArgumentTypeError("not a bitrate: %r" % s)
    return int(float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()])


def median(vs):
    ok = [v for v in vs if v is not None]
    return statistics.median(ok) if ok else None


def median_sum(results, keys):
    """The median of metric `keys`, or the sum of the medians of a tuple of them; None if
    any is missing."""
    ms = [median(results.get(k, [])) for k in (keys if isinstance(keys, tuple) else (keys,))]
    return None if None in ms else sum(ms)


def human(n):
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return "%d %s" % (n >> shift, unit)
    return "%d B" % n


def rows(bench, budget):
    out = []
    for key, label, unit, better, target in METRICS:
        runs = {}
        for c in ("ours", "debian"):
            if key in FRACTIONS:
                num_, den = FRACTIONS[key]
                w = median_sum(bench.results[c], num_)
                t = median(bench.results[c].get(den, []))
                if not t:  # no reference
                    runs[c] = []
                else:
                    runs[c] = [w / t * 100 if w else None]
            elif key == "rss":
                runs[c] = [v and v / MiB for v in bench.results[c].get(key, [])]
            else:
                runs[c] = bench.results[c].get(key, [])
        o, d = median(runs["ours"]), median(runs["debian"])
        if not runs["ours"] and not runs["debian"]:
            continue
        ratio = None
        if o and d and unit != "%":
            ratio = d / o if better == "lower" else o / d
        verdict = ""
        if target == "half":
            verdict = "n/a" if ratio is None else ("PASS" if ratio >= 2 else "FAIL")
        elif target == "rate":
            verdict = "n/a" if ratio is None else ("PASS" if ratio >= 1 else "FAIL")
        elif target == "tmpfs":
            verdict = "n/a" if o is None else ("PASS" if o >= TMPFS_TARGET * 100 else "FAIL")
        elif target == "cpu_frac":
            verdict = "n/a" if o is None else ("PASS" if o <= CPU_TARGET * 100 else "FAIL")
        elif target == "budget":
            verdict = "n/a" if o is None else ("PASS" if o <= budget / MiB else "FAIL")
        elif target == "cpu":
            tcp = median(bench.results["ours"].get("tcp_cpu", []))
            verdict = "n/a" if o is None or not tcp else (
                "PASS" if o <= CPU_TARGET * tcp else "FAIL")
        nfail = sum(v is None for v in runs["ours"] + runs["debian"])
        out.append({"metric": key, "label": label, "unit": unit, "ours": o, "debian": d,
                    "ratio": ratio, "target": TARGETS.get(target), "verdict": verdict,
                    "ours_runs": runs["ours"], "debian_runs": runs["debian"],
                    "failed_runs": nfail})
    return out


def num(v, unit, runs):
    if not runs:
        return "not run"
    if v is None:
        return "FAILED"
    if unit == "s":
        return "%.1f ms" % (v * 1000)
    if unit == "%":
        return "%.0f %%" % v
    return "%.1f %s" % (v, unit)


def print_table(table, w, budget, args):
    head = "%-*s | %12s | %12s | %8s | %-14s | %s" % (
        w, "metric", "ours", "debian", "ratio", "target", "verdict")
    print(head)
    print("-" * len(head))
    for r in table:
        print("%-*s | %12s | %12s | %8s | %-14s | %s" % (
            w, r["label"], num(r["ours"], r["unit"], r["ours_runs"]),
            num(r["debian"], r["unit"], r["debian_runs"]),
            "-" if r["ratio"] is None else
            ("%.2fx" if r["ratio"] < 100 else "%.0fx") % r["ratio"],
            r["target"] or "", r["verdict"]))
    print("(ratio > 1: ours is better; 'half' targets need ratio >= 2; rss budget %.0f MiB "
          "= cache %s + 64 MiB; first frame: mpv's clock from its start to 'first video "
          "frame after restart shown', --vo=null --ao=null --frames=1)"
          % (budget / MiB, args.cache_size))


def report(bench, args):
    """Prints the table, the notes and failures; writes --json. The rows."""
    budget = parse_size(args.cache_size) + 64 * MiB
    table = rows(bench, budget)
    w = max([len(r["label"]) for r in table] + [6])
    print()
    parts = []
    if bench.size:
        parts.append("%s file, %s pieces, 3 seeders + tracker" % (
            human(bench.size), human(args.piece_length)))
    if bench.video_size:
        parts.append("video %.0f MB (%d s, %.1f Mbit/s mp4, index at end)" % (
            bench.video_size / 1e6, args.video_seconds, args.video_bitrate / 1e6))
    if getattr(bench, "webseed_size", None):
        parts.append("web seed: %s file from nginx (url-list only); TCP: 3 seeders + tracker"
                     % human(bench.webseed_size))
    if bench.enc_size:
        parts.append("encryption: %s file, 3 seeders requiring RC4 (CPU: the same, plain)"
                     % human(bench.enc_size))
    if bench.utp_size:
        parts.append("uTP: %s file, 3 uTP-only seeders + tracker (CPU: the same over TCP)"
                     % human(bench.utp_size))
    if bench.results["ours"].get("magnet") or bench.results["debian"].get("magnet"):
        parts.append("magnet: %s largest file, %d DHT nodes + 2 seeders, no tracker" % (
            human(args.magnet_size), DHT_NODES_COUNT))
    # A part with a table of its own may leave this one with only the mounts' ready time.
    if any(r["metric"] != "ready" for r in table) or not bench.reports:
        print("btfs benchmark, %d run(s), medians, ours --cache-size %s: %s"
              % (args.runs, args.cache_size, "; ".join(parts)))
        print_table(table, w, budget, args)
    extra = {}
    for name, fn in bench.reports.items():
        lines, extra[name] = fn()
        print()
        print("\n".join(lines))
    for c, notes in bench.notes.items():
        for n in notes:
            print("%s: %s" % (c, n))
    for f in bench.failures:
        print("failure: " + f)
    if args.json:
        # Every key, whichever parts ran (an option of a part not run: null).
        opt = {k: getattr(args, k, None) for k in
               ("piece_length", "video_seconds", "video_bitrate", "magnet_size", "enc_size")}
        doc = {"size": bench.size, "piece_length": opt["piece_length"], "runs": args.runs,
               "cache_size": args.cache_size, "seed": args.seed,
               "video_seconds": opt["video_seconds"], "video_bitrate": opt["video_bitrate"],
               "magnet_size": opt["magnet_size"], "enc_size": opt["enc_size"],
               "metrics": table,
               "failures": bench.failures, "notes": bench.notes}
        doc.update(extra)
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
        print("wrote %s" % args.json)
    return table
