"""The per-batch labeling pipeline, without Prefect: bytes -> decode -> label -> filter -> encode -> rows + stats.

The ``tasks`` layer wraps :func:`label_and_write_batch` in a Prefect task; everything here is plain Python and
is tested directly. Pieces:

- :class:`LabelerSpec`: which labeler to use (the MaskCLIP teacher with its :class:`LabelerConfig`, or a student
  checkpoint), loaded at most once per process by :func:`load_labeler`.
- :func:`labeling_config_hash`: what "already labeled under the same configuration" means for incremental runs.
- :class:`LabelingPlan`: everything constant over a run (config hash, category ids, thresholds, run id).
- :func:`process_batch`: one batch of source files to images / annotation rows, per-image faults recorded as
  rows, storage faults raised (the caller retries the whole batch, which is idempotent).
- :func:`write_batch_result`: thumbnails, then the batch's part files through :class:`LabelStore`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from maskclip_core.dataset.digests import DigestSet, sha256_digest
from maskclip_core.dataset.fs import atomic_write_bytes, join_url, read_bytes, sha256_hex
from maskclip_core.dataset.store import LabelStore
from maskclip_core.labeling.annotations import encode_annotations, image_id_from_sha256
from maskclip_core.labeling.decode import DEFAULT_MAX_PIXELS, ImageRejected, decode_image
from maskclip_core.labeling.filter import FilterConfig, FilteredLabels, filter_labels
from maskclip_core.labeling.overlays import overlay
from maskclip_core.process_cache import ProcessCache
from maskclip_core.teacher.labeler import LabelerConfig, cached_labeler
from maskclip_core.types import Labeler, SegmentationResult

# Pixels handed to one ``labeler.label`` call: bounds the memory of a batch of large photos (the labeler
# returns int64 labels and float32 confidence at full size) without shrinking batches of small images.
DEFAULT_MAX_LABEL_PIXELS = 32_000_000
THUMBNAIL_SIDE = 256
THUMBNAIL_QUALITY = 80


class StudentUnavailableError(RuntimeError):
    """``labeler="student"`` was asked for but ``maskclip_core.student.StudentLabeler`` cannot be imported."""


# --- the labeler ------------------------------------------------------------------------------------------


class LabelerSpec(BaseModel):
    """Which labeler produces the labels: the MaskCLIP teacher, or a MaskCLIP+ student checkpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    labeler: Literal["maskclip", "student"] = Field(
        "maskclip", description="'maskclip' (the teacher, configured by `config`) or 'student' (`checkpoint`)"
    )
    config: LabelerConfig | None = Field(
        None,
        description="The MaskCLIP teacher's model, weights and inference settings (labeler='maskclip'); "
        "default: ViT-B-16 with OpenAI weights and the flow's `classes`",
    )
    checkpoint: str | None = Field(
        None, description="Student weights file or checkpoint directory URL (labeler='student'; newest round)"
    )
    checkpoint_storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options to read the student checkpoint (default: environment)"
    )
    device: str | None = Field(None, description="cpu, cuda, cuda:1; default: CUDA when present")

    @model_validator(mode="after")
    def _complete(self) -> LabelerSpec:
        # labeler='maskclip' without `config` is completed by `with_classes` (the flows' `classes` parameter).
        if self.labeler == "student" and not self.checkpoint:
            raise ValueError("labeler='student' needs `checkpoint` (a weights file or checkpoint directory URL)")
        return self

    @classmethod
    def maskclip(cls, config: LabelerConfig, device: str | None = None) -> LabelerSpec:
        return cls(labeler="maskclip", config=config, device=device)

    @classmethod
    def student(cls, checkpoint: str, device: str | None = None, **storage_options: Any) -> LabelerSpec:
        return cls(labeler="student", checkpoint=checkpoint, checkpoint_storage_options=storage_options, device=device)

    def with_classes(self, classes: str | None) -> LabelerSpec:
        """This spec with the flows' top-level ``classes`` (the Run form's third field) applied.

        ``classes`` replaces ``config.classes`` of a teacher (the default ``LabelerConfig`` when ``config`` is
        unset); a teacher needs classes from one of the two; a student's classes come from its checkpoint.
        """
        if self.labeler == "student":
            if classes:
                raise ValueError("`classes` is for the MaskCLIP teacher; a student's classes come from its checkpoint")
            return self
        if classes is not None and not classes.strip():
            raise ValueError("`classes` is empty: name the classes, comma separated (synonyms after ';')")
        if self.config is None:
            if not classes:
                raise ValueError("name the classes: `classes` (e.g. 'car, road, tree stump')")
            return self.model_copy(update={"config": LabelerConfig(classes=classes)})
        if classes and classes != self.config.classes:
            return self.model_copy(update={"config": self.config.model_copy(update={"classes": classes})})
        return self


def resolve_labeler(classes: str | None, labeler: LabelerSpec | None) -> LabelerSpec:
    """The flows' ``classes`` and optional ``labeler`` parameters as one complete :class:`LabelerSpec`."""
    return (labeler or LabelerSpec()).with_classes(classes)


_STUDENTS: ProcessCache[Labeler] = ProcessCache()


def load_labeler(spec: LabelerSpec, *, device: str | None = None) -> Labeler:
    """The labeler of ``spec``, loaded once per process and configuration (later calls reuse it).

    ``device`` overrides ``spec.device`` (a flow that only needs the labeler's config loads it on the CPU).
    """
    device = device if device is not None else spec.device
    if spec.labeler == "maskclip":
        if spec.config is None:
            raise ValueError("labeler='maskclip' needs classes: pass `classes` or `labeler.config.classes`")
        return cached_labeler(spec.config, device=device)
    key = json.dumps([spec.checkpoint, spec.checkpoint_storage_options, device], sort_keys=True, default=str)
    return _STUDENTS.get(
        key,
        lambda: _student_class().from_checkpoint(
            spec.checkpoint, device=device, storage_options=spec.checkpoint_storage_options or None
        ),
    )


def _student_class() -> Any:
    """``maskclip_core.student.StudentLabeler``, imported only when a student is asked for."""
    try:
        from maskclip_core.student import StudentLabeler  # optional and heavy: imported only when asked for
    except ImportError as e:
        raise StudentUnavailableError(
            "labeler='student' needs maskclip_core.student.StudentLabeler, which cannot be imported here "
            f"({type(e).__name__}: {e}); use labeler='maskclip' or install a version with the student"
        ) from e
    return StudentLabeler


def labeler_round(labeler: Labeler, kind: Literal["maskclip", "student"]) -> int:
    """The ``round`` recorded on rows (their ``source`` is ``kind``): 0 for the teacher, the round of its
    checkpoint (``labeler.round``, else ``labeler.config()["round"]``) for a student."""
    if kind == "maskclip":
        return 0
    value = getattr(labeler, "round", None)
    if value is None:
        value = labeler.config().get("round")
    return int(value or 0)


def labeler_categories(labeler: Labeler) -> list[tuple[str, list[str]]]:
    """(name, synonyms) per class index, for ``LabelStore.ensure_categories``."""
    vocabulary = getattr(labeler, "vocabulary", None)
    if vocabulary is not None and hasattr(vocabulary, "to_records"):
        records = vocabulary.to_records()
        if [r["name"] for r in records] == list(labeler.class_names):
            return [(r["name"], list(r["synonyms"])) for r in records]
    return [(name, []) for name in labeler.class_names]


def labeling_config_hash(
    labeler_config: Mapping[str, Any], filters: FilterConfig, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> str:
    """Identity of "the same labeling configuration" for incremental runs.

    Hashes ``labeler.config()`` (model, weights identity, vocabulary, templates, inference settings, or the
    student checkpoint), the confidence-filter thresholds, and the decoder's pixel limit (it decides which
    images are rejected). Anything else (batch sizes, devices, task runners) does not change labels.
    """
    payload = {
        "labeler": dict(labeler_config),
        "filters": filters.model_dump(mode="json"),
        "decode": {"max_pixels": int(max_pixels)},
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def make_labeling_id(run_id: str, uri: str, sha256: str | None, config_hash: str) -> str:
    """One labeling of one file in one run: deterministic, so a retried batch rewrites the same ids."""
    text = "\x1f".join([run_id, uri, sha256 or "", config_hash])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def part_name(run_id: str, batch_index: int) -> str:
    """Deterministic part-file name of a batch: a retried batch overwrites its own parts."""
    return f"{run_id}-b{batch_index:06d}"


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


# --- the known-content index, per process -----------------------------------------------------------------

_KNOWN: dict[str, DigestSet] = {}
_KNOWN_LOCK = threading.Lock()


def known_sha256_index(
    output_url: str, storage_options: Mapping[str, Any] | None, config_hash: str, token: str
) -> DigestSet:
    """SHA-256 digests already done under ``config_hash`` at ``output_url``, read once per process and
    ``token`` (the run id): every batch of a run on this worker reuses it; a new run reads it again.

    Only the latest index is kept, so a long-lived worker does not accumulate indexes of past runs.
    """
    key = json.dumps([output_url, dict(storage_options or {}), config_hash, token], sort_keys=True, default=str)
    with _KNOWN_LOCK:
        index = _KNOWN.get(key)
        if index is None:
            index = LabelStore(output_url, storage_options).known_sha256_digests(config_hash)
            _KNOWN.clear()
            _KNOWN[key] = index
        return index


# --- records ----------------------------------------------------------------------------------------------


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
    labeler_kind: Literal["maskclip", "student"] = "maskclip"  # also the annotations' ``source``
    round: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_label_pixels: int = DEFAULT_MAX_LABEL_PIXELS

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
            "seconds": {k: round(v, 4) for k, v in sorted(self.seconds.items())},
        }


@dataclass
class Thumbnail:
    path: str  # relative to the output URL: thumbnails/<run id>/<sha256 prefix>.jpg
    data: bytes
    uri: str  # the source image


@dataclass
class BatchResult:
    images_rows: list[dict[str, Any]]
    annotation_rows: list[dict[str, Any]]
    stats: BatchStats
    thumbnails: list[Thumbnail] = field(default_factory=list)


def reason_code(reason: str | None) -> str:
    """``"truncated: image file is truncated"`` -> ``"truncated"``."""
    return (reason or "unknown").split(":", 1)[0].strip() or "unknown"


# --- the batch --------------------------------------------------------------------------------------------


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
        source=plan.labeler_kind,
        round=plan.round,
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
        "image_id": image_id_from_sha256(sha256) if sha256 else None,
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


def thumbnail_jpeg(rgb: np.ndarray, filtered: FilteredLabels, *, side: int = THUMBNAIL_SIDE) -> bytes:
    """A small JPEG of the filtered labels over the image (``visualize.overlay``), long side ``side``."""
    height, width = filtered.labels.shape
    scale = min(1.0, side / max(height, width))
    image, labels = rgb, filtered.labels
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
        labels = np.asarray(Image.fromarray(filtered.labels).resize(size, Image.Resampling.NEAREST))
    buf = io.BytesIO()
    overlay(image, labels, filtered.class_names).save(buf, "JPEG", quality=THUMBNAIL_QUALITY)
    return buf.getvalue()


def write_batch_result(store: LabelStore, result: BatchResult, part: str) -> dict[str, Any]:
    """Thumbnails first, then the annotations part and last the images part (the commit record).

    Every name is deterministic, so writing the same batch again replaces the same files.
    """
    thumbnail_urls = []
    for thumb in result.thumbnails:
        url = join_url(store.url, thumb.path)
        atomic_write_bytes(url, thumb.data, store.storage_options)
        thumbnail_urls.append(url)
    written = store.write_batch(result.images_rows, result.annotation_rows, part_name=part)
    return {**written, "thumbnails": thumbnail_urls}


@dataclass
class BatchOutcome:
    """What a batch reports back to the flow: small, picklable, no arrays."""

    index: int
    part: str
    stats: BatchStats
    written: dict[str, Any]
    thumbnails: list[dict[str, str]]  # {"url", "uri"}
    pid: int = field(default_factory=os.getpid)


def label_and_write_batch(
    index: int,
    items: Sequence[SourceItem],
    labeler: Labeler,
    plan: LabelingPlan,
    store: LabelStore,
    *,
    source_storage_options: Mapping[str, Any] | None = None,
    known: DigestSet | None = None,
    thumbnails: int = 0,
) -> BatchOutcome:
    """:func:`process_batch` then :func:`write_batch_result` under the batch's deterministic part name."""
    options = dict(source_storage_options or {})

    def read(uri: str) -> bytes:
        return read_bytes(uri, options)

    is_known = None if known is None else (lambda sha: sha256_digest(sha) in known)
    result = process_batch(
        items, labeler, plan, read=read, is_known=is_known, thumbnails=thumbnails, lock=label_lock(labeler)
    )
    t0 = time.perf_counter()
    part = part_name(plan.run_id, index)
    written = write_batch_result(store, result, part)
    result.stats.seconds["write"] += time.perf_counter() - t0
    thumbs = [{"url": url, "uri": t.uri} for url, t in zip(written["thumbnails"], result.thumbnails, strict=True)]
    return BatchOutcome(index=index, part=part, stats=result.stats, written=written, thumbnails=thumbs)
