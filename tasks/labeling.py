"""Prefect tasks around ``maskclip_core.labeling.write``: retries with exponential backoff, logging, artifacts.

Caching policy: no task here is cached (``cache_policy=NO_CACHE``) and none persists its result.

- ``label_batch`` writes part files: a cache hit would skip the writes (a relabel with ``force``, or a run
  whose earlier output was deleted, would silently write nothing), so it must run every time it is
  submitted. It is idempotent instead: its part names are deterministic per (flow run, batch), so a retry
  overwrites its own parts atomically.
- No task receives a model: batches receive a small :class:`LabelerParameters` and load the model through the
  per-process cache (``load_labeler`` / ``cached_labeler``), so a model never enters a parameter hash or a
  cache key, and each worker process loads it once.
- The other tasks read or write storage whose content changes between runs; caching them would be wrong.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.tasks import Task, exponential_backoff
from pydantic import BaseModel, ConfigDict, Field, model_validator

from maskclip_core.dataset import labelings
from maskclip_core.dataset.digests import DigestSet
from maskclip_core.dataset.integrity import DatasetDamaged
from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.labelings import labeling_record
from maskclip_core.dataset.lease import DEFAULT_TTL_S, Lease, acquire_lease
from maskclip_core.dataset.source_sync import ListedUris, mark_gone
from maskclip_core.labeling.config_hash import labeling_config_hash
from maskclip_core.labeling.decode import DEFAULT_MAX_PIXELS
from maskclip_core.labeling.filter import FilterConfig
from maskclip_core.labeling.known_content import known_sha256_index
from maskclip_core.labeling.memory_budget import DEFAULT_MEMORY_BUDGET
from maskclip_core.labeling.plan import LabelingPlan, SourceItem
from maskclip_core.labeling.planning import BatchDone, PlannedBatch
from maskclip_core.labeling.registry import LabelerParameters, labeler_categories, labeler_round, load_labeler
from maskclip_core.labeling.report import RunSummary
from maskclip_core.labeling.report_images import thumbnail_sources
from maskclip_core.labeling.write import BatchOutcome, label_and_write_batch
from maskclip_core.storage.fs import DEFAULT_IMAGE_EXTENSIONS, SourceFile, atomic_write_bytes, join_url

DEFAULT_RETRIES = 3
DEFAULT_RETRY_DELAY_S = 2.0  # first retry; then 4, 8, ... (exponential backoff)

PROGRESS_ARTIFACT_KEY = "label-dataset-progress"
SUMMARY_ARTIFACT_KEY = "label-dataset-summary"
REPORT_ARTIFACT_KEY = "label-dataset-report"

T = TypeVar("T", bound=Task)


def with_retries(t: T, retries: int, delay_s: float) -> T:
    """``t`` retried ``retries`` times, waiting ``delay_s``, ``2 * delay_s``, ``4 * delay_s``... in between;
    a damaged dataset is not retried (it stays damaged until ``maskclip dataset check --repair``)."""
    return t.with_options(
        retries=retries,
        retry_delay_seconds=exponential_backoff(delay_s) if retries else 0,
        retry_condition_fn=_retryable,
    )


def _retryable(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except DatasetDamaged:
        return False
    except Exception:  # noqa: BLE001 - anything else may be a storage hiccup
        return True
    return True


class LabelingRunParameters(BaseModel):
    """How a run is carried out (none of this changes the labels, so none of it is in the config hash)."""

    model_config = ConfigDict(extra="forbid")

    glob: str | None = Field(None, description="Only files whose path relative to the source matches (`**/*.jpg`)")
    extensions: list[str] | None = Field(
        default_factory=lambda: list(DEFAULT_IMAGE_EXTENSIONS),
        description="File extensions to list (case-insensitive); null lists every file",
    )
    batch_size: int = Field(16, ge=1, le=4096, description="Images per batch task (one part file per batch)")
    concurrency: int = Field(2, ge=1, le=256, description="Batches running at once in the default thread pool")
    workers: int | None = Field(
        None, ge=1, le=1024, description="Run batches on a local Dask cluster of this many worker processes"
    )
    dask_address: str | None = Field(None, description="Run batches on an existing Dask scheduler (tcp://host:8786)")
    max_in_flight: int | None = Field(
        None, ge=1, le=100_000, description="Batches submitted but not finished (default: twice the parallelism)"
    )
    chunk_batches: int = Field(
        64,
        ge=1,
        le=100_000,
        description="Batches per `label-chunk` sub-run (Prefect's per-task bookkeeping is freed as each one ends)",
    )
    retries: int = Field(3, ge=0, le=50, description="Retries of a batch or storage call that failed")
    retry_delay_seconds: float = Field(
        2.0, ge=0.0, le=3600.0, description="Delay before the first retry; it doubles on each further retry"
    )
    thumbnails: int = Field(6, ge=0, le=200, description="Overlay thumbnails written to DATASET/thumbnails/")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Images with more pixels are rejected (bombs)")
    memory_budget_mb: int = Field(
        DEFAULT_MEMORY_BUDGET >> 20,
        ge=64,
        le=1 << 24,
        description="Decoded images a worker process holds at once, in MB (larger images wait; any that can never "
        "fit fails with over_memory_budget)",
    )
    lease_wait_s: float = Field(
        0.0, ge=0.0, le=86_400.0, description="Wait this long for another run's lease on the dataset, then exit"
    )
    lease_ttl_s: float = Field(
        DEFAULT_TTL_S, ge=1.0, le=86_400.0, description="Lease expiry: a killed run frees the dataset after this long"
    )
    force_lease: bool = Field(False, description="Take the dataset's lease even from a live run")
    source_storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for the source (default: AWS environment / profile)"
    )
    dataset_storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for the dataset (default: AWS environment / profile)"
    )

    @model_validator(mode="after")
    def _one_runner(self) -> LabelingRunParameters:
        if self.workers is not None and self.dask_address:
            raise ValueError("give `workers` (a local Dask cluster) or `dask_address` (an existing one), not both")
        return self

    @property
    def uses_dask(self) -> bool:
        return self.workers is not None or bool(self.dask_address)

    def parallelism(self) -> int:
        return self.workers or (4 if self.dask_address else self.concurrency)

    def in_flight_limit(self) -> int:
        return self.max_in_flight or 2 * self.parallelism()


@dataclass(frozen=True)
class BatchSetup:
    """Run-wide settings every batch needs (a few KB, sent with each batch to threads or Dask workers)."""

    labeler: LabelerParameters
    plan: LabelingPlan
    dataset: str
    dataset_storage_options: Mapping[str, Any] = field(default_factory=dict)
    source_storage_options: Mapping[str, Any] = field(default_factory=dict)
    skip_known_content: bool = True  # False with --force


@task(
    name="label-batch",
    task_run_name="label-batch-{index}",
    cache_policy=NO_CACHE,  # side effects: see the module docstring
    persist_result=False,
    retries=DEFAULT_RETRIES,
    retry_delay_seconds=exponential_backoff(DEFAULT_RETRY_DELAY_S),
)
def label_batch(index: int, items: Sequence[SourceItem], setup: BatchSetup, thumbnails: int = 0) -> BatchOutcome:
    """Read, decode, label, filter and encode one batch, then write its part files (annotations, images).

    Storage errors raise, so Prefect retries the whole batch; per-image problems become images rows.
    """
    logger = get_run_logger()
    labeler = load_labeler(setup.labeler)  # once per worker process, then from the cache
    plan = setup.plan
    known: DigestSet | None = None
    if setup.skip_known_content:
        known = known_sha256_index(setup.dataset, setup.dataset_storage_options, plan.config_hash, plan.run_id)
    dataset = LabelDataset(setup.dataset, setup.dataset_storage_options)
    outcome = label_and_write_batch(
        index,
        items,
        labeler,
        plan,
        dataset,
        source_storage_options=setup.source_storage_options,
        known=known,
        thumbnails=thumbnails,
    )
    s = outcome.stats
    logger.info(
        "batch %d: %d files, %d labeled, %d skipped, %d rejected%s, %d failed%s; %d annotations -> part %s",
        index,
        s.seen,
        s.labeled,
        s.skipped,
        sum(s.rejected.values()),
        f" {dict(s.rejected)}" if s.rejected else "",
        sum(s.failed.values()),
        f" {dict(s.failed)}" if s.failed else "",
        s.annotations,
        outcome.part,
    )
    return outcome


@task(name="ensure-categories", cache_policy=NO_CACHE, persist_result=False)
def ensure_categories(
    dataset: str, storage_options: Mapping[str, Any], classes: Sequence[tuple[str, Sequence[str]]]
) -> dict[str, int]:
    """Category ids of the labeler's classes, registered once in the parent before fanning out."""
    return LabelDataset(dataset, storage_options).ensure_categories(list(classes))


@task(name="verify-dataset", cache_policy=NO_CACHE, persist_result=False)
def verify_dataset(dataset: str, storage_options: Mapping[str, Any]) -> None:
    """Refuse to label into a damaged dataset: every part's footer and schema are read (no rows)."""
    LabelDataset(dataset, storage_options).verify_parts()


@task(name="mark-gone", cache_policy=NO_CACHE, persist_result=False)
def mark_gone_files(
    dataset: str,
    storage_options: Mapping[str, Any],
    source: str,
    listed: DigestSet,
    run_id: str,
    extensions: Sequence[str] | None,
    glob: str | None,
    source_storage_options: Mapping[str, Any],
) -> list[str]:
    """``gone`` rows for the files the complete listing no longer shows (deleted, renamed away)."""
    gone = mark_gone(
        LabelDataset(dataset, storage_options),
        source,
        listed,
        run_id=run_id,
        extensions=extensions,
        glob=glob,
        source_storage_options=source_storage_options,
    )
    if gone:
        get_run_logger().info("%d files left %s since the last run: marked gone", len(gone), source)
    return gone


@task(name="write-labeling-record", cache_policy=NO_CACHE, persist_result=False)
def write_labeling_record(dataset: str, storage_options: Mapping[str, Any], record: Mapping[str, Any]) -> str:
    """``labelings/<config hash>.json``: which labeler, filter and classes the config hash stands for."""
    return labelings.write_labeling_record(dataset, record, storage_options)


@task(name="load-known-sources", cache_policy=NO_CACHE, persist_result=False)
def load_known_sources(dataset: str, storage_options: Mapping[str, Any], config_hash: str) -> DigestSet:
    """(uri, source_version) digests already done under the config: files to skip without reading them."""
    known = LabelDataset(dataset, storage_options).known_sources(config_hash)
    get_run_logger().info(
        "%d files already done under config %s (%d KB index)", len(known), config_hash, known.nbytes // 1024
    )
    return known


@task(name="compact-index", cache_policy=NO_CACHE, persist_result=False)
def compact_index(dataset: str, storage_options: Mapping[str, Any]) -> dict[str, int]:
    """Merge the run's many small images parts so the next run's index load reads few files."""
    counts = LabelDataset(dataset, storage_options).compact_images()
    if counts["merged_parts"]:
        get_run_logger().info("merged %(merged_parts)d images parts into %(written_parts)d", counts)
    return counts


@task(name="write-run-report", cache_policy=NO_CACHE, persist_result=False)
def write_run_report(
    dataset: str, storage_options: Mapping[str, Any], run_id: str, summary_json: str, markdown: str
) -> dict[str, str]:
    """``reports/<run id>.json`` and ``.md`` next to the dataset."""
    urls = {
        "json": join_url(dataset, "reports", f"{run_id}.json"),
        "markdown": join_url(dataset, "reports", f"{run_id}.md"),
    }
    atomic_write_bytes(urls["json"], summary_json.encode("utf-8"), storage_options)
    atomic_write_bytes(urls["markdown"], markdown.encode("utf-8"), storage_options)
    return urls


# --- one run: prepare, collect, finish --------------------------------------------------------------------


@dataclass
class SourceListing:
    """What a run lists (the source and its filters) and the uris it listed: the dataset follows the source."""

    source: str
    extensions: Sequence[str] | None
    glob: str | None
    storage_options: Mapping[str, Any]
    uris: ListedUris = field(default_factory=ListedUris)

    def record(self, files: Iterable[SourceFile]) -> Iterator[SourceFile]:
        """``files``, each uri noted on its way through (16 bytes per file)."""
        for f in files:
            self.uris.add(f.uri)
            yield f


@contextlib.contextmanager
def dataset_lease(dataset: str, options: LabelingRunParameters, run_id: str) -> Iterator[Lease]:
    """The dataset's lease for this run (one writing run at a time; it expires if this process is killed),
    released when the run ends however it ends."""
    lease = acquire_lease(
        dataset,
        options.dataset_storage_options,
        owner=run_id,
        ttl_s=options.lease_ttl_s,
        wait_s=options.lease_wait_s,
        force=options.force_lease,
    )
    try:
        yield lease
    finally:
        lease.release()


@dataclass
class LabelingRun:
    """What a run decided before its first batch: the batch settings, the files to skip, its summary."""

    setup: BatchSetup
    known: DigestSet | None  # None with force: nothing is skipped by (uri, version)
    summary: RunSummary
    retries: int
    retry_delay_s: float
    source_listing: SourceListing

    def with_retries(self, t: T) -> T:
        return with_retries(t, self.retries, self.retry_delay_s)


def start_run(
    run_id: str,
    source: str,
    dataset: str,
    labeler: LabelerParameters,
    filters: FilterConfig,
    options: LabelingRunParameters,
    force: bool,
) -> LabelingRun:
    """Load the labeler for its config and classes, register the categories, write the labeling record and read
    the index of files already done under the config (unless ``force``).

    The labeler is loaded in the flow's process only for its config; with a thread pool the batches reuse
    this very instance (per-process cache), with Dask each worker process loads its own.
    """
    started_at = time.monotonic()
    lab = load_labeler(labeler, device="cpu" if options.uses_dask else None)
    config = lab.config()  # a student's hashes its text embeddings: once
    config_hash = labeling_config_hash(config, filters, max_pixels=options.max_pixels)
    categories = labeler_categories(lab)
    class_names = tuple(name for name, _ in categories)
    kind = labeler.labeler
    get_run_logger().info("labeler %s, %d classes, config hash %s, run %s", kind, len(class_names), config_hash, run_id)

    def retried(t: T) -> T:
        return with_retries(t, options.retries, options.retry_delay_seconds)

    storage = (dataset, options.dataset_storage_options)
    retried(verify_dataset)(*storage)  # a damaged dataset is refused before anything is written into it
    ids = retried(ensure_categories)(*storage, categories)
    record = labeling_record(config_hash, labeler, config, filters, categories, max_pixels=options.max_pixels)
    retried(write_labeling_record)(*storage, record)
    known = None if force else retried(load_known_sources)(*storage, config_hash)
    plan = LabelingPlan(
        run_id=run_id,
        config_hash=config_hash,
        class_names=class_names,
        category_ids=tuple(ids[name] for name in class_names),
        filters=filters,
        labeler_kind=kind,
        round=labeler_round(lab, kind),
        max_pixels=options.max_pixels,
        memory_budget=options.memory_budget_mb << 20,
        id_bits=LabelDataset(*storage).id_bits,  # the manifest ensure_categories wrote fixes it
    )
    setup = BatchSetup(labeler, plan, *storage, options.source_storage_options, skip_known_content=not force)
    summary = RunSummary(run_id, source, dataset, config_hash, kind, class_names, started_at=started_at)
    listing = SourceListing(source, options.extensions, options.glob, options.source_storage_options)
    return LabelingRun(setup, known, summary, options.retries, options.retry_delay_seconds, listing)


def batch_done(batch: PlannedBatch, future: PrefectFuture[BatchOutcome]) -> BatchDone:
    """A finished batch task as a small record: its outcome, or its error (logged) when it failed."""
    size, first_uri = len(batch.items), batch.items[0].uri
    future.wait()
    if future.state.is_completed():
        return BatchDone(batch.index, size, first_uri, outcome=future.result())
    error = _error_of(future)
    get_run_logger().error("batch %d (%d images from %s) failed: %s", batch.index, size, first_uri, error)
    return BatchDone(batch.index, size, first_uri, error=error)


def _error_of(future: PrefectFuture[Any]) -> str:
    state = future.state
    try:
        exc = future.result(raise_on_failure=False)
    except Exception as e:  # noqa: BLE001 - crashed runs may have no result at all
        exc = e
    if isinstance(exc, BaseException):
        return f"{type(exc).__name__}: {exc}"
    return f"{state.type.value}: {state.message or 'no message'}"


def finish_run(run: LabelingRun) -> None:
    """Mark the files that left the source ``gone`` (after a complete listing only), compact the images index,
    then write the report next to the dataset and publish it as artifacts."""
    summary, storage = run.summary, (run.setup.dataset, run.setup.dataset_storage_options)
    logger = get_run_logger()
    if summary.listing_complete:  # only a complete listing can tell that a file is gone
        listing = run.source_listing
        try:
            summary.gone = run.with_retries(mark_gone_files)(
                *storage,
                listing.source,
                listing.uris.build(),
                summary.run_id,
                listing.extensions,
                listing.glob,
                listing.storage_options,
            )
        except Exception as e:  # noqa: BLE001 - the labels are written; the next complete run marks them
            logger.warning("files that left %s could not be marked gone: %s", listing.source, e)
    if summary.labeled or summary.rejected:
        try:
            run.with_retries(compact_index)(*storage)
        except Exception as e:  # noqa: BLE001 - only the next run's index load is slower
            logger.warning("images index not compacted: %s", e)
    summary.finish()
    try:
        summary_json = json.dumps(summary.to_dict(), indent=2)
        report = run.with_retries(write_run_report)(*storage, summary.run_id, summary_json, summary.markdown())
        summary.report_urls = report
    except Exception as e:  # noqa: BLE001 - the labels are written; the report is a convenience
        logger.warning("run report could not be written: %s", e)
    publish_summary(summary, run.setup.dataset_storage_options)
    logger.info(
        "%d images seen: %d labeled, %d skipped, %d rejected, %d failed (%d failed batches) in %.1f s: %s",
        summary.listed,
        summary.labeled,
        summary.skipped,
        summary.rejected,
        summary.failed,
        summary.failed_batch_count,
        summary.elapsed_s or 0.0,
        summary.status,
    )


# --- artifacts --------------------------------------------------------------------------------------------


class ProgressArtifact:
    """A progress artifact created on the first update and updated as batches finish.

    Artifact calls never fail a run: an API hiccup is logged and the next update tries again.
    """

    def __init__(self, key: str = PROGRESS_ARTIFACT_KEY) -> None:
        self.key = key
        self.artifact_id: UUID | None = None

    def update(self, percent: float, description: str) -> None:
        percent = max(0.0, min(100.0, float(percent)))
        try:
            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(percent, key=self.key, description=description)
            else:
                update_progress_artifact(self.artifact_id, percent, description=description)
        except Exception as e:  # noqa: BLE001 - progress is best effort
            get_run_logger().warning("progress artifact update failed: %s", e)


ProgressListener = Callable[[str, RunSummary], None]


class RunProgress:
    """Publishes a labeling run's progress: the progress artifact (at most once per ``interval_s``, always at the
    start and the end) and an optional in-process listener (the CLI's progress bar) on every event.

    Events: ``start``, ``listing`` (every 1000 files listed), ``batch``, ``end``.
    """

    def __init__(self, summary: RunSummary, listener: ProgressListener | None = None, interval_s: float = 1.0):
        self.summary = summary
        self.listener = listener
        self.interval_s = interval_s
        self.artifact = ProgressArtifact()
        self.last_update = float("-inf")

    def listing(self) -> None:
        self.publish("listing")

    def publish(self, event: str) -> None:
        now = time.monotonic()
        if event in ("start", "end") or now - self.last_update >= self.interval_s:
            self.last_update = now
            self.artifact.update(self.summary.progress_percent(), self.summary.progress_text())
        if self.listener is not None:
            try:
                self.listener(event, self.summary)
            except Exception:  # noqa: BLE001 - a display must never break a run
                pass


def publish_summary(summary: RunSummary, storage_options: Mapping[str, Any] | None = None) -> None:
    """The end-of-run table artifact and markdown report (both rendered by ``RunSummary``).

    The report artifact shows the overlays inline: a browser cannot open the dataset's local paths or s3:// URLs.
    """
    try:
        markdown = summary.markdown(image_sources=thumbnail_sources(summary.thumbnails, storage_options))
        create_table_artifact(table=summary.table_rows(), key=SUMMARY_ARTIFACT_KEY, description=summary.headline())
        create_markdown_artifact(markdown, key=REPORT_ARTIFACT_KEY, description="Labeling run report")
    except Exception as e:  # noqa: BLE001 - the run's data is written already
        get_run_logger().warning("summary artifacts could not be created: %s", e)
