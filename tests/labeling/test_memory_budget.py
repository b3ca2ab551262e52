"""The memory budget holds with a batch of decompression bombs: never more reserved than the budget, every
bomb labeled or failed with a reason, the deferred ones named; two batches in two threads share it."""

from __future__ import annotations

import threading

import numpy as np
from support.bad_inputs import png_bomb
from support.tiny_labeler import KEEP_ALL

from maskclip_core.labeling.batch import process_batch
from maskclip_core.labeling.memory_budget import BYTES_PER_PIXEL, MemoryBudget
from maskclip_core.labeling.run_records import LabelingPlan, SourceItem
from maskclip_core.types import SegmentationResult

CLASSES = ("dark", "light", "other")
SIDE = 1000  # 1 Mpx bombs: ~32 MB each by the estimate, small enough for CI to really decode


class CountingLabeler:
    """Labels everything class 0 and records how many pixels were live in one call (and at most)."""

    class_names = CLASSES

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.max_in_use = 0

    def label(self, images):
        self.max_in_use = max(self.max_in_use, self.budget.in_use)
        out = []
        for im in images:
            labels = np.zeros(im.shape[:2], np.int64)
            conf = np.full(im.shape[:2], 0.9, np.float32)
            out.append(SegmentationResult(labels, conf, np.full(3, 0.9, np.float32), np.zeros(3, bool), CLASSES))
        return out


def plan() -> LabelingPlan:
    return LabelingPlan("run", "cfg", CLASSES, (1, 2, 3), KEEP_ALL, max_label_pixels=10**9)


def bombs(n: int, side: int = SIDE) -> dict[str, bytes]:
    return {f"bomb{i}.png": png_bomb(side + i, side) for i in range(n)}  # distinct bytes per file


def test_a_batch_of_bombs_stays_within_the_budget_and_names_the_deferred() -> None:
    files = bombs(6)
    one = BYTES_PER_PIXEL * (SIDE + 5) * SIDE
    budget = MemoryBudget(int(2.5 * one))  # two bombs at a time, not three
    labeler = CountingLabeler(budget)
    result = process_batch([SourceItem(u) for u in files], labeler, plan(), read=files.__getitem__, budget=budget)
    assert result.stats.labeled == 6
    assert budget.peak <= budget.limit and labeler.max_in_use <= budget.limit
    assert budget.peak >= 2 * BYTES_PER_PIXEL * SIDE * SIDE  # it did hold two at once
    assert result.stats.memory_deferred == ["bomb2.png", "bomb4.png"]  # waited: the summary names them
    assert budget.in_use == 0  # everything given back


def test_a_bomb_that_can_never_fit_fails_with_its_reason_and_the_rest_go_on() -> None:
    files = {"small.png": png_bomb(100, 100), "huge.png": png_bomb(4000, 4000), "small2.png": png_bomb(101, 100)}
    budget = MemoryBudget(BYTES_PER_PIXEL * 1_000_000)
    result = process_batch(
        [SourceItem(u) for u in files], CountingLabeler(budget), plan(), read=files.__getitem__, budget=budget
    )
    status = {r["uri"]: (r["status"], r["reason"]) for r in result.images_rows}
    assert status["huge.png"][0] == "failed" and status["huge.png"][1].startswith("over_memory_budget: 16000000")
    assert status["small.png"][0] == status["small2.png"][0] == "labeled"
    assert dict(result.stats.failed) == {"over_memory_budget": 1}


def test_two_concurrent_batches_share_one_budget_without_deadlock() -> None:
    budget = MemoryBudget(int(2.5 * BYTES_PER_PIXEL * (SIDE + 5) * SIDE))
    labeler = CountingLabeler(budget)
    outcomes = []

    def batch(offset: int) -> None:
        files = {f"{offset}-{k}": v for k, v in bombs(5).items()}
        outcomes.append(
            process_batch([SourceItem(u) for u in files], labeler, plan(), read=files.__getitem__, budget=budget)
        )

    threads = [threading.Thread(target=batch, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "deadlock"
    assert sum(o.stats.labeled for o in outcomes) == 10
    assert budget.peak <= budget.limit and budget.in_use == 0
