#!/usr/bin/python3
"""Benchmark part `utp`: a swarm that speaks only uTP (BEP 29); ours and Debian's.

The swarm: one file of --utp-size bytes, three libtorrent seeders on 127.0.{1,2,3}.1 with TCP
off (`swarm.py seed --transport utp`) behind opentracker. Then the same file from TCP-only
seeders, for the CPU uTP costs per byte. Per client and per run:
  utp_ttfb   fresh mount; open the file and read 1 byte: mount ready -> byte returned
  utp_seq    fresh mount, once the client has used no CPU for 0.2 s (its startup work done);
             read the whole file in 1 MiB chunks with sha1 (checked); MB/s
  utp_cpu    the client's CPU time (utime + stime, /proc/PID/stat) over that read, per MB
Then, per client, the same file from TCP-only seeders:
  utp_tcp_cpu   the same read's CPU time per MB over TCP
  utp_cpu_frac = utp_cpu / utp_tcp_cpu (target for ours: at most 150 %; Debian's, libtorrent's
                 own uTP, is the yardstick of what the protocol costs)
Then, per client, once more over TCP with each seeder capped to a third of that client's
median uTP rate (no target; what uTP itself costs, apart from the rate): uTP runs at about
half TCP's rate here, and the work every byte gets (FUSE, SHA1, assembly) costs more per byte
at a lower rate, where each wake-up carries fewer bytes; users' swarms run both at the
network's rate.
  utp_same_seq    that read's MB/s (should come out near the uTP rate)
  utp_same_cpu    its CPU time per MB
  utp_same_frac = utp_cpu / utp_same_cpu
Last, the internet as uTP meets it: a file of --utp-lossy-size from three uTP-only seeders
capped at --utp-lossy-rate each, reached only through scripts/udp_relay.py, which delays each
datagram --utp-lossy-delay-ms plus up to --utp-lossy-jitter-ms (in order) and loses
--utp-lossy-loss of them, each way (harness.thinswarm: the tracker knows only the relay's
addresses):
  utp_lossy_ttfb   fresh mount; open the file and read 1 byte
  utp_lossy_seq    fresh mount; the whole file, sha1 checked; MB/s (target: >= Debian's)
  utp_lossy_cpu    the client's CPU time per MB over that read
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness import MiB
from harness.cli import run_alone
from harness.measure import cold_read, file_sha1, first_byte
from harness.procs import log
from harness.report import median, parse_size
from harness.swarm import SEEDER_IPS, Swarm, make_data
from harness.thinswarm import ThinSwarm

NAME = "utp"
HELP = "uTP-only swarm: first byte, sequential, CPU per byte vs TCP"
TOOLS = []


def add_options(p):
    p.add_argument("--utp-size", type=parse_size, default=128 * MiB,
                   help="the uTP part's file size (128M)")
    p.add_argument("--utp-lossy-size", type=parse_size, default=12 * MiB,
                   help="the lossy path's file size (12M)")
    p.add_argument("--utp-lossy-rate", type=parse_size, default=MiB,
                   help="the lossy path's seeders' upload cap, bytes/s each (1M)")
    p.add_argument("--utp-lossy-delay-ms", type=float, default=25.0,
                   help="the lossy path's delay each way (25)")
    p.add_argument("--utp-lossy-jitter-ms", type=float, default=10.0,
                   help="the lossy path's added 0..J ms per datagram, order kept (10)")
    p.add_argument("--utp-lossy-loss", type=float, default=0.01,
                   help="the share of datagrams the lossy path loses each way (0.01)")


def check(args, p):
    if args.utp_size < 2 * MiB:
        p.error("--utp-size >= 2M")
    if args.utp_lossy_size and args.utp_lossy_size < 2 * MiB:
        p.error("--utp-lossy-size >= 2M (0: no lossy part)")
    if not 0.0 <= args.utp_lossy_loss < 1.0:
        p.error("--utp-lossy-loss in [0, 1)")


def ttfb(bench, client, swarm, metric="utp_ttfb"):
    def fn(m):
        bench.record(client, metric,
                     first_byte(m, bench.args.read_timeout) - m.ready_at)
    bench.measure(client, metric, fn, swarm, ready_metric=None)


def udp_counters():
    """The UDP counters of /proc/net/snmp (this network namespace: every process of the
    bench): a sequential read's datagrams, and those dropped because a receive buffer was
    full, which sends a uTP sender into loss recovery."""
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split()[1:] for line in f if line.startswith("Udp:")]
        return dict(zip(rows[0], map(int, rows[1])))
    except (OSError, IndexError, ValueError):
        return {}


def own_udp_drops(pid):
    """Datagrams the kernel dropped on the UDP sockets of process `pid` (the `drops` column of
    /proc/net/udp and udp6), or None if unreadable."""
    try:
        inodes = set()
        for fd in os.listdir("/proc/%d/fd" % pid):
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        drops = 0
        for table in ("/proc/net/udp", "/proc/net/udp6"):
            with open(table) as f:
                for line in list(f)[1:]:
                    cols = line.split()
                    if len(cols) > 12 and cols[9] in inodes:
                        drops += int(cols[-1])
        return drops
    except (OSError, ValueError):
        return None


def seq(bench, client, swarm, sha1, size, rate_metric, cpu_metric):
    """A cold sequential read on a fresh mount, once the client has settled: its rate (if
    `rate_metric`) and the client's CPU time per MB."""
    def fn(m):
        secs, udp = cold_read(bench, client, m, size, sha1, rate_metric, cpu_metric,
                              probe=udp_counters)
        st = m.status()
        if st:
            bench.notes[client].append("%s: %s" % (cpu_metric, ", ".join(
                "%s=%s" % (k, st[k]) for k in sorted(st)
                if k in ("downloaded_bytes", "hash_failures", "rerequested_blocks", "wasted_bytes"))
                + "; %.1f MB/s; UDP datagrams in %d, dropped for a full buffer %d (by %s's "
                "sockets: %s since it started)" % (
                    size / secs / 1e6, udp.get("InDatagrams", 0), udp.get("RcvbufErrors", 0),
                    client, own_udp_drops(m.proc.pid))))
    bench.measure(client, rate_metric or cpu_metric, fn, swarm, ready_metric=None)


def run(bench):
    args = bench.args
    data = os.path.join(bench.work, "utp-data")
    file = make_data(data, "single", args.seed, args.utp_size, "utp.bin")
    size = os.path.getsize(file)
    bench.utp_size = size
    sha1 = file_sha1(file)
    swarm = Swarm(bench.procs, bench.work, "utp", data, file, args.piece_length,
                  args.seed_mode, transport="utp")
    log("uTP-only swarm ready: tracker 127.0.0.1:%d, seeders %s" % (swarm.http_port, SEEDER_IPS))
    for r, client in bench.order():
        log("run %d/%d: %s: uTP first byte, sequential" % (r + 1, args.runs, client))
        ttfb(bench, client, swarm)
        seq(bench, client, swarm, sha1, size, "utp_seq", "utp_cpu")
        bench.log_results(client, "utp")
    swarm.stop()
    tcp = Swarm(bench.procs, bench.work, "utp-tcp", data, file, args.piece_length,
                args.seed_mode, transport="tcp")
    log("TCP-only swarm of the same file ready (each client's CPU per byte over TCP)")
    for r, client in bench.order():
        log("run %d/%d: %s: TCP sequential" % (r + 1, args.runs, client))
        seq(bench, client, tcp, sha1, size, None, "utp_tcp_cpu")
        bench.log_results(client, "utp_tcp")
    tcp.stop()
    for client in bench.clients:
        rate = median(bench.results[client].get("utp_seq", []))
        if not rate:
            continue
        capped = Swarm(bench.procs, bench.work, "utp-same-" + client, data, file,
                       args.piece_length, args.seed_mode, transport="tcp",
                       upload_limit=rate * 1e6 / len(SEEDER_IPS))
        log("TCP swarm capped at %s's uTP rate (%.1f MB/s in all) ready" % (client, rate))
        for r in range(args.runs):
            log("run %d/%d: %s: TCP sequential at the uTP rate" % (r + 1, args.runs, client))
            seq(bench, client, capped, sha1, size, "utp_same_seq", "utp_same_cpu")
        capped.stop()
    if args.utp_lossy_size:
        lossy(bench)


def lossy(bench):
    """The lossy path's part (see the module doc)."""
    args = bench.args
    data = os.path.join(bench.work, "utp-lossy-data")
    file = make_data(data, "single", args.seed + 1, args.utp_lossy_size, "lossy.bin")
    size, sha1 = os.path.getsize(file), file_sha1(file)
    swarm = ThinSwarm(bench.procs, bench.work, "utp-lossy", file, args.piece_length,
                      len(SEEDER_IPS), args.utp_lossy_rate, args.seed_mode, transport="utp")
    swarm.use_delay(args.utp_lossy_delay_ms, args.utp_lossy_jitter_ms, args.utp_lossy_loss)
    log("lossy uTP path ready: %s; %g ms each way + 0..%g ms, %g %% lost each way"
        % (swarm.describe(), args.utp_lossy_delay_ms, args.utp_lossy_jitter_ms,
           args.utp_lossy_loss * 100))
    for r, client in bench.order():
        log("run %d/%d: %s: lossy uTP path, first byte and sequential" % (
            r + 1, args.runs, client))
        swarm.keep_announced()
        ttfb(bench, client, swarm, "utp_lossy_ttfb")
        before = swarm.relay_stats()

        def fn(m, client=client, before=before):
            secs, _ = cold_read(bench, client, m, size, sha1, "utp_lossy_seq", "utp_lossy_cpu")
            now = swarm.relay_stats()
            bench.notes[client].append(
                "utp_lossy: %.2f MB/s; the relay carried %s datagrams to the client and lost "
                "%s, carried %s to the seeders and lost %s" % tuple(
                    [size / secs / 1e6] + [now.get(k, 0) - before.get(k, 0) for k in (
                        "to_client", "dropped_to_client", "to_target", "dropped_to_target")]))
        bench.measure(client, "utp_lossy_seq", fn, swarm, ready_metric=None)
        bench.log_results(client, "utp_lossy")
    swarm.stop()


if __name__ == "__main__":
    run_alone(sys.modules[__name__])
