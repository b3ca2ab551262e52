"""One batch of source files through a labeler, without Prefect or storage writes:
bytes -> decode -> label -> filter -> encode -> images rows, annotation rows, thumbnails and stats.

Per-image faults are recorded as rows, storage faults raised (the caller retries the whole batch, which is
idempotent). Writing the result is ``labeling.write``'s job; the ``tasks`` layer wraps both in a Prefect task.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maskclip_core.dataset.fs import read_bytes, sha256_hex
from maskclip_core.labeling.annotations import encode_annotations, image_id_from_sha256
from maskclip_core.labeling.config_hash import make_labeling_id
from maskclip_core.labeling.decode import ImageRejected, decode_image
from maskclip_core.labeling.filter import filter_labels
from maskclip_core.labeling.plan import BatchStats, LabelingPlan, SourceItem, reason_code
from maskclip_core.labeling.thumbnails import Thumbnail, thumbnail_jpeg
from maskclip_core.types import Labeler, SegmentationResult

# Serialises ``labeler.label`` per labeler within a process: concurrent batches then overlap their I/O,
# decoding, filtering and writing with one batch's inference instead of oversubscribing the CPU / GPU.
_LABEL_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_LABEL_LOCKS_GUARD = threading.Lock()


def label_lock(labeler: Labeler) -> threading.Lock:
    with _LABEL_LOCKS_GUARD:
        lock = _LABEL_LOCKS.get(labeler)
        if lock is None:
            lock = threading.Lock()
            _LABEL_LOCKS[labeler] = lock
        return lock


@dataclass
class BatchResult:
    images_rows: list[dict[str, Any]]
    annotation_rows: list[dict[str, Any]]
    stats: BatchStats
    thumbnails: list[Thumbnail] = field(default_factory=list)


@dataclass
class _Decoded:
    item: SourceItem
    sha256: str
    rgb: np.ndarray | None
    note: str | None


def process_batch(
    items: Sequence[SourceItem],
    labeler: Labeler,
    plan: LabelingPlan,
    *,
    read: Callable[[str], bytes] = read_bytes,
    is_known: Callable[[str], bool] | None = None,
    thumbnails: int = 0,
    lock: threading.Lock | None = None,
) -> BatchResult:
    """Label ``items``: one images row per file that is not already known, annotations for the labeled ones.

    Per-file outcomes are rows, never exceptions: unusable bytes are ``rejected`` with the decoder's reason,
    images the confidence filter finds too weakly labeled are ``rejected`` with ``low_labeled_fraction``,
    a file deleted since the listing or an image the labeler fails on is ``failed`` (retried next run).
    Storage errors other than a missing file propagate, so the caller can retry the batch as a whole.

    ``read`` returns a file's bytes; ``is_known(sha256_hex)`` says whether its content is already done under
    the plan's config (then it is skipped without a row); ``thumbnails`` asks for up to that many overlay
    JPEGs of labeled images; ``lock`` serialises the labeler calls (see :func:`label_lock`).
    """
    if list(labeler.class_names) != list(plan.class_names):
        raise ValueError(f"labeler classes {labeler.class_names} differ from the plan's {plan.class_names}")
    stats = BatchStats()
    rows: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    thumbs: list[Thumbnail] = []
    pending = _read_and_decode(items, plan, read, is_known, rows, stats)

    clock = time.perf_counter
    for group in _pixel_groups(pending, plan.max_label_pixels):
        t0 = clock()
        with lock if lock is not None else contextlib.nullcontext():
            t1 = clock()
            results = _label_safely(labeler, [d.rgb for d in group])
            stats.seconds["label"] += clock() - t1
        stats.seconds["label_wait"] += t1 - t0  # another batch of this process was labeling
        t0 = clock()
        for i, (dec, result) in enumerate(zip(group, results, strict=True)):
            results[i] = None  # free each prediction as soon as it is encoded
            _finish(plan, dec, result, rows, annotations, thumbs, thumbnails, stats)
            dec.rgb = None
        stats.seconds["post"] += clock() - t0
    stats.annotations = len(annotations)
    return BatchResult(rows, annotations, stats, thumbs)


def _read_and_decode(
    items: Sequence[SourceItem],
    plan: LabelingPlan,
    read: Callable[[str], bytes],
    is_known: Callable[[str], bool] | None,
    rows: list[dict[str, Any]],
    stats: BatchStats,
) -> list[_Decoded]:
    """The decoded images of ``items`` still to label; rows for the unreadable and rejected ones."""
    pending: list[_Decoded] = []
    clock = time.perf_counter
    for item in items:
        stats.seen += 1
        t0 = clock()
        try:
            data = read(item.uri)
        except FileNotFoundError as e:  # deleted since the listing: a record, and no retry of the batch
            rows.append(_row(plan, item, None, "failed", f"missing: {e}"))
            stats.failed["missing"] += 1
            continue
        finally:
            stats.seconds["read"] += clock() - t0
        stats.bytes_read += len(data)
        t0 = clock()
        sha = sha256_hex(data)
        if is_known is not None and is_known(sha):
            stats.skipped += 1
            stats.seconds["decode"] += clock() - t0
            continue
        try:
            decoded = decode_image(data, max_pixels=plan.max_pixels)
        except ImageRejected as e:
            rows.append(_row(plan, item, sha, "rejected", f"{e.reason}: {e.detail}"))
            stats.rejected[e.reason] += 1
        except Exception as e:  # a decoder bug must not cost the batch: record it, retry next run
            rows.append(_row(plan, item, sha, "failed", f"decode_error: {type(e).__name__}: {e}"))
            stats.failed["decode_error"] += 1
        else:
            pending.append(_Decoded(item, sha, decoded.rgb, decoded.note))
        finally:
            stats.seconds["decode"] += clock() - t0
        del data
    return pending


def _finish(
    plan: LabelingPlan,
    dec: _Decoded,
    result: SegmentationResult | BaseException,
    rows: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    thumbs: list[Thumbnail],
    want_thumbnails: int,
    stats: BatchStats,
) -> None:
    assert dec.rgb is not None
    height, width = int(dec.rgb.shape[0]), int(dec.rgb.shape[1])
    if isinstance(result, BaseException):
        rows.append(
            _row(plan, dec.item, dec.sha256, "failed", f"labeler_error: {type(result).__name__}: {result}", dec.note)
        )
        stats.failed["labeler_error"] += 1
        return
    try:
        if result.size != (height, width):
            raise ValueError(f"labeler returned {result.size} for an image of {(height, width)}")
        filtered = filter_labels(result, plan.filters)
    except Exception as e:
        rows.append(_row(plan, dec.item, dec.sha256, "failed", f"filter_error: {type(e).__name__}: {e}", dec.note))
        stats.failed["filter_error"] += 1
        return
    size = {"width": width, "height": height}
    if filtered.rejection is not None:
        rows.append(_row(plan, dec.item, dec.sha256, "rejected", filtered.rejection, dec.note, **size))
        stats.rejected[reason_code(filtered.rejection)] += 1
        return
    row = _row(plan, dec.item, dec.sha256, "labeled", None, dec.note, **size)
    records = encode_annotations(
        filtered,
        category_ids=plan.category_ids,
        image_id=row["image_id"],
        labeling_id=row["labeling_id"],
        labeler=plan.labeler_kind,
        round=plan.round,
        id_bits=plan.id_bits,
    )
    rows.append(row)
    annotations.extend(records)
    stats.labeled += 1
    stats.converted += dec.note is not None
    stats.labeled_pixels += height * width
    for region in filtered.regions:
        stats.class_pixels[region.class_name] += region.area
        stats.class_confidence[region.class_name] += region.area * region.mean_confidence
    if len(thumbs) < want_thumbnails:
        thumbs.append(
            Thumbnail(
                path=f"thumbnails/{plan.run_id}/{dec.sha256[:16]}.jpg",
                data=thumbnail_jpeg(dec.rgb, filtered),
                uri=dec.item.uri,
            )
        )


def _row(
    plan: LabelingPlan,
    item: SourceItem,
    sha256: str | None,
    status: str,
    reason: str | None,
    notes: str | None = None,
    *,
    width: int | None = None,
    height: int | None = None,
) -> dict[str, Any]:
    return {
        "image_id": image_id_from_sha256(sha256, plan.id_bits) if sha256 else None,
        "uri": item.uri,
        "sha256": sha256,
        "width": width,
        "height": height,
        "status": status,
        "reason": reason,
        "notes": notes,
        "config_hash": plan.config_hash,
        "labeling_id": make_labeling_id(plan.run_id, item.uri, sha256, plan.config_hash),
        "labeler": plan.labeler_kind,
        "round": plan.round,
        "flow_run_id": plan.run_id,
        "source_version": item.version,
    }


def _pixel_groups(pending: list[_Decoded], max_pixels: int) -> list[list[_Decoded]]:
    groups: list[list[_Decoded]] = []
    current: list[_Decoded] = []
    total = 0
    for dec in pending:
        assert dec.rgb is not None
        pixels = int(dec.rgb.shape[0]) * int(dec.rgb.shape[1])
        if current and total + pixels > max_pixels:
            groups.append(current)
            current, total = [], 0
        current.append(dec)
        total += pixels
    if current:
        groups.append(current)
    return groups


def _label_safely(labeler: Labeler, images: list[np.ndarray]) -> list[SegmentationResult | BaseException]:
    """Label a group; when that raises, label its images one by one so only the culprit fails."""
    try:
        results: list[SegmentationResult | BaseException] = list(labeler.label(images))
        if len(results) != len(images):
            raise RuntimeError(f"labeler returned {len(results)} results for {len(images)} images")
        return results
    except Exception as group_error:
        if len(images) == 1:
            return [group_error]
    out: list[SegmentationResult | BaseException] = []
    for image in images:
        try:
            [result] = labeler.label([image])
            out.append(result)
        except Exception as e:
            out.append(e)
    return out
