"""Label maps <-> COCO annotation records (compressed RLE through pycocotools), and stable ids."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pycocotools import mask as mask_utils

from maskclip_core.labeling.filter import FilteredLabels, Region
from maskclip_core.types import IGNORE_INDEX

# Joins id parts; a control character cannot appear in the hashes, names and numbers we join.
_ID_SEPARATOR = "\x1f"


# Ids below 2**53 survive JavaScript's doubles (Label Studio, CVAT, browsers hold ids as Number). Datasets of
# format versions 1 and 2 used 63 bits; their ids keep that width (``dataset.manifest.id_bits``).
ID_BITS = 53


def stable_id(*parts: object, bits: int = ID_BITS) -> int:
    """First ``bits`` bits of sha256 of the joined parts: a non-negative id that is the same on every run."""
    digest = hashlib.sha256(_ID_SEPARATOR.join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - _check_bits(bits))


def image_id_from_sha256(hex_digest: str, bits: int = ID_BITS) -> int:
    """``image_id`` of an image: the first ``bits`` bits of the SHA-256 of its bytes."""
    if len(hex_digest) != 64:
        raise ValueError(f"expected a 64-character hex SHA-256, got {hex_digest!r}")
    return int(hex_digest[:16], 16) >> (64 - _check_bits(bits))


def _check_bits(bits: int) -> int:
    if not 1 <= bits <= 63:  # int64 columns: at most 63 bits keep ids non-negative
        raise ValueError(f"id width must be 1..63 bits, got {bits}")
    return bits


def encode_annotations(
    filtered: FilteredLabels | tuple[np.ndarray, Sequence[Region]],
    *,
    category_ids: Sequence[int],
    image_id: int,
    labeling_id: str,
    labeler: str,
    round: int,
    id_bits: int = ID_BITS,
) -> list[dict[str, Any]]:
    """One COCO annotation record per kept (image, class) region, in class-index order.

    ``category_ids[class_index]`` is the category id of a class. ``id`` is
    ``stable_id(labeling_id, category_id, bits=id_bits)``, so re-running the same labeling writes the same ids.
    """
    labels, regions = (filtered.labels, filtered.regions) if isinstance(filtered, FilteredLabels) else filtered
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {labels.shape}")
    height, width = int(labels.shape[0]), int(labels.shape[1])
    records = []
    for region in sorted(regions, key=lambda r: r.class_index):
        mask = np.asfortranarray(labels == region.class_index, dtype=np.uint8)
        rle = mask_utils.encode(mask)
        area = int(mask_utils.area(rle))
        if area == 0:
            continue  # nothing of the class left in this label map: no annotation
        category_id = int(category_ids[region.class_index])
        records.append(
            {
                "id": stable_id(labeling_id, category_id, bits=id_bits),
                "image_id": int(image_id),
                "labeling_id": labeling_id,
                "category_id": category_id,
                "segmentation": {"counts": rle["counts"].decode("ascii"), "size": [height, width]},
                "area": area,
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
                "score": float(region.mean_confidence),
                "labeler": labeler,
                "round": int(round),
            }
        )
    return records


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


def annotations_to_label_map(
    annotations: Iterable[Mapping[str, Any]],
    height: int,
    width: int,
    category_to_index: Mapping[int, int],
    *,
    overlap: Literal["error", "ignore"] = "error",
) -> np.ndarray:
    """Paint annotations into a uint8 label map (255 where none), ``category_to_index`` giving the values.

    Overlapping masks raise (``overlap="error"``: label maps hold one class per pixel) or, with
    ``overlap="ignore"``, the contested pixels become ignore (useful for human ground truth with
    overlapping instances).
    """
    out = np.full((height, width), IGNORE_INDEX, dtype=np.uint8)
    contested = np.zeros((height, width), dtype=bool) if overlap == "ignore" else None
    for ann in annotations:
        category = int(ann["category_id"])
        if category not in category_to_index:
            raise ValueError(f"annotation {ann.get('id')}: category {category} has no label index")
        index = int(category_to_index[category])
        if not 0 <= index < IGNORE_INDEX:
            raise ValueError(f"label index {index} of category {category} does not fit a uint8 label map")
        mask = segmentation_to_mask(ann["segmentation"], height, width).astype(bool)
        clash = mask & (out != IGNORE_INDEX)
        if clash.any():
            if contested is None:
                raise ValueError(
                    f"annotation {ann.get('id')} (category {category}) overlaps earlier ones "
                    f"on {int(clash.sum())} pixels"
                )
            contested |= clash & (out != index)
        out[mask] = index
    if contested is not None:
        out[contested] = IGNORE_INDEX
    return out
