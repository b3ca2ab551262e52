"""Plain records of the dataset's images and reviews, their label maps, and filters over them.

The exporters code against these records, not the Parquet tables, so a dataset reader
(``dataset.reader``) or a test only has to build ``ExportImage`` objects; the review importers return
``ReviewedImage`` records. Filters are plain functions over records.
"""

from __future__ import annotations

import heapq
import math
import posixpath
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from maskclip_core.dataset.rle import annotation_mask, label_map_from_masks


@dataclass(kw_only=True)
class ExportImage:
    """One image and its COCO-form annotations, as read from the dataset.

    ``annotations`` are dicts with id, image_id, category_id, segmentation {"counts": compressed RLE str,
    "size": [h, w]}, area, bbox, iscrowd, score, labeler, round.
    """

    image_id: int
    uri: str
    file_name: str = ""  # defaults to the basename of uri
    width: int
    height: int
    sha256: str = ""
    status: str = "labeled"
    annotations: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.file_name:
            # urlsplit drops a query string (presigned https URLs) before taking the basename
            self.file_name = posixpath.basename(urlsplit(self.uri).path) or self.uri


@dataclass
class ReviewedImage:
    """A human-corrected label map for one of our images, keyed back by image_id (and sha256)."""

    image_id: int
    label_map: np.ndarray  # [H, W] uint8 category ids, IGNORE_INDEX (255) = not annotated
    sha256: str = ""
    tool: str = ""  # the review tool: "label-studio" or "coco"
    reviewer: str = ""
    reviewed_at: str = ""


# ---------------------------------------------------------------------------------------------- masks


def category_masks(image: ExportImage, category_ids: Sequence[int] | None = None) -> dict[int, np.ndarray]:
    """Union mask per category id, in the order of ``category_ids`` (default: first appearance).

    The dataset has one region per (image, class), but unions keep exporters right for per-instance inputs.
    """
    masks: dict[int, np.ndarray] = {}
    for ann in image.annotations:
        cid = int(ann["category_id"])
        m = annotation_mask(ann)
        if m.shape != (image.height, image.width):
            raise ValueError(
                f"image {image.image_id}: annotation {ann.get('id')} has size {m.shape}, "
                f"image is {(image.height, image.width)}"
            )
        masks[cid] = masks[cid] | m if cid in masks else m
    if category_ids is None:
        return masks
    return {cid: masks[cid] for cid in category_ids if cid in masks}


def label_map_from_annotations(image: ExportImage) -> np.ndarray:
    """[H, W] uint8 map of category ids (255 = no annotation) from an image's annotations, in list order."""
    pairs = ((int(a["category_id"]), annotation_mask(a)) for a in image.annotations)
    return label_map_from_masks(pairs, image.height, image.width, overlap="last")


def image_score(image: ExportImage) -> float | None:
    """Area-weighted mean of annotation scores; None when no annotation carries a score."""
    num = den = 0.0
    for ann in image.annotations:
        score = ann.get("score")
        if score is None:
            continue
        area = float(ann.get("area") or 0.0) or 1.0  # an area-less record still counts once
        num += area * float(score)
        den += area
    return num / den if den else None


# ----------------------------------------------------------------------------------------- categories


def check_categories(categories: Sequence[Mapping[str, Any]]) -> None:
    """Reject duplicate ids or names: every exporter keys regions by one or the other."""
    ids = [int(c["id"]) for c in categories]
    names = [str(c["name"]) for c in categories]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate category ids in {ids}")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate category names in {names}")


def category_lookup(categories: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Label name -> category id: names first, then synonyms that do not clash with a name or each other."""
    check_categories(categories)
    lookup = {str(c["name"]): int(c["id"]) for c in categories}
    seen: dict[str, set[int]] = {}
    for c in categories:
        for syn in c.get("synonyms") or ():
            seen.setdefault(str(syn), set()).add(int(c["id"]))
    for syn, cids in seen.items():
        if syn not in lookup and len(cids) == 1:
            lookup[syn] = next(iter(cids))
    return lookup


def resolve_classes(categories: Sequence[Mapping[str, Any]], classes: Iterable[int | str]) -> set[int]:
    """Category ids for a mix of ids and names (``--class cat --class 3``); unknown ones raise."""
    lookup = category_lookup(categories)
    known = set(lookup.values())
    out: set[int] = set()
    for c in classes:
        if isinstance(c, str) and c in lookup:
            out.add(lookup[c])
        elif isinstance(c, int | np.integer) or (isinstance(c, str) and c.lstrip("-").isdigit()):
            if int(c) not in known:
                raise ValueError(f"unknown category id {c}")
            out.add(int(c))
        else:
            raise ValueError(f"unknown category {c!r}")
    return out


# -------------------------------------------------------------------------------------------- filters


def filter_images(
    images: Iterable[ExportImage],
    *,
    category_ids: Iterable[int] | None = None,
    min_score: float | None = None,
    max_score: float | None = None,
    statuses: Iterable[str] | None = None,
    rounds: Iterable[int] | None = None,
    labelers: Iterable[str] | None = None,
    image_ids: Iterable[int] | None = None,
    drop_empty: bool = False,
) -> Iterator[ExportImage]:
    """Images (by id / status) with only the annotations that pass the class, score, round and labeler filters.

    ``None`` means "no filter". Score bounds are inclusive and apply per annotation (an annotation without a
    score fails a score filter). ``drop_empty`` drops images left without annotations, e.g. to export only
    images that contain a class. Inputs are never modified: filtered images are copies.
    """
    cats = None if category_ids is None else {int(c) for c in category_ids}
    stat = None if statuses is None else set(statuses)
    rnds = None if rounds is None else {int(r) for r in rounds}
    kinds = None if labelers is None else set(labelers)
    ids = None if image_ids is None else {int(i) for i in image_ids}

    def keep(ann: Mapping[str, Any]) -> bool:
        if cats is not None and int(ann["category_id"]) not in cats:
            return False
        if rnds is not None and (ann.get("round") is None or int(ann["round"]) not in rnds):
            return False
        if kinds is not None and ann.get("labeler") not in kinds:
            return False
        if min_score is not None or max_score is not None:
            s = ann.get("score")
            if s is None or math.isnan(float(s)):
                return False
            if min_score is not None and float(s) < min_score:
                return False
            if max_score is not None and float(s) > max_score:
                return False
        return True

    for image in images:
        if ids is not None and image.image_id not in ids:
            continue
        if stat is not None and image.status not in stat:
            continue
        anns = [a for a in image.annotations if keep(a)]
        if drop_empty and not anns:
            continue
        yield image if len(anns) == len(image.annotations) else replace(image, annotations=anns)


def lowest_scored(images: Iterable[ExportImage], n: int) -> list[ExportImage]:
    """The ``n`` images with the lowest ``image_score``, lowest first (review the doubtful ones first).

    Images without any scored annotation have nothing to rank them by and are left out.
    Ties break on image_id so the selection is reproducible.
    """
    scored = ((s, img.image_id, img) for img in images if (s := image_score(img)) is not None)
    return [img for _, _, img in heapq.nsmallest(n, scored, key=lambda t: (t[0], t[1]))]
