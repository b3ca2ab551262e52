"""Label maps -> COCO annotation records (compressed RLE through pycocotools), with the dataset's stable ids.

The decoder (records -> masks and label maps) is ``dataset.rle``; the id scheme is ``dataset.ids``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from maskclip_core.dataset.ids import ID_BITS, stable_id
from maskclip_core.labeling.filter import FilteredLabels, Region


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
