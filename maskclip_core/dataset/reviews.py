"""Human-reviewed labels beside the pseudo-labels: ``DATASET/reviewed/part-<import id>.parquet``.

One row per (reviewed image, category), the category's pixels as compressed COCO RLE, tied to the dataset's
``image_id`` / ``sha256``. A reviewed image without any annotated pixel keeps one row with a null
``category_id`` and ``segmentation``, so it still supersedes older reviews of that image. A review withdrawn
in the tool (its annotations deleted) is one such row with ``area`` -1 (``RETRACTED_AREA``): it supersedes the
older reviews too, and the image counts as not reviewed. Strings from review files (reviewer, reviewed_at) are
stored cut to ``MAX_STORED_CHARS``.

Each import writes one part file whole (``storage.fs.atomic_write_bytes``), named after a hash of the
imported file: importing the same file again rewrites the same part. Readers skip names starting with ``_``
or ``.`` (unfinished writes). The current review of an image is the one from its newest import
(``imported_at``, then ``import_id``); older imports stay on disk as history. Reading the review tools'
files is ``interchange.review_import``'s job; scoring against reviews is ``evaluation.reviewed``'s.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pycocotools import mask as mask_utils

from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.manifest import ensure_manifest
from maskclip_core.dataset.parquet import parquet_bytes
from maskclip_core.dataset.records import ExportImage, ReviewedImage
from maskclip_core.dataset.rle import annotations_to_label_map
from maskclip_core.dataset.schema import REVIEW_TOOLS, REVIEWED_SCHEMA
from maskclip_core.storage.fs import atomic_write_bytes, join_url
from maskclip_core.types import IGNORE_INDEX

RETRACTED_AREA = -1  # the area of the row that withdraws an image's review
MAX_STORED_CHARS = 256  # a reviewer's name or a timestamp; a 10 MB string from a hostile file is cut


def write_reviewed(
    dataset_url: str, rows: Sequence[Mapping[str, Any]], storage_options: Mapping[str, Any] | None = None
) -> str | None:
    """Write the rows of one import (``review_rows``) as ``reviewed/part-<import id>.parquet``; its URL, or
    None when there are no rows."""
    if not rows:
        return None
    import_ids = {r["import_id"] for r in rows}
    if len(import_ids) != 1:
        raise ValueError(f"one part holds the rows of one import, got {sorted(import_ids)}")
    unknown = {r["tool"] for r in rows} - set(REVIEW_TOOLS)
    if unknown:
        raise ValueError(f"review tool must be one of {REVIEW_TOOLS}, got {sorted(unknown)}")
    ensure_manifest(dataset_url, storage_options)
    url = join_url(dataset_url, "reviewed", f"part-{import_ids.pop()}.parquet")
    atomic_write_bytes(url, parquet_bytes(pa.Table.from_pylist(list(rows), schema=REVIEWED_SCHEMA)), storage_options)
    return url


def read_reviewed(
    dataset_url: str, storage_options: Mapping[str, Any] | None = None, *, include_retracted: bool = False
) -> pa.Table:
    """Current review rows (newest import per image), sorted by image_id, category_id; images whose newest
    review is a retraction are left out (``include_retracted``: kept, as their retraction row)."""
    table = LabelDataset(dataset_url, storage_options).read_table("reviewed")
    if table.num_rows == 0:
        return table
    imports = table.group_by(["image_id", "import_id"]).aggregate([("imported_at", "max")])
    imports = imports.sort_by(
        [("image_id", "ascending"), ("imported_at_max", "descending"), ("import_id", "descending")]
    )
    ids = imports["image_id"].to_numpy()
    winners = imports.filter(pa.array(np.r_[True, ids[1:] != ids[:-1]]))
    current = table.filter(pc.is_in(_image_import_key(table), value_set=_image_import_key(winners)))
    if not include_retracted:
        current = current.filter(pc.not_equal(current["area"], RETRACTED_AREA))
    return current.sort_by([("image_id", "ascending"), ("category_id", "ascending")])


def reviewed_label_maps(
    dataset_url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    category_to_index: Mapping[int, int] | None = None,
) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """(images row, uint8 [H, W] label map) per reviewed image, clean labels for training, by uri.

    Label values are **category positions**: the index of the category in ``LabelDataset.categories()`` (ids
    in order), the same default as ``LabelDataset.iter_label_maps`` (the labeler's class index on a dataset
    whose categories were registered in class order); 255 where the reviewer annotated nothing. Pass
    ``category_to_index`` for other values (``{id: id}`` for category ids). The row is the image's newest
    dataset row (uri, width, height, sha256, ...) plus ``review``: import_id, tool, reviewer, reviewed_at,
    imported_at. Painting happens one image at a time.
    """
    dataset = LabelDataset(dataset_url, storage_options)
    if category_to_index is None:
        category_to_index = {c["id"]: i for i, c in enumerate(dataset.categories())}
    by_image = rows_by_image(read_reviewed(dataset_url, storage_options))
    if not by_image:
        return
    images = dataset.images()
    images = images.filter(pc.is_in(images["image_id"], value_set=pa.array(list(by_image), pa.int64())))
    images = images.sort_by([("image_id", "ascending"), ("created_at", "descending")])
    ids = images["image_id"].to_numpy()
    newest = images.filter(pa.array(np.r_[True, ids[1:] != ids[:-1]])).sort_by("uri")
    for row in newest.to_pylist():
        reviews = by_image[row["image_id"]]
        first = reviews[0]
        anns = [r for r in reviews if r["category_id"] is not None]
        label_map = annotations_to_label_map(anns, first["height"], first["width"], category_to_index)
        review = {k: first[k] for k in ("import_id", "tool", "reviewer", "reviewed_at", "imported_at")}
        yield {**row, "review": review}, label_map


def review_rows(
    review: ReviewedImage, image: ExportImage, tool: str, import_id: str, imported_at: dt.datetime, source_uri: str
) -> list[dict[str, Any]]:
    """The reviewed-table rows of one reviewed label map (category ids, 255 = not annotated)."""
    base = {
        "image_id": image.image_id,
        "sha256": image.sha256 or None,
        "width": image.width,
        "height": image.height,
        "tool": tool,
        "reviewer": review.reviewer[:MAX_STORED_CHARS] or None,
        "reviewed_at": review.reviewed_at[:MAX_STORED_CHARS] or None,
        "source_uri": source_uri,
        "import_id": import_id,
        "imported_at": imported_at,
    }
    values = [int(v) for v in np.unique(review.label_map) if v != IGNORE_INDEX]
    if not values:
        return [{**base, "category_id": None, "segmentation": None, "area": 0}]
    rows = []
    for cid in values:
        rle = mask_utils.encode(np.asfortranarray(review.label_map == cid, dtype=np.uint8))
        segmentation = {"counts": rle["counts"].decode("ascii"), "size": [image.height, image.width]}
        rows.append({**base, "category_id": cid, "segmentation": segmentation, "area": int(mask_utils.area(rle))})
    return rows


def retraction_row(
    image: ExportImage, tool: str, import_id: str, imported_at: dt.datetime, source_uri: str
) -> dict[str, Any]:
    """The row that withdraws ``image``'s review (deleted in the tool): newer than its reviews, never scored."""
    return {
        "image_id": image.image_id,
        "sha256": image.sha256 or None,
        "width": image.width,
        "height": image.height,
        "category_id": None,
        "segmentation": None,
        "area": RETRACTED_AREA,
        "tool": tool,
        "reviewer": None,
        "reviewed_at": None,
        "source_uri": source_uri,
        "import_id": import_id,
        "imported_at": imported_at,
    }


# -------------------------------------------------------------------------------------------- helpers


def rows_by_image(table: pa.Table) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for row in table.to_pylist():
        out.setdefault(row["image_id"], []).append(row)
    return out


def _image_import_key(table: pa.Table) -> pa.ChunkedArray:
    return pc.binary_join_element_wise(pc.cast(table["image_id"], pa.string()), table["import_id"], "/")
