"""What killed runs leave behind, told apart from damage: temporary files and never-committed annotations parts.

A writer killed while writing a file leaves its ``_tmp-*`` temporary (``storage.fs.TEMP_PREFIX``); a run killed
between a batch's two writes leaves an annotations part that no images row commits. Readers skip both, so the
dataset's content is right: ``maskclip dataset check`` reports them as residue (exit 0), and ``--repair``
removes them.

Removal is safe: ``--repair`` holds the dataset's lease, so no labeling run is writing; a temporary file counts
as residue only once it is older than a lease's life (``STALE_AFTER_S``), because a live writer of any kind
writes its file in one go and a temporary file that has not changed for that long has no writer left.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from maskclip_core.dataset.lease import DEFAULT_TTL_S
from maskclip_core.storage.fs import TEMP_PREFIX

STALE_AFTER_S = DEFAULT_TTL_S

TEMP = "temp"
ORPHAN = "orphan"


@dataclass
class Residue:
    path: str  # relative to the dataset: annotations/part-x.parquet, images/_tmp-...-part-y.parquet
    kind: str  # TEMP (a killed writer's temporary file) | ORPHAN (an annotations part a killed run never committed)
    detail: str


def stale_temp_files(fs: Any, root: str, *, stale_after_s: float = STALE_AFTER_S) -> list[Residue]:
    """The temporary files under ``root`` unchanged for ``stale_after_s`` seconds (paths relative to ``root``)."""
    try:
        found = fs.find(root, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return []
    now = time.time()
    out = []
    for path, info in sorted(found.items()):
        if not path.rsplit("/", 1)[-1].startswith(TEMP_PREFIX):
            continue
        modified = _modified_at(info)
        if modified is None or now - modified < stale_after_s:
            continue  # may still be written
        age_h = (now - modified) / 3600
        rel = path[len(root) :].lstrip("/")
        out.append(Residue(rel, TEMP, f"temporary file of a killed writer, unchanged for {age_h:.1f} h"))
    return out


def remove_residue(fs: Any, root: str, residue: list[Residue]) -> list[str]:
    """Delete each residue file; returns those removed (one already gone is not an error)."""
    removed = []
    for item in residue:
        try:
            fs.rm_file(f"{root}/{item.path}")
        except FileNotFoundError:
            continue
        removed.append(item.path)
    return removed


def _modified_at(info: dict[str, Any]) -> float | None:
    """Seconds since the epoch from a listing's info (local ``mtime``, object stores' ``LastModified``)."""
    for key in ("mtime", "LastModified", "last_modified", "updated"):
        value = info.get(key)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, dt.datetime):
            return value.timestamp()
    return None
