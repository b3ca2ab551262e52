"""A small label store built the way the labeling flow builds one, for the export / review tests.

Synthetic predictions go through ``filtering.filter_labels`` -> ``annotations.encode_annotations`` ->
``LabelDataset.write_batch``. Geometry is simple so expected masks and metrics can be worked out by hand.
Every image is 32 x 48 (1536 px); classes cat, dog, grass get category ids 1, 2, 3:

| image          | pseudo-labels                                                | score | status   |
| -------------- | ------------------------------------------------------------ | ----- | -------- |
| a/img.png      | cat columns 0-23 (768 px, conf .9), dog columns 24-47 (.8)    | .85   | labeled  |
| b/img.png      | cat rows 0-15 (768 px, conf .6), grass rows 16-31 (.7)        | .65   | labeled  |
| b/c/other.png  | dog (1472 px, conf .5) but an 8x8 corner at conf .1: ignored | .50   | labeled  |
| d.png          | everything at conf .2                                        | -     | rejected |

``b/c/other.png`` comes from the student (source "student", round 1), the others from MaskCLIP (round 0).
The first two images are written in one batch, the last two in another (two part files).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from maskclip_core.dataset.ids import image_id_from_sha256
from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.labeling.annotations import encode_annotations
from maskclip_core.labeling.filter import FilterConfig, filter_labels
from maskclip_core.types import SegmentationResult
from support.cli_runner import run_cli

H, W = 32, 48
CLASSES = (("cat", ["kitty"]), ("dog", []), ("grass", []))
NAMES = tuple(name for name, _ in CLASSES)
FILTER = FilterConfig(min_confidence=0.3, min_region_area=4, min_region_confidence=0.35, min_labeled_fraction=0.1)
CONFIG = "cfg-a"


@dataclass
class Built:
    """What the tests compare exports against."""

    store: LabelDataset
    source: Path  # folder holding the image files
    ids: dict[str, int] = field(default_factory=dict)  # relative file name -> image_id
    masks: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)  # image_id -> category id -> mask
    scores: dict[int, dict[int, float]] = field(default_factory=dict)  # image_id -> category id -> score
    status: dict[int, str] = field(default_factory=dict)
    category_ids: dict[str, int] = field(default_factory=dict)


def prediction(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(class index map, confidence) of one synthetic image."""
    labels = np.zeros((H, W), np.int64)
    conf = np.zeros((H, W), np.float32)
    if name == "a/img.png":
        labels[:, 24:] = 1
        conf[:, :24], conf[:, 24:] = 0.9, 0.8
    elif name == "b/img.png":
        labels[16:] = 2
        conf[:16], conf[16:] = 0.6, 0.7
    elif name == "b/c/other.png":
        labels[:] = 1
        conf[:] = 0.5
        conf[:8, :8] = 0.1
    else:
        conf[:] = 0.2
    return labels, conf


def write_image(path: Path, seed: int) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path.read_bytes()


def build_store(
    output_url: str,
    source: Path,
    storage_options: dict[str, Any] | None = None,
    config: str = CONFIG,
    *,
    batches: list[list[str]] | None = None,
    predict_as: str | None = None,
    labeled_at: dt.datetime = dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
) -> Built:
    """A dataset of ``batches`` of files (default: the four above, in two batches), each labeled (at
    ``labeled_at``) as :func:`prediction` says for its name, or for ``predict_as`` when given."""
    store = LabelDataset(output_url, storage_options)
    built = Built(store=store, source=source)
    built.category_ids = store.ensure_categories(CLASSES)
    category_ids = [built.category_ids[n] for n in NAMES]
    batches = batches or [["a/img.png", "b/img.png"], ["b/c/other.png", "d.png"]]
    for b, names in enumerate(batches):
        rows, anns = [], []
        for name in names:
            path = source / name
            data = path.read_bytes() if path.exists() else write_image(path, seed=len(built.ids))
            digest = hashlib.sha256(data).hexdigest()
            image_id = image_id_from_sha256(digest)
            labels, conf = prediction(predict_as or name)
            result = SegmentationResult(
                labels=labels,
                confidence=conf,
                class_scores=np.array([conf[labels == k].max(initial=0) for k in range(3)], np.float32),
                dropped=np.zeros(3, bool),
                class_names=NAMES,
            )
            filtered = filter_labels(result, FILTER)
            student = name == "b/c/other.png"
            labeling_id = f"{config}:{digest[:16]}"
            rows.append(
                {
                    "image_id": image_id,
                    "uri": str(path),
                    "sha256": digest,
                    "width": W,
                    "height": H,
                    "status": "labeled" if filtered.accepted else "rejected",
                    "reason": filtered.rejection,
                    "config_hash": config,
                    "labeling_id": labeling_id,
                    "labeler": "student" if student else "maskclip",
                    "round": int(student),
                    "created_at": labeled_at,
                }
            )
            built.ids[name] = image_id
            built.status[image_id] = rows[-1]["status"]
            built.masks[image_id] = {}
            built.scores[image_id] = {}
            if filtered.accepted:
                anns += encode_annotations(
                    filtered,
                    category_ids=category_ids,
                    image_id=image_id,
                    labeling_id=labeling_id,
                    labeler="student" if student else "maskclip",
                    round=int(student),
                )
                for region in filtered.regions:
                    cid = category_ids[region.class_index]
                    built.masks[image_id][cid] = filtered.labels == region.class_index
                    built.scores[image_id][cid] = region.mean_confidence
        store.write_batch(rows, anns, part_name=f"{config}-batch{b}")
    return built


def label_map(built: Built, image_id: int) -> np.ndarray:
    """Category-id label map of an image's pseudo-labels (255 where none)."""
    out = np.full((H, W), 255, np.uint8)
    for cid, mask in built.masks[image_id].items():
        out[mask] = cid
    return out


def run(capsys: Any, *argv: str) -> dict:
    """Run ``maskclip export|import|evaluate ...``, expect success, return the printed JSON summary."""
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 0, err
    return json.loads(out)


def fails(capsys: Any, *argv: str) -> str:
    """Run ``maskclip ...``, expect a user error (exit 2), return stderr."""
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2
    return err
