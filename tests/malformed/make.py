#!/usr/bin/python3
"""Writes the malformed-input corpus that tests/cli.rs feeds to `btfs info` and `btfs mount`.

    make.py DIR small   the small cases (committed in tests/malformed/) and DIR/expected.tsv
    make.py DIR big     cases too large to commit (written by the test into a temp dir)

expected.tsv: `file<TAB>text the one stderr line must contain`. Files in DIR/sanitized/ are
hostile but usable: they must mount with safe names. Inputs found by fuzzing (fuzz_crash_*) are
kept as found, not written here. Standard library only.
"""
import hashlib
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))

from harness.torrent import bencode as enc


def D(*pairs):
    """A dict kept as written: unsorted or repeated keys."""
    return tuple(pairs)


PL = 16384


def pieces(total, pl=PL):
    return b"".join(hashlib.sha1(b"%d" % i).digest() for i in range(-(-total // pl)))


def single(length=40000, **over):
    """A valid single-file info dict, with keys replaced (`piece_length` for "piece length")
    or removed (None)."""
    if "pieces" not in over:
        over["pieces"] = pieces(length if isinstance(length, int) else 40000)
    over.setdefault("length", length)
    info = {"name": "f.bin", "piece length": PL}
    for k, v in over.items():
        k = k.replace("_", " ")
        if v is None:
            info.pop(k, None)
        else:
            info[k] = v
    # Sorted here too: D(*single().items(), ...) writes the keys in this order.
    return dict(sorted(info.items()))


def multi(files, total=None):
    total = sum(l for _, l in files) if total is None else total
    return {
        "files": [{"length": l, "path": p} for p, l in files],
        "name": "album",
        "piece length": PL,
        "pieces": pieces(max(total, 1)),
    }


def torrent(info, **extra):
    d = {"announce": "http://127.0.0.1:1/announce", "info": info}
    d.update(extra)
    return enc(d)


def small():
    good = torrent(single())
    yield "empty.torrent", b"", "bencode ends early at byte 0"
    yield "truncated_half.torrent", good[: len(good) // 2], "bencode ends early"
    yield "truncated_last_byte.torrent", good[:-1], "bencode ends early"
    yield "not_bencode.torrent", b"<html>404</html>", "unexpected byte 0x3c at 0"
    yield "trailing_garbage.torrent", good + b"xyz", "3 bytes of trailing data"
    yield "root_is_list.torrent", b"l4:infoe", "not a bencoded dictionary"
    yield "no_info.torrent", enc({"announce": "http://x/"}), "no 'info' dictionary"
    yield "info_is_string.torrent", enc({"info": "d4:name1:xe"}), "no 'info' dictionary"
    yield "int_leading_zero.torrent", torrent(single()).replace(b"i40000e", b"i040000e"), "bad integer"
    yield "int_minus_zero.torrent", enc({"info": {}}).replace(b"de", b"d1:ai-0ee"), "bad integer"
    yield "int_empty.torrent", b"d4:infod6:lengthieee", "bad integer"
    yield "int_overflow.torrent", torrent(single()).replace(b"i40000e", b"i99999999999999999999e"), "bad integer"
    yield "int_no_end.torrent", b"d4:infod6:lengthi12345", "bencode ends early"
    yield "strlen_100mb.torrent", b"d4:info100000000:" + b"x" * 64 + b"e", "bencode ends early"
    yield "strlen_20_digits.torrent", b"d4:info99999999999999999999:xe", "bad integer"
    yield "strlen_negative.torrent", b"d4:infod-5:abcdeee", "bad integer at byte 8"
    yield "value_negative_strlen.torrent", b"d4:info-5:abcdee", "unexpected byte 0x2d at 7"
    yield "strlen_no_colon.torrent", b"d4:info12345", "bencode ends early"
    yield "duplicate_key.torrent", enc(D(("info", single()), ("info", single()))), "key repeated"
    yield "duplicate_key_in_info.torrent", enc({"info": D(*single().items(), ("length", 1))}), "key repeated"
    yield "name_is_int.torrent", torrent(single(name=7)), "'name' in info dictionary is not a string"
    yield "no_name.torrent", torrent(single(name=None)), "'name' missing in info dictionary"
    yield "length_negative.torrent", torrent(single(length=-5)), "file length -5 in info dictionary is negative"
    yield "length_is_string.torrent", torrent(single(length="40000", pieces=pieces(40000))), "'length' in info dictionary is not an integer"
    yield "length_i64_max.torrent", torrent(single(length=2**63 - 1, pieces=pieces(40000))), "piece count 3 does not match"
    yield "length_and_files.torrent", torrent(single(files=[])), "both 'length' and 'files'"
    yield "neither_length_nor_files.torrent", torrent(single(length=None)), "neither 'length' nor 'files'"
    yield "total_size_zero.torrent", torrent(single(length=0, pieces=b"")), "total size 0"
    yield "piece_length_zero.torrent", torrent(single(piece_length=0)), "piece length 0 is out of range"
    yield "piece_length_negative.torrent", torrent(single(piece_length=-16384)), "piece length -16384 is out of range"
    yield "piece_length_huge.torrent", torrent(single(piece_length=2**40)), "is out of range"
    yield "piece_length_string.torrent", torrent(single(piece_length="16384")), "'piece length' in info dictionary is not an integer"
    yield "no_piece_length.torrent", torrent(single(piece_length=None)), "'piece length' missing"
    yield "pieces_not_multiple_of_20.torrent", torrent(single(pieces=pieces(40000)[:-1])), "'pieces' length 59 is not a multiple of 20"
    yield "pieces_too_few.torrent", torrent(single(pieces=pieces(40000)[:40])), "piece count 2 does not match total size 40000"
    yield "pieces_too_many.torrent", torrent(single(pieces=pieces(40000) * 2)), "piece count 6 does not match"
    yield "pieces_empty.torrent", torrent(single(pieces=b"")), "piece count 0 does not match"
    yield "pieces_is_int.torrent", torrent(single(pieces=5)), "'pieces' in info dictionary is not a byte string"
    yield "no_pieces.torrent", torrent(single(pieces=None)), "'pieces' missing"
    yield "v2_only.torrent", torrent(single(pieces=None, meta_version=2)), "v2-only"
    yield "files_empty.torrent", torrent(multi([])), "'files' list in info is empty"
    yield "files_not_list.torrent", torrent(dict(multi([]), files="x")), "'files' in info dictionary is not a list"
    yield "files_entry_int.torrent", torrent(dict(multi([]), files=[1])), "not a list of dictionaries"
    yield "file_no_length.torrent", torrent(dict(multi([]), files=[{"path": ["a"]}])), "'length' missing in files[0]"
    yield "file_no_path.torrent", torrent(dict(multi([]), files=[{"length": 1}])), "'path' missing in files[0]"
    yield "file_path_int.torrent", torrent(multi([([1], 10)])), "'path' in files[0] is not a list of strings"
    yield "file_path_string.torrent", torrent(multi([("a/b", 10)])), "'path' in files[0] is not a list of strings"
    yield "file_path_empty.torrent", torrent(multi([(["ok"], 5), ([], 5)])), "files[1] has an empty path"
    yield "file_path_only_dots.torrent", torrent(multi([([".", "", "."], 5)])), "files[0] has an empty path"
    yield "file_length_negative.torrent", torrent(multi([(["a"], 5), (["b"], -7)])), "file length -7 in files[1] is negative"
    yield "file_lengths_overflow.torrent", torrent(multi([(["a"], 2**63 - 1), (["b"], 2**63 - 1), (["c"], 2**63 - 1)], total=1)), "overflows 64 bits"
    yield "duplicate_paths.torrent", torrent(multi([(["a", "b"], 5), (["a", "b"], 5)])), "file paths collide: 'album/a/b' and 'album/a/b'"
    yield "file_is_also_dir.torrent", torrent(multi([(["a"], 5), (["a", "b"], 5)])), "file paths collide: 'album/a' and 'album/a/b'"
    yield "paths_equal_after_sanitizing.torrent", torrent(multi([(["x/y"], 5), (["x\\y"], 5)])), "file paths collide"
    yield "dotdot_equals_underscore.torrent", torrent(multi([([".."], 5), (["_"], 5)])), "file paths collide"
    yield "nested_1000_lists.torrent", b"d4:info" + b"l" * 1000 + b"e" * 1000 + b"e", "nested deeper than 64"
    yield "unterminated_dict.torrent", b"d4:infod4:named", "bencode ends early"


def sanitized():
    """Hostile names that are neutralised, not refused: the torrent mounts with safe names."""
    files = [
        ([b"..", b"..", b"etc", b"passwd"], 100),
        ([b"/etc/shadow"], 100),
        ([b"", b"abs", b"x"], 100),
        ([b"nul\0byte"], 100),
        ([b"a", b".", b"", b"b"], 100),
        ([b"latin1-\xe9t\xe9"], 100),
        ([b"\xff\xfe"], 100),
        ([b"n" * 300], 100),
    ]
    yield "hostile_paths.torrent", torrent(multi(files)), ""
    yield "name_dotdot.torrent", torrent(single(name="..")), ""
    yield "name_absolute.torrent", torrent(single(name="/tmp/evil")), ""
    yield "name_not_utf8.torrent", torrent(single(name=b"\xc3\x28-\xff")), ""


def big():
    """Generated at test time, not committed."""
    nested = b"d4:info" + b"l" * 100_000 + b"e" * 100_000 + b"e"
    yield "nested_100000_lists.torrent", nested, "nested deeper than 64"
    values = b"d4:infol" + b"0:" * 3_000_001 + b"ee"
    yield "too_many_values.torrent", values, "more than 3000000 values"
    yield "over_64mb.torrent", None, "is larger than 67108864 bytes"


def write(out, cases, manifest):
    os.makedirs(out, exist_ok=True)
    for name, data, needle in cases:
        path = os.path.join(out, name)
        if data is None:  # sparse: a hole of 64 MiB + 1, not 64 MB of work
            with open(path, "wb") as f:
                f.truncate(64 * 1024 * 1024 + 1)
        else:
            with open(path, "wb") as f:
                f.write(data)
        manifest.append("%s\t%s\n" % (os.path.relpath(path, sys.argv[1]), needle))


def main():
    out, which = sys.argv[1], sys.argv[2]
    manifest = []
    if which == "small":
        write(out, small(), manifest)
        write(os.path.join(out, "sanitized"), sanitized(), manifest)
    elif which == "big":
        write(out, big(), manifest)
    else:
        sys.exit("usage: make.py DIR small|big")
    with open(os.path.join(out, "expected.tsv"), "w") as f:
        f.writelines(manifest)


if __name__ == "__main__":
    main()
