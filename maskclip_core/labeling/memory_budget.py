"""A per-process budget on decoded-pixel memory: a batch of decompression bombs cannot take a worker down.

``max_pixels`` bounds one image; this bounds all images a worker process holds at once (every batch running
in its threads). Each image reserves its estimated peak cost (from its header, before any pixel is decoded)
and gives it back once its labels are encoded. An image that does not fit *now* is deferred: its batch first
labels what it already holds (releasing that), then waits for other batches to finish theirs. An image that
could never fit fails with reason ``over_memory_budget`` (retried by the next run, e.g. with a larger budget).
"""

from __future__ import annotations

import threading

# Peak bytes per pixel of one image on its way through a batch, measured on a 72-megapixel PNG (2.2 GB growth):
# Pillow's decode buffer, the RGB array, the labeler's int64 labels and float32 confidence, the filter's maps.
BYTES_PER_PIXEL = 32
# Per worker process: a 16 GB machine running the default two batches at once keeps half its memory free.
DEFAULT_MEMORY_BUDGET = 4 * 1024**3


class MemoryBudget:
    """Bytes reserved by the images this process holds; ``peak`` is the most ever reserved at once."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError(f"memory budget must be positive, got {limit}")
        self.limit = int(limit)
        self.in_use = 0
        self.peak = 0
        self._cond = threading.Condition()

    @staticmethod
    def cost(pixels: int) -> int:
        return int(pixels) * BYTES_PER_PIXEL

    def fits_ever(self, nbytes: int) -> bool:
        return nbytes <= self.limit

    def try_acquire(self, nbytes: int) -> bool:
        with self._cond:
            if self.in_use + nbytes > self.limit:
                return False
            self._take(nbytes)
            return True

    def acquire(self, nbytes: int) -> None:
        """Wait until ``nbytes`` fit (call it holding nothing, or two waiters could block each other)."""
        with self._cond:
            self._cond.wait_for(lambda: self.in_use + nbytes <= self.limit)
            self._take(nbytes)

    def release(self, nbytes: int) -> None:
        with self._cond:
            self.in_use -= nbytes
            self._cond.notify_all()

    def _take(self, nbytes: int) -> None:
        self.in_use += nbytes
        self.peak = max(self.peak, self.in_use)


_BUDGETS: dict[int, MemoryBudget] = {}
_BUDGETS_LOCK = threading.Lock()


def process_budget(limit: int = DEFAULT_MEMORY_BUDGET) -> MemoryBudget:
    """The budget every batch of this process shares (one per limit)."""
    with _BUDGETS_LOCK:
        budget = _BUDGETS.get(limit)
        if budget is None:
            budget = _BUDGETS[limit] = MemoryBudget(limit)
        return budget
