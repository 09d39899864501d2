#!/usr/bin/python3
"""A small Mainline DHT of real libtorrent nodes on loopback, for btfs's DHT tests.

Run it with Debian's python (/usr/bin/python3, which has python3-libtorrent), and only inside a
loopback-only network namespace (`unshare -n`): a DHT node talks to whatever addresses it
learns. Bootstrap routers are never used (`dht_bootstrap_nodes` is empty); the nodes learn each
other with `add_dht_node`, which pings and then adds a node to the routing table.

    dht_nodes.py --count N --first-ip 127.0.0.10 --port 6900 [--timeout 60]
    dht_nodes.py --count N --first-ip ::1 --port 6900          (an IPv6 DHT, BEP 32)

Node I (0-based) listens on 127.0.0.(10+I):6900 (UDP for the DHT). With an IPv6 first address
(a namespace's loopback has only ::1), every node listens on it, node I on port 6900+I. The
script prints `node I IP:PORT` per node (`node I [::1]:6900` for IPv6), then `ready` once every
node has the others in its routing table (or `error ...` and exits 1 after --timeout seconds).
Then it reads commands from stdin, one per line, and answers each with one line (addresses
IP:PORT, or [IP]:PORT for IPv6):

    add I IP:PORT           node I adds a DHT node (e.g. ours)   -> ok
    nodes I                 routing table size of node I         -> nodes I COUNT
    seed I                  node I seeds a small new torrent, so
                            libtorrent announces its info-hash   -> infohash HEX
    get_peers I HEX SECS    node I looks the info-hash up, again
                            every 2 s until a reply has peers    -> peers I IP:PORT ...
                                                                    (none listed on timeout)
    stored HEX SECS IP:PORT...  waits until some node stored an
                            announce of each IP:PORT for HEX     -> stored HEX IP:PORT ...
                            (every address announced for HEX so far, whether or not all
                            the wanted ones came within SECS)
    quit                    ends the sessions and exits 0

Alerts are drained all the time, so a lookup runs while the script waits for the next command.
(The Python binding of libtorrent 2.0.8 cannot call `dht_announce`: its flags type is not
exposed. Seeding a torrent makes libtorrent announce it on the DHT with its listen port.)
"""

import argparse
import ipaddress
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import warnings


def log(msg):
    sys.stderr.write("[dht_nodes %s %d] %s\n" % (time.strftime("%H:%M:%S"), os.getpid(), msg))
    sys.stderr.flush()


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# A private DHT on loopback (scripts/swarm.py's DHT mode uses these too).
LOOPBACK_DHT = {
    "enable_dht": True,
    # Never contact the internet's routers (dht.libtorrent.org by default).
    "dht_bootstrap_nodes": "",
    # The one setting the tests need: all nodes share 127.0.0.0/24, and by default
    # libtorrent keeps one node per /24 in its routing table, so every table would stay at
    # one node (measured: "routing tables did not fill: [1, 1, 1, 1, 1]").
    "dht_restrict_routing_ips": False,
    # The same rule for a lookup's results, and libtorrent's filters and limits for busy
    # public nodes (5 queries/s per IP, 8 kB/s of replies): not reached by these tests
    # (each was tried at its default), set so a busier test cannot trip them silently.
    "dht_restrict_search_ips": False,
    "dht_ignore_dark_internet": False,
    "dht_block_ratelimit": 100000,
    "dht_upload_rate_limit": 10 * 1000 * 1000,
}


def endpoint(ip, port):
    """IP:PORT, with the IPv6 address in brackets."""
    return ("[%s]:%d" if ":" in str(ip) else "%s:%d") % (ip, port)


def settings(lt, ip, port):
    """Settings for a node of a private DHT on loopback."""
    return dict(
        LOOPBACK_DHT,
        listen_interfaces=endpoint(ip, port),
        outgoing_interfaces=ip,
        enable_lsd=False,
        enable_upnp=False,
        enable_natpmp=False,
        enable_ip_notifier=False,
        alert_mask=int(lt.alert.category_t.dht_notification)
        | int(lt.alert.category_t.dht_operation_notification)
        | int(lt.alert.category_t.error_notification)
        | int(lt.alert.category_t.status_notification),
    )


def parse_addr(text):
    host, port = text.rsplit(":", 1)
    return host.strip("[]"), int(port)


def seed(lt, ses, work, n):
    """Adds a small new torrent that `ses` seeds; returns its v1 info-hash (hex)."""
    path = os.path.join(work, "seed%d" % n)
    os.makedirs(path)
    with open(os.path.join(path, "data.bin"), "wb") as f:
        f.write(os.urandom(64 * 1024))
    fs = lt.file_storage()
    lt.add_files(fs, path)
    ct = lt.create_torrent(fs, 16 * 1024, flags=lt.create_torrent.v1_only)
    lt.set_piece_hashes(ct, work)
    info = lt.torrent_info(ct.generate())
    ses.add_torrent({"ti": info, "save_path": work})
    return str(info.info_hashes().v1)


def stdin_lines(q):
    for line in sys.stdin:
        q.put(line.strip())
    q.put("quit")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--first-ip", default="127.0.0.10")
    ap.add_argument("--port", type=int, default=6900)
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()
    # session.status() is deprecated in 2.0 but is the one call that gives the routing table size.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        import libtorrent as lt
    except ImportError:
        say("error libtorrent missing: run with /usr/bin/python3 (apt-get install python3-libtorrent)")
        return 1

    first = ipaddress.ip_address(args.first_ip)
    if first.version == 6:
        nodes = [(str(first), args.port + i) for i in range(args.count)]
    else:
        nodes = [(str(first + i), args.port) for i in range(args.count)]
    for ip, _ in nodes:
        if not ipaddress.ip_address(ip).is_loopback:
            say("error %s is not a loopback address" % ip)
            return 1
    sessions = [lt.session(settings(lt, ip, port)) for ip, port in nodes]
    for i, (ip, port) in enumerate(nodes):
        say("node %d %s" % (i, endpoint(ip, port)))
    for i, s in enumerate(sessions):
        for j, node in enumerate(nodes):
            if i != j:
                s.add_dht_node(node)

    # lookups in progress: node index -> [info-hash, deadline, next query time, peers]
    lookups = {}
    # announces the nodes stored: info-hash hex -> {"IP:PORT"}
    stored = {}
    # `stored` commands waiting: [info-hash hex, deadline, {wanted "IP:PORT"}]
    waits = []

    def drain():
        for i, s in enumerate(sessions):
            for a in s.pop_alerts():
                if isinstance(a, lt.dht_get_peers_reply_alert) and i in lookups:
                    look = lookups[i]
                    if str(a.info_hash) == str(look[0]):
                        for ip, port in a.peers():
                            look[3].add(endpoint(ip, port))
                elif isinstance(a, lt.dht_announce_alert):
                    peer = endpoint(a.ip, a.port)
                    log("node %d stored %s for %s" % (i, peer, a.info_hash))
                    stored.setdefault(str(a.info_hash), set()).add(peer)

    deadline = time.monotonic() + args.timeout
    while True:
        drain()
        sizes = [s.status().dht_nodes for s in sessions]
        if all(n >= args.count - 1 for n in sizes):
            break
        if time.monotonic() > deadline:
            say("error routing tables did not fill: %s" % sizes)
            return 1
        time.sleep(0.1)
    say("ready")

    work = tempfile.mkdtemp(prefix="dht_nodes.")
    seeded = 0
    commands = queue.Queue()
    threading.Thread(target=stdin_lines, args=(commands,), daemon=True).start()
    while True:
        drain()
        now = time.monotonic()
        for i, look in list(lookups.items()):
            if look[3] or now > look[1]:
                say(" ".join(["peers %d" % i] + sorted(look[3])))
                del lookups[i]
            elif now >= look[2]:
                sessions[i].dht_get_peers(look[0])
                look[2] = now + 2.0
        for w in list(waits):
            have = stored.get(w[0], set())
            if w[2] <= have or now > w[1]:
                say(" ".join(["stored %s" % w[0]] + sorted(have)))
                waits.remove(w)
        try:
            line = commands.get(timeout=0.1)
        except queue.Empty:
            continue
        words = line.split()
        if not words:
            continue
        try:
            cmd, rest = words[0], words[1:]
            if cmd == "quit":
                break
            if cmd == "stored":
                ih = str(lt.sha1_hash(bytes.fromhex(rest[0])))
                waits.append([ih, now + float(rest[1]), set(rest[2:])])
                continue
            i = int(rest[0])
            if cmd == "add":
                sessions[i].add_dht_node(parse_addr(rest[1]))
                say("ok")
            elif cmd == "nodes":
                say("nodes %d %d" % (i, sessions[i].status().dht_nodes))
            elif cmd == "seed":
                seeded += 1
                say("infohash %s" % seed(lt, sessions[i], work, seeded))
            elif cmd == "get_peers":
                ih = lt.sha1_hash(bytes.fromhex(rest[1]))
                lookups[i] = [ih, now + float(rest[2]), now, set()]
            else:
                say("error unknown command %r" % line)
        except (IndexError, ValueError) as e:
            say("error %r: %s" % (line, e))
    for s in sessions:
        s.pause()
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
