#!/usr/bin/env python3
"""Keeps the broker crate's module graph one-way (docs/architecture.md,
"Module graph").

Every `crate::…` and `super::…` path in broker/src (outside `#[cfg(test)]`
modules and comments) is an edge from the module that names it to the
module it names. Two rules:

1. The top-level modules sit in the layers below, and a module may only
   use modules of lower layers. A new top-level module must be placed.
2. Within any module, its submodules reach one another without a cycle
   (cluster::routes may use cluster::etcd, or the reverse, not both).

Prints each offending edge with the lines that make it, and exits 1.

    scripts/check-modules.py [--graph]   (--graph: print the edges)
"""

import os
import re
import sys
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "broker", "src")

# Lowest first. A module may use modules of earlier layers only.
LAYERS = [
    # Vocabulary and plumbing that know nothing of MQTT sessions.
    ["node", "config", "metrics", "read_mostly", "reply_order"],
    ["resources", "message", "auth"],
    ["session"],
    ["router"],
    ["broker"],
    ["lifecycle"],
    ["connection", "cluster"],
    ["drain", "listener"],
    ["admin"],
    ["server"],
]
LAYER_OF = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def module_path(path):
    rel = os.path.relpath(path, ROOT)[: -len(".rs")].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def strip_tests_and_comments(source):
    """The source without comments and without `#[cfg(test)]` modules,
    with line numbers kept (removed text becomes blank lines)."""

    def blank(match):
        return re.sub(r"[^\n]", " ", match.group(0))

    source = re.sub(r"/\*.*?\*/", blank, source, flags=re.S)
    source = re.sub(r"//[^\n]*", "", source)
    out = []
    i = 0
    for match in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", source):
        if match.start() < i:
            continue
        depth = 1
        j = match.end()
        while j < len(source) and depth:
            depth += {"{": 1, "}": -1}.get(source[j], 0)
            j += 1
        out.append(source[i : match.start()])
        out.append(re.sub(r"[^\n]", " ", source[match.start() : j]))
        i = j
    out.append(source[i:])
    return "".join(out)


def expand_use_groups(text):
    """`a::{b, c::{d, e}}` → ["a::b", "a::c::d", "a::c::e"] (roughly)."""
    text = re.sub(r"\s+", "", text)
    m = re.match(r"^([A-Za-z0-9_:]*?)(::)?\{(.*)\}$", text)
    if not m:
        return [text]
    prefix, inner = m.group(1), m.group(3)
    parts, depth, start = [], 0, 0
    for k, ch in enumerate(inner):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(inner[start:k])
            start = k + 1
    parts.append(inner[start:])
    out = []
    for part in filter(None, parts):
        for sub in expand_use_groups(part):
            out.append(f"{prefix}::{sub}" if prefix else sub)
    return out


PATH = re.compile(r"\b(crate|super)((?:::(?:[A-Za-z_][A-Za-z0-9_]*|\{[^;]*?\}))+)")


def references(module, source, modules):
    """(line, target module) for each path in `source`."""
    for match in PATH.finditer(source):
        line = source.count("\n", 0, match.start()) + 1
        base = () if match.group(1) == "crate" else module[:-1]
        for tail in expand_use_groups(match.group(2).lstrip(":")):
            segments = [s for s in tail.split("::") if s and s != "self"]
            while segments and segments[0] == "super":
                base, segments = base[:-1], segments[1:]
            target = base
            for seg in segments:
                if target + (seg,) in modules:
                    target = target + (seg,)
                else:
                    break
            if target:
                yield line, target


def main():
    show_graph = "--graph" in sys.argv
    files = {}
    for directory, _, names in os.walk(ROOT):
        for name in names:
            if name.endswith(".rs") and name != "main.rs":
                path = os.path.join(directory, name)
                files[module_path(path)] = path
    modules = set(files)
    # (parent, from child, to child) -> [(file, line)]
    edges = defaultdict(list)
    for module, path in files.items():
        with open(path, encoding="utf-8") as f:
            source = strip_tests_and_comments(f.read())
        for line, target in references(module, source, modules):
            common = 0
            while common < min(len(module), len(target)) and module[common] == target[common]:
                common += 1
            if common == len(module) or common == len(target):
                continue  # a module and its own ancestor or descendant
            parent = module[:common]
            edges[(parent, module[common], target[common])].append(
                (os.path.relpath(path, os.path.join(ROOT, "..", "..")), line)
            )

    failures = []
    for (parent, a, b), where in sorted(edges.items()):
        if show_graph:
            print(f"{'::'.join(parent + (a,))} -> {'::'.join(parent + (b,))}")
        if parent:
            continue
        for name in (a, b):
            if name not in LAYER_OF:
                failures.append(f"top-level module `{name}` has no layer in scripts/check-modules.py")
        if a in LAYER_OF and b in LAYER_OF and LAYER_OF[a] <= LAYER_OF[b]:
            places = ", ".join(f"{p}:{l}" for p, l in where[:3])
            failures.append(
                f"`{a}` (layer {LAYER_OF[a]}) uses `{b}` (layer {LAYER_OF[b]}), "
                f"which is not below it: {places}"
            )

    # Cycles among the submodules of each module (Tarjan's SCCs).
    by_parent = defaultdict(lambda: defaultdict(set))
    for parent, a, b in edges:
        by_parent[parent][a].add(b)
    for parent, graph in sorted(by_parent.items()):
        for component in strongly_connected(graph):
            if len(component) > 1:
                inside = sorted(
                    f"{'::'.join(parent + (a,))} -> {b}: "
                    + ", ".join(f"{p}:{l}" for p, l in edges[(parent, a, b)][:2])
                    for a in component
                    for b in graph[a]
                    if b in component
                )
                failures.append(
                    f"cycle among the submodules of `{'::'.join(parent) or 'crate'}`: "
                    + ", ".join(sorted(component))
                    + "\n    "
                    + "\n    ".join(inside)
                )

    for failure in dict.fromkeys(failures):
        print(f"check-modules: {failure}", file=sys.stderr)
    if failures:
        print(
            "check-modules: the module graph must point one way "
            "(docs/architecture.md, 'Module graph'); move the shared item down "
            "or pass it in at construction",
            file=sys.stderr,
        )
        return 1
    if not show_graph:
        print(f"check-modules: {len(files)} modules, graph is one-way")
    return 0


def strongly_connected(graph):
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]
    nodes = set(graph) | {b for targets in graph.values() for b in targets}

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            out.append(component)

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    sys.exit(main())
