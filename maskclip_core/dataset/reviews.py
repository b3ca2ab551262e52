"""Human-reviewed labels beside the pseudo-labels: ``OUTPUT/reviewed/part-<import id>.parquet``.

One row per (reviewed image, category), the category's pixels as compressed COCO RLE, tied to the store's
``image_id`` / ``sha256``. A reviewed image without any annotated pixel keeps one row with a null
``category_id`` and ``segmentation``, so it still supersedes older reviews of that image.

Each import writes one part file whole (temporary name + rename locally, one PUT on object stores), named
after a hash of the imported file: importing the same file again rewrites the same part. Readers skip names
starting with ``_`` or ``.`` (unfinished writes). The current review of an image is the one from its newest
import (``imported_at``, then ``import_id``); older imports stay on disk as history.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pycocotools import mask as mask_utils

from maskclip_core.dataset.fs import atomic_write_bytes, join_url, read_bytes, resolve
from maskclip_core.dataset.parquet import open_dataset, parquet_bytes
from maskclip_core.dataset.reader import iter_export_images, known_images
from maskclip_core.dataset.store import SEGMENTATION_TYPE, LabelStore
from maskclip_core.interchange.label_studio import import_label_studio
from maskclip_core.interchange.records import ExportImage, ReviewedImage, label_map_from_annotations
from maskclip_core.interchange.review_import import import_coco_reviews, score_label_maps
from maskclip_core.labeling.annotations import annotations_to_label_map
from maskclip_core.types import IGNORE_INDEX

FORMATS = ("label-studio", "coco")
COCO_CONTRIBUTOR = "maskclip-labeler"  # build_coco_dict's info.contributor: the file came from our export

REVIEWED_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("sha256", pa.string()),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("category_id", pa.int32()),  # null: reviewed, nothing annotated
        pa.field("segmentation", SEGMENTATION_TYPE),  # compressed RLE, {"counts": str, "size": [h, w]}
        pa.field("area", pa.int64(), nullable=False),
        pa.field("tool", pa.string(), nullable=False),  # label-studio | coco
        pa.field("reviewer", pa.string()),
        pa.field("reviewed_at", pa.string()),  # as the tool wrote it
        pa.field("source_uri", pa.string()),  # the imported file
        pa.field("import_id", pa.string(), nullable=False),
        pa.field("imported_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


def import_reviews(
    output_url: str,
    review_url: str,
    fmt: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    review_storage_options: Mapping[str, Any] | None = None,
    strict: bool = True,
    imported_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """Import a Label Studio JSON export or a COCO file of reviewed labels into ``output_url``'s dataset.

    Label Studio tasks link back through the ``image_id`` our export put in ``data``. COCO images match by
    our image id when the file came from our COCO export (its ``info.contributor``, or every image id being
    one of ours), else by ``file_name`` (relative to the store's source root, as our exports name them).
    Reviews of images the store does not hold (or whose sha256 differs) raise; with ``strict=False`` they
    and unknown COCO categories are skipped. Returns what was written.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    store = LabelStore(output_url, storage_options)
    categories = store.categories()
    if not categories:
        raise ValueError(f"{output_url} holds no categories: nothing was labeled there")
    raw = read_bytes(review_url, review_storage_options)
    doc = json.loads(raw)
    ours = {image.image_id: image for image in known_images(store)}
    if fmt == "label-studio":
        reviewed = import_label_studio(doc, categories)
    else:
        ids = {int(image["id"]) for image in doc.get("images", [])}
        from_us = (doc.get("info") or {}).get("contributor") == COCO_CONTRIBUTOR or bool(ids and ids <= ours.keys())
        matchable = None if from_us else list(ours.values())
        reviewed = import_coco_reviews(doc, categories, images=matchable, strict=strict)

    import_id = hashlib.sha256(fmt.encode() + b"\x1f" + raw).hexdigest()[:32]
    written = store_reviews(
        store,
        reviewed,
        tool=fmt,
        import_id=import_id,
        source_uri=review_url,
        strict=strict,
        imported_at=imported_at,
        known=ours,
    )
    return {
        "import_id": import_id,
        "format": fmt,
        "source": review_url,
        **{k: v for k, v in written.items() if k != "import_id"},
    }


def store_reviews(
    store: LabelStore,
    reviewed: Sequence[ReviewedImage],
    *,
    tool: str,
    import_id: str,
    source_uri: str,
    strict: bool = True,
    imported_at: dt.datetime | None = None,
    known: Mapping[int, ExportImage] | None = None,
) -> dict[str, Any]:
    """Write reviewed label maps as one ``reviewed`` part named after ``import_id`` (same id: same part).

    Reviews of images the store does not hold (or whose sha256 differs) raise; with ``strict=False`` they are
    skipped and listed. A review whose size differs from its image's raises. Of several reviews of one image
    the latest (``reviewed_at``) counts. ``known``: the store's images by id, when the caller has them.
    """
    ours = {image.image_id: image for image in known_images(store)} if known is None else known
    latest: dict[int, ReviewedImage] = {}  # a task exported twice: its latest review counts
    skipped: list[int] = []
    for review in reviewed:
        image = ours.get(review.image_id)
        if image is None or (review.sha256 and review.sha256 != image.sha256):
            if strict:
                why = "is not in the store" if image is None else "has a different sha256 in the store"
                raise ValueError(f"reviewed image {review.image_id} {why} ({store.url})")
            skipped.append(review.image_id)
            continue
        if review.label_map.shape != (image.height, image.width):
            size = (image.height, image.width)
            raise ValueError(f"review of image {review.image_id} is {review.label_map.shape}, the image is {size}")
        if review.image_id not in latest or review.reviewed_at >= latest[review.image_id].reviewed_at:
            latest[review.image_id] = review

    when = imported_at or dt.datetime.now(dt.UTC)
    rows = [
        row
        for review in latest.values()
        for row in _rows(review, ours[review.image_id], tool, import_id, when, source_uri)
    ]
    url = None
    if rows:
        url = join_url(store.url, "reviewed", f"part-{import_id}.parquet")
        table = pa.Table.from_pylist(rows, schema=REVIEWED_SCHEMA)
        atomic_write_bytes(url, parquet_bytes(table), store.storage_options)
    return {
        "import_id": import_id,
        "url": url,
        "images": len(latest),
        "regions": sum(r["category_id"] is not None for r in rows),
        "skipped": skipped,
    }


def read_reviewed(output_url: str, storage_options: Mapping[str, Any] | None = None) -> pa.Table:
    """Current review rows (newest import per image), sorted by image_id, category_id."""
    fs, root = resolve(output_url, storage_options)
    dataset = open_dataset(fs, f"{root.rstrip('/')}/reviewed", REVIEWED_SCHEMA)
    if dataset is None:
        return REVIEWED_SCHEMA.empty_table()
    table = dataset.to_table()
    if table.num_rows == 0:
        return table
    imports = table.group_by(["image_id", "import_id"]).aggregate([("imported_at", "max")])
    imports = imports.sort_by(
        [("image_id", "ascending"), ("imported_at_max", "descending"), ("import_id", "descending")]
    )
    ids = imports["image_id"].to_numpy()
    winners = imports.filter(pa.array(np.r_[True, ids[1:] != ids[:-1]]))
    current = table.filter(pc.is_in(_image_import_key(table), value_set=_image_import_key(winners)))
    return current.sort_by([("image_id", "ascending"), ("category_id", "ascending")])


def reviewed_label_maps(
    output_url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    category_to_index: Mapping[int, int] | None = None,
) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """(images row, uint8 [H, W] label map) per reviewed image, clean labels for training, by uri.

    Label values are **category positions**: the index of the category in ``LabelStore.categories()`` (ids
    in order), the same default as ``LabelStore.iter_label_maps`` (the labeler's class index on a store
    whose categories were registered in class order); 255 where the reviewer annotated nothing. Pass
    ``category_to_index`` for other values (``{id: id}`` for category ids). The row is the image's newest
    store row (uri, width, height, sha256, ...) plus ``review``: import_id, tool, reviewer, reviewed_at,
    imported_at. Painting happens one image at a time.
    """
    store = LabelStore(output_url, storage_options)
    if category_to_index is None:
        category_to_index = {c["id"]: i for i, c in enumerate(store.categories())}
    by_image = _rows_by_image(read_reviewed(output_url, storage_options))
    if not by_image:
        return
    images = store.images()
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


def evaluate_reviewed(
    output_url: str, *, config_hash: str | None = None, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """How far the current pseudo-labels are from the reviewed ones: mIoU, per-class IoU, pixel accuracy.

    Scores every reviewed image whose current labeling (under ``config_hash``) is ``labeled``, one image at
    a time; the others are listed under ``missing``. Pixels the reviewer left unannotated are not scored.
    """
    store = LabelStore(output_url, storage_options)
    categories = store.categories()
    by_image = _rows_by_image(read_reviewed(output_url, storage_options))
    if not by_image:
        raise ValueError(f"{output_url} holds no reviewed images: import reviews first")
    identity = {int(c["id"]): int(c["id"]) for c in categories}
    seen: list[int] = []

    def pairs() -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        for image in iter_export_images(store, config_hash=config_hash, image_ids=list(by_image)):
            seen.append(image.image_id)
            yield image.image_id, label_map_from_annotations(image), _target(image, by_image[image.image_id], identity)

    report = score_label_maps(pairs(), categories)
    missing = sorted(set(by_image) - set(seen))
    return {**report, "missing": missing, "reviewed_images": len(by_image), "config_hash": config_hash}


# -------------------------------------------------------------------------------------------- helpers


def _rows(
    review: ReviewedImage, image: ExportImage, tool: str, import_id: str, imported_at: dt.datetime, source_uri: str
) -> list[dict[str, Any]]:
    """Rows of one reviewed label map (category ids, 255 = not annotated)."""
    base = {
        "image_id": image.image_id,
        "sha256": image.sha256 or None,
        "width": image.width,
        "height": image.height,
        "tool": tool,
        "reviewer": review.reviewer or None,
        "reviewed_at": review.reviewed_at or None,
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


def _rows_by_image(table: pa.Table) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for row in table.to_pylist():
        out.setdefault(row["image_id"], []).append(row)
    return out


def _target(image: ExportImage, rows: Sequence[Mapping[str, Any]], category_to_index: Mapping[int, int]) -> np.ndarray:
    anns = [r for r in rows if r["category_id"] is not None]
    return annotations_to_label_map(anns, image.height, image.width, category_to_index)


def _image_import_key(table: pa.Table) -> pa.ChunkedArray:
    return pc.binary_join_element_wise(pc.cast(table["image_id"], pa.string()), table["import_id"], "/")
