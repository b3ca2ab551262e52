"""Worker processes for the race tests: each waits at a shared barrier, then does one dataset operation."""

from __future__ import annotations

from typing import Any


def register_categories(
    barrier: Any, results: Any, urls: list[str], names: list[str], storage_options: dict[str, Any]
) -> None:
    """For each dataset url: wait for the other process, register ``names``, report the ids it got."""
    from maskclip_core.dataset.label_dataset import LabelDataset

    for url in urls:
        barrier.wait(timeout=120)
        ids = LabelDataset(url, storage_options).ensure_categories(names)
        results.put((url, ids))


def take_lease(
    barrier: Any, results: Any, urls: list[str], name: str, storage_options: dict[str, Any], hold_s: float
) -> None:
    """For each dataset url: wait for the other process, try the lease once, hold it ``hold_s``, release."""
    from maskclip_core.dataset.lease import LeaseHeld, acquire_lease

    for url in urls:
        barrier.wait(timeout=120)
        try:
            lease = acquire_lease(url, storage_options, owner=name, ttl_s=30)
        except LeaseHeld as e:
            results.put((url, name, "held", str(e)))
        else:
            results.put((url, name, "got", ""))
            barrier.wait(timeout=120)  # both have tried before the winner lets go
            lease.release()
            continue
        barrier.wait(timeout=120)


def hold_lease_then_die(url: str, ttl_s: float, ready: Any) -> None:
    """Take the lease and get killed (no release, no more renewals)."""
    import os
    import signal

    from maskclip_core.dataset.lease import acquire_lease

    acquire_lease(url, {}, owner="doomed", ttl_s=ttl_s)
    ready.set()
    os.kill(os.getpid(), signal.SIGKILL)
