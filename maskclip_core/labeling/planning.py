"""From a streamed listing to numbered batches of new files (:class:`BatchPlanner`).

Pure Python (no Prefect, no model), so the run's arithmetic is tested on its own: which files are skipped
without being read, how files are cut into batches, which batches write thumbnails, how batches are grouped.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from maskclip_core.dataset.digests import DigestSet, source_digest
from maskclip_core.labeling.run_records import PlannedBatch, SourceItem
from maskclip_core.storage.fs import SourceFile

if TYPE_CHECKING:  # report.py imports this module
    from maskclip_core.labeling.report import RunSummary

THUMBNAILS_PER_BATCH = 2  # spread the run's thumbnails over its first batches
LISTING_PROGRESS_EVERY = 1000  # files listed between two ``on_listed`` calls


class BatchPlanner:
    """Batches of the listed files not in ``known`` (done under the config), counted in ``summary`` as they go.

    Lazy: a batch is cut as soon as it is full, so the listing is never held in memory. A listing that fails
    (after its own retries) ends the plan instead of raising: the batches planned so far still run, the
    summary says the run stopped early, and ``listing_error`` keeps the exception for the caller to raise.
    """

    def __init__(
        self,
        listing: Iterable[SourceFile],
        known: DigestSet | None,
        batch_size: int,
        thumbnails: int,
        summary: RunSummary,
        on_listed: Callable[[], None] | None = None,
    ) -> None:
        self.listing = listing
        self.on_listed = on_listed
        self.known = known
        self.batch_size = batch_size
        self.thumbnails_left = thumbnails
        self.summary = summary
        self.listing_error: Exception | None = None

    def __iter__(self) -> Iterator[PlannedBatch]:
        pending: list[SourceItem] = []
        try:
            for f in self.listing:
                self.summary.listed += 1
                if self.on_listed is not None and self.summary.listed % LISTING_PROGRESS_EVERY == 0:
                    self.on_listed()
                if self.known is not None and source_digest(f.uri, f.version) in self.known:
                    self.summary.unchanged += 1
                    continue
                pending.append(SourceItem(f.uri, f.version))
                if len(pending) >= self.batch_size:
                    yield self._cut(pending)
                    pending = []
        except Exception as e:  # noqa: BLE001 - see the class docstring
            self.listing_error = e
            self.summary.stop(f"listing stopped after {self.summary.listed} files: {type(e).__name__}: {e}")
        last = self._cut(pending) if pending else None
        self.summary.listing_complete = self.listing_error is None  # before the last batch runs: totals are final
        if last is not None:
            yield last

    def _cut(self, items: list[SourceItem]) -> PlannedBatch:
        want = min(self.thumbnails_left, THUMBNAILS_PER_BATCH)
        self.thumbnails_left -= want
        batch = PlannedBatch(self.summary.batches_submitted, tuple(items), want)
        self.summary.batches_submitted += 1
        self.summary.submitted_images += len(items)
        return batch


def chunked(batches: Iterable[PlannedBatch], size: int) -> Iterator[list[PlannedBatch]]:
    """Consecutive groups of ``size`` batches (the last may be shorter); pulls one group at a time."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    iterator = iter(batches)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
