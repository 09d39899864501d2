"""Bandwidth bounds: what a read cannot beat on a swarm of a given total rate.

A client verifies whole pieces before it serves a byte of them, so a read costs the whole
pieces it touches; they arrive no faster than the swarm's total upload rate allows. A bound
is those pieces' bytes over that rate, plus the round trips the read cannot overlap (the
caller counts them). For a player, the pieces come from the mp4 itself: ffprobe's packet
list (stream, pts, byte position, size, keyframe) and the file's top-level boxes (where the
index, moov, lies), checked once against the offsets mpv reads (strace): the head (mpv's
first read), the index, then the packets of the frames it decodes.
"""

import json
import subprocess

FFPROBE = "/usr/bin/ffprobe"


class Pieces:
    """The pieces of a single-file torrent: `size` bytes in `piece_length` pieces."""

    def __init__(self, size, piece_length):
        self.size, self.length = size, piece_length
        self.count = -(-size // piece_length)

    def covering(self, lo, hi):
        """The pieces holding bytes [lo, hi)."""
        hi = min(hi, self.size)
        if hi <= lo:
            return set()
        return set(range(lo // self.length, (hi - 1) // self.length + 1))

    def bytes(self, pieces):
        return sum(min(self.length, self.size - p * self.length) for p in pieces)


def mp4_boxes(path):
    """(type, offset, size) of each top-level box of an mp4."""
    out = []
    with open(path, "rb") as f:
        f.seek(0, 2)
        end = f.tell()
        off = 0
        while off + 8 <= end:
            f.seek(off)
            head = f.read(16)
            size, kind = int.from_bytes(head[:4], "big"), head[4:8].decode("latin-1")
            if size == 1:
                size = int.from_bytes(head[8:16], "big")
            elif size == 0:
                size = end - off
            if size < 8:
                raise ValueError("%s: bad box at %d" % (path, off))
            out.append((kind, off, size))
            off += size
    return out


class VideoMap:
    """Where an mp4's frames lie: its packets in file order, its index's range."""

    def __init__(self, path):
        out = subprocess.run(
            [FFPROBE, "-v", "error", "-show_entries",
             "packet=stream_index,pts_time,pos,size,flags:stream=index,codec_type,"
             "avg_frame_rate:format=duration", "-of", "json", path],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, check=True, timeout=300)
        doc = json.loads(out.stdout)
        self.duration = float(doc["format"]["duration"])
        video = [s for s in doc["streams"] if s["codec_type"] == "video"][0]
        self.video = video["index"]
        num, den = video["avg_frame_rate"].split("/")
        self.fps = int(num) / int(den)
        self.packets = []  # (stream, pts, pos, size, key), in file order
        for p in doc["packets"]:
            if p.get("pts_time", "N/A") == "N/A" or p.get("pos", "N/A") == "N/A":
                continue
            self.packets.append((p["stream_index"], float(p["pts_time"]), int(p["pos"]),
                                 int(p["size"]), "K" in p.get("flags", "")))
        self.packets.sort(key=lambda p: p[2])
        moov = [b for b in mp4_boxes(path) if b[0] == "moov"]
        if not moov:
            raise ValueError("%s: no moov box" % path)
        self.moov = (moov[0][1], moov[0][1] + moov[0][2])
        self.frames = sorted((p for p in self.packets if p[0] == self.video),
                             key=lambda p: p[1])
        self.t0 = self.frames[0][1]

    def index_pieces(self, pieces):
        """What any start costs: the head (the player's first read) and the index."""
        return {0} | pieces.covering(*self.moov)

    def start_pieces(self, pieces):
        """mpv's first frame from the start: the head, the index, and every packet up to
        the first frame's."""
        first = self.frames[0]
        upto = [p for p in self.packets if p[2] <= first[2]]
        return self.index_pieces(pieces) | pieces.covering(
            min(p[2] for p in upto), first[2] + first[3])

    def seek_pieces(self, pieces, frac):
        """mpv's first frame at `frac` of the duration (--start=70%, an exact seek): the
        head, the index, and the packets of every stream from the keyframe at or before
        the target to the first frame at or after it (decoded to reach it)."""
        target = self.t0 + frac * self.duration
        key = [f for f in self.frames if f[4] and f[1] <= target + 1e-6][-1]
        shown = next((f for f in self.frames if f[1] >= target - 1e-6), self.frames[-1])
        span = [p for p in self.packets if key[1] - 1e-6 <= p[1] <= shown[1] + 1e-6]
        lo = min(p[2] for p in span)
        hi = max(p[2] + p[3] for p in span)
        return self.index_pieces(pieces) | pieces.covering(lo, hi)

    def stall_bound(self, pieces, fetched, rate, frames):
        """The least stall time playing `frames` frames from the start in real time, once
        the first frame is shown with `fetched` pieces at hand, if the swarm then delivers
        the rest in the order of need at `rate` bytes/s: the largest lag of a piece's
        arrival behind the time the player reaches its first packet."""
        end = self.t0 + frames / self.fps
        need = {}  # piece -> time (from the first frame) its first packet plays
        for stream, pts, pos, size, _ in self.packets:
            if pts >= end:
                continue
            for k in pieces.covering(pos, pos + size):
                if k not in fetched:
                    need[k] = min(need.get(k, pts - self.t0), pts - self.t0)
        got = 0
        worst = 0.0
        for k in sorted(need, key=lambda k: (need[k], k)):
            got += pieces.bytes({k})
            worst = max(worst, got / rate - need[k])
        return worst
