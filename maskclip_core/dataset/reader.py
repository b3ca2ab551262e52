"""ExportImage records streamed from a LabelDataset: what the exporters and the review importers read.

Annotations are read one annotations part file at a time. ``LabelDataset.write_batch`` writes every annotation
of a labeling into the one annotations part committed by that labeling's images row, so a labeling never
spans part files and memory stays bounded by one part (plus the current images table, which the dataset's
readers hold anyway).
"""

from __future__ import annotations

import posixpath
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.records import ExportImage, filter_images, lowest_scored, resolve_classes
from maskclip_core.dataset.schema import stored_schema

_ROW_CHUNK = 4096  # images rows turned into Python objects at a time


def common_root(uris: Iterable[str]) -> str | None:
    """Deepest folder holding every uri (``/data`` for ``/data/a/x.jpg``, ``/data/b/y.jpg``); None if none.

    Names relative to it keep the folders that tell equal basenames apart. A root that is only a URL scheme
    (images in two buckets) is no folder: None, and names fall back to basenames.
    """
    common: list[str] | None = None
    for uri in uris:
        parts = uri.split("/")[:-1]
        if common is None:
            common = parts
            continue
        n = 0
        for a, b in zip(common, parts, strict=False):
            if a != b:
                break
            n += 1
        del common[n:]
    if not common:
        return None
    if common == [""]:
        return "/"
    if common[-1] == "":  # "s3://" with nothing after it
        return None
    return "/".join(common)


def relative_file_name(uri: str, root: str | None) -> str:
    """``uri`` relative to the folder ``root`` when it lies below it, else its base name."""
    if root is not None:
        prefix = root.rstrip("/") + "/"
        if uri.startswith(prefix):
            return uri[len(prefix) :]
    return posixpath.basename(uri.rstrip("/"))


def source_root(dataset: LabelDataset) -> str | None:
    """``common_root`` of every image in the dataset: file names under it do not change with the selection."""
    return common_root(dataset.images().column("uri").to_pylist())


def iter_export_images(
    dataset: LabelDataset,
    *,
    config_hash: str | None = None,
    statuses: Collection[str] = ("labeled",),
    image_ids: Collection[int] | None = None,
    with_annotations: bool = True,
    file_name_root: str | None = None,
) -> Iterator[ExportImage]:
    """Current images of the dataset (with ``statuses``) and their committed annotations, streamed.

    Images with annotations come part file by part file (by image id within one), then the rest by uri.
    ``file_name`` is the uri relative to ``file_name_root`` (default: ``source_root(dataset)``, as for the
    COCO export). Images without a size (failed before decoding) are left out. Raises when an image has
    current labelings under several configs: pass ``config_hash`` then.
    """
    everything = dataset.images()
    root = file_name_root if file_name_root is not None else common_root(everything.column("uri").to_pylist())
    current = _select_rows(everything, config_hash, statuses, image_ids)
    emitted = np.zeros(current.num_rows, dtype=bool)
    if with_annotations and current.num_rows:
        row_of = {lid: i for i, lid in enumerate(current.column("labeling_id").to_pylist())}
        for table in _annotation_parts(dataset, current.column("labeling_id"), image_ids):
            groups: dict[str, list[dict[str, Any]]] = {}
            for ann in table.to_pylist():
                groups.setdefault(ann.pop("labeling_id"), []).append(ann)
            # A batch written twice under two part names repeats its labelings: the first copy wins.
            rows = [row_of[lid] for lid in groups if not emitted[row_of[lid]]]
            for i, row in zip(rows, current.take(pa.array(rows, pa.int64())).to_pylist(), strict=True):
                emitted[i] = True
                yield _export_image(row, root, groups[row["labeling_id"]])
    rest = np.flatnonzero(~emitted)
    for start in range(0, rest.size, _ROW_CHUNK):
        for row in current.take(rest[start : start + _ROW_CHUNK]).to_pylist():
            yield _export_image(row, root, [])


def select_images(
    dataset: LabelDataset,
    *,
    config_hash: str | None = None,
    classes: Iterable[int | str] | None = None,
    min_score: float | None = None,
    max_score: float | None = None,
    statuses: Collection[str] = ("labeled",),
    rounds: Iterable[int] | None = None,
    labelers: Iterable[str] | None = None,
    image_ids: Collection[int] | None = None,
    lowest: int | None = None,
    categories: Sequence[Mapping[str, Any]] | None = None,
    file_name_root: str | None = None,
) -> Iterator[ExportImage]:
    """``iter_export_images`` through ``records.filter_images``, then optionally the ``lowest`` N by score.

    ``classes`` are names, synonyms or ids. With a class, score, round or labeler filter, images left without
    any annotation are dropped (an export "of cats" holds images with cats). ``lowest`` ranks what the
    filters left by area-weighted annotation score, lowest first, keeping only N images in memory.
    ``file_name_root`` as for ``iter_export_images``.
    """
    if categories is None:
        categories = dataset.categories()
    category_ids = None if classes is None else resolve_classes(categories, classes)
    by_annotation = any(v is not None for v in (category_ids, min_score, max_score, rounds, labelers))
    images = filter_images(
        iter_export_images(
            dataset, config_hash=config_hash, statuses=statuses, image_ids=image_ids, file_name_root=file_name_root
        ),
        category_ids=category_ids,
        min_score=min_score,
        max_score=max_score,
        rounds=rounds,
        labelers=labelers,
        drop_empty=by_annotation,
    )
    if lowest is None:
        yield from images
    else:
        yield from lowest_scored(images, lowest)


def known_images(dataset: LabelDataset) -> list[ExportImage]:
    """One annotation-less record per image id in the dataset (any config or status), for matching reviews.

    File names are relative to ``source_root(dataset)``, as in every export.
    """
    table = dataset.images()
    root = common_root(table.column("uri").to_pylist())
    sized = pc.and_(pc.is_valid(table["width"]), pc.is_valid(table["height"]))
    table = table.filter(pc.and_(pc.is_valid(table["image_id"]), sized))
    images: dict[int, ExportImage] = {}
    for row in table.to_pylist():
        if row["image_id"] not in images:
            images[row["image_id"]] = _export_image(row, root, [])
    return list(images.values())


# -------------------------------------------------------------------------------------------- helpers


def _select_rows(
    table: pa.Table, config_hash: str | None, statuses: Collection[str], image_ids: Collection[int] | None
) -> pa.Table:
    keep = pc.is_in(table["status"], value_set=pa.array(list(statuses), pa.string()))
    keep = pc.and_(keep, pc.is_valid(table["width"]))
    keep = pc.and_(keep, pc.is_valid(table["height"]))
    keep = pc.and_(keep, pc.is_valid(table["image_id"]))
    if config_hash is not None:
        keep = pc.and_(keep, pc.equal(table["config_hash"], config_hash))
    if image_ids is not None:
        keep = pc.and_(keep, pc.is_in(table["image_id"], value_set=pa.array(list(image_ids), pa.int64())))
    current = table.filter(keep)
    ids = current.column("image_id")
    if len(pc.unique(ids)) != len(ids):
        configs = sorted(set(current.column("config_hash").to_pylist()))
        raise ValueError(f"images have current labelings under several configs {configs}: pass config_hash")
    return current


def _annotation_parts(
    dataset: LabelDataset, labeling_ids: pa.ChunkedArray, image_ids: Collection[int] | None
) -> Iterator[pa.Table]:
    """Per annotations part file (by path), its rows of ``labeling_ids``, sorted by image and category."""
    parts = dataset.table_dataset("annotations")
    if parts is None:
        return
    schema = stored_schema("annotations", dataset.format_version)
    wanted = pc.field("labeling_id").isin(pc.unique(labeling_ids))
    if image_ids is not None:  # lets Parquet statistics skip row groups
        wanted = wanted & pc.field("image_id").isin(pa.array(list(image_ids), pa.int64()))
    for fragment in sorted(parts.get_fragments(), key=lambda f: f.path):
        table = dataset.current_names(fragment.to_table(schema=schema, filter=wanted), "annotations")
        if table.num_rows:
            yield table.sort_by([("image_id", "ascending"), ("category_id", "ascending"), ("id", "ascending")])


def _export_image(row: Mapping[str, Any], root: str | None, annotations: list[dict[str, Any]]) -> ExportImage:
    return ExportImage(
        image_id=int(row["image_id"]),
        uri=row["uri"],
        file_name=relative_file_name(row["uri"], root),
        width=int(row["width"]),
        height=int(row["height"]),
        sha256=row["sha256"] or "",
        status=row["status"],
        annotations=annotations,
    )
