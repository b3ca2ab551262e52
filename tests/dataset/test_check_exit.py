"""No read of the dataset aborts the process at exit (issue 21: ``dataset check`` rc 134, ``terminate called
without an active exception``).

The abort: pyarrow reading a table on a non-local filesystem goes through its fsspec wrapper, so pyarrow's
threads call into Python (reads, and releasing the files they opened). A scan returns, failed or not, while some
of those calls are yet to come; if the interpreter is finalizing by then, the thread is killed inside C++ code
that cannot unwind: std::terminate. ``dataset check`` reads every part from its own thread (bytes fetched by
fsspec, decoded from a native buffer), and ``dataset.parquet`` makes the interpreter's exit wait for the calls
of pyarrow's threads into the wrapper. Each test runs its pattern in several child processes:

- ``dataset check --repair`` on a filesystem whose reads from other threads are slow and fail for one part,
  with a slow interpreter teardown (a loaded machine): no read may come from pyarrow's threads;
- a scan whose part fails while the others are released slowly on pyarrow's threads;
- a plain, fault-free scan of four parts in memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNS = 6

CHILD = textwrap.dedent(
    """
    import io, tempfile, threading, time
    from pathlib import Path

    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    from support.review_store import build_store
    from maskclip_core.dataset.check import check_dataset

    checking = threading.Event()
    background_reads = []


    class PartFile(io.BytesIO):
        # Reads from pyarrow's threads: counted, slow, and failing for one part.
        def __init__(self, data, bad):
            super().__init__(data)
            self.bad = bad

        def read(self, n=-1):
            if checking.is_set() and threading.current_thread() is not threading.main_thread():
                background_reads.append(n)
                if self.bad:
                    raise OSError("connection reset")
                time.sleep(0.3)
            return super().read(n)


    class SlowBackgroundFS(MemoryFileSystem):
        protocol = "slowbg"

        @classmethod
        def _strip_protocol(cls, path):
            return super()._strip_protocol(path.replace("slowbg://", "memory://", 1))

        def _open(self, path, mode="rb", **kwargs):
            f = super()._open(path, mode, **kwargs)
            if mode != "rb" or "/images/" not in path:
                return f
            return PartFile(f.getvalue(), bad=path.endswith("batch0.parquet"))


    class SlowExit:
        # Module teardown runs this after the interpreter stopped handing the GIL to other threads.
        def __del__(self):
            time.sleep(0.5)


    slow_exit = SlowExit()
    fsspec.register_implementation("slowbg", SlowBackgroundFS, clobber=True)
    build_store("slowbg://ds", Path(tempfile.mkdtemp()), batches=[[f"i{i}.png"] for i in range(8)])
    SlowBackgroundFS().pipe_file("/ds/images/part-cfg-a-batch7.parquet", b"")  # damaged: repair quarantines it
    checking.set()
    try:
        report = check_dataset("slowbg://ds", repair=True)
        print("problems", len(report.problems), "quarantined", len(report.quarantined), end=" ")
    except Exception as e:
        print("error", type(e).__name__, e, end=" ")
    print("background reads", len(background_reads))
    """
)


# Any reader of a table on an object store: a scan through the fsspec wrapper whose part fails, while the
# parts read before it are closed slowly by pyarrow's threads (6 of 8 runs aborted before the fix).
SCAN_CHILD = textwrap.dedent(
    """
    import io, threading, time

    import pyarrow as pa
    import pyarrow.parquet as pq
    from fsspec.implementations.memory import MemoryFileSystem

    from maskclip_core.dataset.parquet import open_dataset


    class PartFile(io.BytesIO):
        # The bad part's second read fails; pyarrow's threads close the others slowly.
        def __init__(self, data, bad):
            super().__init__(data)
            self.bad = bad
            self.reads = 0

        def read(self, n=-1):
            self.reads += 1
            if self.bad and self.reads > 1:
                raise OSError("connection reset")
            time.sleep(0.05)
            return super().read(n)

        def close(self):
            if threading.current_thread() is not threading.main_thread():
                time.sleep(0.3)
            super().close()


    class SlowFS(MemoryFileSystem):
        def _open(self, path, mode="rb", **kwargs):
            f = super()._open(path, mode, **kwargs)
            return PartFile(f.getvalue(), bad=path.endswith("part-0.parquet")) if mode == "rb" else f


    class SlowExit:
        def __del__(self):
            time.sleep(0.5)


    slow_exit = SlowExit()
    fs = SlowFS()
    schema = pa.schema([("a", pa.int64())])
    for i in range(12):
        with fs.open(f"/scan-exit/t/part-{i}.parquet", "wb") as f:
            pq.write_table(pa.table({"a": list(range(100))}, schema=schema), f)
    try:
        print("rows", open_dataset(fs, "/scan-exit/t", schema).to_table().num_rows)
    except OSError as e:
        print("error", e)
    """
)


# No fault at all: a plain scan of four parts in memory, then exit (10 of 12 runs aborted before the fix).
PLAIN_CHILD = textwrap.dedent(
    """
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    from maskclip_core.dataset.parquet import open_dataset

    fs = fsspec.filesystem("memory")
    for i in range(4):
        with fs.open(f"/plain-exit/t/part-{i}.parquet", "wb") as f:
            pq.write_table(pa.table({"a": [i]}), f)
    print("rows", open_dataset(fs, "/plain-exit/t", pa.schema([("a", pa.int64())])).to_table().num_rows)
    """
)


def _run(child: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", child], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def _runs(child: str, count: int) -> list[subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(_run, [child] * count))


def test_check_repair_reads_no_part_from_pyarrow_threads_and_exits_cleanly() -> None:
    runs = _runs(CHILD, RUNS)
    for run in runs:
        assert "terminate called" not in run.stderr, run.stderr[-2000:]
        assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
        assert run.stdout.strip() == "problems 1 quarantined 1 background reads 0", run.stdout


def test_a_failed_scan_through_the_fsspec_wrapper_exits_with_its_own_status() -> None:
    for run in _runs(SCAN_CHILD, 8):
        assert "terminate called" not in run.stderr, run.stderr[-2000:]
        assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
        assert run.stdout.strip() == "error connection reset", run.stdout


def test_a_plain_scan_through_the_fsspec_wrapper_exits_cleanly() -> None:
    for run in _runs(PLAIN_CHILD, 8):
        assert "terminate called" not in run.stderr, run.stderr[-2000:]
        assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
        assert run.stdout.strip() == "rows 4", run.stdout
