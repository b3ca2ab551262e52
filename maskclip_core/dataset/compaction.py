"""Compaction of the images table: many small part files merged into a few large ones, no row changed.

The known-image index (``dataset.known_index``) is read per part file, and a run writes one images part per
batch, so a million images in batches of 16 are 62,500 files whose per-file cost (an object-store round trip)
dominates. :func:`compact_images` merges them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pyarrow as pa

from maskclip_core.dataset.integrity import reading_part
from maskclip_core.dataset.known_index import SMALL_PART_BYTES
from maskclip_core.dataset.parts import DatasetParts
from maskclip_core.dataset.schema import stored_schema


def compact_images(parts: DatasetParts, *, min_parts: int = 64, max_rows: int = 250_000) -> dict[str, int]:
    """Merge small images part files into a few large ones; returns counts of parts merged and written.

    Nothing happens below ``min_parts`` small parts; a merged part holds at most ``max_rows`` rows (or one
    part's). Merging changes no row: the merged part is written whole first (named after its members, so a
    retry after a crash rewrites the same file), then its members are deleted. A reader in between sees rows
    twice, which every reader tolerates (the current row of a file is picked per uri and config; index sets
    ignore repeats). Annotations parts are left alone: a labeling's annotations stay in the one part its batch
    wrote, which the exporters rely on.
    """
    small = [path for path, size in parts.part_files("images") if size <= SMALL_PART_BYTES]
    if len(small) < min_parts:
        return {"merged_parts": 0, "written_parts": 0}
    merged = written = 0
    for group, tables in _groups(parts, small, max_rows):
        if len(group) > 1:
            name = "compact-" + hashlib.sha256("\n".join(group).encode()).hexdigest()[:24]
            parts.write_part("images", name, pa.concat_tables(tables))
            parts.fs.rm(list(group))
            merged += len(group)
            written += 1
    return {"merged_parts": merged, "written_parts": written}


def _groups(parts: DatasetParts, paths: list[str], max_rows: int) -> Iterator[tuple[list[str], list[pa.Table]]]:
    """Consecutive runs of ``paths`` with their rows (stored names), each of at most ``max_rows`` rows unless
    one part alone holds more."""
    schema = stored_schema("images", parts.writable_version())
    group: list[str] = []
    tables: list[pa.Table] = []
    rows = 0
    for path in paths:
        # The table schema makes older parts with fewer columns read as nulls.
        with reading_part(parts.url, parts.relative(path)):
            table = parts.checked_fragment(path, schema).to_table(schema=schema)
        if rows + table.num_rows > max_rows and group:
            yield group, tables
            group, tables, rows = [], [], 0
        group.append(path)
        tables.append(table)
        rows += table.num_rows
    if group:
        yield group, tables
