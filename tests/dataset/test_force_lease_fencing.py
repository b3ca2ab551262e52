"""``--force-lease`` stops the run it displaces: every batch checks the lease's newest generation (the fencing
token) before it labels and before it writes, so the displaced run writes nothing after its next check."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from support.cli_runner import run_cli
from test_label_cli_source_edits import CLI_MODEL, png

from maskclip_core.dataset.lease import LeaseLost, acquire_lease
from maskclip_core.labeling import write

pytestmark = pytest.mark.usefixtures("prefect_harness")


def images_parts(out: Path) -> list[Path]:
    return sorted((out / "images").glob("part-*.parquet")) if (out / "images").exists() else []


def test_a_run_displaced_by_force_lease_stops_writing(tmp_path, capsys, monkeypatch) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for i in range(8):
        (src / f"{i}.png").write_bytes(png(16, 16, i))
    labeled = write.process_batch

    def slow_batch(*args, **kwargs):  # batches that take a while, so the takeover lands mid-run
        time.sleep(0.4)
        return labeled(*args, **kwargs)

    monkeypatch.setattr(write, "process_batch", slow_batch)
    taken: dict[str, object] = {}

    def take_over() -> None:  # what `maskclip label --force-lease` (or `dataset check --repair`) does first
        deadline = time.monotonic() + 120
        while not images_parts(out) and time.monotonic() < deadline:
            time.sleep(0.05)
        taken["lease"] = acquire_lease(str(out), owner="admin", force=True)
        taken["parts"] = len(images_parts(out))

    thief = threading.Thread(target=take_over, daemon=True)
    thief.start()
    code, _, err = run_cli(capsys, "label", "--source", str(src), "--dataset", str(out), *CLI_MODEL,
                           "--batch-size", "1", "--concurrency", "1")  # fmt: skip
    thief.join(timeout=120)
    taken["lease"].release()  # type: ignore[attr-defined]
    assert code == 1 and "lost the lease" in " ".join(err.split())
    # At most the one batch past its check when the lease changed hands commits (before: all 8 batches).
    assert 1 <= len(images_parts(out)) <= int(taken["parts"]) + 1 < 8  # type: ignore[call-overload]


def test_a_displaced_writer_is_refused_before_it_writes(tmp_path: Path) -> None:
    from maskclip_core.dataset.label_dataset import LabelDataset
    from maskclip_core.labeling.batch import BatchResult, BatchStats

    out = str(tmp_path / "out")
    mine = acquire_lease(out, owner="run-a")
    with acquire_lease(out, owner="admin", force=True):
        with pytest.raises(LeaseLost, match="run run-a lost the lease .* to run admin"):
            write.write_batch_result(LabelDataset(out), BatchResult([], [], BatchStats()), "run-a-b000000", "run-a")
    mine.release()
    assert sorted(p.name for p in Path(out).iterdir()) == ["_lease"]
