"""The current pseudo-labels of a dataset scored against its human-reviewed labels (``dataset.reviews``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.reader import alias_image_id, iter_export_images
from maskclip_core.dataset.records import ExportImage, ReviewedImage, label_map_from_annotations
from maskclip_core.dataset.reviews import read_reviewed, rows_by_image
from maskclip_core.dataset.rle import annotations_to_label_map
from maskclip_core.segmentation_metrics import score_label_maps


def evaluate_reviewed(
    dataset_url: str,
    *,
    config_hash: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    fully_annotated: bool = False,
) -> dict[str, Any]:
    """How far the current pseudo-labels are from the reviewed ones: mIoU, per-class IoU, pixel accuracy.

    Scores every reviewed image whose current labeling (under ``config_hash``) is ``labeled``, one image at
    a time; the others are listed under ``missing``. Pixels the reviewer left unannotated are not scored,
    unless ``fully_annotated``: then they count as "no class" (``score_label_maps``).
    """
    dataset = LabelDataset(dataset_url, storage_options)
    categories = dataset.categories()
    by_image = rows_by_image(read_reviewed(dataset_url, storage_options))
    if not by_image:
        raise ValueError(f"{dataset_url} holds no reviewed images: import reviews first")
    identity = {int(c["id"]): int(c["id"]) for c in categories}
    seen: list[int] = []

    def pairs() -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        for image in iter_export_images(dataset, config_hash=config_hash, image_ids=_content_ids(dataset, by_image)):
            if image.image_id not in by_image:  # the twin of a reviewed duplicate-content photo
                continue
            seen.append(image.image_id)
            yield image.image_id, label_map_from_annotations(image), _target(image, by_image[image.image_id], identity)

    report = score_label_maps(pairs(), categories, fully_annotated=fully_annotated)
    missing = sorted(set(by_image) - set(seen))
    return {
        **report,
        "missing": missing,
        "reviewed_images": len(by_image),
        "config_hash": config_hash,
        "fully_annotated": fully_annotated,
    }


def _content_ids(dataset: LabelDataset, reviewed: Collection[int]) -> list[int]:
    """The dataset image ids to read for ``reviewed`` ids: a duplicate-content photo is reviewed under its
    alias id (``reader.alias_image_id``), which the images table does not hold; its content id does."""
    images = dataset.images().select(["image_id", "uri"])
    wanted = set(reviewed)
    ids, uris = images["image_id"].to_pylist(), images["uri"].to_pylist()
    counts = Counter(ids)
    aliased = {i for i, uri in zip(ids, uris, strict=True) if counts[i] > 1 and alias_image_id(i, uri) in wanted}
    return sorted(wanted | aliased)


def _target(image: ExportImage, rows: Sequence[Mapping[str, Any]], category_to_index: Mapping[int, int]) -> np.ndarray:
    anns = [r for r in rows if r["category_id"] is not None]
    return annotations_to_label_map(anns, image.height, image.width, category_to_index)


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
