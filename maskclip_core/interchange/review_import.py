"""Human corrections -> ReviewedImage records, and pseudo labels scored against them.

Label maps here hold category ids (uint8, 255 = not annotated) on both sides; evaluation maps ids to
contiguous class indices for ``maskclip_core.evaluation.metrics``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils

from maskclip_core.evaluation.metrics import evaluate
from maskclip_core.interchange.label_studio import import_label_studio
from maskclip_core.interchange.polygons import polygons_to_mask
from maskclip_core.interchange.records import (
    ExportImage,
    ReviewedImage,
    category_lookup,
    label_map_from_annotations,
    label_map_from_masks,
    read_json,
)
from maskclip_core.types import IGNORE_INDEX

FORMATS = ("label-studio", "coco")


def import_coco_reviews(
    coco: Mapping[str, Any] | str,
    categories: Sequence[Mapping[str, Any]],
    *,
    images: Iterable[ExportImage] | None = None,
    strict: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> list[ReviewedImage]:
    """Reviewed label maps from a COCO instances JSON (a dict or its URL), e.g. a CVAT "COCO 1.0" export.

    Tools renumber images and categories, so categories are matched by name, and images by ``file_name``
    (then by basename when that is unique) against ``images``; without ``images`` the COCO image ids are
    taken as ours (our own COCO exports keep them). Polygons, uncompressed and compressed RLE are read and
    painted in annotation order (later wins). Images without annotations are not counted as reviewed: COCO
    cannot tell "reviewed, nothing there" from "not reviewed". With ``strict`` unknown images or category
    names raise; otherwise they are skipped.
    """
    if isinstance(coco, str):
        coco = read_json(coco, storage_options)
    lookup = category_lookup(categories)
    ours: dict[int, int | None] = {}  # COCO category id -> our id (None: unknown, skipped)
    for c in coco.get("categories", []):
        ours[int(c["id"])] = lookup.get(str(c["name"]))
        if ours[int(c["id"])] is None and strict:
            raise ValueError(f"COCO category {c['name']!r} is not one of our categories")
    link = _image_linker(images)

    by_image: dict[int, list[Mapping[str, Any]]] = {}
    for ann in coco.get("annotations", []):
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    reviewed = []
    for info in coco.get("images", []):
        anns = by_image.get(int(info["id"]))
        if not anns:
            continue
        target = link(info)
        if target is None:
            if strict:
                raise ValueError(f"COCO image {info.get('file_name')!r} matches none of our images")
            continue
        image_id, sha256 = target
        h, w = int(info["height"]), int(info["width"])
        masks = []
        for ann in anns:
            cid = ours.get(int(ann["category_id"]))
            if cid is None:
                if strict:
                    raise ValueError(f"annotation {ann.get('id')} has unknown category id {ann['category_id']}")
                continue
            m = _segmentation_mask(ann.get("segmentation"), h, w)
            if m is not None:
                masks.append((cid, m))
        label_map = label_map_from_masks(masks, h, w)
        reviewed.append(ReviewedImage(image_id=image_id, label_map=label_map, sha256=sha256, source="coco"))
    return reviewed


def read_reviews(
    source: Any,
    categories: Sequence[Mapping[str, Any]],
    fmt: str,
    *,
    images: Iterable[ExportImage] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> list[ReviewedImage]:
    """Dispatch on ``fmt`` ("label-studio" or "coco"); ``source`` is parsed JSON or its URL."""
    if fmt == "label-studio":
        return import_label_studio(source, categories, storage_options=storage_options)
    if fmt == "coco":
        return import_coco_reviews(source, categories, images=images, storage_options=storage_options)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def pseudo_label_maps(images: Iterable[ExportImage]) -> dict[int, np.ndarray]:
    """Category-id label maps of our own annotations, keyed by image id."""
    return {img.image_id: label_map_from_annotations(img) for img in images}


def evaluate_against_reviewed(
    pseudo: Mapping[int, np.ndarray],
    reviewed: Mapping[int, np.ndarray] | Iterable[ReviewedImage],
    categories: Sequence[Mapping[str, Any]],
    *,
    fully_annotated: bool = False,
) -> dict[str, Any]:
    """mIoU, per-class IoU (by name) and pixel accuracy of pseudo label maps against reviewed ones.

    Pixels the reviewer left unannotated (255) are not scored (with ``fully_annotated``: scored as "no
    class"); pseudo 255 on an annotated pixel is a miss. Reviewed images without a pseudo map are skipped and
    listed under ``missing``.
    """
    targets = reviewed if isinstance(reviewed, Mapping) else {r.image_id: r.label_map for r in reviewed}
    missing = [image_id for image_id in targets if image_id not in pseudo]
    pairs = ((i, pseudo[i], target) for i, target in targets.items() if i in pseudo)
    return {**score_label_maps(pairs, categories, fully_annotated=fully_annotated), "missing": missing}


def score_label_maps(
    pairs: Iterable[tuple[int, np.ndarray, np.ndarray]],
    categories: Sequence[Mapping[str, Any]],
    *,
    fully_annotated: bool = False,
) -> dict[str, Any]:
    """Metrics over ``(image_id, pseudo, reviewed)`` category-id label maps, consumed one pair at a time.

    Streaming keeps memory at one image pair, so callers can paint maps lazily from a large store.
    Returns ``evaluation.SegmentationMetrics.summary()`` plus ``images`` (pairs scored).

    By default a pixel the reviewer left unannotated (255) is not scored, so emptying a wrong mask in review
    does not lower its class's IoU. ``fully_annotated`` scores every reviewed pixel: unannotated ones are
    "no class", a pseudo-label there is a false positive of its class, and pseudo 255 there is a hit (of the
    "no class" class, which the mIoU leaves out; pixel accuracy counts it).
    """
    ids = [int(c["id"]) for c in categories]
    if any(not 0 <= i < IGNORE_INDEX for i in ids):
        raise ValueError(f"category ids must lie in 0..{IGNORE_INDEX - 1} to appear in uint8 label maps: {ids}")
    lut = np.full(256, -1, dtype=np.int64)  # category id -> class index; -1 flags an unknown id
    lut[ids] = np.arange(len(ids))
    lut[IGNORE_INDEX] = len(ids) if fully_annotated else IGNORE_INDEX  # index K: the "no class" class

    def to_index(label_map: np.ndarray, image_id: int, side: str) -> np.ndarray:
        arr = np.asarray(label_map)
        if arr.dtype != np.uint8 and arr.size and (arr.min() < 0 or arr.max() > IGNORE_INDEX):
            raise ValueError(f"{side} label map of image {image_id} holds values outside 0..{IGNORE_INDEX}")
        out = lut[arr.astype(np.uint8)]  # wider ints are range-checked above, so the cast is exact
        if (out < 0).any():
            bad = sorted(set(np.unique(arr[out < 0]).tolist()))
            raise ValueError(f"{side} label map of image {image_id} holds unknown category ids {bad}")
        return out

    scored = 0

    def indexed() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        nonlocal scored
        for image_id, pred, target in pairs:
            scored += 1
            yield to_index(pred, image_id, "pseudo"), to_index(target, image_id, "reviewed")

    names = [str(c["name"]) for c in categories]
    if not fully_annotated:
        metrics = evaluate(indexed(), len(ids), names, IGNORE_INDEX)
        return {**metrics.summary(), "images": scored}
    metrics = evaluate(indexed(), len(ids) + 1, [*names, ""], IGNORE_INDEX)
    summary = metrics.summary()
    iou = metrics.iou()[: len(ids)]
    per_class = {name: summary["per_class_iou"][name] for name in names}
    miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    return {**summary, "miou": miou, "per_class_iou": per_class, "images": scored}


def _image_linker(images: Iterable[ExportImage] | None) -> Callable[[Mapping[str, Any]], tuple[int, str] | None]:
    """COCO image info -> (our image id, sha256) or None."""
    if images is None:
        return lambda info: (int(info["id"]), "")
    by_name: dict[str, ExportImage] = {}
    by_base: dict[str, list[ExportImage]] = {}
    for img in images:
        by_name[img.file_name] = img
        by_base.setdefault(posixpath.basename(img.file_name), []).append(img)

    def link(info: Mapping[str, Any]) -> tuple[int, str] | None:
        name = str(info.get("file_name", "")).replace("\\", "/")
        img = by_name.get(name)
        if img is None and len(by_base.get(posixpath.basename(name), [])) == 1:
            img = by_base[posixpath.basename(name)][0]
        if img is not None and (img.height, img.width) != (int(info["height"]), int(info["width"])):
            raise ValueError(
                f"COCO image {name!r} is {info['height']}x{info['width']}, ours is {img.height}x{img.width}"
            )
        return None if img is None else (img.image_id, img.sha256)

    return link


def _segmentation_mask(seg: Any, height: int, width: int) -> np.ndarray | None:
    """Polygons, uncompressed RLE or compressed RLE -> [H, W] bool; None for a box-only annotation."""
    if not seg:
        return None
    if isinstance(seg, list):
        return polygons_to_mask(seg, height, width)
    if [int(v) for v in seg["size"]] != [height, width]:
        raise ValueError(f"mask size {seg['size']} differs from image size {[height, width]}")
    rle = mask_utils.frPyObjects(seg, height, width) if isinstance(seg["counts"], list) else seg
    return mask_utils.decode(rle).astype(bool)
