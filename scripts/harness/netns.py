"""A private network namespace with loopback only. Debian's btfs listens on 0.0.0.0 and
bootstraps its DHT from public routers, and a DHT node talks to whatever addresses it learns:
in there, nothing leaves the machine."""

import os
import subprocess
import sys

from harness import PYTHON


def loopback_only():
    """True in a network namespace whose only interface is loopback."""
    # /proc/self/net follows our network namespace (/sys/class/net follows sysfs's mount).
    try:
        with open("/proc/self/net/dev") as f:
            names = [l.split(":")[0].strip() for l in f.readlines()[2:]]
    except OSError:
        return False
    return names == ["lo"]


def enter():
    """Re-runs this script, with the same arguments, in a new loopback-only network namespace
    (`unshare --net`, needs root), unless it is in one already or BTFS_BENCH_NETNS=0; without
    one it warns and goes on here."""
    if loopback_only():
        return
    if os.environ.get("BTFS_BENCH_NETNS", "1") != "0" and _can_unshare():
        # `exec` at each step: python keeps this PID, so signals reach it directly.
        os.execvp("unshare", ["unshare", "--net", "--", "sh", "-c",
                              'ip link set lo up && exec "$0" "$@"',
                              PYTHON, os.path.abspath(sys.argv[0])] + sys.argv[1:])
    sys.stderr.write("%s: no private network namespace (needs root); Debian's btfs may reach "
                     "out\n" % os.path.basename(sys.argv[0]))


def _can_unshare():
    try:
        return subprocess.run(["unshare", "--net", "--", "true"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    except OSError:
        return False
