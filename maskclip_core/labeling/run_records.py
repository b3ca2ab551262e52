"""The records of a labeling run and of each batch's life: small, picklable, without arrays.

What every batch shares (:class:`LabelingPlan`), a file to label (:class:`SourceItem`), a batch planned
(:class:`PlannedBatch`), written (:class:`BatchOutcome`, with its counts :class:`BatchStats`) or failed after its
retries (:class:`FailedBatch`). The rows of a batch in memory are ``labeling.batch.BatchResult``."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from maskclip_core.dataset.ids import ID_BITS
from maskclip_core.dataset.schema import LabelerKind
from maskclip_core.labeling.decode import DEFAULT_MAX_PIXELS
from maskclip_core.labeling.filter import FilterConfig
from maskclip_core.labeling.memory_budget import DEFAULT_MEMORY_BUDGET

# Pixels handed to one ``labeler.label`` call: bounds the memory of a batch of large photos (the labeler
# returns uint8 labels and float32 confidence at full size) without shrinking batches of small images.
DEFAULT_MAX_LABEL_PIXELS = 32_000_000


@dataclass(frozen=True)
class SourceItem:
    """A file to label: its URI and the listing's change token (recorded as ``source_version``)."""

    uri: str
    version: str | None = None


@dataclass(frozen=True)
class LabelingPlan:
    """What every batch of a run shares (small; travels to workers with each batch)."""

    run_id: str
    config_hash: str
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]  # by class index
    filters: FilterConfig
    labeler_kind: LabelerKind = "maskclip"  # the images' and annotations' ``labeler``
    round: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_label_pixels: int = DEFAULT_MAX_LABEL_PIXELS
    memory_budget: int = DEFAULT_MEMORY_BUDGET  # bytes of decoded images a worker process holds at once
    id_bits: int = ID_BITS  # the dataset's id width (``LabelDataset.id_bits``)

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.category_ids):
            raise ValueError(f"{len(self.class_names)} classes but {len(self.category_ids)} category ids")


@dataclass
class BatchStats:
    """Counts and per-class totals of one batch, or of a whole run (``merge``)."""

    seen: int = 0  # files handed to the batch
    labeled: int = 0
    skipped: int = 0  # content already labeled under the config (found by SHA-256)
    rejected: Counter[str] = field(default_factory=Counter)  # by reason code
    failed: Counter[str] = field(default_factory=Counter)  # by reason code
    converted: int = 0  # labeled after a conversion (notes)
    labeled_pixels: int = 0  # all pixels of labeled images (denominator of the pixel shares)
    class_pixels: Counter[str] = field(default_factory=Counter)  # kept pixels per class
    class_confidence: Counter[str] = field(default_factory=Counter)  # sum of confidence over kept pixels
    annotations: int = 0
    bytes_read: int = 0
    memory_deferred: list[str] = field(default_factory=list)  # uris that waited for the memory budget (first 100)
    seconds: Counter[str] = field(default_factory=Counter)  # time per stage: read, decode, label, post, write

    def merge(self, other: BatchStats) -> None:
        self.seen += other.seen
        self.labeled += other.labeled
        self.skipped += other.skipped
        self.rejected.update(other.rejected)
        self.failed.update(other.failed)
        self.converted += other.converted
        self.labeled_pixels += other.labeled_pixels
        self.class_pixels.update(other.class_pixels)
        self.class_confidence.update(other.class_confidence)
        self.annotations += other.annotations
        self.bytes_read += other.bytes_read
        self.memory_deferred.extend(other.memory_deferred[: max(0, 100 - len(self.memory_deferred))])
        self.seconds.update(other.seconds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "labeled": self.labeled,
            "skipped": self.skipped,
            "rejected": dict(sorted(self.rejected.items())),
            "failed": dict(sorted(self.failed.items())),
            "converted": self.converted,
            "labeled_pixels": self.labeled_pixels,
            "class_pixels": dict(self.class_pixels),
            "class_confidence": {k: round(v, 6) for k, v in self.class_confidence.items()},
            "annotations": self.annotations,
            "bytes_read": self.bytes_read,
            "memory_deferred": list(self.memory_deferred),
            "seconds": {k: round(v, 4) for k, v in sorted(self.seconds.items())},
        }


@dataclass(frozen=True)
class PlannedBatch:
    """Files to label in one batch task, numbered in listing order (the number names its part files)."""

    index: int
    items: tuple[SourceItem, ...]
    thumbnails: int = 0


@dataclass
class BatchOutcome:
    """What a batch reports back to the flow: small, picklable, no arrays."""

    index: int
    part: str
    stats: BatchStats
    written: dict[str, Any]
    thumbnails: list[dict[str, str]]  # {"url", "uri"}
    pid: int = field(default_factory=os.getpid)


@dataclass(frozen=True)
class FailedBatch:
    """A batch that failed after its retries: nothing of it was written (the next run labels its files)."""

    index: int
    images: int
    error: str
    first_uri: str | None = None


def reason_code(reason: str | None) -> str:
    """``"truncated: image file is truncated"`` -> ``"truncated"``."""
    return (reason or "unknown").split(":", 1)[0].strip() or "unknown"
