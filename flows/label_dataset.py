"""The ``label-dataset`` flow: label every new image under a source URL into the Parquet dataset at an output URL.

Orchestration only; the work is in ``maskclip_core.labeling.batch`` (one batch) and ``tasks.labeling`` (its Prefect
wrapper). One run:

1. loads the labeler once here to learn its ``config()`` (weights identity included) and classes, and hashes
   them with the filter thresholds into the config hash that defines "already labeled";
2. registers the categories once (``LabelStore.ensure_categories``) before fanning out, and writes the
   labeling record ``labelings/<config hash>.json`` (labeler, filter, classes: what later stages rebuild);
3. reads the compact index of (uri, source_version) pairs already done under the config (4 Parquet columns);
4. streams the listing, skipping known files without reading them, and submits batches of URIs to the task
   runner with a bounded number in flight (memory stays flat however many files there are);
5. aggregates the small per-batch outcomes into a summary, updates a progress artifact as batches finish,
   and ends with a table artifact, a markdown report (with overlay thumbnails) and ``reports/<run>.json|md``.

Failed batches (storage errors that outlived their retries) do not stop the others; the run then ends Failed
with the failures in its summary, and the next run picks their images up (nothing of them was committed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field, model_validator

from maskclip_core.dataset.digests import source_digest
from maskclip_core.dataset.fs import DEFAULT_IMAGE_EXTENSIONS, SourceFile, iter_source_files
from maskclip_core.dataset.labelings import labeling_record
from maskclip_core.labeling.batch import (
    LabelerSpec,
    LabelingPlan,
    SourceItem,
    labeler_categories,
    labeler_round,
    labeling_config_hash,
    load_labeler,
    resolve_labeler,
)
from maskclip_core.labeling.decode import DEFAULT_MAX_PIXELS
from maskclip_core.labeling.filter import FilterConfig
from maskclip_core.labeling.report import RunSummary
from maskclip_core.labeling.report_images import thumbnail_sources
from tasks.labeling import (
    BatchSetup,
    ProgressArtifact,
    compact_index,
    ensure_categories,
    label_batch,
    load_known_sources,
    publish_summary,
    with_retries,
    write_labeling_record,
    write_run_report,
)


class RunOptions(BaseModel):
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
    retries: int = Field(3, ge=0, le=50, description="Retries of a batch or storage call that failed")
    retry_delay_seconds: float = Field(
        2.0, ge=0.0, le=3600.0, description="Delay before the first retry; it doubles on each further retry"
    )
    thumbnails: int = Field(6, ge=0, le=200, description="Overlay thumbnails written to OUTPUT/thumbnails/")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Images with more pixels are rejected (bombs)")
    source_storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for the source (default: AWS environment / profile)"
    )
    output_storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for the output (default: AWS environment / profile)"
    )

    @model_validator(mode="after")
    def _one_runner(self) -> RunOptions:
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


class LabelingIncomplete(RuntimeError):
    """Some batches failed after their retries; the others were written. ``summary`` says which."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message, summary)
        self.summary = summary

    def __str__(self) -> str:
        return str(self.args[0])


# --- progress listeners (the CLI's progress bar) -----------------------------------------------------------

ProgressListener = Callable[[str, RunSummary], None]
_LISTENERS: list[ProgressListener] = []


@contextlib.contextmanager
def progress_listener(listener: ProgressListener) -> Iterator[None]:
    """Call ``listener(event, summary)`` during runs in this process; events: ``start``, ``listing``,
    ``batch``, ``listed`` (the listing is complete), ``end``."""
    _LISTENERS.append(listener)
    try:
        yield
    finally:
        _LISTENERS.remove(listener)


def _notify(event: str, summary: RunSummary) -> None:
    for listener in list(_LISTENERS):
        try:
            listener(event, summary)
        except Exception:  # noqa: BLE001 - a display must never break a run
            pass


# --- helpers ---------------------------------------------------------------------------------------------


def make_task_runner(options: RunOptions) -> TaskRunner:
    """The default thread pool, a local Dask cluster of worker processes, or an existing Dask scheduler."""
    if not options.uses_dask:
        return ThreadPoolTaskRunner(max_workers=options.concurrency)
    from prefect_dask import DaskTaskRunner

    if options.dask_address:
        return DaskTaskRunner(address=options.dask_address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": options.workers,
            "processes": True,  # each worker process loads the model once (per-process cache)
            "threads_per_worker": 1,
            "host": "127.0.0.1",
            "dashboard_address": None,
        },
    )


def iter_listing(
    source: str, options: RunOptions, *, sleep: Callable[[float], None] = time.sleep
) -> Iterator[SourceFile]:
    """The source listing, restarted with exponential backoff when the storage fails mid-way.

    The listing order is deterministic, so a restart skips the files it already yielded (a file added or
    removed meanwhile can shift that: one file may then be submitted twice, which is harmless as ids are
    deterministic, or be left for the next run). A missing source is not retried.
    """
    logger = _logger()
    yielded = 0
    attempt = 0
    while True:
        position = 0
        try:
            for f in iter_source_files(
                source,
                extensions=options.extensions,
                glob=options.glob,
                storage_options=options.source_storage_options,
            ):
                position += 1
                if position <= yielded:
                    continue
                yielded += 1
                yield f
            return
        except FileNotFoundError:
            raise
        except Exception as e:
            if attempt >= options.retries:
                raise
            delay = options.retry_delay_seconds * 2**attempt
            attempt += 1
            logger.warning(
                "listing %s failed after %d files (%s); retry %d in %.1f s", source, yielded, e, attempt, delay
            )
            sleep(delay)


def _logger() -> Any:
    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a flow run (direct use, tests)
        return logging.getLogger(__name__)


def _release(runner: TaskRunner, future: PrefectFuture[Any], outcome: Any) -> None:
    """Drop what Prefect keeps per finished task in this process, so memory stays flat over millions of images.

    - ``FlowRunContext.run_results`` links every task result (and its first-level parts) to its state by
      ``id`` for dependency tracking between tasks; batch outcomes are never passed to another task.
    - ``ThreadPoolTaskRunner`` keeps a cancel event per submitted task run.
    Both are private details of Prefect 3.x; if they change, this does nothing.
    """
    context = FlowRunContext.get()
    run_results = getattr(context, "run_results", None)
    if isinstance(run_results, dict) and outcome is not None:
        parts = (
            [getattr(outcome, f.name) for f in dataclasses.fields(outcome)] if dataclasses.is_dataclass(outcome) else []
        )
        for obj in (outcome, *parts):
            run_results.pop(id(obj), None)
    cancel_events = getattr(runner, "_cancel_events", None)
    if isinstance(cancel_events, dict):
        cancel_events.pop(getattr(future, "task_run_id", None), None)


def _error_of(future: PrefectFuture[Any]) -> str:
    state = future.state
    try:
        exc = future.result(raise_on_failure=False)
    except Exception as e:  # noqa: BLE001 - crashed runs may have no result at all
        exc = e
    if isinstance(exc, BaseException):
        return f"{type(exc).__name__}: {exc}"
    return f"{state.type.value}: {state.message or 'no message'}"


# --- the flow ------------------------------------------------------------------------------------------------


@flow(
    name="label-dataset",
    description="MaskCLIP pseudo-labels for every new image under a source URL, into a Parquet dataset.",
    validate_parameters=True,
)
def label_dataset(
    source: str,
    output: str,
    classes: str | None = None,
    labeler: LabelerSpec | None = None,
    filters: FilterConfig = FilterConfig(),  # noqa: B008 - pydantic defaults show in the deployment form
    options: RunOptions = RunOptions(),  # noqa: B008
    force: bool = False,
) -> dict[str, Any]:
    """Label the images under ``source`` into the dataset at ``output``; returns the run summary.

    Args:
        source: fsspec URL of the images: a local folder, ``s3://bucket/prefix``, ``memory://...``.
        output: fsspec URL of the Parquet dataset (images / annotations / categories).
        classes: the classes to label, comma separated, synonyms after ';' ("car, road, grass; lawn").
        labeler: the MaskCLIP teacher's ``config`` (model, weights, inference; default ViT-B-16, OpenAI
            weights), or a student ``checkpoint``.
        filters: confidence-filter thresholds, with per-class overrides.
        options: listing filters, batch size, parallelism (thread pool or Dask), retries, thumbnails.
        force: relabel images already labeled under the same configuration.
    """
    started_at = time.monotonic()
    logger = get_run_logger()
    context = FlowRunContext.get()
    run_id = str(context.flow_run.id) if context and context.flow_run else "local"
    labeler = resolve_labeler(classes, labeler)

    # The labeler is loaded here only for its config and classes; with a thread pool the batches reuse this
    # very instance (per-process cache), with Dask each worker process loads its own.
    lab = load_labeler(labeler, device="cpu" if options.uses_dask else None)
    round_ = labeler_round(lab, labeler.labeler)
    lab_config = lab.config()  # a student's hashes its text embeddings: once
    config_hash = labeling_config_hash(lab_config, filters, max_pixels=options.max_pixels)
    categories = labeler_categories(lab)
    class_names = tuple(name for name, _ in categories)
    logger.info(
        "labeler %s, %d classes, config hash %s, run %s", labeler.labeler, len(class_names), config_hash, run_id
    )

    storage_task = {"retries": options.retries, "delay_s": options.retry_delay_seconds}
    ids = with_retries(ensure_categories, **storage_task)(output, options.output_storage_options, categories)
    record = labeling_record(config_hash, labeler, lab_config, filters, categories, max_pixels=options.max_pixels)
    with_retries(write_labeling_record, **storage_task)(output, options.output_storage_options, record)
    plan = LabelingPlan(
        run_id=run_id,
        config_hash=config_hash,
        class_names=class_names,
        category_ids=tuple(ids[name] for name in class_names),
        filters=filters,
        labeler_kind=labeler.labeler,
        round=round_,
        max_pixels=options.max_pixels,
    )
    known = None
    if not force:
        known = with_retries(load_known_sources, **storage_task)(output, options.output_storage_options, config_hash)
    setup = BatchSetup(
        labeler=labeler,
        plan=plan,
        output=output,
        output_storage_options=options.output_storage_options,
        source_storage_options=options.source_storage_options,
        skip_known_content=not force,
    )
    batch_task = with_retries(label_batch, options.retries, options.retry_delay_seconds)

    summary = RunSummary(
        run_id=run_id,
        source=source,
        output=output,
        config_hash=config_hash,
        labeler=labeler.labeler,
        classes=class_names,
        started_at=started_at,
    )
    progress = ProgressArtifact()
    last_progress = [0.0]

    def report_progress(force_update: bool = False) -> None:
        now = time.monotonic()
        if not force_update and now - last_progress[0] < 1.0:
            return
        last_progress[0] = now
        submitted = max(summary.submitted_images, 1)
        percent = 100.0 * summary.processed_images / submitted
        if not summary.listing_complete:
            percent = min(percent, 99.0)
        listing = "" if summary.listing_complete else ", listing in progress"
        progress.update(
            percent,
            f"{summary.processed_images}/{summary.submitted_images} images in {summary.batches_done}/"
            f"{summary.batches_submitted} batches; {summary.labeled} labeled, {summary.skipped} skipped, "
            f"{summary.rejected} rejected, {summary.failed} failed{listing}",
        )

    in_flight: dict[PrefectFuture[Any], tuple[int, int, str]] = {}

    def collect_one() -> None:
        future = next(as_completed(list(in_flight)))
        index, size, first_uri = in_flight.pop(future)
        future.wait()
        outcome = None
        if future.state.is_completed():
            outcome = future.result()
            summary.add_batch(outcome)
        else:
            error = _error_of(future)
            logger.error("batch %d (%d images from %s) failed: %s", index, size, first_uri, error)
            summary.add_failed_batch(index, size, error, first_uri)
        _release(runner, future, outcome)
        report_progress()
        _notify("batch", summary)

    thumbnails_left = options.thumbnails
    limit = options.in_flight_limit()
    listing_error: BaseException | None = None
    _notify("start", summary)
    report_progress(force_update=True)
    with make_task_runner(options) as runner:

        def submit(items: list[SourceItem]) -> None:
            nonlocal thumbnails_left
            while len(in_flight) >= limit:
                collect_one()
            want = min(thumbnails_left, 2)
            thumbnails_left -= want
            index = summary.batches_submitted
            future = runner.submit(
                batch_task, parameters={"index": index, "items": items, "setup": setup, "thumbnails": want}
            )
            in_flight[future] = (index, len(items), items[0].uri)
            summary.batches_submitted += 1
            summary.submitted_images += len(items)

        try:
            pending: list[SourceItem] = []
            for f in iter_listing(source, options):
                summary.listed += 1
                if known is not None and source_digest(f.uri, f.version) in known:
                    summary.unchanged += 1
                    if summary.unchanged % 1000 == 0:
                        _notify("listing", summary)
                    continue
                pending.append(SourceItem(f.uri, f.version))
                if len(pending) >= options.batch_size:
                    submit(pending)
                    pending = []
            if pending:
                submit(pending)
            summary.listing_complete = True
            _notify("listed", summary)
        except Exception as e:  # finish what was submitted, report, then fail
            listing_error = e
            logger.error("listing %s failed: %s", source, e)
        while in_flight:
            collect_one()

    if summary.labeled or summary.rejected:
        try:
            with_retries(compact_index, **storage_task)(output, options.output_storage_options)
        except Exception as e:  # noqa: BLE001 - only the next run's index load is slower
            logger.warning("images index not compacted: %s", e)
    summary.finish()
    markdown = summary.markdown()
    try:
        summary.report_urls = with_retries(write_run_report, **storage_task)(
            output,
            options.output_storage_options,
            run_id,
            json.dumps(summary.to_dict(), indent=2),
            markdown,
        )
    except Exception as e:  # noqa: BLE001 - the labels are written; the report is a convenience
        logger.warning("run report could not be written: %s", e)
    report_progress(force_update=True)
    # The artifact shows the overlays inline: a browser cannot open the output's local paths or s3:// URLs.
    sources = thumbnail_sources(summary.thumbnails, options.output_storage_options)
    publish_summary(summary, summary.markdown(image_sources=sources))
    result = summary.to_dict()
    _notify("end", summary)
    logger.info(
        "%d images seen: %d labeled, %d skipped, %d rejected, %d failed (%d failed batches) in %.1f s",
        summary.listed,
        summary.labeled,
        summary.skipped,
        summary.rejected,
        summary.failed,
        summary.failed_batch_count,
        summary.elapsed_s or 0.0,
    )
    if listing_error is not None:
        raise listing_error
    if not summary.ok:
        raise LabelingIncomplete(
            f"{summary.failed_batch_count} of {summary.batches_submitted} batches failed "
            f"({summary.failed_batch_images} images; the next run picks them up): "
            + "; ".join(f"batch {b.index}: {b.error}" for b in summary.failed_batches[:3]),
            result,
        )
    return result
