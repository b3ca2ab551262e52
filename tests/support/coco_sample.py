"""The shared COCO sample (../shared/data/coco-sample) as exporter records, for tests that read real masks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from maskclip_core.interchange import ExportImage

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco-sample"


def load_sample(n: int = 10, *, varied: bool = False) -> tuple[list[dict], list[ExportImage]]:
    """First n train images as store records: one compressed-RLE region per (image, class).

    ``varied`` gives regions random scores, alternating labelers and rounds (for the export filters);
    otherwise every region has score 0.5, source teacher, round 0.
    """
    doc = json.loads((SAMPLE / "train" / "annotations.json").read_text())
    categories = [{"id": c["id"], "name": c["name"], "synonyms": []} for c in doc["categories"]]
    rng = np.random.default_rng(0)
    images = []
    for info in sorted(doc["images"], key=lambda i: i["id"])[:n]:
        path = SAMPLE / "train" / "images" / info["file_name"]
        masks: dict[int, np.ndarray] = {}
        for a in doc["annotations"]:
            if a["image_id"] == info["id"]:
                m = mask_utils.decode(a["segmentation"]).astype(bool)
                masks[a["category_id"]] = masks.get(a["category_id"], False) | m
        anns = []
        for cid, m in masks.items():
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            anns.append(
                {
                    "id": info["id"] * 1000 + cid,
                    "image_id": info["id"],
                    "category_id": cid,
                    "segmentation": {"counts": rle["counts"].decode(), "size": rle["size"]},
                    "area": int(m.sum()),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": 0,
                    "score": float(rng.uniform(0.3, 1.0)) if varied else 0.5,
                    "labeler": ("teacher" if cid % 2 else "student") if varied else "teacher",
                    "round": int(cid % 3) if varied else 0,
                }
            )
        images.append(
            ExportImage(
                image_id=info["id"],
                uri=str(path),
                width=info["width"],
                height=info["height"],
                sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                annotations=anns,
            )
        )
    return categories, images


def require_sample() -> None:
    if not (SAMPLE / "train" / "annotations.json").exists():
        pytest.skip("coco-sample data absent (../shared/data/coco-sample)")
