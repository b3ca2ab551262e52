"""Semantic segmentation metrics from a confusion matrix (mIoU, per-class IoU, pixel accuracy)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maskclip_core.types import IGNORE_INDEX


def confusion_matrix(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> tuple[np.ndarray, np.ndarray]:
    """Confusion counts and misses.

    Returns ``(matrix, missed)``: ``matrix`` is [num_classes, num_classes] int64, rows = target class,
    columns = predicted class; ``missed`` [num_classes] counts target pixels predicted as ignore / out of range.

    Pixels whose target is ``ignore_index`` (or outside [0, num_classes)) are not counted; a prediction
    of ``ignore_index`` on a valid target counts as a miss for that target class (no column gains it).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    t = target.reshape(-1).astype(np.int64)
    p = pred.reshape(-1).astype(np.int64)
    valid = (t != ignore_index) & (t >= 0) & (t < num_classes)
    t, p = t[valid], p[valid]
    hit = (p >= 0) & (p < num_classes)
    cm = np.bincount(t[hit] * num_classes + p[hit], minlength=num_classes * num_classes)
    cm = cm.reshape(num_classes, num_classes)
    missed = np.bincount(t[~hit], minlength=num_classes)
    return cm, missed


@dataclass
class SegmentationMetrics:
    """Accumulates a confusion matrix over images; IoU of a class absent from both sides is NaN."""

    num_classes: int
    class_names: Sequence[str] | None = None
    ignore_index: int = IGNORE_INDEX
    matrix: np.ndarray = field(init=False)
    missed: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.missed = np.zeros(self.num_classes, dtype=np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        cm, missed = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        self.matrix += cm
        self.missed += missed

    def iou(self) -> np.ndarray:
        tp = np.diag(self.matrix).astype(np.float64)
        target_total = self.matrix.sum(axis=1) + self.missed
        pred_total = self.matrix.sum(axis=0)
        union = target_total + pred_total - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum() + self.missed.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def summary(self) -> dict:
        names = list(self.class_names) if self.class_names is not None else [str(i) for i in range(self.num_classes)]
        iou = self.iou()
        return {
            "miou": self.miou(),
            "pixel_accuracy": self.pixel_accuracy(),
            "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou, strict=True)},
        }


def evaluate(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    class_names: Sequence[str] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> SegmentationMetrics:
    """Metrics over (prediction, target) label-map pairs."""
    metrics = SegmentationMetrics(num_classes, class_names, ignore_index)
    for pred, target in pairs:
        metrics.update(pred, target)
    return metrics


def score_label_maps(
    pairs: Iterable[tuple[int, np.ndarray, np.ndarray]],
    categories: Sequence[Mapping[str, Any]],
    *,
    fully_annotated: bool = False,
) -> dict[str, Any]:
    """Metrics over ``(image_id, pseudo, reviewed)`` category-id label maps, consumed one pair at a time.

    Streaming keeps memory at one image pair, so callers can paint maps lazily from a large dataset.
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
