"""A Dask cluster of separate processes on 127.0.0.1: ``dask scheduler`` and ``dask worker``, as a user starts them.

The worker runs in a folder of its own (not the repository), so it imports only what the installed package
offers, as a worker on another machine would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support.prefect_server import free_port

STARTUP_TIMEOUT_S = 120.0


def _start(args: list[str], cwd: Path, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(Path(sys.executable).with_name("dask")), *args],  # the `dask` command of this environment
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for_workers(address: str, n: int, logs: list[Path]) -> None:
    from distributed import Client

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with Client(address, timeout=STARTUP_TIMEOUT_S) as client:
        while len(client.scheduler_info()["workers"]) < n:
            if time.monotonic() > deadline:
                tails = "\n".join(p.read_text()[-2000:] for p in logs)
                raise RuntimeError(f"{n} Dask worker(s) did not join {address}:\n{tails}")
            time.sleep(0.5)


@contextmanager
def dask_cluster(folder: Path, env: dict[str, str], n_workers: int = 1) -> Iterator[str]:
    """A scheduler and ``n_workers`` single-threaded worker processes; yields the scheduler's address."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = [folder / "scheduler.log", folder / "worker.log"]
    scheduler = _start(
        ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], folder, logs[0], env
    )
    worker_args = ["worker", address, "--nworkers", str(n_workers), "--nthreads", "1", "--no-dashboard"]
    processes = [scheduler, _start([*worker_args, "--host", "127.0.0.1"], folder, logs[1], env)]
    try:
        _wait_for_workers(address, n_workers, logs)
        yield address
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
