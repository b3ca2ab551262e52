"""Every stage package's docstring lists exactly the modules it has (a stale module map fails here)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "maskclip_core"
PACKAGES = sorted(p.name for p in CORE.iterdir() if (p / "__init__.py").exists())


def listed_modules(package: str) -> list[str]:
    doc = ast.get_docstring(ast.parse((CORE / package / "__init__.py").read_text())) or ""
    _, found, listing = doc.partition("\nModules:\n")
    assert found, f"maskclip_core/{package}/__init__.py: its docstring has no 'Modules:' list"
    return re.findall(r"^- ``(\w+)``:", listing, flags=re.M)


@pytest.mark.parametrize("package", PACKAGES)
def test_the_package_docstring_lists_its_modules(package: str) -> None:
    modules = sorted(p.stem for p in (CORE / package).glob("*.py") if p.stem != "__init__")
    listed = listed_modules(package)
    assert len(listed) == len(set(listed)), f"{package}: a module is listed twice"
    assert sorted(listed) == modules
