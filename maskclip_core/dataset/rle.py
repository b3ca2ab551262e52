"""The annotation codec: COCO segmentations (compressed RLE through pycocotools, polygons) to masks, and
masks or annotations painted into label maps. The one decoder every reader, importer and exporter uses; the
encoder (label map -> records) is the labeling stage's ``labeling.annotations``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
from pycocotools import mask as mask_utils

from maskclip_core.types import IGNORE_INDEX

# What painting does where two masks meet: "last" (the later mask wins: human reviews drawn over each other),
# "error" (label maps hold one class per pixel), "ignore" (contested pixels become ignore: human ground truth
# with overlapping instances). Overlaps of one class are never a conflict.
Overlap = Literal["last", "error", "ignore"]


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """Any COCO segmentation (compressed / uncompressed RLE, polygons) as one compressed RLE.

    Mirrors ``pycocotools.coco.COCO.annToRLE``, without needing a COCO object.
    """
    if isinstance(segmentation, list):  # polygons: one object can have several parts
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)  # uncompressed RLE
    if isinstance(segmentation, dict) and "counts" in segmentation:
        counts = segmentation["counts"]
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            raise ValueError(f"RLE size {size} does not match the image ({height}, {width})")
        return {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    raise ValueError(f"unsupported segmentation: {type(segmentation).__name__}")


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Binary uint8 [H, W] mask of a COCO segmentation."""
    return mask_utils.decode(segmentation_to_rle(segmentation, height, width))


def annotation_mask(annotation: Mapping[str, Any]) -> np.ndarray:
    """[H, W] bool mask of one annotation of ours (compressed RLE, its size in the segmentation)."""
    seg = annotation["segmentation"]
    return mask_utils.decode({"size": list(seg["size"]), "counts": seg["counts"]}).astype(bool)


def label_map_from_masks(
    masks: Iterable[tuple[int, np.ndarray]], height: int, width: int, *, overlap: Overlap = "last"
) -> np.ndarray:
    """Paint (label value, mask) pairs in order into a uint8 map, 255 where no mask is (see ``Overlap``)."""
    out = np.full((height, width), IGNORE_INDEX, dtype=np.uint8)
    contested = np.zeros((height, width), dtype=bool) if overlap == "ignore" else None
    for value, mask in masks:
        if not 0 <= value < IGNORE_INDEX:
            raise ValueError(f"label value {value} does not fit a uint8 label map (0..{IGNORE_INDEX - 1})")
        mask = np.asarray(mask, dtype=bool)
        if overlap != "last":
            clash = mask & (out != IGNORE_INDEX) & (out != value)
            if clash.any():
                if contested is None:
                    raise ValueError(f"the mask of label {value} overlaps earlier ones on {int(clash.sum())} pixels")
                contested |= clash
        out[mask] = value
    if contested is not None:
        out[contested] = IGNORE_INDEX
    return out


def annotations_to_label_map(
    annotations: Iterable[Mapping[str, Any]],
    height: int,
    width: int,
    category_to_index: Mapping[int, int] | None = None,
    *,
    overlap: Overlap = "error",
) -> np.ndarray:
    """Paint annotations into a uint8 label map (255 where none); ``category_to_index`` gives the values
    (default: the category ids themselves). Overlaps follow ``overlap``."""

    def pairs() -> Iterable[tuple[int, np.ndarray]]:
        for ann in annotations:
            category = int(ann["category_id"])
            if category_to_index is not None and category not in category_to_index:
                raise ValueError(f"annotation {ann.get('id')}: category {category} has no label index")
            index = category if category_to_index is None else int(category_to_index[category])
            yield index, segmentation_to_mask(ann["segmentation"], height, width)

    return label_map_from_masks(pairs(), height, width, overlap=overlap)
