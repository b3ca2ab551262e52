"""Batch planning from a streamed listing, and the run summary's status and progress wording."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from maskclip_core.dataset.digests import DigestSet, source_digest
from maskclip_core.labeling.planning import BatchPlanner, chunked
from maskclip_core.labeling.report import RunSummary
from maskclip_core.labeling.run_records import BatchOutcome, BatchStats, FailedBatch, PlannedBatch, SourceItem
from maskclip_core.storage.fs import SourceFile


def summary() -> RunSummary:
    return RunSummary("r", "src", "ds", "cfg", "maskclip", ("a", "b"))


def listing(n: int, fail_after: int | None = None) -> Iterator[SourceFile]:
    for i in range(n):
        if i == fail_after:
            raise ConnectionError("listing interrupted")
        yield SourceFile(f"s3://b/{i:03d}.jpg", 100, f"etag:{i}")


def done_ok(batch: PlannedBatch) -> BatchOutcome:
    stats = BatchStats(seen=len(batch.items), labeled=len(batch.items))
    outcome = BatchOutcome(batch.index, f"p{batch.index}", stats, {}, [])
    return outcome


def test_known_files_are_skipped_and_the_rest_cut_into_numbered_batches() -> None:
    known = DigestSet.from_iterable(source_digest(f.uri, f.version) for f in listing(11) if int(f.uri[-7:-4]) % 3 == 0)
    s = summary()
    batches = list(BatchPlanner(listing(11), known, batch_size=3, thumbnails=5, summary=s))
    new = [f"s3://b/{i:03d}.jpg" for i in range(11) if i % 3]
    assert [b.index for b in batches] == [0, 1, 2]
    assert [item.uri for b in batches for item in b.items] == new
    assert [len(b.items) for b in batches] == [3, 3, 1]
    assert batches[0].items[0] == SourceItem("s3://b/001.jpg", "etag:1")
    assert [b.thumbnails for b in batches] == [2, 2, 1]  # spread over the first batches, 5 in all
    assert (s.listed, s.unchanged, s.submitted_images, s.batches_submitted) == (11, 4, 7, 3)
    assert s.listing_complete and s.error is None


def test_a_failed_listing_ends_the_plan_keeps_its_batches_and_says_why() -> None:
    s = summary()
    planner = BatchPlanner(listing(10, fail_after=7), None, batch_size=3, thumbnails=0, summary=s)
    batches = list(planner)  # does not raise: the planned batches still run
    assert [len(b.items) for b in batches] == [3, 3, 1]
    assert isinstance(planner.listing_error, ConnectionError)
    assert not s.listing_complete and "listing stopped after 7 files: ConnectionError" in (s.error or "")


def test_listing_progress_callback() -> None:
    calls: list[int] = []
    s = summary()
    list(BatchPlanner(listing(2500), None, 16, 0, s, on_listed=lambda: calls.append(s.listed)))
    assert calls == [1000, 2000]


def test_chunked_groups_lazily() -> None:
    pulled: list[int] = []

    def numbers() -> Iterator[int]:
        for i in range(7):
            pulled.append(i)
            yield i

    chunks = chunked(numbers(), 3)
    assert next(chunks) == [0, 1, 2] and pulled == [0, 1, 2]
    assert list(chunks) == [[3, 4, 5], [6]]
    with pytest.raises(ValueError):
        next(chunked([1], 0))


# --- status and progress: what the report and the progress artifact say ------------------------------------


def test_completed_run_progress_is_100_and_says_completed() -> None:
    s = summary()
    batches = list(BatchPlanner(listing(5), None, 2, 0, s))
    assert s.status == "running" and s.progress_percent() == 0.0 and s.progress_text().startswith("listing complete")
    s.add(done_ok(batches[0]))
    assert s.progress_percent() == pytest.approx(40.0)
    for b in batches[1:]:
        s.add(done_ok(b))
    s.finish()
    assert s.ok and s.status == "completed" and s.progress_percent() == 100.0
    assert s.progress_text().startswith("completed: 5/5 images in 3/3 batches")
    assert "# Labeling run `r`: completed" in s.markdown() and s.to_dict()["status"] == "completed"


def test_a_run_with_nothing_new_ends_at_100_percent_saying_so() -> None:
    known = DigestSet.from_iterable(source_digest(f.uri, f.version) for f in listing(4))
    s = summary()
    assert list(BatchPlanner(listing(4), known, 2, 0, s)) == []
    assert s.progress_percent() == 0.0  # running: nothing submitted yet
    s.finish()
    assert s.progress_percent() == 100.0
    assert s.progress_text() == "completed: nothing new (4 images seen, 4 already labeled)"


def test_progress_is_capped_below_100_while_the_listing_runs() -> None:
    s = summary()
    planner = iter(BatchPlanner(listing(10), None, 2, 0, s))
    first = next(planner)
    s.add(done_ok(first))  # everything submitted so far is done, but the listing goes on
    assert s.progress_percent() == 99.0 and s.progress_text().startswith("listing: 2/2 images")


def test_a_failed_listing_is_not_reported_as_completed() -> None:
    s = summary()
    for b in BatchPlanner(listing(10, fail_after=4), None, 2, 0, s):
        s.add(done_ok(b))
    s.finish()
    assert not s.ok and s.status.startswith("FAILED: listing stopped after 4 files")
    md = s.markdown()
    assert "completed" not in md and "**FAILED: listing stopped after 4 files: ConnectionError" in md
    assert s.headline() == f"Labeling of src -> ds: {s.status}"
    assert s.progress_text().startswith("FAILED: listing stopped") and s.to_dict()["ok"] is False


def test_failed_batches_and_an_early_stop_both_show() -> None:
    s = summary()
    s.batches_submitted, s.submitted_images = 2, 4
    s.add(FailedBatch(0, 2, "OSError: 503", "s3://b/0.jpg"))
    s.stop("KeyboardInterrupt")
    s.finish()
    assert s.status == "FAILED: KeyboardInterrupt; 1 batch(es) failed"
    assert s.failed_batches[0].error == "OSError: 503" and s.failed == 2
