"""The categories table as claims: each category is one small part, ``categories/part-id-<id>.parquet``,
created only if absent (:func:`~maskclip_core.storage.exclusive.create_exclusive`), so creating it claims the id.

:func:`read_categories` reads the claims; :func:`ensure_categories` registers names under ids that concurrent
writers never share. A part that holds an id under another name than its holder (a foreign part, a copy of a
claim under another name) loses to the holder (:func:`resolve_ids`): the id's claim file, or, for ids of datasets
written before claims (several categories per part), the first part in name order. ``maskclip dataset check``
reports such a part and ``--repair`` quarantines it.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from maskclip_core.dataset.integrity import check_part_schema, reading_part
from maskclip_core.dataset.parquet import parquet_bytes
from maskclip_core.dataset.parts import DatasetParts
from maskclip_core.dataset.schema import CATEGORIES_SCHEMA, stored_schema
from maskclip_core.storage.exclusive import create_exclusive
from maskclip_core.storage.fs import resolve


def read_categories(parts: DatasetParts) -> list[dict[str, Any]]:
    """All categories by id, as ``{"id", "name", "synonyms"}``; a name seen twice keeps its lowest id."""
    # Each small part is fetched whole with one GET: a dataset scan would HEAD each part through s3fs's
    # listing cache, which can miss a part another writer added a moment ago.
    schema = stored_schema("categories", parts.format_version)
    by_part: list[tuple[str, list[dict[str, Any]]]] = []
    for path, _ in parts.part_files("categories"):
        part = parts.relative(path)
        with reading_part(parts.url, part):
            # Arrow's own buffer: a Python file object would be read from pyarrow's threads (see parquet.py).
            parquet_file = pq.ParquetFile(pa.BufferReader(parts.fs.cat_file(path)))
            check_part_schema(parts.url, part, parquet_file.schema_arrow, schema)
            table = parquet_file.read(columns=[n for n in schema.names if n in parquet_file.schema_arrow.names])
        by_part.append((part, parts.current_names(table, "categories").cast(CATEGORIES_SCHEMA).to_pylist()))
    holders, _ = resolve_ids(by_part)
    best: dict[str, dict[str, Any]] = {}
    for row in (row for _, row in holders.values()):
        if row["name"] not in best or row["id"] < best[row["name"]]["id"]:
            best[row["name"]] = {**row, "synonyms": list(row["synonyms"] or [])}
    return sorted(best.values(), key=lambda c: c["id"])


def claim_part(category_id: int) -> str:
    """``categories/part-id-<id>.parquet``: the part whose creation claimed ``category_id``."""
    return f"categories/part-id-{category_id:010d}.parquet"


def resolve_ids(
    by_part: Iterable[tuple[str, Sequence[dict[str, Any]]]],
) -> tuple[dict[int, tuple[str, dict[str, Any]]], list[tuple[str, int, str]]]:
    """Who holds each id, from the rows of each categories part (parts named relative to the dataset).

    Returns (id -> (holding part, its row), [(part, id, holding part)] for every part that holds the id under
    another name). The holder is the id's claim file (:func:`claim_part`) when it holds the id; otherwise the
    first part in name order (datasets written before claims). Repeats of the holder's name are no conflict.
    """
    seen: dict[int, list[tuple[str, dict[str, Any]]]] = {}
    for part, rows in sorted(by_part, key=lambda item: item[0]):
        for row in rows:
            seen.setdefault(row["id"], []).append((part, row))
    holders: dict[int, tuple[str, dict[str, Any]]] = {}
    conflicts: list[tuple[str, int, str]] = []
    for category_id, candidates in sorted(seen.items()):
        claimed = [c for c in candidates if c[0] == claim_part(category_id)]
        holder = (claimed or candidates)[0]
        holders[category_id] = holder
        for part, row in candidates:
            if row["name"] != holder[1]["name"] and (part, category_id, holder[0]) not in conflicts:
                conflicts.append((part, category_id, holder[0]))
    return holders, conflicts


def ensure_categories(parts: DatasetParts, classes: Sequence[tuple[str, Sequence[str]] | str]) -> dict[str, int]:
    """Category ids of ``classes`` (name, synonyms), registering new names; safe with concurrent writers.

    Existing names keep their id; a new name claims the next free id by creating
    ``categories/part-id-<id>.parquet`` only if absent (:func:`create_exclusive`). A writer that loses the
    race for an id reads who won it (the same name: taken as is; another: learned, and the next id is
    tried), so two runs registering different names at once never share an id, and two registering the
    same name get the same one. Ids stay dense: each id is claimed only after every lower one existed.
    """
    items = [(c, ()) if isinstance(c, str) else (c[0], tuple(c[1])) for c in classes]
    parts.writable_version()
    ids = {c["name"]: c["id"] for c in read_categories(parts)}
    next_id = max(ids.values(), default=0) + 1
    for name, synonyms in items:
        while name not in ids:
            row = {"id": next_id, "name": name, "synonyms": list(synonyms)}
            data = parquet_bytes(pa.Table.from_pylist([row], schema=CATEGORIES_SCHEMA))
            if create_exclusive(_claim_url(parts, next_id), data, parts.storage_options):
                ids[name] = next_id
            else:
                winner = _claim_holder(parts, next_id)
                if winner is not None:
                    ids.setdefault(winner, next_id)
            next_id += 1
    return {name: ids[name] for name, _ in items}


def _claim_url(parts: DatasetParts, category_id: int) -> str:
    return parts.part_url("categories", f"id-{category_id:010d}")


def _claim_holder(parts: DatasetParts, category_id: int) -> str | None:
    """The name that holds ``category_id`` (None if its claim file is unreadable: the id stays taken)."""
    fs, path = resolve(_claim_url(parts, category_id), parts.storage_options)
    try:
        rows = pq.read_table(io.BytesIO(fs.cat_file(path)), schema=CATEGORIES_SCHEMA).to_pylist()
    except (OSError, pa.ArrowException):
        return None
    return rows[0]["name"] if rows and rows[0]["id"] == category_id else None
