"""One small helper for the per-process caches (labelers, text classifiers): a worker builds each model once.

``functools.lru_cache`` is not enough here: two threads of a task runner that miss the same key at once would
both load the model (twice the memory at start-up), and some keys (storage options) are not hashable as given.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class ProcessCache(Generic[T]):
    """Values by key, each built at most once per process (thread-safe); never evicted, as models are few."""

    def __init__(self) -> None:
        self._values: dict[Hashable, T] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], T]) -> T:
        """The value cached under ``key``, built by ``build()`` on the first call (under the lock, so
        concurrent first callers wait for the one build instead of repeating it)."""
        with self._lock:
            if key not in self._values:
                self._values[key] = build()
            return self._values[key]

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def __len__(self) -> int:
        return len(self._values)
