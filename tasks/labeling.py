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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import Task, exponential_backoff

from maskclip_core.dataset import labelings
from maskclip_core.dataset.digests import DigestSet
from maskclip_core.dataset.integrity import DatasetDamaged
from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.source_sync import SourceVanished, mark_gone
from maskclip_core.labeling.known_content import known_sha256_index
from maskclip_core.labeling.registry import LabelerParameters, load_labeler
from maskclip_core.labeling.run_records import BatchOutcome, LabelingPlan, SourceItem
from maskclip_core.labeling.write import label_and_write_batch
from maskclip_core.storage.fs import atomic_write_bytes, join_url

DEFAULT_RETRIES = 3
DEFAULT_RETRY_DELAY_S = 2.0  # first retry; then 4, 8, ... (exponential backoff)

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
    except (DatasetDamaged, SourceVanished):  # retrying cannot change the answer
        return False
    except Exception:  # noqa: BLE001 - anything else may be a storage hiccup
        return True
    return True


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
    max_gone_fraction: float = 1.0,
) -> list[str]:
    """``gone`` rows for the files the complete listing no longer shows (deleted, renamed away); refused
    (``SourceVanished``) when the listing misses more than ``max_gone_fraction`` of them."""
    gone = mark_gone(
        LabelDataset(dataset, storage_options),
        source,
        listed,
        run_id=run_id,
        extensions=extensions,
        glob=glob,
        source_storage_options=source_storage_options,
        max_gone_fraction=max_gone_fraction,
    )
    if gone:
        get_run_logger().info("%d files left %s since the last run: marked gone", len(gone), source)
    return gone


@task(name="write-labeling-record", cache_policy=NO_CACHE, persist_result=False)
def write_labeling_record(dataset: str, storage_options: Mapping[str, Any], record: Mapping[str, Any]) -> str:
    """``labelings/<config hash>.json``: which labeler, filter and classes the config hash stands for."""
    return labelings.write_labeling_record(dataset, record, storage_options)


@task(name="load-labeling-records", cache_policy=NO_CACHE, persist_result=False)
def load_labeling_records(dataset: str, storage_options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The dataset's labeling records: which labeler settings (and precision) its labelings used."""
    return labelings.read_labeling_records(dataset, storage_options)


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
