"""The dataset: the Parquet tables a labeling run writes at a URL, behind one facade, ``LabelDataset``.

Tables and their schemas: ``dataset.schema``; the format version: ``dataset.manifest``.

Files are only ever added (never edited), each written whole. A batch writes its annotations part before
its images part, so the images row is the commit record: readers only show annotations whose
``labeling_id`` belongs to a *current* images row (the newest row of a uri under a config). Orphans of a
crash between the two writes and superseded labelings are thereby invisible.

The dataset follows its source (format version 4): a file edited in place retires its older content, a file
that left the source gets a ``gone`` row, and a file whose bytes are already labeled (renamed, copied) gets a
row of its own sharing that labeling. Every part is checked (footer, schema) before rows are read, so a
damaged part is refused with one line naming it and ``maskclip dataset check --repair``.

``LabelDataset`` delegates each job to one module: ``parts`` (location, format version, listing, checking,
reading and writing part files), ``category_claims`` (the categories table: one exclusive claim file per
id), ``writes`` (a batch's rows checked and committed), ``current_rows`` (the rule that picks the current
images row, in its Arrow and streaming strategies), ``known_index`` (the known-image index, read streaming),
``compaction`` (small images parts merged) and ``reads`` (current rows, history, annotations, label maps).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from maskclip_core.dataset import category_claims, compaction, known_index, reads, writes
from maskclip_core.dataset.digests import DigestSet
from maskclip_core.dataset.manifest import id_bits
from maskclip_core.dataset.parts import DatasetParts
from maskclip_core.dataset.writes import utc_now

__all__ = ["LabelDataset", "utc_now"]


class LabelDataset:
    """Reads and appends the Parquet dataset at ``url`` (a local path or an fsspec URL such as s3://...)."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self._parts = DatasetParts(url, storage_options)
        self.url = url
        self.storage_options = self._parts.storage_options
        self.fs = self._parts.fs
        self.root = self._parts.root
        self._arrow_fs = self._parts.arrow_fs

    def __repr__(self) -> str:
        return f"LabelDataset({self.url!r})"

    # --- format version (parts) ---------------------------------------------------------------------

    @property
    def format_version(self) -> int:
        """The dataset's format version (read once; raises ``DatasetFormatError`` for one this package
        cannot read)."""
        return self._parts.format_version

    @property
    def id_bits(self) -> int:
        """Width of the image and annotation ids writers derive for this dataset (53 bits; 63 in datasets of
        format 1 and 2). Writes the manifest of a new dataset, which fixes its format."""
        return id_bits(self._parts.writable_version())

    # --- writing (category_claims, writes, compaction) ---------------------------------------------------

    def ensure_categories(self, classes: Sequence[tuple[str, Sequence[str]] | str]) -> dict[str, int]:
        """Category ids of ``classes`` (name, synonyms), registering new names safely with concurrent writers:
        :func:`category_claims.ensure_categories`."""
        return category_claims.ensure_categories(self._parts, classes)

    def write_batch(
        self,
        images_rows: Sequence[Mapping[str, Any]],
        annotation_rows: Sequence[Mapping[str, Any]],
        *,
        part_name: str,
    ) -> dict[str, str | None]:
        """Append a batch, annotations part then images part: :func:`writes.write_batch`."""
        return writes.write_batch(self._parts, images_rows, annotation_rows, part_name=part_name)

    def compact_images(self, *, min_parts: int = 64, max_rows: int = 250_000) -> dict[str, int]:
        """Merge small images part files into a few large ones: :func:`compaction.compact_images`."""
        return compaction.compact_images(self._parts, min_parts=min_parts, max_rows=max_rows)

    # --- the known-image index (known_index) --------------------------------------------------------

    def known_sha256(self, config_hash: str) -> set[str]:
        """SHA-256 of the current done contents under ``config_hash``: :func:`known_index.known_sha256`."""
        return known_index.known_sha256(self._parts, config_hash)

    def known_sha256_digests(self, config_hash: str) -> DigestSet:
        """Like :meth:`known_sha256`, as a compact :class:`DigestSet`: :func:`known_index.known_sha256_digests`."""
        return known_index.known_sha256_digests(self._parts, config_hash)

    def known_sources(self, config_hash: str) -> DigestSet:
        """Digests of the (uri, source_version) of the current done rows: :func:`known_index.known_sources`."""
        return known_index.known_sources(self._parts, config_hash)

    # --- reading (reads, category_claims) ----------------------------------------------------------------

    def images(self, config_hash: str | None = None, statuses: Collection[str] | None = None) -> pa.Table:
        """Current images rows, the newest per (uri, config_hash), sorted by uri: :func:`reads.images`."""
        return reads.images(self._parts, config_hash, statuses)

    def history(self, config_hash: str | None = None, *, current_only: bool = False) -> pa.Table:
        """Every images row ever written, with a ``current`` column: :func:`reads.history`."""
        return reads.history(self._parts, config_hash, current_only=current_only)

    def content_labelings(self, config_hash: str, sha256s: Collection[str]) -> dict[str, dict[str, Any]]:
        """The newest current done row of each of these contents: :func:`reads.content_labelings`."""
        return reads.content_labelings(self._parts, config_hash, sha256s)

    def annotations(
        self,
        image_ids: Collection[int] | None = None,
        *,
        config_hash: str | None = None,
        statuses: Collection[str] = ("labeled",),
    ) -> pa.Table:
        """Annotations of the current labelings (with ``statuses``): :func:`reads.annotations`."""
        return reads.annotations(self._parts, image_ids, config_hash=config_hash, statuses=statuses)

    def annotations_for_labelings(
        self,
        labeling_ids: pa.ChunkedArray | pa.Array | Sequence[str],
        image_ids: Iterable[int] | None = None,
    ) -> pa.Table:
        """Annotations of exactly these labelings, deduplicated by id: :func:`reads.annotations_for_labelings`."""
        return reads.annotations_for_labelings(self._parts, labeling_ids, image_ids)

    def categories(self) -> list[dict[str, Any]]:
        """All categories by id, as ``{"id", "name", "synonyms"}``: :func:`category_claims.read_categories`."""
        return category_claims.read_categories(self._parts)

    def iter_label_maps(
        self,
        *,
        config_hash: str | None = None,
        image_ids: Collection[int] | None = None,
        category_to_index: Mapping[int, int] | None = None,
        statuses: Collection[str] = ("labeled",),
    ) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
        """(images row, uint8 label map) for each current labeling, in ``images()`` order.

        ``category_to_index`` maps category ids to label values; by default the position of the category in
        ``categories()`` (ids in order), which is the class index when the categories were registered in the
        labeler's class order on a fresh dataset. See :func:`reads.iter_label_maps`.
        """
        if category_to_index is None:
            category_to_index = {c["id"]: i for i, c in enumerate(self.categories())}
        yield from reads.iter_label_maps(
            self._parts, category_to_index, config_hash=config_hash, image_ids=image_ids, statuses=statuses
        )

    # --- part files (parts) -------------------------------------------------------------------------

    def relative(self, path: str) -> str:
        """``images/part-x.parquet`` for a part's path: how messages name it."""
        return self._parts.relative(path)

    def verify_parts(self) -> None:
        """Raise :class:`DatasetDamaged` for the first part whose footer or schema is bad (reads no rows)."""
        for table in ("images", "annotations"):
            self._parts.table_dataset(table)
        self.categories()

    def table_dataset(self, table: str) -> ds.Dataset | None:
        """The pyarrow dataset of one table in its stored column names (parts checked first), or None when
        nothing was written yet: :meth:`DatasetParts.table_dataset`."""
        return self._parts.table_dataset(table)

    def current_names(self, data: pa.Table, table: str) -> pa.Table:
        """``data`` read from ``table`` of this dataset, with today's column names."""
        return self._parts.current_names(data, table)

    def read_table(self, table: str, filter: pc.Expression | None = None) -> pa.Table:
        """The rows of one table with today's column names (``filter`` names stored columns: only renamed ones
        differ)."""
        return self._parts.read_table(table, filter)

    def _part_files(self, table: str) -> list[tuple[str, int]]:
        """(path, size) of the visible files of one table, sorted: :meth:`DatasetParts.part_files`."""
        return self._parts.part_files(table)
