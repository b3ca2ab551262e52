"""A labeled batch into the dataset: thumbnails, then its part files under a deterministic name."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from maskclip_core.dataset.digests import DigestSet, sha256_digest
from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.lease import check_holder
from maskclip_core.labeling.batch import BatchResult, label_lock, process_batch
from maskclip_core.labeling.config_hash import batch_part_name
from maskclip_core.labeling.run_records import BatchOutcome, LabelingPlan, SourceItem
from maskclip_core.storage.fs import atomic_write_bytes, join_url, read_bytes
from maskclip_core.types import Labeler


def write_batch_result(
    dataset: LabelDataset, result: BatchResult, part: str, run_id: str | None = None
) -> dict[str, Any]:
    """Thumbnails first, then the annotations part and last the images part (the commit record).

    Every name is deterministic, so writing the same batch again replaces the same files. With ``run_id``, a run
    that lost the dataset's lease (``--force-lease``) writes nothing (``lease.LeaseLost``).
    """
    if run_id is not None:
        check_holder(dataset.url, dataset.storage_options, run_id)
    thumbnail_urls = []
    for thumb in result.thumbnails:
        url = join_url(dataset.url, thumb.path)
        atomic_write_bytes(url, thumb.data, dataset.storage_options)
        thumbnail_urls.append(url)
    written = dataset.write_batch(result.images_rows, result.annotation_rows, part_name=part)
    return {**written, "thumbnails": thumbnail_urls}


def label_and_write_batch(
    index: int,
    items: Sequence[SourceItem],
    labeler: Labeler,
    plan: LabelingPlan,
    dataset: LabelDataset,
    *,
    source_storage_options: Mapping[str, Any] | None = None,
    known: DigestSet | None = None,
    thumbnails: int = 0,
) -> BatchOutcome:
    """:func:`process_batch` then :func:`write_batch_result` under the batch's deterministic part name.

    Known content at a new uri (a renamed or copied file) shares the dataset's current labeling of it."""
    options = dict(source_storage_options or {})
    check_holder(dataset.url, dataset.storage_options, plan.run_id)  # a displaced run labels nothing more

    def read(uri: str) -> bytes:
        return read_bytes(uri, options)

    is_known = None if known is None else (lambda sha: sha256_digest(sha) in known)

    def reuse(sha256s: Collection[str]) -> Mapping[str, Mapping[str, Any]]:
        return dataset.content_labelings(plan.config_hash, sha256s)

    result = process_batch(
        items,
        labeler,
        plan,
        read=read,
        is_known=is_known,
        reuse=reuse,
        thumbnails=thumbnails,
        lock=label_lock(labeler),
    )
    t0 = time.perf_counter()
    part = batch_part_name(plan.run_id, index)
    written = write_batch_result(dataset, result, part, plan.run_id)
    result.stats.seconds["write"] += time.perf_counter() - t0
    thumbs = [{"url": url, "uri": t.uri} for url, t in zip(written["thumbnails"], result.thumbnails, strict=True)]
    return BatchOutcome(index=index, part=part, stats=result.stats, written=written, thumbnails=thumbs)
