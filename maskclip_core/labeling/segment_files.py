"""Label a few local image files and write pictures of the result (the ``maskclip segment`` command)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from maskclip_core.labeling.decode import ImageRejected, decode_image
from maskclip_core.labeling.overlays import confidence_png, label_png, overlay
from maskclip_core.teacher.labeler import LabelerConfig, MaskCLIPLabeler
from maskclip_core.types import SegmentationResult


def write_result(image: np.ndarray, result: SegmentationResult, out_dir: Path, stem: str) -> dict[str, str]:
    """Label PNG (palette, value = class index), overlay with legend, 16-bit confidence PNG."""
    paths = {
        "labels": out_dir / f"{stem}_labels.png",
        "overlay": out_dir / f"{stem}_overlay.png",
        "confidence": out_dir / f"{stem}_confidence.png",
    }
    label_png(result.labels).save(paths["labels"])
    overlay(image, result.labels, result.class_names).save(paths["overlay"])
    confidence_png(result.confidence).save(paths["confidence"])
    return {k: str(v) for k, v in paths.items()}


def _summary(result: SegmentationResult) -> dict:
    counts = np.bincount(result.labels.ravel(), minlength=len(result.class_names))
    total = max(int(counts.sum()), 1)
    return {
        "pixel_share": {n: round(int(c) / total, 4) for n, c in zip(result.class_names, counts, strict=True) if c},
        "class_scores": {n: round(float(s), 4) for n, s in zip(result.class_names, result.class_scores, strict=True)},
        "dropped_by_prompt_denoising": [n for n, d in zip(result.class_names, result.dropped, strict=True) if d],
        "mean_confidence": round(float(result.confidence.mean()), 4),
    }


def segment_files(
    paths: Sequence[Path], config: LabelerConfig, out_dir: Path, *, device: str | None = None, batch_size: int = 4
) -> dict:
    """Label ``paths``; unreadable files are reported, not fatal. Returns a JSON-able summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    labeler = MaskCLIPLabeler.from_config(config, device=device)
    items: list[dict] = []
    pending: list[tuple[Path, np.ndarray, dict]] = []

    def flush() -> None:
        results = labeler.label([im for _, im, _ in pending])
        for (path, image, item), result in zip(pending, results, strict=True):
            item.update(status="labeled", outputs=write_result(image, result, out_dir, path.stem), **_summary(result))
        pending.clear()

    for path in paths:
        item: dict = {"image": str(path)}
        items.append(item)
        try:
            decoded = decode_image(path.read_bytes())
        except (ImageRejected, OSError) as exc:
            item.update(status="rejected", reason=getattr(exc, "reason", type(exc).__name__), detail=str(exc))
            continue
        if decoded.note:
            item["note"] = decoded.note
        pending.append((path, decoded.rgb, item))
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    summary = {"classes": list(labeler.class_names), "labeler": labeler.config(), "images": items}
    (out_dir / "segment.json").write_text(json.dumps(summary, indent=2))
    return summary
