"""Parquet on any fsspec filesystem: pyarrow's view of the filesystem, part bytes, and reading a table folder.

pyarrow reads a non-local filesystem through its fsspec wrapper, so its I/O threads call into Python. When a
scan fails, it returns while some of those threads (reads in flight, fragments it had queued) have yet to enter
Python; one that enters while the interpreter finalizes is killed in C++ code that cannot unwind, and the
process aborts (rc 134, ``terminate called without an active exception``; issue 21). Every call those threads
make is therefore counted, and the interpreter's exit waits (``atexit``, which runs before finalization) until
none has run for a moment.
"""

from __future__ import annotations

import atexit
import functools
import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem


class _PythonCalls:
    """Calls into Python that pyarrow's threads are making, and a wait until there are none."""

    def __init__(self) -> None:
        self._count = 0
        self._used = False
        self._changed = threading.Condition()

    def enter(self) -> None:
        with self._changed:
            self._count += 1
            self._used = True

    def leave(self) -> None:
        with self._changed:
            self._count -= 1
            self._changed.notify_all()

    @contextmanager
    def call(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def wait_idle(self, quiet_s: float = 0.2, timeout_s: float = 30.0) -> bool:
        """Wait until no call has run for ``quiet_s`` (a scan that failed may still start queued reads);
        False when calls went on past ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._used:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if self._count == 0 and not self._changed.wait_for(lambda: self._count > 0, min(quiet_s, left)):
                    return True
                self._changed.wait_for(lambda: self._count == 0, max(0.0, deadline - time.monotonic()))
            return True


_CALLS = _PythonCalls()
atexit.register(_CALLS.wait_idle)


def _counted(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        with _CALLS.call():
            return method(*args, **kwargs)

    return call


class _CountedFile:
    """An fsspec file whose methods, called by pyarrow's threads, are counted, and which counts as one call for
    as long as pyarrow holds it: pyarrow lets go of it on one of its threads, which closes the file in Python."""

    def __init__(self, f: Any) -> None:
        self._f = f
        _CALLS.enter()

    def __del__(self) -> None:
        try:
            del self._f  # closed here, inside the counted call
        finally:
            _CALLS.leave()

    def __getattr__(self, name: str) -> Any:
        if name == "_f":  # not set yet or released: no recursion through __getattr__
            raise AttributeError(name)
        attr = getattr(self._f, name)
        return _counted(attr) if callable(attr) else attr


class _CountedHandler(pafs.FSSpecHandler):
    """pyarrow's fsspec handler with every call into it, and into the files it opens, counted."""

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self._open_counted(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self._open_counted(path)

    def open_output_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        with _CALLS.call():
            return pa.PythonFile(_CountedFile(self.fs.open(path, mode="wb")), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        with _CALLS.call():
            return pa.PythonFile(_CountedFile(self.fs.open(path, mode="ab")), mode="w")

    def _open_counted(self, path: str) -> pa.NativeFile:
        with _CALLS.call():
            if not self.fs.isfile(path):
                raise FileNotFoundError(path)
            return pa.PythonFile(_CountedFile(self.fs.open(path, mode="rb")), mode="r")


for _name in (
    "get_file_info",
    "get_file_info_selector",
    "create_dir",
    "delete_dir",
    "delete_dir_contents",
    "delete_root_dir_contents",
    "delete_file",
    "move",
    "copy_file",
):
    setattr(_CountedHandler, _name, _counted(getattr(_CountedHandler, _name)))


def arrow_filesystem(fs: AbstractFileSystem) -> pafs.FileSystem:
    """pyarrow's native local filesystem (faster) or the fsspec instance wrapped for pyarrow, every call its
    threads make into Python counted so that the interpreter's exit can wait for them."""
    return pafs.LocalFileSystem() if isinstance(fs, LocalFileSystem) else pafs.PyFileSystem(_CountedHandler(fs))


def parquet_bytes(table: pa.Table) -> bytes:
    """One zstd-compressed Parquet file, to be written atomically by the caller."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def open_dataset(
    fs: AbstractFileSystem, path: str, schema: pa.Schema, arrow_fs: pafs.FileSystem | None = None
) -> ds.Dataset | None:
    """The Parquet parts under ``path`` as one dataset, or None when nothing was written there yet.

    The listing is re-read (s3fs caches listings; other writers may have added parts). Default
    ignore_prefixes skip "_tmp-..." parts still being written and dotfiles; the fixed schema lets older
    parts with fewer columns read as nulls.
    """
    fs.invalidate_cache(path)
    try:
        return ds.dataset(path, schema=schema, format="parquet", filesystem=arrow_fs or arrow_filesystem(fs))
    except FileNotFoundError:
        return None
