#!/usr/bin/python3
"""A real BitTorrent swarm on loopback for btfs's integration tests and benchmarks.

libtorrent (an independent implementation) makes the torrents, seeds and leeches;
Debian's opentracker tracks. Everything binds to 127.0.0.0/8 only (or ::1: --bind takes an
IPv6 address too, and IP:PORT arguments are [IPV6]:PORT then). Run it with
Debian's python (/usr/bin/python3), which has the python3-libtorrent module.

Subcommands:
  make-data DIR --layout single|multi|many --seed N [--size BYTES] [--name NAME]
      deterministic content under DIR; prints the path of the file/folder made.
  make-torrent DATA_PATH OUT.torrent --piece-length BYTES [--tracker URL ...] [--one-tier]
               [--web-seed URL ...]
      v1 torrent of DATA_PATH; prints the info-hash (hex). --web-seed: a BEP 19 url-list
      entry (an HTTP server holding the files; the info-hash does not depend on it).
  info-hash FILE.torrent
      prints libtorrent's v1 info-hash (hex).
  seed TORRENT DATA_PARENT_DIR --bind 127.0.x.1 --port P [--corrupt] [--upload-limit B/s]
       [--ready-file F] [--work-dir D] [--seed-mode] [--no-wait-announce]
       [--dht-node IP:PORT ...] [--keep-redundant] [--transport tcp|utp|both]
       [--encryption enabled|forced|disabled] [--lsd]
      seeds until SIGTERM/SIGINT; writes F ("IP:PORT", where it listens) once it is a seed
      and (unless --no-wait-announce, or the torrent has no trackers) a tracker answered.
      --port 0: any free port, the one it got written to F. A port taken is an error
      (listen_failed_alert, exit 1), never a quiet move to another port (in every
      subcommand that uses libtorrent).
      With --dht-node: also a DHT node (see "DHT mode" below) announcing the torrent.
      With --lsd: also local service discovery (BEP 14): announces the torrent on the
      multicast group 239.192.152.143:6771 (at start, then every 5 minutes) and connects to
      whoever announces it there; logs "<== LSD: IP:PORT ih: HASH" for each announce heard
      (and "==> LSD" for its own). Only inside a loopback-only network namespace, where
      multicast cannot leave the machine.
      With --keep-redundant: keeps connections to peers that want nothing (pex-hub).
      --transport (seed and leech): TCP only by default; utp: uTP (BEP 29) only, in and
      out; both.
      --encryption (seed and leech): libtorrent's protocol encryption policy, both ways.
      enabled (libtorrent's default): dials encrypted first, accepts both; forced: RC4-encrypted
      connections only, in and out; disabled: plaintext only.
  leech TORRENT OUTDIR --bind IP --peer IP:PORT ... [--timeout S] [--stop-after-hash-fails N]
        [--dht-node IP:PORT ...] [--pex] [--transport tcp|utp|both]
        [--encryption enabled|forced|disabled] [--port P] [--ready-file F]
      downloads from the given peers only; prints a JSON summary on stdout ("payload_rate":
      payload bytes/s from the first payload seen to the end, once any arrived).
      Exit 0 when complete, 2 on timeout, 3 once N hash failures were seen.
      --port: listen there (0: any free port, the default); given, --peer is optional, for a leecher
      that only waits to be dialled. --ready-file: "IP:PORT" written once it listens.
      With --dht-node (then --peer is optional): also from the peers its DHT lookups find,
      and the summary gains "peers": every address it connected to.
      With --pex: also from the peers they name in PEX messages (BEP 11); the summary
      gains "peers".
  pex-hub TORRENT --bind IP --port P --peer IP:PORT ... [--ready-file F]
      a peer that has no data and downloads nothing (every file priority 0), connects to
      the given peers and keeps those connections, and does PEX: whoever connects to it
      learns its peers. Writes F once connected to all of them; runs until SIGTERM.
  transmission-seed TORRENT DATA_PARENT_DIR --bind IP --port P --rpc-port R [--ready-file F]
       [--encryption required|preferred|tolerated]
      seeds with Debian's transmission-daemon (a second independent client) until
      SIGTERM/SIGINT: its config in a temp dir (no DHT, LPD, PEX, uTP or port mapping; RPC on
      127.0.0.1:R), the torrent added over RPC and verified; writes F once it is a seed.
  tracker --dir D --http-port P --udp-port Q [--whitelist HEX ...] [--whitelist-file F]
      writes D/whitelist.txt and execs /usr/bin/opentracker (same PID) on 127.0.0.1.

How the lying seeder (--corrupt) lies: it copies the torrent's files into its work dir,
adds them normally so libtorrent hashes every piece and becomes a seed, and only then
flips one byte (XOR 0xFF) in every 16 KiB block of the copy, writing in place. libtorrent
never re-hashes a piece it already verified and reads blocks through mmap of the same
files, so it keeps advertising every piece and uploads wrong bytes for every block.
(seed_mode would not do: libtorrent hashes each piece on its first request in seed mode
and leaves seed mode when one fails.)

DHT mode (--dht-node, for tests run inside a loopback-only network namespace): the session
runs a DHT node that knows only the given nodes (never the public routers), with the
loopback-friendly settings of scripts/dht_nodes.py, and looks the torrent up (announcing
itself) every DHT_ANNOUNCE_INTERVAL seconds instead of every 15 minutes.
"""

import argparse
import base64
import json
import os
import random
import select
import shutil
import signal
import sys
import tempfile
import subprocess
import time
import urllib.error
import urllib.request
import warnings

BLOCK = 16 * 1024
OPENTRACKER = "/usr/bin/opentracker"


def log(msg):
    sys.stderr.write("[swarm %s %d] %s\n" % (time.strftime("%H:%M:%S"), os.getpid(), msg))
    sys.stderr.flush()


def lt():
    """Imports libtorrent lazily so `tracker` and `make-data` work without it."""
    try:
        import libtorrent
    except ImportError:
        sys.exit("swarm.py: libtorrent missing: run it with /usr/bin/python3 "
                 "(apt-get install python3-libtorrent)")
    return libtorrent


# ---------------------------------------------------------------- make-data

def write_random(path, size, rng):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 1 << 20)
            f.write(rng.randbytes(n))
            left -= n


# Sizes chosen to straddle piece and block boundaries for any power-of-two piece length
# from 16 KiB up: smaller than a block, exactly a block, a block plus one, several pieces.
MULTI_FILES = [
    ("a.txt", 1),
    ("empty.bin", 0),
    ("small file.bin", 1000),
    ("exact block.bin", BLOCK),
    ("block plus one.bin", BLOCK + 1),
    ("mid.bin", 100_003),
    ("sub dir/ünïcødé 名前.bin", 333_333),
    ("sub dir/deeper/tail.bin", 17),
    ("zz last.bin", None),  # None: --size bytes
]


def make_data(args):
    rng = random.Random(args.seed)
    os.makedirs(args.dir, exist_ok=True)
    if args.layout == "single":
        root = os.path.join(args.dir, args.name or "single.bin")
        write_random(root, args.size, rng)
    elif args.layout == "multi":
        root = os.path.join(args.dir, args.name or "multi")
        for rel, size in MULTI_FILES:
            write_random(os.path.join(root, rel), args.size if size is None else size, rng)
    else:
        root = os.path.join(args.dir, args.name or "many")
        # 1,000 files: 10 folders of 10 folders of 10 files, sizes 0..3000 bytes
        # (never 0, so every file is in the torrent).
        for i in range(10):
            for j in range(10):
                for k in range(10):
                    rel = "d%d/e%d/f%d-%d-%d.dat" % (i, j, i, j, k)
                    write_random(os.path.join(root, rel), rng.randint(1, 3000), rng)
    print(root)


# ------------------------------------------------------------- make-torrent

def make_torrent(args):
    L = lt()
    data = os.path.abspath(args.data_path.rstrip("/"))
    fs = L.file_storage()
    # Files in sorted path order (not readdir order), so the same data gives the same
    # info-hash on every machine.
    if os.path.isfile(data):
        fs.add_file(os.path.basename(data), os.path.getsize(data))
    else:
        found = []
        for dirpath, _dirs, files in os.walk(data):
            for name in files:
                full = os.path.join(dirpath, name)
                found.append((os.path.relpath(full, os.path.dirname(data)), os.path.getsize(full)))
        for rel, size in sorted(found):
            fs.add_file(rel, size)
    if fs.num_files() == 0:
        sys.exit("swarm.py: no files under %s" % data)
    # v1 only: btfs speaks v1, and a hybrid torrent would get BEP 47 pad files.
    ct = L.create_torrent(fs, args.piece_length, flags=L.create_torrent.v1_only)
    for i, url in enumerate(args.tracker or []):
        ct.add_tracker(url, 0 if args.one_tier else i)
    for url in args.web_seed or []:
        ct.add_url_seed(url)
    ct.set_creator("btfs scripts/swarm.py")
    L.set_piece_hashes(ct, os.path.dirname(data))
    with open(args.out, "wb") as f:
        f.write(L.bencode(ct.generate()))
    print(info_hash_of(args.out))


def info_hash_of(path):
    L = lt()
    ti = L.torrent_info(path)
    return str(ti.info_hashes().v1)


def info_hash(args):
    print(info_hash_of(args.torrent))


# --------------------------------------------------------------- sessions

def base_settings(bind, port, transport="tcp"):
    """Settings for a session on one loopback address, with nothing discovered but
    what the test hands it, speaking `transport` (tcp, utp or both) in and out."""
    settings = {
        "listen_interfaces": endpoint(bind, port),
        "outgoing_interfaces": bind,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_ip_notifier": False,
        # TCP only by default: the tests that are not about uTP stay as they were.
        "enable_outgoing_utp": transport in ("utp", "both"),
        "enable_incoming_utp": transport in ("utp", "both"),
        "enable_outgoing_tcp": transport in ("tcp", "both"),
        "enable_incoming_tcp": transport in ("tcp", "both"),
        # Every test peer is on 127.0.0.0/8; several may share an address.
        "allow_multiple_connections_per_ip": True,
        # Default True: refuses trackers on loopback whose path is not /announce and
        # peers on loopback; the whole swarm lives there.
        "ssrf_mitigation": False,
        "announce_to_all_trackers": True,
        "announce_to_all_tiers": True,
        "stop_tracker_timeout": 1,
        # On a port taken, libtorrent would quietly listen on the next one (or any): the
        # address a test was given would then be someone else's. Fail instead (the caller
        # sees listen_failed_alert); --port 0 asks for any free port, reported in --ready-file.
        "max_retry_port_bind": 0,
        "listen_system_port_fallback": False,
        "unchoke_slots_limit": -1,
        "alert_mask": 0x7FFFFFFF,
        "user_agent": "btfs-test-swarm",
    }
    return settings


# How often (s) a DHT-mode session looks its torrent up and announces it; libtorrent's
# default is 15 minutes, and its first announce may come before the routing table has a node.
DHT_ANNOUNCE_INTERVAL = 10


def dht_settings():
    """DHT-mode settings added to base_settings: those of scripts/dht_nodes.py's nodes (the
    reasons are written there), and a short announce interval."""
    from dht_nodes import LOOPBACK_DHT  # beside this script

    return dict(LOOPBACK_DHT, dht_announce_interval=DHT_ANNOUNCE_INTERVAL)


def dht_session(L, bind, port, nodes, transport="tcp"):
    """A session in DHT mode that knows `nodes` (["IP:PORT", ...])."""
    settings = base_settings(bind, port, transport)
    settings.update(dht_settings())
    ses = L.session(settings)
    for n in nodes:
        ses.add_dht_node(parse_peer(n))
    log("DHT on %s:%d, knows %s" % (bind, port, nodes))
    return ses


def apply_encryption(L, ses, mode):
    """--encryption: libtorrent's policy for outgoing and incoming connections, and the
    methods it allows (forced: RC4 only, as a client that requires encryption does)."""
    if mode == "forced":
        settings = {"out_enc_policy": int(L.enc_policy.forced),
                    "in_enc_policy": int(L.enc_policy.forced),
                    "allowed_enc_level": int(L.enc_level.rc4),
                    "prefer_rc4": True}
    elif mode == "disabled":
        settings = {"out_enc_policy": int(L.enc_policy.disabled),
                    "in_enc_policy": int(L.enc_policy.disabled)}
    else:
        return
    ses.apply_settings(settings)
    log("encryption %s: %s" % (mode, settings))


def apply_upload_limit(L, ses, limit):
    """libtorrent exempts peers on local networks (its local peer class) from rate limits;
    map every address to the global class only, so the limit holds on loopback. Both
    families: an address no rule covers would be in no class at all, so unlimited."""
    flt = L.ip_filter()
    glob = 1 << L.session.global_peer_class_id
    flt.add_rule("0.0.0.0", "255.255.255.255", glob)
    flt.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", glob)
    ses.set_peer_class_filter(flt)
    # libtorrent hands out each tick's quota at its start: at the default tick (500 ms) a
    # seeder sends half a second's worth at once. A short tick keeps it near the cap. (It
    # still saves up to 3 s of unused quota while idle: a burst after an idle spell, which
    # the benchmark's thin swarm takes out in its relay.) The cap counts what the peer
    # protocol sends (payload and framing), not libtorrent's estimate of TCP/IP headers, so
    # a download can get the rate asked for.
    ses.apply_settings({"upload_rate_limit": limit, "tick_interval": 20,
                        "rate_limit_ip_overhead": False})


class AlertWait:
    """Waits for a session's alerts without session.wait_for_alert, which crashes the process
    now and then. The binding turns the alert that call returns (a pointer to the front of the
    queue libtorrent's thread keeps appending to) into a Python object after the lock is
    released; when the queue grows meanwhile, libtorrent moves it to new storage and frees
    the old, and the conversion reads the freed alert's type: SIGSEGV in
    libtorrent.cpython-*.so ("segfault at fffffffffffffff8" in dmesg), a seeder or leecher
    gone in the middle of a test. Here libtorrent writes a byte to a pipe when the queue stops
    being empty (set_alert_fd) and we wait on the pipe; pop_alerts hands over a whole queue,
    which libtorrent no longer touches, so it is safe."""

    def __init__(self, ses):
        self.r, w = os.pipe()
        # libtorrent writes from its own thread, holding the alert lock: never block there.
        os.set_blocking(w, False)
        os.set_blocking(self.r, False)
        # Both ends stay open until the process exits: the session may outlive this object.
        ses.set_alert_fd(w)

    def wait(self, ms):
        """Returns once an alert may be waiting, or after `ms` milliseconds."""
        select.select([self.r], [], [], ms / 1000)
        try:
            while os.read(self.r, 4096):
                pass
        except BlockingIOError:
            pass


class Stop:
    def __init__(self):
        self.flag = False
        signal.signal(signal.SIGTERM, self.set)
        signal.signal(signal.SIGINT, self.set)

    def set(self, signum, _frame):
        log("signal %d: stopping" % signum)
        self.flag = True


def log_utp_counters(ses):
    """Logs the session's uTP counters (libtorrent's session stats): how its uTP sockets
    fared, e.g. timeouts against fast retransmits on a lossy path."""
    L = lt()
    names = sorted(m.name for m in L.session_stats_metrics() if m.name.startswith("utp.utp_"))
    ses.post_session_stats()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        for a in ses.pop_alerts():
            if isinstance(a, L.session_stats_alert):
                log("uTP counters: " + " ".join(
                    "%s=%d" % (n[8:], a.values.get(n, 0)) for n in names))
                return
        time.sleep(0.05)


def corrupt_in_place(ti, save_path):
    """Flips one byte in every 16 KiB block of the torrent's data under save_path."""
    fs = ti.files()
    total = ti.total_size()
    flipped = 0
    off = 0
    while off < total:
        target = min(off + 7, total - 1)  # a byte inside this block
        for slice_ in ti.map_block(0, target, 1):
            path = os.path.join(save_path, fs.file_path(slice_.file_index))
            with open(path, "r+b") as f:
                f.seek(slice_.offset)
                b = f.read(1)
                f.seek(slice_.offset)
                f.write(bytes([b[0] ^ 0xFF]))
                flipped += 1
        off += BLOCK
    return flipped


def copy_payload(ti, src_parent, dst_parent):
    fs = ti.files()
    for i in range(fs.num_files()):
        rel = fs.file_path(i)
        dst = os.path.join(dst_parent, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(os.path.join(src_parent, rel), dst)


def seed(args):
    L = lt()
    stop = Stop()
    ti = L.torrent_info(args.torrent)
    save_path = os.path.abspath(args.data_parent)
    made_work_dir = None
    if args.corrupt:
        if args.work_dir:
            work = args.work_dir
            os.makedirs(work, exist_ok=True)
        else:
            work = made_work_dir = tempfile.mkdtemp(prefix="swarm-corrupt-")
        copy_payload(ti, save_path, work)
        save_path = os.path.abspath(work)
        log("corrupt seeder: serving a copy in %s" % save_path)

    if args.dht_node:
        ses = dht_session(L, args.bind, args.port, args.dht_node, args.transport)
    else:
        ses = L.session(base_settings(args.bind, args.port, args.transport))
    apply_encryption(L, ses, args.encryption)
    if args.lsd:
        ses.apply_settings({"enable_lsd": True})
    if args.upload_limit:
        apply_upload_limit(L, ses, args.upload_limit)
    if args.keep_redundant:
        # By default a seed drops an upload-only peer ("upload to upload connection").
        ses.apply_settings({"close_redundant_connections": False})
    atp = L.add_torrent_params()
    atp.ti = ti
    atp.save_path = save_path
    # Not auto-managed: the queue must never pause a test seeder.
    atp.flags = L.torrent_flags.disable_dht | L.torrent_flags.disable_lsd | L.torrent_flags.disable_pex
    if args.seed_mode and not args.corrupt:
        atp.flags |= L.torrent_flags.seed_mode
    if args.dht_node:
        atp.flags &= ~L.torrent_flags.disable_dht
    if args.lsd:
        atp.flags &= ~L.torrent_flags.disable_lsd
    h = ses.add_torrent(atp)
    has_trackers = len(h.trackers()) > 0
    log("seeding %s (%s) on %s:%d from %s, trackers=%s" % (
        ti.name(), ti.info_hashes().v1, args.bind, args.port, save_path,
        [t["url"] for t in h.trackers()]))

    seeding = False
    checked = False
    announced = not has_trackers or args.no_wait_announce
    ready = False
    rc = 0
    alerts = AlertWait(ses)
    while not stop.flag:
        alerts.wait(250)
        for a in ses.pop_alerts():
            if isinstance(a, L.torrent_checked_alert):
                checked = True
            elif isinstance(a, L.tracker_reply_alert):
                if not announced:
                    log("tracker reply: %s" % a.message())
                announced = True
            elif isinstance(a, (L.tracker_error_alert, L.tracker_warning_alert,
                                L.listen_failed_alert, L.torrent_error_alert,
                                L.file_error_alert, L.hash_failed_alert,
                                L.peer_error_alert, L.peer_ban_alert)):
                log("%s: %s" % (type(a).__name__, a.message()))
            elif isinstance(a, L.listen_succeeded_alert):
                log("listening: %s" % a.message())
            elif args.dht_node and isinstance(a, L.dht_reply_alert):
                log("DHT: %s" % a.message())
            elif args.lsd and (isinstance(a, L.lsd_error_alert)
                               or isinstance(a, L.log_alert) and "LSD" in a.message()):
                # "<== LSD: IP:PORT ih: HASH": a peer announced the torrent, and was added.
                log("%s: %s" % (type(a).__name__, a.message()))
            elif isinstance(a, (L.peer_connect_alert, L.incoming_connection_alert,
                                L.peer_disconnected_alert)):
                log("%s: %s" % (type(a).__name__, a.message()))
            if isinstance(a, (L.listen_failed_alert, L.torrent_error_alert)):
                rc = 1
                stop.flag = True
        st = h.status()
        if not seeding and st.is_seeding:
            seeding = True
            log("is a seed (%d pieces)" % ti.num_pieces())
            if args.corrupt:
                n = corrupt_in_place(ti, save_path)
                log("corrupted %d bytes (one per 16 KiB block) after the check" % n)
        elif not seeding and checked:
            log("data check failed: %d/%d pieces on disk" % (st.num_pieces, ti.num_pieces()))
            rc = 1
            break
        if seeding and announced and not ready:
            ready = True
            # Peers it finds itself, as if a tracker had named them: it connects to them once.
            for p in args.peer:
                h.connect_peer(parse_peer(p))
                log("connecting to %s" % p)
            write_ready(args, ses.listen_port())
            log("ready")
    if args.transport != "tcp":
        log_utp_counters(ses)
    del h
    del ses  # sends "stopped" to the trackers, bounded by stop_tracker_timeout
    if made_work_dir:
        shutil.rmtree(made_work_dir, ignore_errors=True)
    log("exit %d" % rc)
    return rc


def write_ready(args, port):
    """Writes "IP:PORT" (where it listens: `port`, the one --port asked for or, for --port 0,
    the one it got) to --ready-file, if given, at once (a rename): a reader never sees it
    half written."""
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(endpoint(args.bind, port) + "\n")
        os.rename(tmp, args.ready_file)


def parse_peer(s):
    """IP:PORT or [IPV6]:PORT -> (IP, PORT)."""
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def endpoint(ip, port):
    """IP:PORT, with an IPv6 address in brackets."""
    return ("[%s]:%d" if ":" in str(ip) else "%s:%d") % (ip, port)


def wait_dht_nodes(ses, alerts, stop, deadline):
    """Waits until the session's DHT routing table has a node (or stop/deadline)."""
    while not stop.flag and time.monotonic() < deadline:
        with warnings.catch_warnings():
            # session.status() is deprecated in 2.0 but is the one call that gives the
            # routing table size.
            warnings.simplefilter("ignore", DeprecationWarning)
            nodes = ses.status().dht_nodes
        if nodes > 0:
            log("DHT routing table: %d nodes" % nodes)
            return
        alerts.wait(100)
        ses.pop_alerts()
    log("DHT routing table still empty")


def leech(args):
    L = lt()
    stop = Stop()
    if not args.peer and not args.dht_node and args.port is None:
        sys.exit("swarm.py leech: give --peer, --dht-node or --port")
    if args.dht_node:
        ses = dht_session(L, args.bind, args.port or 0, args.dht_node, args.transport)
    else:
        ses = L.session(base_settings(args.bind, args.port or 0, args.transport))
    alerts = AlertWait(ses)
    apply_encryption(L, ses, args.encryption)
    atp = L.add_torrent_params()
    atp.ti = L.torrent_info(args.torrent)
    atp.save_path = os.path.abspath(args.outdir)
    atp.flags = (L.torrent_flags.disable_dht | L.torrent_flags.disable_lsd
                 | L.torrent_flags.disable_pex | L.torrent_flags.paused)
    if args.dht_node:
        atp.flags &= ~L.torrent_flags.disable_dht
    if args.pex:
        atp.flags &= ~L.torrent_flags.disable_pex
    h = ses.add_torrent(atp)
    h.replace_trackers([])  # peers come from --peer (and the DHT, and PEX) only
    if args.dht_node:
        # A lookup before the routing table has a node finds nothing: start after one.
        wait_dht_nodes(ses, alerts, stop, time.monotonic() + args.timeout)
    h.resume()
    for p in args.peer:
        h.connect_peer(parse_peer(p))
    log("leeching %s from %s" % (atp.ti.name(), args.peer))
    deadline = time.monotonic() + args.timeout
    hash_fails = 0
    rc = 2
    last_connect = time.monotonic()
    connected = set()
    first_payload = None  # (time, bytes) when payload was first seen: the rate's start
    while not stop.flag and time.monotonic() < deadline:
        alerts.wait(250)
        if first_payload is None:
            got = h.status().total_payload_download
            if got > 0:
                first_payload = (time.monotonic(), got)
        for a in ses.pop_alerts():
            if isinstance(a, L.hash_failed_alert):
                hash_fails += 1
                log("hash failed: piece %d" % a.piece_index)
            elif args.dht_node and isinstance(a, L.dht_reply_alert):
                log("DHT: %s" % a.message())
            elif (args.dht_node or args.pex) and isinstance(a, L.peer_connect_alert):
                connected.add(endpoint(a.endpoint[0], a.endpoint[1]))
                log("%s: %s" % (type(a).__name__, a.message()))
            elif isinstance(a, (L.peer_error_alert, L.peer_ban_alert, L.peer_connect_alert,
                                L.peer_disconnected_alert, L.torrent_error_alert,
                                L.file_error_alert, L.incoming_connection_alert,
                                L.listen_failed_alert)):
                log("%s: %s" % (type(a).__name__, a.message()))
            elif isinstance(a, L.listen_succeeded_alert):
                log("listening: %s" % a.message())
                if a.socket_type == L.socket_type_t.tcp:
                    write_ready(args, a.port)
            if isinstance(a, L.listen_failed_alert) and a.socket_type == L.socket_type_t.tcp:
                stop.flag = True
        st = h.status()
        if st.is_seeding:
            rc = 0
            break
        if args.stop_after_hash_fails and hash_fails >= args.stop_after_hash_fails:
            rc = 3
            break
        if time.monotonic() - last_connect > 5 and st.num_peers == 0:
            for p in args.peer:  # a peer may have refused us while still starting
                h.connect_peer(parse_peer(p))
            last_connect = time.monotonic()
    st = h.status()
    summary = {"complete": bool(st.is_seeding), "hash_failures": hash_fails,
               "pieces": st.num_pieces, "total_pieces": atp.ti.num_pieces(),
               "bytes_done": st.total_wanted_done}
    if first_payload is not None:
        # Payload bytes per second from the first payload seen (connection setup left out).
        t0, b0 = first_payload
        secs = time.monotonic() - t0
        summary["payload_rate"] = (st.total_payload_download - b0) / secs if secs > 0 else None
    if args.dht_node or args.pex:
        summary["peers"] = sorted(connected)
    print(json.dumps(summary))
    log("exit %d" % rc)
    return rc


def pex_hub(args):
    L = lt()
    stop = Stop()
    settings = base_settings(args.bind, args.port)
    # A peer that wants nothing is "finished": by default it drops seeds as redundant. It
    # still tells them it is upload-only, so its seeds need `seed --keep-redundant`.
    settings["close_redundant_connections"] = False
    ses = L.session(settings)
    ti = L.torrent_info(args.torrent)
    atp = L.add_torrent_params()
    atp.ti = ti
    atp.save_path = tempfile.mkdtemp(prefix="swarm-pex-hub-")
    atp.file_priorities = [0] * ti.num_files()
    atp.flags = L.torrent_flags.disable_dht | L.torrent_flags.disable_lsd
    h = ses.add_torrent(atp)
    h.replace_trackers([])
    want = set(args.peer)
    log("PEX hub for %s on %s:%d, peers %s" % (ti.name(), args.bind, args.port, sorted(want)))
    ready = False
    last_connect = 0.0
    rc = 0
    alerts = AlertWait(ses)
    while not stop.flag:
        alerts.wait(250)
        for a in ses.pop_alerts():
            if isinstance(a, (L.peer_connect_alert, L.incoming_connection_alert,
                              L.peer_disconnected_alert, L.peer_error_alert,
                              L.listen_failed_alert, L.listen_succeeded_alert,
                              L.torrent_error_alert)):
                log("%s: %s" % (type(a).__name__, a.message()))
            if isinstance(a, L.listen_failed_alert):
                rc = 1
                stop.flag = True
        busy = L.peer_info.connecting | L.peer_info.handshake
        connected = {endpoint(*p.ip) for p in h.get_peer_info() if not p.flags & busy}
        if not want <= connected and time.monotonic() - last_connect > 2:
            for p in want - connected:
                h.connect_peer(parse_peer(p))
            last_connect = time.monotonic()
        if not ready and want <= connected:
            ready = True
            write_ready(args, ses.listen_port())
            log("ready: connected to %s" % sorted(want))
    st = h.status()
    log("downloaded %d bytes" % st.total_payload_download)
    del h
    del ses
    shutil.rmtree(atp.save_path, ignore_errors=True)
    log("exit %d" % rc)
    return rc


# ------------------------------------------------------- transmission-seed

TRANSMISSION = "/usr/bin/transmission-daemon"
# Transmission's `encryption` setting.
TRANSMISSION_ENCRYPTION = {"tolerated": 0, "preferred": 1, "required": 2}
# torrent-get `status`: seeding.
TR_STATUS_SEED = 6


class TransmissionRpc:
    """JSON-RPC to a transmission-daemon, with its session-id handshake (HTTP 409)."""

    def __init__(self, port):
        self.url = "http://127.0.0.1:%d/transmission/rpc" % port
        self.session_id = ""

    def call(self, method, **arguments):
        body = json.dumps({"method": method, "arguments": arguments}).encode()
        for _ in range(2):
            req = urllib.request.Request(self.url, data=body, headers={
                "X-Transmission-Session-Id": self.session_id,
                "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    reply = json.load(r)
            except urllib.error.HTTPError as e:
                if e.code == 409:
                    self.session_id = e.headers.get("X-Transmission-Session-Id", "")
                    continue
                raise
            if reply.get("result") != "success":
                raise RuntimeError("transmission %s: %s" % (method, reply.get("result")))
            return reply.get("arguments", {})
        raise RuntimeError("transmission %s: no session id" % method)


def transmission_seed(args):
    stop = Stop()
    config = tempfile.mkdtemp(prefix="swarm-transmission-")
    save_path = os.path.abspath(args.data_parent)
    settings = {
        "bind-address-ipv4": args.bind,
        "bind-address-ipv6": "::1",
        "peer-port": args.port,
        "peer-port-random-on-start": False,
        "port-forwarding-enabled": False,
        "dht-enabled": False,
        "lpd-enabled": False,
        "pex-enabled": False,
        "utp-enabled": False,
        "blocklist-enabled": False,
        "encryption": TRANSMISSION_ENCRYPTION[args.encryption],
        "rpc-enabled": True,
        "rpc-bind-address": "127.0.0.1",
        "rpc-port": args.rpc_port,
        "rpc-authentication-required": False,
        "rpc-whitelist-enabled": False,
        "rpc-host-whitelist-enabled": False,
        "download-dir": save_path,
        "incomplete-dir-enabled": False,
        "watch-dir-enabled": False,
        "start-added-torrents": True,
        "ratio-limit-enabled": False,
        "idle-seeding-limit-enabled": False,
        "speed-limit-up-enabled": False,
        "alt-speed-enabled": False,
        "message-level": 2,
    }
    with open(os.path.join(config, "settings.json"), "w") as f:
        json.dump(settings, f)
    argv = [TRANSMISSION, "--foreground", "--config-dir", config, "--log-info"]
    log("starting %s (encryption %s) on %s:%d, RPC on 127.0.0.1:%d" % (
        TRANSMISSION, args.encryption, args.bind, args.port, args.rpc_port))
    daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    rc = 0
    try:
        rpc = TransmissionRpc(args.rpc_port)
        deadline = time.monotonic() + 60
        tid = None
        while not stop.flag and tid is None:
            if daemon.poll() is not None:
                raise RuntimeError("transmission-daemon exited: %s" % daemon.returncode)
            try:
                with open(args.torrent, "rb") as f:
                    meta = base64.b64encode(f.read()).decode()
                added = rpc.call("torrent-add", metainfo=meta, **{"download-dir": save_path})
                t = added.get("torrent-added") or added.get("torrent-duplicate")
                tid = t["id"]
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)  # RPC not listening yet
        if tid is not None:
            rpc.call("torrent-verify", ids=[tid])
        ready = False
        while not stop.flag:
            if daemon.poll() is not None:
                raise RuntimeError("transmission-daemon exited: %s" % daemon.returncode)
            if not ready:
                t = rpc.call("torrent-get", ids=[tid], fields=[
                    "percentDone", "status", "error", "errorString"])["torrents"][0]
                if t["error"]:
                    raise RuntimeError("transmission: %s" % t["errorString"])
                if t["percentDone"] >= 1 and t["status"] == TR_STATUS_SEED:
                    ready = True
                    write_ready(args, args.port)
                    log("ready: seeding")
            time.sleep(0.1)
    except Exception as e:  # logged, then the daemon is ended all the same
        log("transmission-seed: %s" % e)
        rc = 1
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=5)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        shutil.rmtree(config, ignore_errors=True)
    log("exit %d" % rc)
    return rc


# ------------------------------------------------------------------ tracker

def tracker(args):
    """Runs Debian's opentracker in the foreground with a whitelist; exec keeps the PID.

    As root, opentracker chroots into -d and then drops root for user nobody (it refuses
    to run as root), so the folder and the whitelist must be world-readable; the whitelist
    is named relative to -d, which is the working directory with or without the chroot.
    Debian's build has WANT_ACCESSLIST_WHITE: unlisted hashes get "not authorized" over
    HTTP, and UDP announces for them get no answer at all.
    """
    d = os.path.abspath(args.dir)
    os.makedirs(d, exist_ok=True)
    hashes = [h.lower() for h in (args.whitelist or [])]
    for path in args.whitelist_file or []:
        with open(path) as f:
            hashes += [line.strip().lower() for line in f if line.strip()]
    for h in hashes:
        if len(h) != 40 or any(c not in "0123456789abcdef" for c in h):
            sys.exit("swarm.py tracker: not a hex info-hash: %r" % h)
    with open(os.path.join(d, "whitelist.txt"), "w") as f:
        f.write("".join(h + "\n" for h in hashes))
    os.chmod(d, 0o755)
    os.chmod(os.path.join(d, "whitelist.txt"), 0o644)
    argv = [OPENTRACKER, "-i", "127.0.0.1", "-p", str(args.http_port),
            "-P", str(args.udp_port), "-d", d, "-w", "whitelist.txt"]
    log("exec %s" % " ".join(argv))
    sys.stderr.flush()
    os.execv(OPENTRACKER, argv)


def add_encryption_arg(parser):
    parser.add_argument("--encryption", choices=["enabled", "forced", "disabled"],
                        default="enabled",
                        help="protocol encryption, both ways (forced: RC4 only)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("make-data")
    s.add_argument("dir")
    s.add_argument("--layout", choices=["single", "multi", "many"], required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--size", type=int, default=1 << 20,
                   help="single: the file; multi: its last file")
    s.add_argument("--name", help="name of the file/folder made in DIR")
    s.set_defaults(fn=make_data)

    s = sub.add_parser("make-torrent")
    s.add_argument("data_path")
    s.add_argument("out")
    s.add_argument("--piece-length", type=int, required=True)
    s.add_argument("--tracker", action="append")
    s.add_argument("--web-seed", action="append", help="BEP 19 url-list entry (repeatable)")
    s.add_argument("--one-tier", "--tier", action="store_true",
                   help="all trackers in one tier (default: one tier each)")
    s.set_defaults(fn=make_torrent)

    s = sub.add_parser("info-hash")
    s.add_argument("torrent")
    s.set_defaults(fn=info_hash)

    s = sub.add_parser("seed")
    s.add_argument("torrent")
    s.add_argument("data_parent")
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--corrupt", action="store_true")
    s.add_argument("--upload-limit", type=int, default=0, help="bytes per second")
    s.add_argument("--ready-file")
    s.add_argument("--work-dir", help="--corrupt: where the corrupted copy lives")
    s.add_argument("--no-wait-announce", action="store_true",
                   help="ready once a seed, even before any tracker answered")
    s.add_argument("--seed-mode", action="store_true",
                   help="skip the startup check (pieces are hashed on first request)")
    s.add_argument("--dht-node", action="append", default=[],
                   help="IP:PORT of a DHT node: run a DHT node knowing it, announce there")
    s.add_argument("--transport", choices=["tcp", "utp", "both"], default="tcp",
                   help="what it speaks in and out (default tcp)")
    s.add_argument("--keep-redundant", action="store_true",
                   help="keep connections to upload-only peers (a pex-hub)")
    s.add_argument("--lsd", action="store_true",
                   help="local service discovery (multicast; in a network namespace only)")
    s.add_argument("--peer", action="append", default=[],
                   help="IP:PORT it connects to once it is a seed (the peer never learns of it "
                        "otherwise)")
    add_encryption_arg(s)
    s.set_defaults(fn=seed)

    s = sub.add_parser("leech")
    s.add_argument("torrent")
    s.add_argument("outdir")
    s.add_argument("--bind", required=True)
    s.add_argument("--peer", action="append", default=[],
                   help="IP:PORT (required unless --dht-node is given)")
    s.add_argument("--timeout", type=float, default=120)
    s.add_argument("--stop-after-hash-fails", type=int, default=0)
    s.add_argument("--transport", choices=["tcp", "utp", "both"], default="tcp",
                   help="what it speaks in and out (default tcp)")
    s.add_argument("--dht-node", action="append", default=[],
                   help="IP:PORT of a DHT node: also find peers through the DHT")
    s.add_argument("--pex", action="store_true",
                   help="also connect to peers named in PEX messages")
    s.add_argument("--port", type=int,
                   help="listen port (0 or unset: any); with it, --peer is optional")
    s.add_argument("--ready-file", help="written once it listens")
    add_encryption_arg(s)
    s.set_defaults(fn=leech)

    s = sub.add_parser("pex-hub")
    s.add_argument("torrent")
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--peer", action="append", required=True, help="IP:PORT")
    s.add_argument("--ready-file")
    s.set_defaults(fn=pex_hub)

    s = sub.add_parser("transmission-seed")
    s.add_argument("torrent")
    s.add_argument("data_parent")
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--rpc-port", type=int, required=True)
    s.add_argument("--ready-file")
    s.add_argument("--encryption", choices=sorted(TRANSMISSION_ENCRYPTION), default="preferred",
                   help="Transmission's encryption setting (required: encrypted peers only)")
    s.set_defaults(fn=transmission_seed)

    s = sub.add_parser("tracker")
    s.add_argument("--dir", required=True)
    s.add_argument("--http-port", type=int, required=True)
    s.add_argument("--udp-port", type=int, required=True)
    s.add_argument("--whitelist", action="append", help="info-hash hex")
    s.add_argument("--whitelist-file", action="append")
    s.set_defaults(fn=tracker)

    args = p.parse_args()
    sys.exit(args.fn(args) or 0)


if __name__ == "__main__":
    main()
