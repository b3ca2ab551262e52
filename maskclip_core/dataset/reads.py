"""The read side of the images and annotations tables: current rows, history, and what they commit.

Images rows are picked by the Arrow strategy of ``dataset.current_rows``; annotations are read only through
the labelings of those rows, so crash orphans and superseded labelings stay invisible.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from maskclip_core.dataset.current_rows import NEWEST_FIRST, current_rows, drop_repeats
from maskclip_core.dataset.parts import DatasetParts
from maskclip_core.dataset.rle import annotations_to_label_map
from maskclip_core.dataset.schema import ANNOTATIONS_SCHEMA, DONE_STATUSES


def images(parts: DatasetParts, config_hash: str | None = None, statuses: Collection[str] | None = None) -> pa.Table:
    """Current images rows: the newest ``created_at`` per (uri, config_hash), sorted by uri.

    The dataset follows its source: a file edited in place shows only its newest content, a file that
    left the source shows a ``gone`` row (never selected by an export's statuses), and two files with
    identical bytes are two rows (sharing one labeling). ``statuses`` filters after picking the current
    row, so an image whose newest labeling failed does not show its older labeled row.
    """
    table = history(parts, config_hash, current_only=True)
    if table.num_rows == 0:
        return table
    if statuses is not None:
        table = table.filter(pc.is_in(table["status"], value_set=pa.array(list(statuses), pa.string())))
    return table


def history(parts: DatasetParts, config_hash: str | None = None, *, current_only: bool = False) -> pa.Table:
    """Every images row ever written (the dataset's history), sorted by uri, config and time, with a
    ``current`` column: True on the newest row of each (uri, config_hash), the one exports show."""
    wanted = None if config_hash is None else pc.field("config_hash") == config_hash
    table = parts.read_table("images", filter=wanted)
    if current_only:
        return current_rows(table)
    numbered = table.append_column("_row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    flags = pc.is_in(numbered["_row"], value_set=current_rows(numbered)["_row"].combine_chunks())
    table = table.append_column("current", flags)
    return table.sort_by([("uri", "ascending"), ("config_hash", "ascending"), ("created_at", "ascending")])


def content_labelings(parts: DatasetParts, config_hash: str, sha256s: Collection[str]) -> dict[str, dict[str, Any]]:
    """The newest current labeled / rejected row of each of these contents under ``config_hash``.

    A file whose bytes are already labeled (renamed, copied, restored) gets a row of its own that points
    at this labeling (same ``labeling_id``: its annotations are shared), instead of being labeled again.
    """
    if not sha256s:
        return {}
    wanted = (pc.field("config_hash") == config_hash) & pc.field("sha256").isin(pa.array(sorted(sha256s)))
    table = parts.read_table("images", filter=wanted)
    if table.num_rows == 0:
        return {}
    # Current rows of every uri holding one of these contents, then the newest per content.
    uris = pc.unique(table["uri"])
    rows = parts.read_table("images", filter=(pc.field("config_hash") == config_hash) & pc.field("uri").isin(uris))
    current = current_rows(rows)
    current = current.filter(pc.is_in(current["status"], value_set=pa.array(list(DONE_STATUSES))))
    current = current.sort_by(list(NEWEST_FIRST))
    out: dict[str, dict[str, Any]] = {}
    for row in current.to_pylist():
        if row["sha256"] in sha256s:
            out.setdefault(row["sha256"], row)
    return out


def annotations(
    parts: DatasetParts,
    image_ids: Collection[int] | None = None,
    *,
    config_hash: str | None = None,
    statuses: Collection[str] = ("labeled",),
) -> pa.Table:
    """Annotations of the current labelings (with ``statuses``), sorted by image_id, category_id.

    Annotations whose labeling has no current images row (crash orphans, superseded labelings) are left
    out; duplicates of one id (a batch written twice under two part names) appear once.
    """
    current = _current_of(parts, config_hash, statuses, image_ids)
    return annotations_for_labelings(parts, current["labeling_id"], image_ids)


def annotations_for_labelings(
    parts: DatasetParts,
    labeling_ids: pa.ChunkedArray | pa.Array | Sequence[str],
    image_ids: Iterable[int] | None = None,
) -> pa.Table:
    """Annotations of exactly these labelings (e.g. ``images()["labeling_id"]``), deduplicated by id.

    Callers that already hold an images table use this to read one consistent snapshot.
    """
    if not isinstance(labeling_ids, pa.Array | pa.ChunkedArray):
        labeling_ids = pa.array(list(labeling_ids), pa.string())
    if len(labeling_ids) == 0:
        return ANNOTATIONS_SCHEMA.empty_table()
    wanted = pc.field("labeling_id").isin(pc.unique(labeling_ids))
    if image_ids is not None:  # lets Parquet statistics skip row groups
        wanted = wanted & pc.field("image_id").isin(pa.array(list(image_ids), pa.int64()))
    table = parts.read_table("annotations", filter=wanted)
    table = table.sort_by([("image_id", "ascending"), ("category_id", "ascending"), ("id", "ascending")])
    return drop_repeats(table, ["id"])


def iter_label_maps(
    parts: DatasetParts,
    category_to_index: Mapping[int, int],
    *,
    config_hash: str | None = None,
    image_ids: Collection[int] | None = None,
    statuses: Collection[str] = ("labeled",),
) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """(images row, uint8 label map) for each current labeling, in :func:`images` order; ``category_to_index``
    maps category ids to label values."""
    current = _current_of(parts, config_hash, statuses, image_ids)
    anns = annotations_for_labelings(parts, current["labeling_id"], image_ids).select(
        ["labeling_id", "id", "category_id", "segmentation"]
    )
    by_labeling: dict[str, list[dict[str, Any]]] = {}
    for ann in anns.to_pylist():
        by_labeling.setdefault(ann["labeling_id"], []).append(ann)
    for row in current.to_pylist():
        if row["height"] is None or row["width"] is None:
            continue  # failed before decoding: there is no image to paint
        label_map = annotations_to_label_map(
            by_labeling.get(row["labeling_id"], []), row["height"], row["width"], category_to_index
        )
        yield row, label_map


def _current_of(
    parts: DatasetParts, config_hash: str | None, statuses: Collection[str], image_ids: Collection[int] | None
) -> pa.Table:
    """The current images rows with ``statuses``, of ``image_ids`` when given."""
    current = images(parts, config_hash=config_hash, statuses=statuses)
    if image_ids is not None:
        current = current.filter(pc.is_in(current["image_id"], value_set=pa.array(list(image_ids), pa.int64())))
    return current
