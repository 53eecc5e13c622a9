"""The package's layering, checked over its import graph (every import statement, those inside
functions included, so a cycle cannot hide behind a lazy import).

Layers, lowest first: shared helpers (``psgfm``, ``io``, ``logutil``, ``config``, ``launch``,
``audit``, ``progress``, ``runlock``, ``runsummary``); the stages (``signals`` and ``phenome``, then ``demo`` and ``model``, then
``atlas`` and ``heads`` (the staging head, beside the atlas on the model's tokens), then
``release``: the published disease head, scored on the model's tokens and read
back by the atlas as a file); the command line (``cli``); the experiments' harnesses (``validation``). A module
imports only its own subpackage and lower layers; nothing in the pipeline (package, rule
scripts, rule files, benchmarks) imports ``psgfm.validation``; no module imports another
module's private (``_``-prefixed) names.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "workflow" / "psgfm"

# rank of each top-level part of the package: a module may import equal-or-lower ranks only
# within its own part, and strictly lower ranks elsewhere
RANK = {
    "psgfm": 0,
    "io": 0,
    "logutil": 0,
    "config": 0,
    "launch": 0,
    "audit": 0,
    "progress": 0,
    "runlock": 0,
    "runsummary": 0,
    "signals": 1,
    "phenome": 1,
    "demo": 2,
    "model": 2,
    "atlas": 3,
    "heads": 3,
    "release": 4,
    "cli": 5,
    "__main__": 5,
    "validation": 6,
}
SHARED = {p for p, r in RANK.items() if r == 0}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


MODULES = _modules()


def _resolve(name: str) -> str:
    """The module of the package that ``import name`` loads last (a name inside a module
    resolves to that module)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in MODULES else ""


def _imports(source: str) -> list[tuple[str, str, int]]:
    """(module imported, name taken from it or '', line) for every psgfm import in ``source``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(_resolve(a.name), "", node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("psgfm"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full in MODULES:  # a submodule
                    out.append((full, "", node.lineno))
                else:
                    out.append((_resolve(node.module), a.name, node.lineno))
    return [(m, n, line) for m, n, line in out if m.startswith("psgfm")]


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "psgfm"


GRAPH = {
    mod: {m for m, _, _ in _imports(path.read_text(encoding="utf-8")) if m != mod}
    for mod, path in MODULES.items()
}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_part_of_the_package_has_a_layer():
    assert {_part(m) for m in MODULES} <= set(RANK), set(map(_part, MODULES)) - set(RANK)


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_modules_import_only_downward():
    bad = []
    for mod, targets in GRAPH.items():
        src = _part(mod)
        for tgt in targets:
            dst = _part(tgt)
            if src == dst or dst in SHARED and src in SHARED:
                continue
            if RANK[dst] >= RANK[src]:
                bad.append(f"{mod} -> {tgt}")
    assert not bad, "imports against the layering: " + ", ".join(sorted(bad))


def test_no_private_names_across_modules():
    bad = []
    for mod, path in MODULES.items():
        for tgt, name, line in _imports(path.read_text(encoding="utf-8")):
            if name.startswith("_") and not name.startswith("__") and tgt != mod:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {tgt}.{name}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "path",
    sorted(
        [
            *(ROOT / "workflow" / "scripts").glob("*.py"),
            *(ROOT / "benchmarks").glob("*.py"),
            *(p for m, p in MODULES.items() if _part(m) != "validation"),
        ]
    ),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_pipeline_code_never_imports_the_experiment_harnesses(path):
    hits = [m for m, _, _ in _imports(path.read_text(encoding="utf-8"))]
    assert not [m for m in hits if _part(m) == "validation"], path


def test_rule_files_never_import_the_experiment_harnesses():
    rules = [ROOT / "Snakefile", *(ROOT / "workflow" / "rules").glob("*.smk")]
    pattern = re.compile(r"^\s*(from|import)\s+psgfm\.validation", re.M)
    assert [p.name for p in rules if pattern.search(p.read_text(encoding="utf-8"))] == []
    # and the check itself sees such a line
    assert pattern.search("from psgfm.validation.atlas import x\n")
