"""Appending a batch: its rows checked, then its annotations part, then its images part (the commit record).

The images part goes last because it commits the annotations: readers show an annotation only through a
current images row of its labeling (``dataset.current_rows``), so a crash between the two writes leaves an
invisible orphan, and the task's retry commits it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from maskclip_core.dataset.ids import image_id_from_sha256
from maskclip_core.dataset.manifest import id_bits
from maskclip_core.dataset.parts import DatasetParts
from maskclip_core.dataset.schema import (
    ANNOTATIONS_SCHEMA,
    DONE_STATUSES,
    IMAGES_SCHEMA,
    LABELERS,
    PART_NAME,
    ROW_STATUSES,
    to_stored_names,
)


def utc_now() -> dt.datetime:
    """``created_at`` for a new row."""
    return dt.datetime.now(dt.UTC)


def write_batch(
    parts: DatasetParts,
    images_rows: Sequence[Mapping[str, Any]],
    annotation_rows: Sequence[Mapping[str, Any]],
    *,
    part_name: str,
) -> dict[str, str | None]:
    """Append a batch: ``annotations/part-<part_name>.parquet``, then ``images/part-<part_name>.parquet``.

    The images part goes last because it commits the annotations (see module doc). Rows are validated
    first; ``created_at`` defaults to now. Writing the same batch again under the same part name
    replaces the file with the same content, so task retries are harmless. Returns the URLs written.
    """
    if not PART_NAME.fullmatch(part_name):
        raise ValueError(f"part name {part_name!r}: use letters, digits, '.', '_', '=', '-' (no '/')")
    if not images_rows:
        if annotation_rows:
            raise ValueError("annotations without images rows would never become visible")
        return {"annotations": None, "images": None}
    version = parts.writable_version()
    images = [_image_row(r, id_bits(version)) for r in images_rows]
    annotations = [_annotation_row(r) for r in annotation_rows]
    _check_annotations_committed_by(annotations, images)
    written: dict[str, str | None] = {"annotations": None, "images": None}
    if annotations:
        table = pa.Table.from_pylist(annotations, schema=ANNOTATIONS_SCHEMA)
        written["annotations"] = parts.write_part(
            "annotations", part_name, to_stored_names(table, "annotations", version)
        )
    table = pa.Table.from_pylist(images, schema=IMAGES_SCHEMA)
    written["images"] = parts.write_part("images", part_name, to_stored_names(table, "images", version))
    return written


def _image_row(row: Mapping[str, Any], bits: int) -> dict[str, Any]:
    _check_keys(row, IMAGES_SCHEMA, "images")
    out = {name: row.get(name) for name in IMAGES_SCHEMA.names}
    if out["created_at"] is None:
        out["created_at"] = utc_now()
    _check_required(out, IMAGES_SCHEMA, "images")
    if out["status"] not in ROW_STATUSES:
        raise ValueError(f"images row {out['uri']}: status {out['status']!r} not in {ROW_STATUSES}")
    if out["labeler"] not in LABELERS:
        raise ValueError(f"images row {out['uri']}: labeler {out['labeler']!r} not in {LABELERS}")
    if out["status"] in DONE_STATUSES and (out["sha256"] is None or out["image_id"] is None):
        raise ValueError(f"images row {out['uri']}: a {out['status']} row needs sha256 and image_id")
    if out["sha256"] is not None and out["image_id"] is not None:
        if image_id_from_sha256(out["sha256"], bits) != out["image_id"]:
            raise ValueError(f"images row {out['uri']}: image_id does not derive from sha256 in {bits} bits")
    if out["status"] == "labeled" and (out["width"] is None or out["height"] is None):
        raise ValueError(f"images row {out['uri']}: a labeled row needs width and height")
    return out


def _annotation_row(row: Mapping[str, Any]) -> dict[str, Any]:
    _check_keys(row, ANNOTATIONS_SCHEMA, "annotations")
    out = {name: row.get(name) for name in ANNOTATIONS_SCHEMA.names}
    _check_required(out, ANNOTATIONS_SCHEMA, "annotations")
    return out


def _check_keys(row: Mapping[str, Any], schema: pa.Schema, table: str) -> None:
    unknown = set(row) - set(schema.names)
    if unknown:
        raise ValueError(f"{table} row has unknown fields {sorted(unknown)}")


def _check_required(row: Mapping[str, Any], schema: pa.Schema, table: str) -> None:
    missing = [f.name for f in schema if not f.nullable and row.get(f.name) is None]
    if missing:
        raise ValueError(f"{table} row is missing required fields {missing}")


def _check_annotations_committed_by(annotations: list[dict[str, Any]], images: list[dict[str, Any]]) -> None:
    """Each annotation needs a labeled images row in the same batch, or it would stay invisible forever."""
    labeled = {r["labeling_id"]: r["image_id"] for r in images if r["status"] == "labeled"}
    for ann in annotations:
        if ann["labeling_id"] not in labeled:
            raise ValueError(f"annotation {ann['id']}: labeling {ann['labeling_id']!r} has no labeled images row")
        if labeled[ann["labeling_id"]] != ann["image_id"]:
            raise ValueError(f"annotation {ann['id']}: image_id differs from its images row")
