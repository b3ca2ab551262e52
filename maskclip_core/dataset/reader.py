"""ExportImage records streamed from a LabelDataset: what the exporters and the review importers read.

Annotations are read one annotations part file at a time. ``LabelDataset.write_batch`` writes every annotation
of a labeling into the one annotations part committed by that labeling's images row, so a labeling never
spans part files and memory stays bounded by one part (plus the current images table, which the dataset's
readers hold anyway).
"""

from __future__ import annotations

import posixpath
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from maskclip_core.dataset.ids import stable_id
from maskclip_core.dataset.integrity import reading_part
from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.records import ExportImage, filter_images, lowest_scored, resolve_classes
from maskclip_core.dataset.schema import STATUSES, stored_schema

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

    Two files with identical bytes share one labeling; each is its own record. The first uri (in sort order)
    keeps the content's ``image_id``, the others get :func:`alias_image_id` and their copies of the
    annotations :func:`alias_annotation_id`, so ids stay unique and stable in every export.
    """
    everything = dataset.images()
    root = file_name_root if file_name_root is not None else common_root(everything.column("uri").to_pylist())
    current = _select_rows(everything, config_hash, statuses, image_ids)
    emitted = np.zeros(current.num_rows, dtype=bool)
    aliased = _aliased_rows(current)
    if with_annotations and current.num_rows:
        rows_of: dict[str, list[int]] = {}
        for i, lid in enumerate(current.column("labeling_id").to_pylist()):
            rows_of.setdefault(lid, []).append(i)
        for table in _annotation_parts(dataset, current.column("labeling_id"), image_ids):
            groups: dict[str, list[dict[str, Any]]] = {}
            for ann in table.to_pylist():
                groups.setdefault(ann.pop("labeling_id"), []).append(ann)
            # A batch written twice under two part names repeats its labelings: the first copy wins.
            rows = [i for lid in groups for i in rows_of[lid] if not emitted[i]]
            for i, row in zip(rows, current.take(pa.array(rows, pa.int64())).to_pylist(), strict=True):
                emitted[i] = True
                yield _export_image(row, root, groups[row["labeling_id"]], alias=i in aliased)
    rest = np.flatnonzero(~emitted)
    for start in range(0, rest.size, _ROW_CHUNK):
        chunk = rest[start : start + _ROW_CHUNK]
        for i, row in zip(chunk, current.take(chunk).to_pylist(), strict=True):
            yield _export_image(row, root, [], alias=int(i) in aliased)


def alias_image_id(image_id: int, uri: str) -> int:
    """The export id of a second (third...) file with the bytes of ``image_id``: stable, below 2**53."""
    return stable_id("alias", image_id, uri)


def alias_annotation_id(annotation_id: int, image_id: int) -> int:
    """The id of an annotation copied onto an aliased image."""
    return stable_id("alias", annotation_id, image_id)


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

    A file whose bytes another uri holds too gets a record under each id an export may give it (the content's
    and its :func:`alias_image_id`), since which uri keeps the content's id depends on the export's selection.
    File names are relative to ``source_root(dataset)``, as in every export.
    """
    table = dataset.images()
    root = common_root(table.column("uri").to_pylist())
    sized = pc.and_(pc.is_valid(table["width"]), pc.is_valid(table["height"]))
    table = table.filter(pc.and_(pc.is_valid(table["image_id"]), sized))
    images: dict[int, ExportImage] = {}
    first_row: dict[tuple[int, str], dict[str, Any]] = {}
    for row in table.to_pylist():
        if row["image_id"] not in images:
            images[row["image_id"]] = _export_image(row, root, [])
        first_row.setdefault((row["image_id"], row["uri"]), row)
    uris_per_id = Counter(image_id for image_id, _ in first_row)
    for (image_id, _), row in first_row.items():
        if uris_per_id[image_id] > 1:
            alias = _export_image(row, root, [], alias=True)
            images.setdefault(alias.image_id, alias)
    return list(images.values())


# -------------------------------------------------------------------------------------------- helpers


def _select_rows(
    table: pa.Table, config_hash: str | None, statuses: Collection[str], image_ids: Collection[int] | None
) -> pa.Table:
    unknown = set(statuses) - set(STATUSES)
    if unknown:  # a misspelt status would select nothing, silently
        raise ValueError(f"unknown image statuses {sorted(unknown)}: choose from {', '.join(STATUSES)}")
    keep = pc.is_in(table["status"], value_set=pa.array(list(statuses), pa.string()))
    keep = pc.and_(keep, pc.is_valid(table["width"]))
    keep = pc.and_(keep, pc.is_valid(table["height"]))
    keep = pc.and_(keep, pc.is_valid(table["image_id"]))
    if config_hash is not None:
        keep = pc.and_(keep, pc.equal(table["config_hash"], config_hash))
    if image_ids is not None:
        keep = pc.and_(keep, pc.is_in(table["image_id"], value_set=pa.array(list(image_ids), pa.int64())))
    current = table.filter(keep)
    uris = current.column("uri")
    if len(pc.unique(uris)) != len(uris):
        configs = sorted(set(current.column("config_hash").to_pylist()))
        newest = current.sort_by([("created_at", "descending")])["config_hash"][0].as_py()
        raise ValueError(
            f"images have current labelings under several configs {configs}: pass --config-hash "
            f"(config_hash); the newest labeling is {newest}"
        )
    return current


def _annotation_parts(
    dataset: LabelDataset, labeling_ids: pa.ChunkedArray, image_ids: Collection[int] | None
) -> Iterator[pa.Table]:
    """Per annotations part file (by path), its rows of ``labeling_ids``, sorted by image and category."""
    parts = dataset.table_dataset("annotations")  # every part's footer and schema checked
    if parts is None:
        return
    schema = stored_schema("annotations", dataset.format_version)
    wanted = pc.field("labeling_id").isin(pc.unique(labeling_ids))
    if image_ids is not None:  # lets Parquet statistics skip row groups
        wanted = wanted & pc.field("image_id").isin(pa.array(list(image_ids), pa.int64()))
    for fragment in sorted(parts.get_fragments(), key=lambda f: f.path):
        with reading_part(dataset.url, dataset.relative(fragment.path)):
            table = dataset.current_names(fragment.to_table(schema=schema, filter=wanted), "annotations")
        if table.num_rows:
            yield table.sort_by([("image_id", "ascending"), ("category_id", "ascending"), ("id", "ascending")])


def _aliased_rows(current: pa.Table) -> set[int]:
    """Row numbers (in ``current``) of files whose image id an earlier uri holds already (identical bytes)."""
    seen: set[int] = set()
    aliased: set[int] = set()
    ids = current.column("image_id").to_numpy(zero_copy_only=False)
    if len(np.unique(ids)) == ids.size:
        return aliased
    order = np.argsort(np.array(current.column("uri").to_pylist(), dtype=object), kind="stable")
    for i in order:
        image_id = int(ids[i])
        if image_id in seen:
            aliased.add(int(i))
        seen.add(image_id)
    return aliased


def _export_image(
    row: Mapping[str, Any], root: str | None, annotations: list[dict[str, Any]], *, alias: bool = False
) -> ExportImage:
    image_id = int(row["image_id"])
    if alias:
        image_id = alias_image_id(image_id, row["uri"])
        annotations = [
            {**a, "id": alias_annotation_id(int(a["id"]), image_id), "image_id": image_id} for a in annotations
        ]
    return ExportImage(
        image_id=image_id,
        uri=row["uri"],
        file_name=relative_file_name(row["uri"], root),
        width=int(row["width"]),
        height=int(row["height"]),
        sha256=row["sha256"] or "",
        status=row["status"],
        annotations=annotations,
    )
