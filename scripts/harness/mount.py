"""FUSE mounts: is a path mounted (/proc/self/mountinfo), btfs's status attribute, unmounting,
and `Mount`: one client process on a fresh mountpoint, ready once the kernel lists the mount
and the file to read stat()s (Debian's btfs mounts before it has loaded the torrent)."""

import os
import re
import shutil
import subprocess
import time

from harness.procs import MetricFailed, log, tail, vm_hwm

READY_TIMEOUT = 60.0  # spawn -> mount ready
EXIT_AFTER_UNMOUNT = 15.0
POLL = 0.005


def _mounts():
    """(mountpoint, fstype) of every mount this process sees, mountpoints as bytes."""
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            pre, sep, post = line.partition(b" - ")
            if not sep:
                continue
            # mountinfo writes space, tab, newline and backslash as \ooo octal.
            mp = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]),
                        pre.split(b" ")[4])
            yield mp, post.split(b" ")[0]


def is_fuse_mount(path):
    want = os.fsencode(path)
    return any(mp == want and (fstype == b"fuse" or fstype.startswith(b"fuse."))
               for mp, fstype in _mounts())


def mount_fstype(path):
    """The filesystem type of the mount at exactly `path` (the last one, on top), or None."""
    fstype = None
    for mp, t in _mounts():
        if mp == os.fsencode(path):
            fstype = t.decode()
    return fstype


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def status_text(mnt):
    """Our client's `user.btfs.status` attribute ("" for Debian's btfs or on error)."""
    try:
        return os.getxattr(mnt, "user.btfs.status").decode(errors="replace")
    except OSError:
        return ""


def unmount_lazy(mnt, tools=("fusermount3", "fusermount")):
    """`-u -z` with each tool in turn until `mnt` is no FUSE mount; works mid-read."""
    for tool in tools:
        if not is_fuse_mount(mnt):
            return
        subprocess.run([tool, "-u", "-z", mnt], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Client:
    """A filesystem to measure: `argv(torrent, mnt, scratch)` mounts it, in the foreground;
    `unmount` is its fusermount (Debian's btfs is FUSE 2)."""

    def __init__(self, name, argv, unmount, env=None):
        self.name, self.argv, self.unmount, self.env = name, argv, unmount, env


class Target:
    """What to mount (.torrent: a path or a link) and the file in it to read (.name)."""

    def __init__(self, torrent, name):
        self.torrent, self.name = torrent, name


class Mount:
    """One fresh client process on a fresh mountpoint (and data dir) under `work`."""

    count = 0

    def __init__(self, procs, work, client, target, ready_timeout=READY_TIMEOUT):
        Mount.count += 1
        self.procs, self.client = procs, client
        self.dir = os.path.join(work, "m%03d-%s" % (Mount.count, client.name))
        self.mnt = os.path.join(self.dir, "mnt")
        scratch = os.path.join(self.dir, "data")
        os.makedirs(self.mnt)
        os.makedirs(scratch)
        self.log = os.path.join(work, "logs", "m%03d-%s.log" % (Mount.count, client.name))
        self.path = os.path.join(self.mnt, target.name)
        t0 = time.monotonic()
        self.proc = procs.spawn(client.argv(target.torrent, self.mnt, scratch), self.log,
                                env=client.env)
        deadline = t0 + ready_timeout
        while not (is_fuse_mount(self.mnt) and exists(self.path)):
            if self.proc.poll() is not None:
                self.close()
                raise MetricFailed("%s exited (%s) before mounting: %s"
                                   % (client.name, self.proc.returncode, tail(self.log, 5)))
            if time.monotonic() > deadline:
                self.close()
                raise MetricFailed("%s not ready within %ds" % (client.name, ready_timeout))
            time.sleep(POLL)
        self.ready_at = time.monotonic()
        self.ready_s = self.ready_at - t0

    def vm_hwm(self):
        hwm = vm_hwm(self.proc.pid)
        if hwm is None:
            raise MetricFailed("no VmHWM for pid %d" % self.proc.pid)
        return hwm

    def status(self):
        """Our client's status attribute as a dict (empty for Debian's or on error)."""
        return dict(l.split(": ", 1) for l in status_text(self.mnt).splitlines() if ": " in l)

    def abort(self):
        """Ends the client quickly (which fails any blocked read) and unmounts lazily."""
        self.procs.stop(self.proc, grace=2.0)
        self.umount_lazy()
        shutil.rmtree(self.dir, ignore_errors=True)

    def umount_lazy(self):
        unmount_lazy(self.mnt, (self.client.unmount, "fusermount3", "fusermount"))

    def close(self):
        """Unmounts the way a user does, waits for the client to exit, then makes sure."""
        unmounted = True
        if is_fuse_mount(self.mnt):
            unmounted = subprocess.run(
                [self.client.unmount, "-u", self.mnt], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30).returncode == 0
        if unmounted:
            try:
                self.proc.wait(EXIT_AFTER_UNMOUNT)
            except subprocess.TimeoutExpired:
                log("%s pid %d still running %ds after unmount; ending it"
                    % (self.client.name, self.proc.pid, EXIT_AFTER_UNMOUNT))
        self.procs.stop(self.proc)
        self.umount_lazy()
        shutil.rmtree(self.dir, ignore_errors=True)


def unmount_work(work):
    """Lazily unmounts every Mount left under `work`. Nothing walks into a mountpoint: a stuck
    client would block the walk."""
    for name in sorted(os.listdir(work)):
        mnt = os.path.join(work, name, "mnt")
        if re.fullmatch(r"m\d+-\w+", name):
            unmount_lazy(mnt)
