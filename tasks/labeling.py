"""Prefect tasks around ``maskclip_core.labeling.write``: retries with exponential backoff, logging, artifacts.

Caching policy: no task here is cached (``cache_policy=NO_CACHE``) and none persists its result.

- ``label_batch`` writes part files: a cache hit would skip the writes (a relabel with ``force``, or a run
  whose earlier output was deleted, would silently write nothing), so it must run every time it is
  submitted. It is idempotent instead: its part names are deterministic per (flow run, batch), so a retry
  overwrites its own parts atomically.
- No task receives a model: batches receive a small :class:`LabelerSpec` and load the model through the
  per-process cache (``load_labeler`` / ``cached_labeler``), so a model never enters a parameter hash or a
  cache key, and each worker process loads it once.
- The other tasks read or write storage whose content changes between runs; caching them would be wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
from prefect.tasks import Task, exponential_backoff

from maskclip_core.dataset import labelings
from maskclip_core.dataset.digests import DigestSet
from maskclip_core.dataset.fs import atomic_write_bytes, join_url
from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.labeling.known_content import known_sha256_index
from maskclip_core.labeling.plan import LabelingPlan, SourceItem
from maskclip_core.labeling.registry import LabelerSpec, load_labeler
from maskclip_core.labeling.report import RunSummary
from maskclip_core.labeling.write import BatchOutcome, label_and_write_batch

DEFAULT_RETRIES = 3
DEFAULT_RETRY_DELAY_S = 2.0  # first retry; then 4, 8, ... (exponential backoff)

PROGRESS_ARTIFACT_KEY = "label-dataset-progress"
SUMMARY_ARTIFACT_KEY = "label-dataset-summary"
REPORT_ARTIFACT_KEY = "label-dataset-report"

T = TypeVar("T", bound=Task)


def with_retries(t: T, retries: int, delay_s: float) -> T:
    """``t`` retried ``retries`` times, waiting ``delay_s``, ``2 * delay_s``, ``4 * delay_s``... in between."""
    return t.with_options(retries=retries, retry_delay_seconds=exponential_backoff(delay_s) if retries else 0)


@dataclass(frozen=True)
class BatchSetup:
    """Run-wide settings every batch needs (a few KB, sent with each batch to threads or Dask workers)."""

    labeler: LabelerSpec
    plan: LabelingPlan
    output: str
    output_storage_options: Mapping[str, Any] = field(default_factory=dict)
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
        known = known_sha256_index(setup.output, setup.output_storage_options, plan.config_hash, plan.run_id)
    dataset = LabelDataset(setup.output, setup.output_storage_options)
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
    output: str, storage_options: Mapping[str, Any], classes: Sequence[tuple[str, Sequence[str]]]
) -> dict[str, int]:
    """Category ids of the labeler's classes, registered once in the parent before fanning out."""
    return LabelDataset(output, storage_options).ensure_categories(list(classes))


@task(name="write-labeling-record", cache_policy=NO_CACHE, persist_result=False)
def write_labeling_record(output: str, storage_options: Mapping[str, Any], record: Mapping[str, Any]) -> str:
    """``labelings/<config hash>.json``: which labeler, filter and classes the config hash stands for."""
    return labelings.write_labeling_record(output, record, storage_options)


@task(name="load-known-sources", cache_policy=NO_CACHE, persist_result=False)
def load_known_sources(output: str, storage_options: Mapping[str, Any], config_hash: str) -> DigestSet:
    """(uri, source_version) digests already done under the config: files to skip without reading them."""
    known = LabelDataset(output, storage_options).known_sources(config_hash)
    get_run_logger().info(
        "%d files already done under config %s (%d KB index)", len(known), config_hash, known.nbytes // 1024
    )
    return known


@task(name="compact-index", cache_policy=NO_CACHE, persist_result=False)
def compact_index(output: str, storage_options: Mapping[str, Any]) -> dict[str, int]:
    """Merge the run's many small images parts so the next run's index load reads few files."""
    counts = LabelDataset(output, storage_options).compact_images()
    if counts["merged_parts"]:
        get_run_logger().info("merged %(merged_parts)d images parts into %(written_parts)d", counts)
    return counts


@task(name="write-run-report", cache_policy=NO_CACHE, persist_result=False)
def write_run_report(
    output: str, storage_options: Mapping[str, Any], run_id: str, summary_json: str, markdown: str
) -> dict[str, str]:
    """``reports/<run id>.json`` and ``.md`` next to the dataset."""
    urls = {
        "json": join_url(output, "reports", f"{run_id}.json"),
        "markdown": join_url(output, "reports", f"{run_id}.md"),
    }
    atomic_write_bytes(urls["json"], summary_json.encode("utf-8"), storage_options)
    atomic_write_bytes(urls["markdown"], markdown.encode("utf-8"), storage_options)
    return urls


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


def publish_summary(summary: RunSummary, markdown: str | None = None) -> None:
    """The end-of-run table artifact and markdown report."""
    logger = get_run_logger()
    status = "completed" if summary.ok else f"{summary.failed_batch_count} batch(es) failed"
    try:
        create_table_artifact(
            table=summary.table_rows(),
            key=SUMMARY_ARTIFACT_KEY,
            description=f"Labeling of {summary.source} -> {summary.output}: {status}",
        )
        create_markdown_artifact(
            markdown or summary.markdown(), key=REPORT_ARTIFACT_KEY, description="Labeling run report"
        )
    except Exception as e:  # noqa: BLE001 - the run's data is written already
        logger.warning("summary artifacts could not be created: %s", e)
