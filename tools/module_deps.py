#!/usr/bin/env python3
"""Module dependencies of the isquant library: which module uses which, and any cycle.

Reads every `src/**/*.rs` of the library (not `src/main.rs` and `src/cli/`, the binary, nor
test code: `tests.rs` files and what follows `#[cfg(test)]`), finds
the `crate::…` paths and `super::…` paths each file uses (in `use` declarations, braces
included, and inline), and maps them to modules at two levels: the top-level modules
(`graph`, `passes`, `pipeline`, …) and, inside `passes`, `pipeline`, `validate`, `inputs`,
`stats`, `graph` and `onnx`, their submodules (`passes::emit`, `pipeline::activations`, …).
Edges between a module and its own submodules are left out (they are one concern), and so is
the crate root (`lib.rs`: `load`, `save`, `value_name`), the facade.

Also checks that only `src/runtime.rs` names the tract crates.

Usage: python3 tools/module_deps.py [--table]   (exit code 1 on a cycle or a tract use
elsewhere; --table prints the dependency table in Markdown)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
SPLIT = {"passes", "pipeline", "validate", "inputs", "stats", "graph", "onnx"}


def module_of(path: Path) -> list[str]:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod":
        parts = parts[:-1]
    return parts


def unit(parts: list[str]) -> str | None:
    """The node a module path belongs to (None: the crate root)."""
    if not parts:
        return None
    if parts[0] in SPLIT and len(parts) > 1:
        return "::".join(parts[:2])
    return parts[0]


def expand_use(tree: str) -> list[str]:
    """`a::{b, c::{d, e}}` → [a::b, a::c::d, a::c::e]."""
    tree = tree.strip()
    m = re.match(r"^([\w:]*?)\{(.*)\}$", tree, re.S)
    if not m:
        return [tree]
    prefix, inner = m.group(1), m.group(2)
    items, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    out = []
    for it in items:
        if it.strip():
            out += [prefix + x for x in expand_use(it)]
    return out


def paths_used(text: str) -> list[str]:
    text = re.sub(r"//[^\n]*", "", text)
    found = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        found += [p.strip() for p in expand_use(m.group(1))]
    found += re.findall(r"\b((?:crate|super)(?:::\w+)+)", text)
    return found


def resolve(path: str, here: list[str]) -> list[str] | None:
    """The module path a `crate::…` or `super::…` path points into (`here`: the using file's
    module; `super` is its parent, whether the file is `m.rs` or `m/mod.rs`)."""
    parts = [p for p in path.split("::") if p]
    if not parts:
        return None
    if parts[0] == "crate":
        return parts[1:]
    if parts[0] != "super":
        return None
    base = here[:]
    while parts and parts[0] == "super":
        base = base[:-1]
        parts = parts[1:]
    return base + parts


def related(a: str, b: str) -> bool:
    """One is the other's enclosing module (`stats` and `stats::rules`)."""
    return a.startswith(b + "::") or b.startswith(a + "::")


def main() -> int:
    deps: dict[str, set[str]] = {}
    tract_users = []
    for f in sorted(SRC.rglob("*.rs")):
        rel = f.relative_to(SRC)
        if rel.parts[0] == "cli" or rel.as_posix() in ("main.rs", "lib.rs") or f.name == "tests.rs":
            continue
        # Test code is not a dependency of the library.
        text = f.read_text().split("#[cfg(test)]")[0]
        if re.search(r"\btract_(onnx|core)\b", re.sub(r"//[^\n]*", "", text)):
            tract_users.append(rel.as_posix())
        here = module_of(f)
        me = unit(here)
        if me is None:
            continue
        deps.setdefault(me, set())
        for p in paths_used(text):
            target = resolve(p, here)
            if target is None:
                continue
            # Strip item names: keep the longest prefix that is a module file.
            mod = []
            for part in target:
                cand = SRC.joinpath(*mod, part)
                if cand.with_suffix(".rs").exists() or (cand / "mod.rs").exists():
                    mod.append(part)
                else:
                    break
            u = unit(mod)
            # A module and its own submodules (re-exports, shared parent items such as
            # `passes::Skip`) are one concern; only edges between concerns count.
            if u and u != me and not related(u, me):
                deps[me].add(u)
    cycles = find_cycles(deps)
    if "--table" in sys.argv:
        print("| module | uses |")
        print("|---|---|")
        for m in sorted(deps):
            print(f"| `{m}` | {', '.join(f'`{d}`' for d in sorted(deps[m])) or '–'} |")
    ok = True
    if cycles:
        ok = False
        for c in cycles:
            print("cycle: " + " -> ".join(c), file=sys.stderr)
    others = [t for t in tract_users if t != "runtime.rs"]
    if others:
        ok = False
        print("tract named outside src/runtime.rs: " + ", ".join(others), file=sys.stderr)
    if ok and "--table" not in sys.argv:
        print(f"{len(deps)} modules, no cycle; tract named only in src/runtime.rs")
    return 0 if ok else 1


def find_cycles(deps: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(deps.get(n, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(deps):
        if n not in state:
            visit(n)
    return cycles


if __name__ == "__main__":
    sys.exit(main())
