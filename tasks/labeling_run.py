"""One labeling run's life around its batches: prepare (labeler, categories, labeling record, known files), turn
finished batch tasks into records, finish (gone files, compaction, report, artifacts); and the dataset's lease."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger
from prefect.futures import PrefectFuture
from prefect.runtime import deployment

from maskclip_core.dataset.digests import DigestSet
from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.labelings import labeling_record
from maskclip_core.dataset.lease import Lease, LeaseHeld, acquire_lease
from maskclip_core.dataset.source_sync import ListedUris, SourceVanished
from maskclip_core.labeling.config_hash import labeling_config_hash, recorded_precision
from maskclip_core.labeling.filter import FilterConfig
from maskclip_core.labeling.registry import LabelerParameters, labeler_categories, labeler_round, load_labeler
from maskclip_core.labeling.report import RunSummary
from maskclip_core.labeling.run_records import BatchOutcome, FailedBatch, LabelingPlan, PlannedBatch
from maskclip_core.storage.fs import SourceFile, require_source
from tasks.labeling import (
    BatchSetup,
    T,
    compact_index,
    ensure_categories,
    load_known_sources,
    load_labeling_records,
    mark_gone_files,
    verify_dataset,
    with_retries,
    write_labeling_record,
    write_run_report,
)
from tasks.labeling_artifacts import publish_summary
from tasks.labeling_parameters import LabelingRunParameters


@dataclass
class SourceListing:
    """What a run lists (the source and its filters) and the uris it listed: the dataset follows the source."""

    source: str
    extensions: Sequence[str] | None
    glob: str | None
    storage_options: Mapping[str, Any]
    max_gone_fraction: float = 1.0  # past it a listing is taken for a vanished source (source_sync)
    uris: ListedUris = field(default_factory=ListedUris)

    def record(self, files: Iterable[SourceFile]) -> Iterator[SourceFile]:
        """``files``, each uri noted on its way through (16 bytes per file)."""
        for f in files:
            self.uris.add(f.uri)
            yield f


# The lease's messages name the CLI's flags; a deployment's user sets these parameters instead.
DEPLOYMENT_PARAMETERS = {"--lease-wait SECONDS": "options.lease_wait_s", "--force-lease": "options.force_lease"}


def in_deployment_terms(message: str) -> str:
    """``message`` with the CLI's lease flags replaced by the deployment parameters that set the same."""
    for flag, parameter in DEPLOYMENT_PARAMETERS.items():
        message = message.replace(flag, parameter)
    return message


@contextlib.contextmanager
def dataset_lease(dataset: str, options: LabelingRunParameters, run_id: str) -> Iterator[Lease]:
    """The dataset's lease for this run (one writing run at a time; it expires if this process is killed),
    released when the run ends however it ends."""
    try:
        lease = acquire_lease(
            dataset,
            options.dataset_storage_options,
            owner=run_id,
            ttl_s=options.lease_ttl_s,
            wait_s=options.lease_wait_s,
            force=options.force_lease,
        )
    except LeaseHeld as e:
        if deployment.get_id() is None:
            raise  # the CLI (whose flags the message names) or a Python caller
        raise LeaseHeld(in_deployment_terms(str(e))) from None
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
    max_failed_fraction: float = 1.0  # past it the run fails (LabelingRunParameters.max_failed_fraction)

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

    def retried(t: T) -> T:
        return with_retries(t, options.retries, options.retry_delay_seconds)

    require_source(source, options.source_storage_options)  # a missing source: refused before anything is written
    storage = (dataset, options.dataset_storage_options)
    device = "cpu" if options.uses_dask else None
    default_precision = labeler.precision_is_default()
    labeler = labeler.with_device_precision()  # the batches' device, not this process's CPU copy, decides
    lab = load_labeler(labeler, device=device)
    config = lab.config()  # a student's hashes its text embeddings: once
    if default_precision:
        kept = recorded_precision(retried(load_labeling_records)(*storage), config)
        if kept is not None:  # a changed default never relabels a dataset: keep what its labelings used
            get_run_logger().info(
                "%s was labeled in %s with these settings: kept (set a precision to change)", dataset, kept
            )
            labeler = labeler.with_precision(kept)
            lab = load_labeler(labeler, device=device)
            config = lab.config()
    config_hash = labeling_config_hash(config, filters, max_pixels=options.max_pixels)
    categories = labeler_categories(lab)
    class_names = tuple(name for name, _ in categories)
    kind = labeler.labeler
    get_run_logger().info("labeler %s, %d classes, config hash %s, run %s", kind, len(class_names), config_hash, run_id)
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
    listing = SourceListing(
        source, options.extensions, options.glob, options.source_storage_options, options.max_gone_fraction
    )
    return LabelingRun(
        setup, known, summary, options.retries, options.retry_delay_seconds, listing, options.max_failed_fraction
    )


def check_failed_images(summary: RunSummary, max_failed_fraction: float) -> None:
    """Log failed images at warning level; past ``max_failed_fraction`` of the images tried, fail the run (a
    source that vanished mid-run leaves every image "missing": not a success for whoever alerts on states)."""
    note = summary.failed_images_note()
    if note is None:
        return
    logger = get_run_logger()
    if summary.failed_share() > max_failed_fraction:
        message = f"{note}: more than options.max_failed_fraction={max_failed_fraction:g} (is the source still there?)"
        logger.error("%s", message)
        summary.stop(message)
    else:
        logger.warning("%s; the next run retries them", note)


def batch_done(batch: PlannedBatch, future: PrefectFuture[BatchOutcome]) -> BatchOutcome | FailedBatch:
    """A finished batch task as a small record: its outcome, or its error (logged) when it failed."""
    size, first_uri = len(batch.items), batch.items[0].uri
    future.wait()
    if future.state.is_completed():
        return future.result()
    error = _error_of(future)
    get_run_logger().error("batch %d (%d images from %s) failed: %s", batch.index, size, first_uri, error)
    return FailedBatch(batch.index, size, error, first_uri)


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
                listing.max_gone_fraction,
            )
        except SourceVanished as e:  # the user's say-so is needed: the run fails, saying why
            logger.error("%s", e)
            summary.stop(str(e))
        except Exception as e:  # noqa: BLE001 - the labels are written; the next complete run marks them
            logger.warning("files that left %s could not be marked gone: %s", listing.source, e)
    check_failed_images(summary, run.max_failed_fraction)
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
