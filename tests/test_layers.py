#!/usr/bin/env python3
"""test_layers.py — the include graph obeys the layer order of docs/architecture.md.

The library's folders form layers, lowest first:

    util -> kernels -> generator/data -> generator -> policy -> env -> server -> cmd

A file may include files of its own folder and of folders below it, never above (kernels/cuda
counts as kernels: a backend beside its interface). clients/ stand apart: they include only
clients/. tests/ sit on top and may include anything. Two further checks follow from the order but
are made on their own, so that a new folder nobody put in the list is caught too: every C file of
the repository belongs to a known folder, and no two folders at any depth (generator and
generator/data, or generator and server) include each other, directly or through others.

Each check runs once on the tree as it is and once with a planted include against it (held in
memory, the files untouched), which must be caught: a check that cannot fail proves nothing.
Prints TAP; exits non-zero on any failure. Run by tests/run.sh (make test).
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ["util", "kernels", "generator/data", "generator", "policy", "env", "server", "cmd"]
APART = ["clients"]  # include only themselves
TOP = ["tests"]      # may include anything
ALIASES = {"kernels/cuda": "kernels"}  # a backend subfolder counts as its parent
SOURCE = re.compile(r".*\.(c|h|cu|cuh|cc)$")
INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def sources():
    out = subprocess.run(["git", "-C", ROOT, "ls-files"], capture_output=True, text=True,
                         check=True).stdout.split()
    # files git does not track yet but would (a new module before its first commit) count too
    extra = subprocess.run(["git", "-C", ROOT, "ls-files", "--others", "--exclude-standard"],
                           capture_output=True, text=True, check=True).stdout.split()
    return sorted(f for f in set(out + extra) if SOURCE.match(f) and os.path.exists(os.path.join(ROOT, f)))


def includes(files):
    """{file: [included repository paths]}; an include is resolved from the root, then from the
    including file's folder (cuemu's own headers)."""
    graph = {}
    for f in files:
        text = open(os.path.join(ROOT, f), encoding="utf-8", errors="replace").read()
        deps = []
        for name in INCLUDE.findall(text):
            here = os.path.normpath(os.path.join(os.path.dirname(f), name))
            if os.path.exists(os.path.join(ROOT, name)):
                deps.append(os.path.normpath(name))
            elif os.path.exists(os.path.join(ROOT, here)):
                deps.append(here)
            else:
                deps.append("?" + name)
        graph[f] = deps
    return graph


def folder(path):
    d = os.path.dirname(path)
    for sub, parent in ALIASES.items():
        if d == sub or d.startswith(sub + "/"):
            return parent
    return d


def part(path):
    """The layer, apart or top folder path belongs to (the longest that contains it), or None."""
    d = folder(path)
    best = None
    for name in LAYERS + APART + TOP:
        if (d == name or d.startswith(name + "/")) and (best is None or len(name) > len(best)):
            best = name
    return best


def check_order(graph):
    bad = []
    for f, deps in graph.items():
        src = part(f)
        for dep in deps:
            if dep.startswith("?"):
                bad.append(f"{f}: includes \"{dep[1:]}\", which is no file of the repository")
                continue
            dst = part(dep)
            if src in TOP:
                continue
            if src in APART or dst in APART:
                if src != dst:
                    bad.append(f"{f} ({src}) includes {dep} ({dst}): clients stand apart")
                continue
            if src is None or dst is None:
                continue  # reported by check_known
            if LAYERS.index(dst) > LAYERS.index(src):
                bad.append(f"{f} ({src}) includes {dep} ({dst}), a layer above it")
    return bad


def check_known(graph):
    return [f"{f}: its folder is in no layer (tests/test_layers.py, LAYERS)" for f in graph
            if part(f) is None and folder(f) != ""] + \
           [f"{f}: a source file at the top of the repository belongs in a folder" for f in graph
            if folder(f) == ""]


def cycles_at(graph, depth):
    """Pairs of folders (paths cut to depth components) that reach each other."""
    def node(p):
        return "/".join(folder(p).split("/")[:depth])
    edges = {}
    for f, deps in graph.items():
        for dep in deps:
            if dep.startswith("?"):
                continue
            a, b = node(f), node(dep)
            if a != b:  # a folder and one inside it are distinct nodes too
                edges.setdefault(a, set()).add(b)
    reach = {}
    for a in edges:
        seen, stack = set(), [a]
        while stack:
            for b in edges.get(stack.pop(), ()):
                if b not in seen:
                    seen.add(b)
                    stack.append(b)
        reach[a] = seen
    return sorted({tuple(sorted((a, b))) for a in reach for b in reach[a]
                   if b != a and a in reach.get(b, ())})


def check_cycles(graph):
    deepest = max(len(folder(f).split("/")) for f in graph)
    bad, seen = [], set()
    for d in range(1, deepest + 1):
        for a, b in cycles_at(graph, d):
            if part(a + "/x") in TOP or part(b + "/x") in TOP:
                continue  # tests include everything; nothing includes them but tests
            if (a, b) not in seen:  # a pair is named once, at the first depth it shows
                seen.add((a, b))
                bad.append(f"depth {d}: {a} and {b} include each other (directly or through "
                           "others)")
    return bad


def planted(graph, f, dep):
    g = {k: list(v) for k, v in graph.items()}
    g.setdefault(f, []).append(dep)
    return g


def main():
    graph = includes(sources())
    results = []

    def report(ok, name, lines=()):
        results.append(ok)
        print(f"{'ok' if ok else 'not ok'} {len(results)} - {name}")
        for line in lines:
            print(f"#   {line}")

    order = check_order(graph)
    report(not order, "every include goes down the layer order "
           + " -> ".join(LAYERS) + " (clients apart)", order[:40])
    known = check_known(graph)
    report(not known, "every C file belongs to a known part", known)
    cyc = check_cycles(graph)
    report(not cyc, "no two folders at any depth include each other", cyc)
    # planted: kernels reaching up into the server, the generator into its own data's users, a
    # client into the library, and a new folder nobody placed
    plants = [("kernels/conv.c", "server/serve.h", check_order),
              ("generator/data/fmnist.c", "generator/gan.h", check_order),
              ("kernels/cuda/conv_cudnn.cu", "generator/sagan.h", check_order),
              ("clients/c/steer_client.c", "server/proto.h", check_order),
              ("generator/sagan.c", "cmd/args.h", check_order),
              ("generator/data/fmnist.c", "generator/gan.h", check_cycles),
              ("newpart/x.c", "kernels/kernels.h", check_known)]
    for f, dep, check in plants:
        caught = check(planted(graph, f, dep))
        report(bool(caught), f"{check.__name__} catches a planted include {f} -> {dep}",
               [] if caught else ["not caught"])
    print(f"1..{len(results)}")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
