"""Processes a script starts, each ended by its PID; the signals that interrupt it."""

import os
import signal
import socket
import subprocess
import sys
import time

from harness import REPO

GRACE = 5.0  # SIGTERM -> SIGKILL
RUN_TIMEOUT = 300.0  # a helper command (seeders hash their data, ffmpeg encodes)


def log(msg):
    sys.stderr.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


class Interrupted(Exception):
    pass


class MetricFailed(Exception):
    """One measurement failed: recorded, and the run goes on only with --keep-going."""


def _raise_interrupted(signum, _frame):
    raise Interrupted("signal %d" % signum)


def catch_signals():
    """SIGTERM and SIGINT raise Interrupted, so the cleanup in `finally` runs."""
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)


def ignore_signals():
    """From the start of the cleanup on: no second signal may cut it short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Procs:
    """Every process we started, each ended by its PID (SIGTERM, grace, SIGKILL)."""

    def __init__(self):
        self.live = []

    def spawn(self, argv, log_path, env=None, cwd=REPO, stdin=subprocess.DEVNULL, stdout=None):
        with open(log_path, "ab") as err:
            # Own session: a Ctrl-C in the terminal reaches only us, and we end the
            # children in order (mounts first, then seeders, then the tracker).
            p = subprocess.Popen(argv, stdin=stdin, stdout=err if stdout is None else stdout,
                                 stderr=err, cwd=cwd, env=env, start_new_session=True)
        self.live.append(p)
        return p

    def stop(self, p, grace=GRACE):
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.live:
            self.live.remove(p)

    def stop_all(self):
        for p in list(reversed(self.live)):
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.monotonic() + GRACE
        for p in list(self.live):
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.live.clear()


def free_port(ip):
    with socket.socket() as t:
        t.bind((ip, 0))
        return t.getsockname()[1]


def run(argv):
    """Runs a helper command to its end; its stdout, stripped. Raises with its stderr."""
    out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         cwd=REPO, timeout=RUN_TIMEOUT)
    if out.returncode != 0:
        raise RuntimeError("%s failed (%d):\n%s" % (" ".join(argv), out.returncode, out.stderr))
    return out.stdout.strip()


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def vm_hwm(pid):
    """Peak resident memory (VmHWM) of a live process, in bytes; None if unknown."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def settle(pid, quiet=0.2, longest=3.0):
    """Waits until a process has used no CPU for `quiet` seconds (at most `longest`): its
    startup work (a TLS context, say, which costs tens of ms) is then out of a CPU window that
    should hold the work of one read only."""
    deadline = time.monotonic() + longest
    last, since = cpu_secs(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = cpu_secs(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


def cpu_secs(pid):
    """CPU time (user + system, /proc/PID/stat) a live process has used, in seconds; None if
    unknown. Its resolution is the kernel's clock tick (10 ms)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            # After "pid (comm) ": state is field 0, utime field 11, stime field 12.
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None
