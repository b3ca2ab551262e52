"""Data flows one way: ``dataset/`` and ``training/`` never import ``interchange/``; the dataset stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import maskclip_core

CORE = Path(maskclip_core.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` / ``from ... import`` in ``path`` names (top level or inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("package", ["dataset", "training"])
def test_no_interchange_imports(package: str) -> None:
    offenders = {}
    for path in sorted((CORE / package).glob("*.py")):
        bad = sorted(n for n in imported_modules(path) if n.startswith("maskclip_core.interchange"))
        if bad:
            offenders[str(path.relative_to(CORE))] = bad
    assert offenders == {}


def test_no_prefect_in_the_core() -> None:
    offenders = [
        str(path.relative_to(CORE))
        for path in sorted(CORE.rglob("*.py"))
        if any(n == "prefect" or n.startswith("prefect.") for n in imported_modules(path))
    ]
    assert offenders == []


def test_dataset_modules_load_neither_interchange_nor_torch() -> None:
    modules = sorted(f"maskclip_core.dataset.{p.stem}" for p in (CORE / "dataset").glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.startswith('maskclip_core.interchange') or m == 'torch'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
