"""The dataset lease: two real processes, exactly one writer; a killed holder frees it after its expiry."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import pytest
from support.race_workers import hold_lease_then_die, take_lease

from maskclip_core.dataset import lease as lease_module
from maskclip_core.dataset.lease import DatasetLocationError, LeaseHeld, acquire_lease


def race(urls: list[str], storage_options: dict[str, Any]) -> dict[str, list[tuple[str, str, str]]]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=take_lease, args=(barrier, results, urls, name, storage_options, 0.0))
        for name in ("run-A", "run-B")
    ]
    for p in procs:
        p.start()
    by_url: dict[str, list[tuple[str, str, str]]] = {}
    for _ in range(2 * len(urls)):
        url, name, outcome, message = results.get(timeout=300)
        by_url.setdefault(url, []).append((name, outcome, message))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return by_url


def check_exactly_one_writer(urls: list[str], storage_options: dict[str, Any]) -> None:
    for url, outcomes in race(urls, storage_options).items():
        assert sorted(o for _, o, _ in outcomes) == ["got", "held"], url
        (winner,) = [n for n, o, _ in outcomes if o == "got"]
        (message,) = [m for _, o, m in outcomes if o == "held"]
        assert f"in use by run {winner}" in message and "--force-lease" in message and "\n" not in message


def test_two_processes_never_both_hold_the_lease_on_local_disk(tmp_path: Path) -> None:
    check_exactly_one_writer([str(tmp_path / f"d{i}") for i in range(10)], {})


def test_two_processes_never_both_hold_the_lease_on_seaweedfs(seaweedfs: Any) -> None:
    base = f"s3://{seaweedfs.bucket}/lease-race"
    check_exactly_one_writer([f"{base}/d{i}" for i in range(4)], seaweedfs.storage_options)


def test_a_killed_holder_on_this_machine_frees_the_dataset_at_once(tmp_path: Path) -> None:
    url = str(tmp_path / "out")
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=hold_lease_then_die, args=(url, 600.0, ready))
    proc.start()
    proc.join(timeout=120)
    assert ready.is_set() and proc.exitcode == -9
    with acquire_lease(url, owner="next", wait_s=0) as lease:  # its pid is gone: no 600 s wait
        assert lease.generation == 2


def test_a_silent_holder_elsewhere_frees_the_dataset_after_its_expiry(tmp_path: Path) -> None:
    url = str(tmp_path / "out")
    held = acquire_lease(url, owner="remote", ttl_s=1.5)
    held._stop.set()  # a run on another machine that stopped renewing (killed, cut off)
    held._thread.join()
    lease_module._write(url, held.generation, {**held.record, "host": "another-machine"}, {})
    with pytest.raises(LeaseHeld, match="in use by run remote on another-machine"):
        acquire_lease(url, owner="impatient", wait_s=0)
    t0 = time.monotonic()
    with acquire_lease(url, owner="patient", wait_s=30, poll_s=0.2) as lease:
        assert lease.generation == 2
    assert time.monotonic() - t0 < 10


def test_force_takes_a_live_lease_and_the_holder_notices(tmp_path: Path) -> None:
    url = str(tmp_path / "out")
    holder = acquire_lease(url, owner="slow", ttl_s=0.6)
    time.sleep(0.3)
    with pytest.raises(LeaseHeld):
        acquire_lease(url, owner="second")
    with acquire_lease(url, owner="admin", force=True):
        time.sleep(0.5)  # the holder's next renewal sees the newer generation
        assert holder.lost
    holder.release()  # does not touch the lease it lost
    with acquire_lease(url, owner="third"):  # admin released it
        pass


def test_renewal_keeps_a_long_run_holding(tmp_path: Path) -> None:
    url = str(tmp_path / "out")
    with acquire_lease(url, owner="long", ttl_s=0.5):
        time.sleep(1.5)  # three ttls: renewed, never expired
        with pytest.raises(LeaseHeld):
            acquire_lease(url, owner="other")


def test_output_under_a_regular_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetLocationError, match="cannot hold a dataset"):
        acquire_lease(str(tmp_path / "file" / "out"), owner="r")
