"""The ``label-dataset`` flow: label every new image under a source URL into the Parquet dataset at a URL.

Orchestration only. The work is in ``maskclip_core.labeling`` (planning, one batch, the summary) and
``tasks.labeling`` (the Prefect tasks, run setup, report and progress publishing). One run:

0. takes the dataset's lease (one writing run at a time; it expires if the run is killed) for the whole run;
1. loads the labeler once for its config, hashes it with the filter into the config hash that defines
   "already labeled", refuses a damaged dataset (one line naming ``maskclip dataset check --repair``),
   registers the categories, writes ``labelings/<config hash>.json`` and reads the compact index of
   (uri, source_version) pairs already done (``tasks.labeling_run.start_run``);
2. streams the listing, skipping known files without reading them, into numbered batches
   (``maskclip_core.labeling.planning``);
3. labels the batches in ``label-chunk`` sub-runs of ``options.chunk_batches`` batches each, with a bounded
   number in flight (``flows.submission``). Prefect keeps some bookkeeping per task run (result links in the
   run context, a cancel event per submission in the task runner) until the run that ran it ends; a sub-run per
   chunk ends it every chunk, so memory stays flat however many images, on Prefect's public API alone;
4. after a complete listing, marks the files the dataset shows but the source no longer holds ``gone``; writes
   the report next to the dataset and publishes the summary artifacts (``tasks.labeling_run.finish_run``).

Failed batches (storage errors that outlived their retries) do not stop the others; the run then ends Failed
with the failures in its summary, and the next run picks their images up (nothing of them was committed).
A listing that fails stops the planning; the batches already planned still run, then the run fails with it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.submission import submit_bounded
from maskclip_core.labeling.filter import FilterConfig
from maskclip_core.labeling.planning import BatchPlanner, chunked
from maskclip_core.labeling.registry import LabelerParameters, resolve_labeler
from maskclip_core.labeling.report import RunSummary
from maskclip_core.labeling.run_records import BatchOutcome, FailedBatch, PlannedBatch
from maskclip_core.storage.fs import SourceFile, iter_source_files
from tasks.labeling import BatchSetup, label_batch, with_retries
from tasks.labeling_artifacts import ProgressListener, RunProgress
from tasks.labeling_parameters import LabelingRunParameters
from tasks.labeling_run import batch_done, dataset_lease, finish_run, start_run

__all__ = ["LabelingIncomplete", "LabelingRunParameters", "label_dataset", "progress_listener"]


class LabelingIncomplete(RuntimeError):
    """Some batches failed after their retries; the others were written. ``summary`` says which."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message, summary)
        self.summary = summary

    def __str__(self) -> str:
        return str(self.args[0])


class ChunkIncomplete(RuntimeError):
    """Raised by a ``label-chunk`` sub-run with failed batches (so it ends Failed); the parent has counted them."""


# The CLI's progress bar: set for the calling context only (runs of other threads or callers do not see it).
_PROGRESS_LISTENER: ContextVar[ProgressListener | None] = ContextVar("label_dataset_progress", default=None)


@contextlib.contextmanager
def progress_listener(listener: ProgressListener) -> Iterator[None]:
    """Call ``listener(event, summary)`` during runs started in this context; events: ``start``, ``listing``,
    ``batch``, ``end``."""
    token = _PROGRESS_LISTENER.set(listener)
    try:
        yield
    finally:
        _PROGRESS_LISTENER.reset(token)


# --- the flow ------------------------------------------------------------------------------------------------


@flow(
    name="label-dataset",
    description="MaskCLIP pseudo-labels for every new image under a source URL, into a Parquet dataset.",
    validate_parameters=True,
)
def label_dataset(
    source: str,
    dataset: str,
    classes: str | None = None,
    labeler: LabelerParameters | None = None,
    filters: FilterConfig = FilterConfig(),  # noqa: B008 - pydantic defaults show in the deployment form
    options: LabelingRunParameters = LabelingRunParameters(),  # noqa: B008
    force: bool = False,
) -> dict[str, Any]:
    """Label the images under ``source`` into the dataset at ``dataset``; returns the run summary.

    Args:
        source: fsspec URL of the images: a local folder, ``s3://bucket/prefix``, ``memory://...``.
        dataset: fsspec URL of the Parquet dataset (images / annotations / categories).
        classes: the classes to label, comma separated, synonyms after ';' ("car, road, grass; lawn");
            needed by the MaskCLIP teacher (the default labeler), left empty for a student (its checkpoint's).
        labeler: the MaskCLIP teacher's ``config`` (model, weights, inference; default ViT-B-16, OpenAI
            weights; the classes are ``classes``), or a student ``checkpoint``.
        filters: confidence-filter thresholds, with per-class overrides.
        options: listing filters, batch size, parallelism (thread pool or Dask), retries, thumbnails.
        force: relabel images already labeled under the same configuration.
    """
    labeler = resolve_labeler(classes, labeler)
    run_id = flow_run.get_id() or "local"
    with dataset_lease(dataset, options, run_id):  # one writing run at a time
        run = start_run(run_id, source, dataset, labeler, filters, options, force)
        summary = run.summary
        progress = RunProgress(summary, _PROGRESS_LISTENER.get())
        progress.publish("start")
        listing = run.source_listing.record(iter_listing(source, options))
        planner = BatchPlanner(listing, run.known, options.batch_size, options.thumbnails, summary, progress.listing)
        error: Exception | None = None
        try:
            with dask_scheduler(options) as address:
                for chunk in chunked(planner, options.chunk_batches):
                    for done in run_chunk(chunk, run.setup, options, address):
                        summary.add(done)
                        progress.publish("batch")
        except Exception as e:  # the report must say that the run failed, and why; then the run fails with it
            error = e
            summary.stop(f"{type(e).__name__}: {e}")
        finish_run(run)
        progress.publish("end")
    raise_if_incomplete(summary, error or planner.listing_error)
    return summary.to_dict()


@flow(name="label-chunk", validate_parameters=False)  # parameters come from label-dataset, already validated
def label_chunk(
    batches: list[PlannedBatch], setup: BatchSetup, max_in_flight: int, retries: int, retry_delay_seconds: float
) -> Iterator[BatchOutcome | FailedBatch]:
    """Label consecutive batches with at most ``max_in_flight`` running, yielding each as it finishes.

    Ends Failed (``ChunkIncomplete``) when a batch failed after its retries; the other batches are written.
    """
    batch_task = with_retries(label_batch, retries, retry_delay_seconds)
    failed = 0
    for batch, future in submit_bounded(
        batches, lambda b: batch_task.submit(b.index, b.items, setup, b.thumbnails), max_in_flight
    ):
        done = batch_done(batch, future)
        failed += isinstance(done, FailedBatch)
        yield done
    if failed:
        raise ChunkIncomplete(f"{failed} of {len(batches)} batches failed")


# --- helpers -------------------------------------------------------------------------------------------------


def run_chunk(
    chunk: list[PlannedBatch], setup: BatchSetup, options: LabelingRunParameters, scheduler_address: str | None
) -> Iterator[BatchOutcome | FailedBatch]:
    """One ``label-chunk`` sub-run over ``chunk`` on a fresh task runner; failed batches come out like the others."""
    sub_run = label_chunk.with_options(
        flow_run_name=f"label-chunk-{chunk[0].index}-{chunk[-1].index}",
        task_runner=make_task_runner(options, scheduler_address),
    )
    with contextlib.suppress(ChunkIncomplete):  # the sub-run ends Failed; its batches were yielded already
        yield from sub_run(chunk, setup, options.in_flight_limit(), options.retries, options.retry_delay_seconds)


def raise_if_incomplete(summary: RunSummary, error: Exception | None) -> None:
    """Raise what stopped the run, else ``LabelingIncomplete`` if batches failed (the run then ends Failed)."""
    if error is not None:
        raise error
    if not summary.ok:
        problems = [summary.error] if summary.error else []  # e.g. a listing taken for a vanished source
        if summary.failed_batch_count:
            problems.append(
                f"{summary.failed_batch_count} of {summary.batches_submitted} batches failed "
                f"({summary.failed_batch_images} images; the next run picks them up): "
                + "; ".join(f"batch {b.index}: {b.error}" for b in summary.failed_batches[:3])
            )
        raise LabelingIncomplete("; ".join(problems), summary.to_dict())


def local_cluster_kwargs(options: LabelingRunParameters) -> dict[str, Any]:
    return {
        "n_workers": options.workers,
        "processes": True,  # each worker process loads the model once (per-process cache)
        "threads_per_worker": 1,
        "host": "127.0.0.1",
        "dashboard_address": None,
    }


@contextlib.contextmanager
def dask_scheduler(options: LabelingRunParameters) -> Iterator[str | None]:
    """The Dask scheduler every chunk's runner connects to: a local cluster started here once for ``workers``
    (its processes keep their loaded model across chunks), ``dask_address``, or None for the thread pool."""
    if options.workers is None:
        yield options.dask_address
        return
    from distributed import LocalCluster

    with LocalCluster(**local_cluster_kwargs(options)) as cluster:
        yield cluster.scheduler_address


def make_task_runner(options: LabelingRunParameters, scheduler_address: str | None = None) -> TaskRunner:
    """The default thread pool, or Dask: the scheduler at ``scheduler_address`` / ``dask_address``, else a
    local cluster of ``workers`` processes."""
    if not options.uses_dask:
        return ThreadPoolTaskRunner(max_workers=options.concurrency)
    from prefect_dask import DaskTaskRunner

    address = scheduler_address or options.dask_address
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=local_cluster_kwargs(options))


def iter_listing(
    source: str, options: LabelingRunParameters, *, sleep: Callable[[float], None] = time.sleep
) -> Iterator[SourceFile]:
    """The source listing, restarted with exponential backoff when the storage fails mid-way.

    The listing order is deterministic, so a restart skips the files it already yielded (a file added or
    removed meanwhile can shift that: one file may then be submitted twice, which is harmless as ids are
    deterministic, or be left for the next run). A missing source is not retried. Hand-written on purpose: a
    Prefect task retry restarts from scratch and returns one value (the whole listing in memory), and tenacity
    (not a dependency) would only replace the three lines of backoff arithmetic.
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
