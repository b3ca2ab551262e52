"""A dataset's part files: where they live, the format they are written in, and listing, checking, writing and
reading them.

Every other piece of ``LabelDataset`` (``dataset.writes``, ``dataset.category_claims``, ``dataset.known_index``,
``dataset.compaction``, ``dataset.reads``) works through one :class:`DatasetParts`. A part is written whole
(:meth:`DatasetParts.write_part`, atomic) and never edited; every part is checked (footer, schema) before its
rows are read, so a damaged part is refused with :class:`~maskclip_core.dataset.integrity.DatasetDamaged`
naming it and ``maskclip dataset check --repair``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from maskclip_core.dataset.integrity import check_part_schema, reading_part
from maskclip_core.dataset.manifest import dataset_format, ensure_manifest
from maskclip_core.dataset.parquet import arrow_filesystem, open_dataset, parquet_bytes
from maskclip_core.dataset.schema import TABLES, stored_schema, to_current_names
from maskclip_core.storage.fs import atomic_write_bytes, is_hidden, join_url, resolve

_PARQUET = ds.ParquetFileFormat()


class DatasetParts:
    """The part files of the dataset at ``url`` (a local path or an fsspec URL such as s3://...)."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.fs, root = resolve(url, self.storage_options)
        self.root = root.rstrip("/") or root
        self.arrow_fs = arrow_filesystem(self.fs)
        self._version: int | None = None
        self._manifest_written = False

    # --- format version -----------------------------------------------------------------------------

    @property
    def format_version(self) -> int:
        """The dataset's format version (read once; raises ``DatasetFormatError`` for one this package
        cannot read)."""
        if self._version is None:
            self._version = dataset_format(self.url, self.storage_options)
        return self._version

    def writable_version(self) -> int:
        """The format version to write in, the manifest written first if the dataset has none yet."""
        if not self._manifest_written:
            self._version = ensure_manifest(self.url, self.storage_options)
            self._manifest_written = True
        return self.format_version

    # --- naming and listing -------------------------------------------------------------------------

    def part_url(self, table: str, part_name: str) -> str:
        """``<url>/<table>/part-<part_name>.parquet``."""
        return join_url(self.url, table, f"part-{part_name}.parquet")

    def relative(self, path: str) -> str:
        """``images/part-x.parquet`` for a part's path: how messages name it."""
        return path[len(self.root) :].lstrip("/") if path.startswith(self.root) else path

    def part_files(self, table: str) -> list[tuple[str, int]]:
        """(path, size) of the visible files of one table, sorted; names starting with ``_`` or ``.`` (in the
        file name or a folder under the table) are skipped, as pyarrow's dataset discovery does."""
        path = f"{self.root}/{table}"
        self.fs.invalidate_cache(path)  # s3fs caches listings; other writers may have added parts
        try:
            infos = self.arrow_fs.get_file_info(pafs.FileSelector(path, recursive=True))
        except (FileNotFoundError, NotADirectoryError):  # object stores: a "folder" with no key under it yet
            return []
        finally:
            self.fs.invalidate_cache(path)  # and a long-lived process need not keep this listing
        parts = []
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            rel = info.path[len(path) :].lstrip("/")
            if any(is_hidden(segment) for segment in rel.split("/")):
                continue
            parts.append((info.path, int(info.size or 0)))
        return sorted(parts)

    # --- writing ------------------------------------------------------------------------------------

    def write_part(self, table: str, part_name: str, stored: pa.Table) -> str:
        """Write ``stored`` (rows in the dataset's stored column names) whole as one part of ``table``; returns
        its URL. The same name again replaces the file (a retried batch rewrites its own parts)."""
        url = self.part_url(table, part_name)
        atomic_write_bytes(url, parquet_bytes(stored), self.storage_options)
        return url

    # --- checking and reading -----------------------------------------------------------------------

    def checked_fragment(self, path: str, schema: pa.Schema) -> ds.Fragment:
        """The Parquet fragment of one part, its footer and schema checked against the stored ``schema``."""
        fragment = _PARQUET.make_fragment(path, filesystem=self.arrow_fs)
        part = self.relative(path)
        with reading_part(self.url, part):
            check_part_schema(self.url, part, fragment.physical_schema, schema)
        return fragment

    def table_dataset(self, table: str) -> ds.Dataset | None:
        """The pyarrow dataset of one table in its stored column names, or None when nothing was written yet.

        Every part's footer and schema are checked first, so a damaged or foreign part is refused with
        :class:`~maskclip_core.dataset.integrity.DatasetDamaged` naming it (and the repair command).
        """
        schema = stored_schema(table, self.format_version)
        dataset = open_dataset(self.fs, f"{self.root}/{table}", schema, self.arrow_fs)
        if dataset is None:
            return None
        for fragment in dataset.get_fragments():
            part = self.relative(fragment.path)
            with reading_part(self.url, part):
                check_part_schema(self.url, part, fragment.physical_schema, schema)
        return dataset

    def current_names(self, data: pa.Table, table: str) -> pa.Table:
        """``data`` read from ``table`` of this dataset, with today's column names."""
        return to_current_names(data, table, self.format_version)

    def read_table(self, table: str, filter: pc.Expression | None = None) -> pa.Table:
        """The rows of one table with today's column names (``filter`` names stored columns: only renamed ones
        differ).

        A part that vanishes between the listing and the read was merged by a compaction that wrote its merged
        part first (``dataset.compaction``): the read is done again once over a fresh listing, which holds the
        merged part, so a reader sees the old parts or the new ones, never a missing one.
        """
        for attempt in (1, 2):
            try:
                dataset = self.table_dataset(table)  # checks each part's footer: reads them too
                if dataset is None:
                    return TABLES[table].empty_table()
                with reading_part(self.url, f"{table}/"):
                    return self.current_names(dataset.to_table(filter=filter), table)
            except FileNotFoundError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")
