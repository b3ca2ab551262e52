"""Parquet on any fsspec filesystem: pyarrow's view of the filesystem, part bytes, and reading a table folder."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem


def arrow_filesystem(fs: AbstractFileSystem) -> pafs.FileSystem:
    """pyarrow's native local filesystem (faster) or the fsspec instance wrapped for pyarrow."""
    return pafs.LocalFileSystem() if isinstance(fs, LocalFileSystem) else pafs.PyFileSystem(pafs.FSSpecHandler(fs))


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
