#!/usr/bin/python3
"""Benchmark part `encryption`: a swarm whose seeders require encryption; ours and Debian's.

The swarm: one file of --enc-size bytes and three libtorrent seeders that accept and make only
RC4-encrypted connections (swarm.py seed --encryption forced: libtorrent's out_enc_policy and
in_enc_policy forced, allowed_enc_level rc4) behind opentracker, as in the `file` part. Both
clients run with their defaults (ours: --encryption allow, so its plaintext handshake is hung
up on and it dials again encrypted). Per client and per run:
  enc_ttfb   fresh mount; open the file and read 1 byte; mount ready -> byte returned
  enc_seq    fresh mount, once the client has settled (no CPU for 0.2 s); the whole file in
             1 MiB reads with sha1 (checked); MB/s
  enc_cpu    the client's CPU time over that read (utime + stime, /proc/PID/stat), per MB
Then a second swarm of the same file whose seeders take plaintext (libtorrent's default
policy), for ours only:
  plain_cpu  the same read's CPU time per MB over plain TCP
  enc_cpu_frac = enc_cpu / plain_cpu (target: at most 150 %)
and, to tell what part of that gap any client must pay, RC4's own cost:
  rc4_cpu    OpenSSL's RC4 keystream over 16 KiB buffers (`openssl speed -evp rc4`: its
             hand-written assembly, the fastest we know), CPU ms per MB
  enc_floor_frac = (plain_cpu + rc4_cpu) / plain_cpu: what enc_cpu_frac would be if
             decrypting cost only the keystream and everything else cost what plain TCP does
"""

import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness import MiB
from harness.cli import run_alone
from harness.measure import cold_read, file_sha1, first_byte
from harness.procs import log
from harness.report import parse_size
from harness.swarm import SEEDER_IPS, Swarm, make_data

NAME = "encryption"
HELP = "seeders that require encryption: first byte, sequential, CPU per byte"
TOOLS = []


def add_options(p):
    p.add_argument("--enc-size", type=parse_size, default=64 * MiB,
                   help="encryption part: file size (64M)")


def check(args, p):
    if args.enc_size < 2 * MiB:
        p.error("--enc-size >= 2M")


def ttfb(bench, client, swarm):
    def fn(m):
        bench.record(client, "enc_ttfb", first_byte(m, bench.args.read_timeout) - m.ready_at)
    bench.measure(client, "enc_ttfb", fn, swarm)


def seq(bench, client, swarm, sha1, rate_metric, cpu_metric):
    """A fresh mount's sequential read, once the client has settled: its rate (if
    `rate_metric`) and CPU time per MB."""
    size = bench.enc_size

    def fn(m):
        cold_read(bench, client, m, size, sha1, rate_metric, cpu_metric)
        st = m.status()
        if st:
            bench.notes[client].append("%s: %s" % (cpu_metric, ", ".join(
                "%s=%s" % (k, st[k]) for k in sorted(st)
                if k in ("peers", "encrypted_peers", "refused_plaintext", "downloaded_bytes",
                         "wasted_bytes", "rerequested_blocks", "hash_failures"))))
    bench.measure(client, rate_metric or cpu_metric, fn, swarm)


def rc4_reference(bench):
    """Records OpenSSL's RC4 keystream cost (CPU ms per MB, its `speed` divides by user CPU
    time) as ours' rc4_cpu; skipped, with a note, where `openssl` or its RC4 is missing."""
    if not shutil.which("openssl"):
        bench.notes["ours"].append("rc4_cpu: no openssl command")
        return
    out = subprocess.run(["openssl", "speed", "-provider", "legacy", "-provider", "default",
                          "-evp", "rc4", "-bytes", "16384", "-seconds", "1", "-mr"],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True).stdout
    # -mr: "+F:<n>:RC4:<bytes per second>"
    rates = [float(l.rsplit(":", 1)[1]) for l in out.splitlines() if l.startswith("+F:")]
    if not rates or rates[0] <= 0:
        bench.notes["ours"].append("rc4_cpu: openssl has no RC4 here")
        return
    bench.record("ours", "rc4_cpu", 1e9 / rates[0])


def run(bench):
    args = bench.args
    data = os.path.join(bench.work, "enc-data")
    file = make_data(data, "single", args.seed, args.enc_size, "enc.bin")
    bench.enc_size = os.path.getsize(file)
    sha1 = file_sha1(file)
    swarm = Swarm(bench.procs, bench.work, "enc", data, file, args.piece_length,
                  args.seed_mode, encryption="forced")
    log("encrypted swarm ready: tracker 127.0.0.1:%d, seeders %s (forced encryption)"
        % (swarm.http_port, SEEDER_IPS))
    for r, client in bench.order():
        log("run %d/%d: %s: encrypted first byte, sequential" % (r + 1, args.runs, client))
        ttfb(bench, client, swarm)
        seq(bench, client, swarm, sha1, "enc_seq", "enc_cpu")
        bench.log_results(client, "enc")
    swarm.stop()
    if args.only and "ours" not in args.only:
        return
    swarm = Swarm(bench.procs, bench.work, "plain", data, file, args.piece_length,
                  args.seed_mode)
    log("plain swarm ready: tracker 127.0.0.1:%d" % swarm.http_port)
    for r in range(args.runs):
        log("run %d/%d: ours: sequential over plain TCP" % (r + 1, args.runs))
        seq(bench, "ours", swarm, sha1, None, "plain_cpu")
        rc4_reference(bench)
        bench.log_results("ours", "plain")
    swarm.stop()


if __name__ == "__main__":
    run_alone(sys.modules[__name__])
