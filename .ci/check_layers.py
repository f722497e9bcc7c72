#!/usr/bin/env python3
"""Layers point down only: a check over the `use crate::…` (and `super::…`) paths in `src/`.

The layer order lives in one place, the table in ARCHITECTURE.md ("Layers"): each row names a
layer and the modules in it, lowest first. This script reads that table and fails when

- a file refers to a module of a higher layer (an import that runs up), or
- files refer to each other in a loop (a strongly connected component of more than one file).

Test code (`#[cfg(test)] mod …` blocks) is left out: tests may reach up to build what they
test. Usage: `python3 .ci/check_layers.py [--graph]` from the repository root; `--graph` prints
every file's imports, for reading.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")


def read_layers():
    """Rows of the ARCHITECTURE.md table `| n | layer | modules |`, modules as `a::b` paths."""
    layers = {}
    with open(os.path.join(ROOT, "ARCHITECTURE.md"), encoding="utf-8") as f:
        in_table = False
        for line in f:
            if line.startswith("## Layers"):
                in_table = True
                continue
            if in_table and line.startswith("## "):
                break
            if not in_table or not line.startswith("|"):
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) < 3 or not cells[0].isdigit():
                continue
            rank = int(cells[0])
            for m in re.findall(r"`([a-z_:]+)`", cells[2]):
                layers[m] = rank
    if not layers:
        sys.exit("check_layers: no layer table found in ARCHITECTURE.md (## Layers)")
    return layers


def module_files():
    """Map module path ('' for the crate root) to its file."""
    mods = {}
    for dirpath, _, files in os.walk(SRC):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
            if rel == ["main"]:
                continue  # the binary: it uses the library from outside
            if rel == ["lib"]:
                mod = ""
            elif rel[-1] == "mod":
                mod = "::".join(rel[:-1])
            else:
                mod = "::".join(rel)
            mods[mod] = path
    return mods


def strip_code(text):
    """Drop comments, string literals and `#[cfg(test)]` modules, keeping line structure."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        if c == 'r' and re.match(r'r#*"', text[i:i + 4]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            i = n if j < 0 else j + len(end)
            out.append('""')
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            out.append('""')
            continue
        if c == "'":
            # A char literal ('a', '\n', '\u{..}'), not a lifetime.
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:])
            if m:
                i += len(m.group(0))
                out.append("' '")
                continue
        out.append(c)
        i += 1
    code = "".join(out)
    # Remove `#[cfg(test)]` items (a module or a function) by brace matching.
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*(pub(\([a-z]+\))?\s+)?(mod|fn|impl|use)\b", code)
        if not m:
            break
        start = m.start()
        if m.group(3) == "use":
            end = code.find(";", m.end()) + 1
        else:
            brace = code.find("{", m.end())
            semi = code.find(";", m.end())
            if semi >= 0 and (brace < 0 or semi < brace):
                end = semi + 1
            else:
                depth, j = 0, brace
                while j < len(code):
                    if code[j] == "{":
                        depth += 1
                    elif code[j] == "}":
                        depth -= 1
                        if depth == 0:
                            break
                    j += 1
                end = j + 1
        code = code[:start] + code[end:]
    return code


def expand_use(tree):
    """`a::{b, c::{d, e}}` → ['a::b', 'a::c::d', 'a::c::e'] (aliases and globs kept as paths)."""
    tree = re.sub(r"\s+", "", tree)
    tree = re.sub(r"\bas[A-Za-z_0-9]+", "", tree)

    def split_top(s):
        parts, depth, cur = [], 0, ""
        for ch in s:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        if cur:
            parts.append(cur)
        return parts

    def go(prefix, s):
        k = s.find("{")
        if k < 0:
            return [prefix + s]
        head = s[:k]
        inner = s[k + 1:s.rfind("}")]
        res = []
        for part in split_top(inner):
            if part in ("self", ""):
                res.append((prefix + head).rstrip(":"))
            else:
                res.extend(go(prefix + head, part))
        return res

    return go("", tree)


def references(mod, code):
    """Module paths (crate-absolute) that `code` of module `mod` refers to."""
    refs = set()
    here = mod.split("::") if mod else []

    def absolute(path):
        segs = path.split("::")
        if segs[0] == "crate":
            return segs[1:]
        if segs[0] in ("super", "self"):
            base = list(here)
            while segs and segs[0] in ("super", "self"):
                if segs[0] == "super":
                    base = base[:-1]
                segs = segs[1:]
            return base + segs
        return None

    children = set(re.findall(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+([a-z_0-9]+)\s*;", code, re.M))
    for m in re.finditer(r"\buse\s+([a-z_0-9]+)::([^;]*);", code):
        if m.group(1) in children:
            for p in expand_use(m.group(2)):
                refs.add("::".join(here + [m.group(1)] + p.split("::")))
    for m in re.finditer(r"(?<![A-Za-z0-9_:])([a-z_0-9]+)::", code):
        if m.group(1) in children:
            refs.add("::".join(here + [m.group(1)]))
    for m in re.finditer(r"\buse\s+((?:crate|super|self)::[^;]*);", code):
        for p in expand_use(m.group(1)):
            a = absolute(p)
            if a is not None:
                refs.add("::".join(a))
    for m in re.finditer(r"(?<![A-Za-z0-9_:])((?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+)", code):
        a = absolute(m.group(1))
        if a is not None:
            refs.add("::".join(a))
    return refs


def owning_file(path, mods, exports=None):
    """The file that defines what `path` names: the longest module prefix of `path` that is a
    file, followed through that file's re-exports (`pub use child::Name` names the child's
    item, so using it is an edge to the child, not to the re-exporting mod.rs)."""
    segs = path.split("::") if path else []
    for k in range(len(segs), -1, -1):
        cand = "::".join(segs[:k])
        if cand in mods:
            if exports is not None and k < len(segs):
                target = exports.get(cand, {}).get(segs[k])
                if target is not None and target != path:
                    return owning_file(target, mods, exports)
            return cand
    return None


def reexports(mod, code):
    """`pub use …` items of `mod`: name → the absolute path it re-exports."""
    out = {}
    here = mod.split("::") if mod else []
    for m in re.finditer(r"\bpub(?:\([a-z]+\))?\s+use\s+([^;]*);", code):
        for p in expand_use(m.group(1)):
            segs = p.split("::")
            if segs[0] == "crate":
                absolute = segs[1:]
            elif segs[0] in ("self", "super"):
                base = list(here)
                while segs and segs[0] in ("self", "super"):
                    if segs[0] == "super":
                        base = base[:-1]
                    segs = segs[1:]
                absolute = base + segs
            else:
                absolute = here + segs
            if absolute and absolute[-1] != "*":
                out[absolute[-1]] = "::".join(absolute)
    return out


def layer_of(mod, layers):
    segs = mod.split("::") if mod else []
    for k in range(len(segs), -1, -1):
        cand = "::".join(segs[:k]) if k else "crate"
        if cand in layers:
            return cand, layers[cand]
    return None, None


def sccs(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
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
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            strong(v)
    return out


def main():
    layers = read_layers()
    mods = module_files()
    graph = {}
    problems = []
    codes = {}
    for mod, path in mods.items():
        with open(path, encoding="utf-8") as f:
            codes[mod] = strip_code(f.read())
    exports = {mod: reexports(mod, code) for mod, code in codes.items()}
    for mod, path in sorted(mods.items()):
        code = codes[mod]
        deps = set()
        for r in references(mod, code):
            target = owning_file(r, mods, exports)
            # A reference to a module's own children's names through `self::child` is an edge
            # to the child; a reference that resolves to the file itself is not an edge.
            if target is None or target == mod:
                continue
            # Declaring a child (`mod x;`) is not an import; `pub use x::Y` is (caught above).
            deps.add(target)
        graph[mod] = sorted(deps)
        name, rank = layer_of(mod, layers)
        if rank is None:
            problems.append(f"{os.path.relpath(path, ROOT)}: module `{mod or 'crate'}` is in no layer of ARCHITECTURE.md")
            continue
        for d in deps:
            dname, drank = layer_of(d, layers)
            if drank is not None and drank > rank:
                problems.append(
                    f"{os.path.relpath(path, ROOT)}: `{mod}` (layer {rank}, {name}) imports "
                    f"`{d}` (layer {drank}, {dname}), which is above it")
    for comp in sccs(graph):
        if len(comp) > 1:
            files = ", ".join(sorted(os.path.relpath(mods[m], ROOT) for m in comp))
            problems.append(f"loop between files: {files}")
    if "--graph" in sys.argv:
        for mod in sorted(graph):
            print(f"{mod or 'crate'} -> {', '.join(graph[mod])}")
    for p in problems:
        print(p)
    if problems:
        print(f"check_layers: {len(problems)} problem(s); the layer table is in ARCHITECTURE.md")
        sys.exit(1)
    print(f"check_layers: {len(mods)} files, every import points down, no loops")


if __name__ == "__main__":
    main()
