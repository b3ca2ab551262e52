"""Worker processes for the race tests: each waits at a shared barrier, then does one dataset operation."""

from __future__ import annotations

from typing import Any


def register_categories(
    barrier: Any, results: Any, urls: list[str], names: list[str], storage_options: dict[str, Any]
) -> None:
    """For each dataset url: wait for the other process, register ``names``, report the ids it got."""
    from maskclip_core.dataset.store import LabelStore

    for url in urls:
        barrier.wait(timeout=120)
        ids = LabelStore(url, storage_options).ensure_categories(names)
        results.put((url, ids))
