"""The house's import order (``[tool.importlinter]`` in pyproject.toml, drawn in docs/ARCHITECTURE.md): the stage
packages form one order, no two modules import each other (lazy imports count), the core has no Prefect and
the data layer loads without torch."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def test_the_import_contracts_hold() -> None:
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_every_part_of_the_core_has_a_layer() -> None:
    """A new stage package (or top-level module) must take its place in the order, or it escapes the check."""
    [layers] = [c["layers"] for c in CONFIG["contracts"] if c["type"] == "layers"]
    placed = {name.strip() for layer in layers for name in layer.split("|")}
    core = ROOT / "maskclip_core"
    parts = {f"maskclip_core.{p.name}" for p in core.iterdir() if (p / "__init__.py").exists()}
    parts |= {f"maskclip_core.{p.stem}" for p in core.glob("*.py") if p.stem != "__init__"}
    assert sorted(parts - placed) == []


def _cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start) & modules)))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.find_modules_directly_imported_by(nxt) & modules))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_two_modules_import_each_other() -> None:
    graph = grimp.build_graph(*CONFIG["root_packages"], cache_dir=None)
    # A package's __init__ re-exporting its modules is not a cycle of the code: leave packages' inits out.
    modules = {m for m in graph.modules if not (ROOT / m.replace(".", "/") / "__init__.py").exists()}
    assert _cycles(graph, modules) == []


def test_the_data_layer_loads_neither_torch_nor_the_stages_above_it() -> None:
    """What the forbidden contract says statically, at run time: importing every dataset module pulls in
    no model code."""
    modules = sorted(
        f"maskclip_core.{package}.{p.stem}"
        for package in ("storage", "dataset")
        for p in (ROOT / "maskclip_core" / package).glob("*.py")
        if p.stem != "__init__"
    )
    heavy = ("torch", "maskclip_core.interchange", "maskclip_core.labeling", "maskclip_core.teacher")
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(sorted(m for m in sys.modules if m.startswith({heavy!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_the_architecture_doc_draws_the_contracts_order() -> None:
    """docs/ARCHITECTURE.md's layer drawing is the order the contract enforces, line for line."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    drawing = text.split("## Layers", 1)[1].split("```", 2)[1]
    drawn = []
    for line in drawing.strip().splitlines():
        names = line.split("  ", 1)[0].split("|")
        drawn.append(
            [n.strip() if n.strip() in CONFIG["root_packages"] else f"maskclip_core.{n.strip()}" for n in names]
        )
    [layers] = [c["layers"] for c in CONFIG["contracts"] if c["type"] == "layers"]
    assert drawn == [[n.strip() for n in layer.split("|")] for layer in layers]
