"""The label-dataset run's bookkeeping, state and progress: memory that does not grow with the image count on
Prefect's public API, a failed run that says so, progress that ends at 100 %."""

from __future__ import annotations

import gc
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from support.block_photos import write_block_photos
from support.tiny_labeler import KEEP_ALL, TINY_SPEC

import flows.label_dataset as flow_module
from flows.label_dataset import LabelingIncomplete, LabelingRunParameters, label_dataset, progress_listener
from maskclip_core.dataset.label_dataset import LabelDataset

pytestmark = pytest.mark.usefixtures("prefect_harness")

ONE_PER_BATCH = LabelingRunParameters(batch_size=1, retries=0, thumbnails=0, concurrency=2)


def prefect_objects_alive() -> dict[str, int]:
    """Prefect's per-task bookkeeping objects alive now: states, futures, cancel events, result links."""
    from prefect.client.schemas.objects import State
    from prefect.context import FlowRunContext
    from prefect.futures import PrefectFuture

    gc.collect()
    counts = {"states": 0, "futures": 0, "events": 0}
    for obj in gc.get_objects():
        if isinstance(obj, State):
            counts["states"] += 1
        elif isinstance(obj, PrefectFuture):
            counts["futures"] += 1
        elif isinstance(obj, threading.Event):
            counts["events"] += 1
    context = FlowRunContext.get()
    counts["result_links"] = len(context.run_results) if context else 0
    return counts


def retained_after_run(tmp_path: Path, n_images: int, chunk_batches: int) -> dict[str, int]:
    """Label ``n_images`` (one batch each); the most of Prefect's objects alive at any finished batch.

    Counted in the progress listener, which runs in the flow as each batch finishes (inside its chunk's run).
    """
    src = tmp_path / f"src-{n_images}-{uuid.uuid4().hex[:6]}"
    write_block_photos(src, n_images)
    peak: dict[str, int] = {}

    def on_event(event: str, summary: Any) -> None:
        if event == "batch":
            for key, value in prefect_objects_alive().items():
                peak[key] = max(peak.get(key, 0), value)

    options = ONE_PER_BATCH.model_copy(update={"chunk_batches": chunk_batches})
    with progress_listener(on_event):
        summary = label_dataset(
            str(src), str(tmp_path / f"ds-{src.name}"), labeler=TINY_SPEC, filters=KEEP_ALL, options=options
        )
    assert summary["labeled"] == n_images and peak
    return peak


def test_prefect_bookkeeping_does_not_grow_with_the_images(tmp_path: Path) -> None:
    """4x the images (and batches, and chunks) keep no more of Prefect's per-task objects alive at any time.

    The control run puts every batch in one chunk: there the same count grows with the batches, which shows
    that the measure sees Prefect's bookkeeping (this test fails if the chunk sub-runs stop releasing it).
    """
    n, chunk = 4, 2
    retained_after_run(tmp_path, n, chunk)  # warm-up: caches, the model, first-use imports
    small = retained_after_run(tmp_path, n, chunk)
    large = retained_after_run(tmp_path, 4 * n, chunk)
    extra_batches = 3 * n
    growth = {k: large[k] - small[k] for k in small}
    # a stray object of another thread (a logging or events worker) may come and go; per-batch growth may not
    assert all(g < extra_batches / 4 for g in growth.values()), (small, large)

    one_chunk = retained_after_run(tmp_path, 4 * n, chunk_batches=10_000)
    control = {k: one_chunk[k] - small[k] for k in small}
    assert control["result_links"] >= extra_batches and control["events"] >= extra_batches, (small, one_chunk)


def test_failed_listing_fails_the_run_and_its_report_and_progress_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    write_block_photos(src, 5, seed=1)
    real = flow_module.iter_source_files

    def listing_that_breaks(url: str, **kwargs: Any):
        for i, f in enumerate(real(url, **kwargs)):
            if i == 3:
                raise PermissionError("simulated: access denied half-way")
            yield f

    monkeypatch.setattr(flow_module, "iter_source_files", listing_that_breaks)
    events: list[tuple[str, str, float]] = []
    out = str(tmp_path / "ds")
    options = ONE_PER_BATCH.model_copy(update={"retries": 1, "retry_delay_seconds": 0.01})
    with progress_listener(lambda e, s: events.append((e, s.status, s.progress_percent()))):
        state = label_dataset(str(src), out, labeler=TINY_SPEC, filters=KEEP_ALL, options=options, return_state=True)
    assert state.is_failed()
    with pytest.raises(PermissionError, match="half-way"):
        state.result()
    assert LabelDataset(out).images().num_rows == 3  # what was listed before the error is labeled
    report = next((Path(out) / "reports").glob("*.md")).read_text()
    assert "completed" not in report and "FAILED: listing stopped after 3 files: PermissionError" in report
    assert events[-1][0] == "end" and events[-1][1].startswith("FAILED") and events[-1][2] == 100.0
    artifacts = run_artifacts(str(state.state_details.flow_run_id))
    assert artifacts["label-dataset-progress"].data == 100.0
    assert artifacts["label-dataset-progress"].description.startswith("FAILED: listing stopped")
    assert "FAILED" in artifacts["label-dataset-summary"].description
    assert "completed" not in artifacts["label-dataset-report"].data


def test_a_run_with_nothing_new_ends_at_100_percent_saying_nothing_new(tmp_path: Path) -> None:
    src, out = tmp_path / "src", str(tmp_path / "ds")
    write_block_photos(src, 3, seed=2)
    label_dataset(str(src), out, labeler=TINY_SPEC, filters=KEEP_ALL, options=ONE_PER_BATCH)
    state = label_dataset(str(src), out, labeler=TINY_SPEC, filters=KEEP_ALL, options=ONE_PER_BATCH, return_state=True)
    assert state.is_completed() and state.result()["skipped"] == 3
    progress = run_artifacts(str(state.state_details.flow_run_id))["label-dataset-progress"]
    assert progress.data == 100.0
    assert progress.description == "completed: nothing new (3 images seen, 3 already labeled)"


def run_artifacts(run_id: str) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(run_id)]))
        )
    return {a.key: a for a in artifacts}


def listing_then_vanish(monkeypatch: pytest.MonkeyPatch, keep: int) -> None:
    """The source lists completely, then loses all but ``keep`` files before any batch reads them."""
    real = flow_module.iter_source_files

    def listing(url: str, **kwargs: Any):
        files = list(real(url, **kwargs))
        for f in files[keep:]:
            Path(f.uri.removeprefix("file://")).unlink(missing_ok=True)
        yield from files

    monkeypatch.setattr(flow_module, "iter_source_files", listing)


def label_vanishing_source(
    src: Path, out: str, monkeypatch: pytest.MonkeyPatch, keep: int, options: LabelingRunParameters = ONE_PER_BATCH
) -> Any:
    """The final state of a run over ``src`` whose files but ``keep`` vanish after the listing."""
    listing_then_vanish(monkeypatch, keep)
    return label_dataset(str(src), out, labeler=TINY_SPEC, filters=KEEP_ALL, options=options, return_state=True)


def test_a_source_that_vanished_mid_run_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Most listed images missing when read: the run ends Failed with an error-level line, not green."""
    src, out = tmp_path / "src", str(tmp_path / "ds")
    write_block_photos(src, 6, seed=3)
    with caplog.at_level(logging.WARNING):
        state = label_vanishing_source(src, out, monkeypatch, keep=1)
    assert state.is_failed()
    with pytest.raises(LabelingIncomplete, match=r"5 of 6 images failed \(missing: 5\).*max_failed_fraction=0.5"):
        state.result()
    assert any(r.levelno == logging.ERROR and "5 of 6 images failed" in r.getMessage() for r in caplog.records)
    report = next((Path(out) / "reports").glob("*.md")).read_text()
    assert "FAILED: 5 of 6 images failed" in report
    assert LabelDataset(out).images().num_rows == 6  # the one labeled image and five failed rows (retried next run)


def test_a_few_failed_images_under_the_threshold_warn_and_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    src, out = tmp_path / "src", str(tmp_path / "ds")
    write_block_photos(src, 4, seed=4)
    with caplog.at_level(logging.WARNING):
        state = label_vanishing_source(src, out, monkeypatch, keep=3)
    assert state.is_completed() and state.result()["failed"] == 1
    warned = [r for r in caplog.records if "1 of 4 images failed (missing: 1)" in r.getMessage()]
    assert warned and warned[0].levelno == logging.WARNING
    # the threshold is the user's: 1 accepts any share of failed images
    write_block_photos(src, 4, seed=5)
    options = ONE_PER_BATCH.model_copy(update={"max_failed_fraction": 1.0})
    assert label_vanishing_source(src, out, monkeypatch, keep=0, options=options).is_completed()


def test_a_held_lease_names_the_deployment_parameters_in_a_deployment_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI's user sets --lease-wait / --force-lease; a deployment's user sets options.lease_wait_s / force_lease."""
    import prefect.runtime.deployment as runtime_deployment

    from maskclip_core.dataset.lease import acquire_lease

    src, out = tmp_path / "src", str(tmp_path / "ds")
    write_block_photos(src, 1, seed=6)
    holder = acquire_lease(out, {}, owner="another-run", ttl_s=600, wait_s=0)

    def refusal() -> str:
        state = label_dataset(
            str(src), out, labeler=TINY_SPEC, filters=KEEP_ALL, options=ONE_PER_BATCH, return_state=True
        )
        assert state.is_failed()
        return str(state.result(raise_on_failure=False))

    try:
        assert "--force-lease" in refusal()  # a direct call: the command's wording
        monkeypatch.setattr(runtime_deployment, "get_id", lambda: "a-deployment-id")
        message = refusal()
    finally:
        holder.release()
    assert "in use by run another-run" in message
    assert "options.lease_wait_s" in message and "options.force_lease" in message
    assert "--force-lease" not in message and "--lease-wait" not in message
