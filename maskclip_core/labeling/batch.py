"""One batch of source files through a labeler, without Prefect or storage writes:
bytes -> decode -> label -> filter -> encode -> images rows, annotation rows, thumbnails and stats.

Per-image faults are recorded as rows, storage faults raised (the caller retries the whole batch, which is
idempotent). Writing the result is ``labeling.write``'s job; the ``tasks`` layer wraps both in a Prefect task.
"""

from __future__ import annotations

import contextlib
import errno
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maskclip_core.dataset.ids import image_id_from_sha256
from maskclip_core.labeling.annotations import encode_annotations
from maskclip_core.labeling.config_hash import make_labeling_id
from maskclip_core.labeling.decode import ImageRejected, decode_image, header_pixels
from maskclip_core.labeling.filter import filter_labels
from maskclip_core.labeling.memory_budget import MemoryBudget, process_budget
from maskclip_core.labeling.run_records import BatchStats, LabelingPlan, SourceItem, reason_code
from maskclip_core.labeling.thumbnails import Thumbnail, thumbnail_jpeg
from maskclip_core.storage.fs import read_bytes, sha256_hex
from maskclip_core.types import Labeler, SegmentationResult

# Reading these fails the same way on every retry (a symlink loop, a directory, no permission, a name too
# long): the file gets a failed row, the batch goes on.
UNREADABLE_ERRNOS = frozenset({errno.ELOOP, errno.EISDIR, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.ENXIO})

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
    reserved: int = 0  # bytes of the memory budget held until the image is finished


def process_batch(
    items: Sequence[SourceItem],
    labeler: Labeler,
    plan: LabelingPlan,
    *,
    read: Callable[[str], bytes] = read_bytes,
    is_known: Callable[[str], bool] | None = None,
    reuse: Callable[[Collection[str]], Mapping[str, Mapping[str, Any]]] | None = None,
    thumbnails: int = 0,
    lock: threading.Lock | None = None,
    budget: MemoryBudget | None = None,
) -> BatchResult:
    """Label ``items``: one images row per file that is not already known, annotations for the labeled ones.

    Per-file outcomes are rows, never exceptions: unusable bytes are ``rejected`` with the decoder's reason,
    images the confidence filter finds too weakly labeled are ``rejected`` with ``low_labeled_fraction``,
    a file deleted since the listing, one that cannot be read (a symlink loop, no permission), an image that
    could never fit the memory budget or one the labeler fails on is ``failed`` (retried next run).
    Storage errors other than these propagate, so the caller can retry the batch as a whole.

    ``read`` returns a file's bytes; ``is_known(sha256_hex)`` says whether its content is already done under
    the plan's config (then it is not labeled again); ``reuse(sha256s)`` returns the current labeling rows of
    known contents (``LabelDataset.content_labelings``): each such file then gets a row of its own pointing at
    that labeling, so a renamed, copied or restored file shows under its own uri (without ``reuse`` it is
    skipped without a row). ``thumbnails`` asks for up to that many overlay JPEGs of labeled images;
    ``lock`` serialises the labeler calls (see :func:`label_lock`). ``budget`` bounds the decoded-pixel
    memory of all batches of this process (default: the process budget of ``plan.memory_budget``).
    """
    if list(labeler.class_names) != list(plan.class_names):
        raise ValueError(f"labeler classes {labeler.class_names} differ from the plan's {plan.class_names}")
    batch = _Batch(labeler, plan, read, lock, thumbnails, budget or process_budget(plan.memory_budget))
    known_hits: list[tuple[SourceItem, str]] = []
    try:
        for item in items:
            batch.stats.seen += 1
            data = batch.read_item(item)
            if data is None:
                continue
            sha = sha256_hex(data)
            if is_known is not None and is_known(sha):
                batch.stats.skipped += 1
                if reuse is not None:
                    known_hits.append((item, sha))
                continue
            batch.decode_item(item, data, sha)
            del data
        if known_hits:
            assert reuse is not None
            batch.reuse_known(known_hits, reuse({sha for _, sha in known_hits}))
        batch.label_pending()
    finally:  # an exception (a storage error: the batch is retried) must not leak reservations
        batch.release_pending()
    batch.stats.annotations = len(batch.annotations)
    return BatchResult(batch.rows, batch.annotations, batch.stats, batch.thumbs)


class _Batch:
    """The state of one :func:`process_batch` call: rows so far, decoded images waiting for the labeler, and
    their reservations on the process's memory budget."""

    def __init__(
        self,
        labeler: Labeler,
        plan: LabelingPlan,
        read: Callable[[str], bytes],
        lock: threading.Lock | None,
        thumbnails: int,
        budget: MemoryBudget,
    ) -> None:
        self.labeler = labeler
        self.plan = plan
        self.read = read
        self.lock = lock
        self.thumbnails = thumbnails
        self.budget = budget
        self.stats = BatchStats()
        self.rows: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.thumbs: list[Thumbnail] = []
        self.pending: list[_Decoded] = []

    def fail(self, item: SourceItem, sha: str | None, code: str, detail: str) -> None:
        self.rows.append(_row(self.plan, item, sha, "failed", f"{code}: {detail}"))
        self.stats.failed[code] += 1

    def read_item(self, item: SourceItem) -> bytes | None:
        """The file's bytes, or None with a failed row when it is gone or can never be read."""
        t0 = time.perf_counter()
        try:
            data = self.read(item.uri)
        except FileNotFoundError as e:  # deleted since the listing: a record, and no retry of the batch
            self.fail(item, None, "missing", str(e))
            return None
        except OSError as e:
            if e.errno not in UNREADABLE_ERRNOS:
                raise  # a storage error: the caller retries the batch
            # A symlink loop, a directory or a file we may not read: the same on every retry, so a record.
            self.fail(item, None, "unreadable", str(e.strerror or e))
            return None
        finally:
            self.stats.seconds["read"] += time.perf_counter() - t0
        self.stats.bytes_read += len(data)
        return data

    def reserve(self, item: SourceItem, data: bytes, sha: str) -> int | None:
        """Bytes of the budget reserved for decoding ``data`` (0 when the decoder will reject it unread), or
        None with a failed row when it could never fit. Waits (labeling what this batch holds first) while
        other batches hold the budget."""
        pixels = header_pixels(data)
        if pixels is None or pixels > self.plan.max_pixels:
            return 0  # rejected by the decoder before any pixel is allocated
        cost = self.budget.cost(pixels)
        if not self.budget.fits_ever(cost):
            limit_mb = self.budget.limit >> 20
            detail = f"{pixels} pixels need ~{cost >> 20} MB, more than the worker's budget of {limit_mb} MB"
            self.fail(item, sha, "over_memory_budget", detail)
            return None
        if not self.budget.try_acquire(cost):
            self.stats.memory_deferred.append(item.uri)
            self.label_pending()  # give back what this batch holds, then wait for the other batches
            self.budget.acquire(cost)
        return cost

    def decode_item(self, item: SourceItem, data: bytes, sha: str) -> None:
        reserved = self.reserve(item, data, sha)
        if reserved is None:
            return
        t0 = time.perf_counter()
        try:
            decoded = decode_image(data, max_pixels=self.plan.max_pixels)
        except ImageRejected as e:
            self.budget.release(reserved)
            self.rows.append(_row(self.plan, item, sha, "rejected", f"{e.reason}: {e.detail}"))
            self.stats.rejected[e.reason] += 1
        except Exception as e:  # a decoder bug must not cost the batch: record it, retry next run
            self.budget.release(reserved)
            self.fail(item, sha, "decode_error", f"{type(e).__name__}: {e}")
        else:
            self.pending.append(_Decoded(item, sha, decoded.rgb, decoded.note, reserved))
        finally:
            self.stats.seconds["decode"] += time.perf_counter() - t0

    def reuse_known(self, hits: list[tuple[SourceItem, str]], labelings: Mapping[str, Mapping[str, Any]]) -> None:
        """Rows sharing the current labeling of each known content; content no current row shows any more
        (changed since the index was read) is labeled after all."""
        for item, sha in hits:
            existing = labelings.get(sha)
            if existing is not None:
                if (existing["uri"], existing.get("source_version")) != (item.uri, item.version):
                    self.rows.append(_reused_row(self.plan, item, existing))  # not already this file's row
                continue
            self.stats.skipped -= 1
            data = self.read_item(item)
            if data is not None:
                self.decode_item(item, data, sha256_hex(data))

    def label_pending(self) -> None:
        """Label, filter and encode the decoded images, releasing each one's reservation when it is done."""
        clock = time.perf_counter
        for group in _pixel_groups(self.pending, self.plan.max_label_pixels):
            t0 = clock()
            with self.lock if self.lock is not None else contextlib.nullcontext():
                t1 = clock()
                results = _label_safely(self.labeler, [d.rgb for d in group])
                self.stats.seconds["label"] += clock() - t1
            self.stats.seconds["label_wait"] += t1 - t0  # another batch of this process was labeling
            t0 = clock()
            for i, (dec, result) in enumerate(zip(group, results, strict=True)):
                results[i] = None  # free each prediction as soon as it is encoded
                _finish(self.plan, dec, result, self.rows, self.annotations, self.thumbs, self.thumbnails, self.stats)
                dec.rgb = None
                self.budget.release(dec.reserved)
                dec.reserved = 0
            self.stats.seconds["post"] += clock() - t0
        self.pending.clear()

    def release_pending(self) -> None:
        for dec in self.pending:
            self.budget.release(dec.reserved)
            dec.reserved = 0
        self.pending.clear()


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


def _reused_row(plan: LabelingPlan, item: SourceItem, existing: Mapping[str, Any]) -> dict[str, Any]:
    """A row for ``item`` whose bytes are already labeled: it shares that labeling (and its annotations)."""
    row = {name: existing.get(name) for name in _ROW_FIELDS}
    row.update(uri=item.uri, source_version=item.version, flow_run_id=plan.run_id)
    return row


_ROW_FIELDS = (
    "image_id", "sha256", "width", "height", "status", "reason", "notes",
    "config_hash", "labeling_id", "labeler", "round",
)  # fmt: skip


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
