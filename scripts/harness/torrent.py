"""Bencode (BEP 3), for torrents made by hand: valid ones too large to seed, hostile ones."""


def bencode(v):
    """int, str (as UTF-8), bytes, list; dict with its keys sorted, as BEP 3 wants; a tuple of
    (key, value) pairs is a dict written as given (unsorted or repeated keys, for hostile
    inputs)."""
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, list):
        return b"l" + b"".join(bencode(x) for x in v) + b"e"
    if isinstance(v, dict):
        v = sorted(v.items(), key=lambda kv: kv[0].encode() if isinstance(kv[0], str) else kv[0])
    return b"d" + b"".join(bencode(k) + bencode(x) for k, x in v) + b"e"
