#!/usr/bin/python3
"""Checks the layout rules the code base keeps (run by scripts/test.sh):

- no import circles between the modules of src/: for every module (a file, or a folder's
  mod.rs), the modules it names through `crate::...` or `super::...` paths; a circle of
  two or more modules is an error. A module naming its own children is not an edge (a
  parent re-exporting its files is how folders work); test-only code (`tests/` folders and
  `#[cfg(test)]` blocks) is left out.
- no production file over 600 lines (files under a `tests/` folder are test code).

Prints each violation and exits 1 if there is any. Python 3 stdlib only.
"""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
MAX_LINES = 600


def modules():
    """Module path (tuple of names) -> file, for every .rs file under src/."""
    out = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), ROOT)
            parts = rel[:-3].split(os.sep)
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts in (["lib"], ["main"]):
                parts = []
            if "tests" in parts:
                continue
            out[tuple(parts)] = os.path.join(ROOT, rel)
    return out


def production_text(path):
    """The file without `#[cfg(test)]` items (the attribute and the item after it)."""
    text = open(path, encoding="utf-8").read()
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        # Skip the item: up to the end of its braces, or its semicolon.
        j = m.end()
        depth = 0
        while j < len(text):
            c = text[j]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    j += 1
                    break
            elif c == ";" and depth == 0:
                j += 1
                break
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def imports(mods):
    """Per module, the names its `use` declarations bring in: name -> (module of the `use`,
    full path), so a path through a re-export resolves to where the item lives."""
    out = {m: {} for m in mods}
    for here, path in mods.items():
        text = re.sub(r"//[^\n]*", "", production_text(path))
        for prefix, group in USE_GROUP.findall(text):
            for member in re.findall(r"[A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*", group):
                full = prefix.split("::") + member.split("::")
                out[here][full[-1]] = full
        for full in re.findall(r"\buse\s+((?:crate|super|self|[a-z_][a-z0-9_]*)(?:::[A-Za-z_][A-Za-z0-9_]*)+)\s*(?:as\s+\w+)?;", text):
            parts = full.split("::")
            out[here][parts[-1]] = parts
    return out


IMPORTS = {}


def resolve(mods, here, path, depth=0):
    """The module `path` (a list of names) seen from `here` names: the longest existing module
    prefix, followed through that module's `use` of the next name (re-exports)."""
    found = resolve_prefix(mods, here, path)
    if found is None or depth > 8:
        return found
    module, rest = found
    if rest and rest[0] in IMPORTS.get(module, {}):
        target = IMPORTS[module][rest[0]]
        if target[0] not in ("crate", "super", "self") and tuple([target[0]]) not in mods:
            target = ["self"] + target
        deeper = resolve(mods, module, target + rest[1:], depth + 1)
        if deeper is not None:
            return deeper
    return found


def resolve_module(mods, here, path):
    found = resolve(mods, here, path)
    return None if found is None else found[0]


def resolve_prefix(mods, here, path):
    """The longest existing module prefix of `path` seen from `here`, with the rest."""
    if path[0] == "crate":
        base = []
        rest = path[1:]
    elif path[0] not in ("super", "self"):
        # A child module's name (`mod x;` then `use x::Y`).
        base = list(here)
        rest = path
    else:
        base = list(here)
        rest = path
        while rest and rest[0] == "super":
            base = base[:-1]
            rest = rest[1:]
        if rest and rest[0] == "self":
            rest = rest[1:]
    full = base + rest
    for n in range(len(full), -1, -1):
        if tuple(full[:n]) in mods:
            return tuple(full[:n]), full[n:]
    return None


PATH = re.compile(r"\b((?:crate|super)(?:::(?:super|[A-Za-z_][A-Za-z0-9_]*))+)")
USE_GROUP = re.compile(r"\buse\s+((?:crate|super|self|[a-z_][a-z0-9_]*)(?:::(?:super|[a-z_][a-z0-9_]*))*)::\{([^;]*)\};", re.S)


def edges(mods):
    graph = {m: set() for m in mods}
    for here, path in mods.items():
        text = production_text(path)
        text = re.sub(r"//[^\n]*", "", text)
        found = [p.split("::") for p in PATH.findall(text)]
        # `use crate::a::{b, c::d}`: each member is a path under the prefix.
        for prefix, group in USE_GROUP.findall(text):
            for member in re.findall(r"[A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*", group):
                found.append(prefix.split("::") + member.split("::"))
        for p in found:
            target = resolve_module(mods, here, p)
            if target is None or target == here:
                continue
            # A parent naming its own descendants is structure, not a dependency.
            if target[: len(here)] == here:
                continue
            # A child naming its ancestor is fine too unless it names a sibling through it.
            if here[: len(target)] == target:
                continue
            graph[here].add(target)
    return graph


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def name(m):
    return "::".join(m) or "crate"


def main():
    mods = modules()
    IMPORTS.update(imports(mods))
    graph = edges(mods)
    bad = 0
    for comp in cycles(graph):
        bad += 1
        inner = [f"{name(a)} -> {name(b)}" for a in comp for b in sorted(graph[a]) if b in comp]
        print("import circle: " + ", ".join(inner))
    for m, path in sorted(mods.items()):
        n = sum(1 for _ in open(path, encoding="utf-8"))
        if n > MAX_LINES:
            bad += 1
            print(f"{os.path.relpath(path, os.path.dirname(ROOT))}: {n} lines (limit {MAX_LINES})")
    if bad:
        return 1
    print(f"layout: {len(mods)} modules, no import circle, none over {MAX_LINES} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
