#!/usr/bin/env python3
"""Fails if modules of a crate import each other in a circle (`crate::a` → … → `crate::a`).

Reads each crate's `src/` as text: a module's dependencies are the `crate::NAME` paths in its
files, test modules (`#[cfg(test)]` onwards) excluded.
"""
import glob
import re
import sys

CRATES = ["models", "adapters", "runtime", "gateway"]


def graph(crate):
    mods = {}
    for f in glob.glob(f"{crate}/src/**/*.rs", recursive=True):
        rel = f[len(crate) + 5 : -3]
        top = rel.split("/")[0]
        if top == "lib":
            continue
        src = open(f, encoding="utf-8").read()
        if "#[cfg(test)]" in src:
            src = src[: src.index("#[cfg(test)]")]
        deps = set(re.findall(r"crate::([a-z_0-9]+)", src)) - {top}
        mods.setdefault(top, set()).update(d for d in deps if d in mods or glob.glob(f"{crate}/src/{d}*"))
    return mods


def cycle(mods):
    state = {}

    def visit(n, stack):
        if state.get(n) == "open":
            return stack[stack.index(n) :] + [n]
        if state.get(n) == "done":
            return None
        state[n] = "open"
        for d in sorted(mods.get(n, ())):
            c = visit(d, stack + [n])
            if c:
                return c
        state[n] = "done"
        return None

    for n in sorted(mods):
        c = visit(n, [])
        if c:
            return c
    return None


failed = False
for crate in CRATES:
    c = cycle(graph(crate))
    if c:
        print(f"error: import circle in {crate}: {' -> '.join(c)}", file=sys.stderr)
        failed = True
sys.exit(1 if failed else 0)
