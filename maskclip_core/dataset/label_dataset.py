"""The dataset: the Parquet tables a labeling run writes at a URL, the part-file writer and the readers.

Tables and their schemas: ``dataset.schema``; the format version: ``dataset.manifest``.

Files are only ever added (never edited), each written whole. A batch writes its annotations part before
its images part, so the images row is the commit record: readers only show annotations whose
``labeling_id`` belongs to a *current* images row (the newest row of a uri under a config). Orphans of a
crash between the two writes and superseded labelings are thereby invisible.

The dataset follows its source (format version 4): a file edited in place retires its older content, a file
that left the source gets a ``gone`` row, and a file whose bytes are already labeled (renamed, copied) gets a
row of its own sharing that labeling. Every part is checked (footer, schema) before rows are read, so a
damaged part is refused with one line naming it and ``maskclip dataset check --repair``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from collections import deque
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from maskclip_core.dataset.digests import DIGEST_BYTES, DigestSet, DigestSetBuilder, sha256_digest, source_digest
from maskclip_core.dataset.ids import image_id_from_sha256
from maskclip_core.dataset.integrity import check_part_schema, reading_part
from maskclip_core.dataset.manifest import dataset_format, ensure_manifest, id_bits
from maskclip_core.dataset.parquet import arrow_filesystem, open_dataset, parquet_bytes
from maskclip_core.dataset.rle import annotations_to_label_map
from maskclip_core.dataset.schema import (
    ANNOTATIONS_SCHEMA,
    CATEGORIES_SCHEMA,
    DONE_STATUSES,
    IMAGES_SCHEMA,
    LABELERS,
    PART_NAME,
    ROW_STATUSES,
    TABLES,
    stored_schema,
    to_current_names,
    to_stored_names,
)
from maskclip_core.storage.exclusive import create_exclusive
from maskclip_core.storage.fs import atomic_write_bytes, is_hidden, join_url, resolve

# Small batches keep known_sha256's memory flat however large the dataset.
_SCAN_BATCH_ROWS = 64 * 1024
# The known-image index reads small part files (the flow's one per batch: KBs) this many at once, within this
# many bytes in flight; larger (compacted) parts are streamed in record batches, one part at a time.
_SCAN_THREADS = 4
_SCAN_WINDOW_BYTES = 32 * 1024 * 1024
_SCAN_SMALL_PART_BYTES = 1024 * 1024


def utc_now() -> dt.datetime:
    """``created_at`` for a new row."""
    return dt.datetime.now(dt.UTC)


class LabelDataset:
    """Reads and appends the Parquet dataset at ``url`` (a local path or an fsspec URL such as s3://...)."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = resolve(url, self.storage_options)
        self.root = self.root.rstrip("/") or self.root
        self._arrow_fs = arrow_filesystem(self.fs)
        self._version: int | None = None
        self._manifest_written = False

    def __repr__(self) -> str:
        return f"LabelDataset({self.url!r})"

    # --- format version -----------------------------------------------------------------------------

    @property
    def format_version(self) -> int:
        """The dataset's format version (read once; raises ``DatasetFormatError`` for one this package
        cannot read)."""
        if self._version is None:
            self._version = dataset_format(self.url, self.storage_options)
        return self._version

    @property
    def id_bits(self) -> int:
        """Width of the image and annotation ids writers derive for this dataset (53 bits; 63 in datasets of
        format 1 and 2). Writes the manifest of a new dataset, which fixes its format."""
        return id_bits(self._writable_version())

    def _writable_version(self) -> int:
        """The format version to write in, the manifest written first if the dataset has none yet."""
        if not self._manifest_written:
            self._version = ensure_manifest(self.url, self.storage_options)
            self._manifest_written = True
        return self.format_version

    # --- writing ------------------------------------------------------------------------------------

    def ensure_categories(self, classes: Sequence[tuple[str, Sequence[str]] | str]) -> dict[str, int]:
        """Category ids of ``classes`` (name, synonyms), registering new names; safe with concurrent writers.

        Existing names keep their id; a new name claims the next free id by creating
        ``categories/part-id-<id>.parquet`` only if absent (:func:`create_exclusive`). A writer that loses the
        race for an id reads who won it (the same name: taken as is; another: learned, and the next id is
        tried), so two runs registering different names at once never share an id, and two registering the
        same name get the same one. Ids stay dense: each id is claimed only after every lower one existed.
        """
        items = [(c, ()) if isinstance(c, str) else (c[0], tuple(c[1])) for c in classes]
        self._writable_version()
        ids = {c["name"]: c["id"] for c in self.categories()}
        next_id = max(ids.values(), default=0) + 1
        for name, synonyms in items:
            while name not in ids:
                row = {"id": next_id, "name": name, "synonyms": list(synonyms)}
                data = parquet_bytes(pa.Table.from_pylist([row], schema=CATEGORIES_SCHEMA))
                if create_exclusive(self._category_claim_url(next_id), data, self.storage_options):
                    ids[name] = next_id
                else:
                    winner = self._read_category_claim(next_id)
                    if winner is not None:
                        ids.setdefault(winner, next_id)
                next_id += 1
        return {name: ids[name] for name, _ in items}

    def _category_claim_url(self, category_id: int) -> str:
        return self._part_url("categories", f"id-{category_id:010d}")

    def _read_category_claim(self, category_id: int) -> str | None:
        """The name that holds ``category_id`` (None if its claim file is unreadable: the id stays taken)."""
        fs, path = resolve(self._category_claim_url(category_id), self.storage_options)
        try:
            rows = pq.read_table(io.BytesIO(fs.cat_file(path)), schema=CATEGORIES_SCHEMA).to_pylist()
        except (OSError, pa.ArrowException):
            return None
        return rows[0]["name"] if rows and rows[0]["id"] == category_id else None

    def write_batch(
        self,
        images_rows: Sequence[Mapping[str, Any]],
        annotation_rows: Sequence[Mapping[str, Any]],
        *,
        part_name: str,
    ) -> dict[str, str | None]:
        """Append a batch: ``annotations/part-<part_name>.parquet``, then ``images/part-<part_name>.parquet``.

        The images part goes last because it commits the annotations (see module doc). Rows are validated
        first; ``created_at`` defaults to now. Writing the same batch again under the same part name
        replaces the file with the same content, so task retries are harmless. Returns the URLs written.
        """
        if not PART_NAME.fullmatch(part_name):
            raise ValueError(f"part name {part_name!r}: use letters, digits, '.', '_', '=', '-' (no '/')")
        if not images_rows:
            if annotation_rows:
                raise ValueError("annotations without images rows would never become visible")
            return {"annotations": None, "images": None}
        version = self._writable_version()
        images = [_image_row(r, id_bits(version)) for r in images_rows]
        annotations = [_annotation_row(r) for r in annotation_rows]
        _check_annotations_committed_by(annotations, images)
        written: dict[str, str | None] = {"annotations": None, "images": None}
        if annotations:
            url = self._part_url("annotations", part_name)
            table = pa.Table.from_pylist(annotations, schema=ANNOTATIONS_SCHEMA)
            table = to_stored_names(table, "annotations", version)
            atomic_write_bytes(url, parquet_bytes(table), self.storage_options)
            written["annotations"] = url
        url = self._part_url("images", part_name)
        table = to_stored_names(pa.Table.from_pylist(images, schema=IMAGES_SCHEMA), "images", version)
        atomic_write_bytes(url, parquet_bytes(table), self.storage_options)
        written["images"] = url
        return written

    # --- reading ------------------------------------------------------------------------------------

    def known_sha256(self, config_hash: str) -> set[str]:
        """SHA-256 of the content of the *current* rows (newest per uri) labeled or rejected under ``config_hash``.

        A uri whose newest row failed, or which left the source (``gone``), does not count: its content is
        relabeled, not taken over from a labeling that no current file shows.
        """
        known: set[str] = set()
        for batch, current in self._scan_current(config_hash, ["sha256"]):
            shas = batch.column("sha256").to_pylist()
            known.update(shas[i] for i in np.flatnonzero(current) if shas[i] is not None)
        return known

    def known_sha256_digests(self, config_hash: str) -> DigestSet:
        """Like :meth:`known_sha256`, as a compact :class:`DigestSet` of 16-byte digest prefixes."""
        builder = DigestSetBuilder()
        for batch, current in self._scan_current(config_hash, ["sha256"]):
            column = batch.column("sha256").filter(pa.array(current))
            builder.add_array(_hex_prefix_digests(column))
        return builder.build()

    def known_sources(self, config_hash: str) -> DigestSet:
        """Digests of the (uri, source_version) of the current rows labeled or rejected under ``config_hash``.

        Lets a re-run skip a listed file whose listing metadata did not change WITHOUT reading its bytes
        (:func:`maskclip_core.dataset.digests.source_digest` of ``SourceFile.uri`` and ``SourceFile.version``).
        Only the newest row of a uri counts, so a file restored with its old version token after it was
        marked gone, or reverted after an edit, is read again. Rows without a source_version (written by other
        tools) are left out, so their files are read and matched by SHA-256.
        """
        builder = DigestSetBuilder()
        for batch, current in self._scan_current(config_hash, ["source_version"]):
            uris = batch.column("uri").to_pylist()
            versions = batch.column("source_version").to_pylist()
            builder.extend(
                source_digest(uris[i], versions[i]) for i in np.flatnonzero(current) if versions[i] is not None
            )
        return builder.build()

    def _scan_current(self, config_hash: str, columns: list[str]) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        """Record batches of the rows under ``config_hash`` with a mask of those that are current and done.

        Two streaming passes, so memory holds ~32 bytes per row (a uri key, a time and a tie-break), not the
        rows: the first finds the newest row of each uri, the second yields the batches again with the mask.
        """
        keys: list[np.ndarray] = []
        times: list[np.ndarray] = []
        ties: list[np.ndarray] = []
        for batch in self._scan_config(config_hash, []):
            keys.append(_uri_keys(batch.column("uri")))
            times.append(batch.column("created_at").cast(pa.int64()).to_numpy(zero_copy_only=False))
            ties.append(_labeling_tiebreak(batch.column("labeling_id")))
        if not keys:
            return
        key, time_, tie = np.concatenate(keys), np.concatenate(times), np.concatenate(ties)
        del keys, times, ties
        order = np.lexsort((-tie, -time_, key))  # newest first within a uri
        first = np.ones(order.size, dtype=bool)
        first[1:] = key[order][1:] != key[order][:-1]
        newest = np.zeros(order.size, dtype=bool)
        newest[order[first]] = True
        del key, time_, tie, order, first
        offset = 0
        for batch in self._scan_config(config_hash, columns):
            n = batch.num_rows
            status = batch.column("status")
            done = pc.is_in(status, value_set=pa.array(list(DONE_STATUSES))).to_numpy(zero_copy_only=False)
            yield batch, newest[offset : offset + n] & done
            offset += n

    def _scan_config(self, config_hash: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
        """Record batches of ``columns`` (with uri, status, created_at, labeling_id) of the rows under
        ``config_hash``, in the same order on every call while the parts do not change.

        Part file by part file, never one pyarrow dataset over all of them: a dataset keeps state for each
        fragment it scanned (~50 KB, measured), and the flow writes one images part per batch, so a million
        images in batches of 16 (62,500 parts) would cost GBs. Small parts are read whole by a few threads at
        once within a byte budget (object-store latency overlaps); large (compacted) parts are streamed in
        record batches, one part at a time. Memory is bounded by the budget, not by the table.
        """
        parts = self._part_files("images")
        if not parts:
            return
        read_columns = list(dict.fromkeys([*columns, "uri", "status", "created_at", "labeling_id"]))
        schema = stored_schema("images", self.format_version)
        wanted = pc.field("config_hash") == config_hash
        parquet = ds.ParquetFileFormat()

        def fragment(path: str) -> ds.Fragment:
            frag = parquet.make_fragment(path, filesystem=self._arrow_fs)
            part = self.relative(path)
            with reading_part(self.url, part):
                check_part_schema(self.url, part, frag.physical_schema, schema)
            return frag

        def read_whole(path: str) -> pa.Table:
            # The table schema makes older parts with fewer columns read as nulls.
            with reading_part(self.url, self.relative(path)):
                return fragment(path).to_table(schema=schema, columns=read_columns, filter=wanted, use_threads=False)

        pool = ThreadPoolExecutor(max_workers=_SCAN_THREADS, thread_name_prefix="maskclip-scan")
        window: deque[tuple[Future[pa.Table], int]] = deque()
        window_bytes = 0
        try:
            for path, size in parts:
                if size > _SCAN_SMALL_PART_BYTES:
                    while window:
                        yield from window.popleft()[0].result().to_batches(max_chunksize=_SCAN_BATCH_ROWS)
                    window_bytes = 0
                    scanner = ds.Scanner.from_fragment(
                        fragment(path),
                        schema=schema,
                        columns=read_columns,
                        filter=wanted,
                        batch_size=_SCAN_BATCH_ROWS,
                        batch_readahead=2,
                    )
                    with reading_part(self.url, self.relative(path)):
                        yield from scanner.to_batches()
                    continue
                while window and (len(window) >= 2 * _SCAN_THREADS or window_bytes + size > _SCAN_WINDOW_BYTES):
                    future, done_size = window.popleft()
                    window_bytes -= done_size
                    yield from future.result().to_batches(max_chunksize=_SCAN_BATCH_ROWS)
                window.append((pool.submit(read_whole, path), size))
                window_bytes += size
            while window:
                yield from window.popleft()[0].result().to_batches(max_chunksize=_SCAN_BATCH_ROWS)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def compact_images(self, *, min_parts: int = 64, max_rows: int = 250_000) -> dict[str, int]:
        """Merge small images part files into a few large ones; returns counts of parts merged and written.

        The incremental index is read per part file, and a run writes one images part per batch, so a
        million images in batches of 16 are 62,500 files whose per-file cost (an object-store round trip)
        dominates. Merging changes no row: the merged part is written whole first (named after its members,
        so a retry after a crash rewrites the same file), then its members are deleted. A reader in between
        sees rows twice, which every reader tolerates (the current row of a file is picked per uri and
        config; index sets ignore repeats). Annotations parts are left alone: a labeling's annotations stay
        in the one part its batch wrote, which the exporters rely on.
        """
        small = [path for path, size in self._part_files("images") if size <= _SCAN_SMALL_PART_BYTES]
        if len(small) < min_parts:
            return {"merged_parts": 0, "written_parts": 0}
        schema = stored_schema("images", self._writable_version())
        merged = written = 0
        group: list[str] = []
        tables: list[pa.Table] = []
        rows = 0

        def flush() -> None:
            nonlocal merged, written, rows
            if len(group) > 1:
                name = "compact-" + hashlib.sha256("\n".join(group).encode()).hexdigest()[:24]
                atomic_write_bytes(
                    self._part_url("images", name), parquet_bytes(pa.concat_tables(tables)), self.storage_options
                )
                self.fs.rm(list(group))
                merged += len(group)
                written += 1
            group.clear()
            tables.clear()
            rows = 0

        parquet = ds.ParquetFileFormat()
        for path in small:
            # The table schema makes older parts with fewer columns read as nulls.
            fragment = parquet.make_fragment(path, filesystem=self._arrow_fs)
            with reading_part(self.url, self.relative(path)):
                check_part_schema(self.url, self.relative(path), fragment.physical_schema, schema)
                table = fragment.to_table(schema=schema)
            if rows + table.num_rows > max_rows and group:
                flush()
            group.append(path)
            tables.append(table)
            rows += table.num_rows
        flush()
        return {"merged_parts": merged, "written_parts": written}

    def _part_files(self, table: str) -> list[tuple[str, int]]:
        """(path, size) of the visible files of one table, sorted; names starting with ``_`` or ``.`` (in the
        file name or a folder under the table) are skipped, as pyarrow's dataset discovery does."""
        path = f"{self.root}/{table}"
        self.fs.invalidate_cache(path)  # s3fs caches listings; other writers may have added parts
        try:
            infos = self._arrow_fs.get_file_info(pafs.FileSelector(path, recursive=True))
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

    def images(self, config_hash: str | None = None, statuses: Collection[str] | None = None) -> pa.Table:
        """Current images rows: the newest ``created_at`` per (uri, config_hash), sorted by uri.

        The dataset follows its source: a file edited in place shows only its newest content, a file that
        left the source shows a ``gone`` row (never selected by an export's statuses), and two files with
        identical bytes are two rows (sharing one labeling). ``statuses`` filters after picking the current
        row, so an image whose newest labeling failed does not show its older labeled row.
        """
        table = self.history(config_hash, current_only=True)
        if table.num_rows == 0:
            return table
        if statuses is not None:
            table = table.filter(pc.is_in(table["status"], value_set=pa.array(list(statuses), pa.string())))
        return table

    def history(self, config_hash: str | None = None, *, current_only: bool = False) -> pa.Table:
        """Every images row ever written (the dataset's history), sorted by uri, config and time, with a
        ``current`` column: True on the newest row of each (uri, config_hash), the one exports show."""
        wanted = None if config_hash is None else pc.field("config_hash") == config_hash
        table = self.read_table("images", filter=wanted)
        if current_only:
            return _current_rows(table)
        numbered = table.append_column("_row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
        flags = pc.is_in(numbered["_row"], value_set=_current_rows(numbered)["_row"].combine_chunks())
        table = table.append_column("current", flags)
        return table.sort_by([("uri", "ascending"), ("config_hash", "ascending"), ("created_at", "ascending")])

    def content_labelings(self, config_hash: str, sha256s: Collection[str]) -> dict[str, dict[str, Any]]:
        """The newest current labeled / rejected row of each of these contents under ``config_hash``.

        A file whose bytes are already labeled (renamed, copied, restored) gets a row of its own that points
        at this labeling (same ``labeling_id``: its annotations are shared), instead of being labeled again.
        """
        if not sha256s:
            return {}
        wanted = (pc.field("config_hash") == config_hash) & pc.field("sha256").isin(pa.array(sorted(sha256s)))
        table = self.read_table("images", filter=wanted)
        if table.num_rows == 0:
            return {}
        # Current rows of every uri holding one of these contents, then the newest per content.
        uris = pc.unique(table["uri"])
        rows = self.read_table("images", filter=(pc.field("config_hash") == config_hash) & pc.field("uri").isin(uris))
        current = _current_rows(rows)
        current = current.filter(pc.is_in(current["status"], value_set=pa.array(list(DONE_STATUSES))))
        current = current.sort_by([("created_at", "descending"), ("labeling_id", "descending")])
        out: dict[str, dict[str, Any]] = {}
        for row in current.to_pylist():
            if row["sha256"] in sha256s:
                out.setdefault(row["sha256"], row)
        return out

    def annotations(
        self,
        image_ids: Collection[int] | None = None,
        *,
        config_hash: str | None = None,
        statuses: Collection[str] = ("labeled",),
    ) -> pa.Table:
        """Annotations of the current labelings (with ``statuses``), sorted by image_id, category_id.

        Annotations whose labeling has no current images row (crash orphans, superseded labelings) are left
        out; duplicates of one id (a batch written twice under two part names) appear once.
        """
        current = self.images(config_hash=config_hash, statuses=statuses)
        if image_ids is not None:
            current = current.filter(pc.is_in(current["image_id"], value_set=pa.array(list(image_ids), pa.int64())))
        return self.annotations_for_labelings(current["labeling_id"], image_ids)

    def categories(self) -> list[dict[str, Any]]:
        """All categories by id, as ``{"id", "name", "synonyms"}``; a name seen twice keeps its lowest id."""
        # Each small part is fetched whole with one GET: a dataset scan would HEAD each part through s3fs's
        # listing cache, which can miss a part another writer added a moment ago.
        schema = stored_schema("categories", self.format_version)
        rows: list[dict[str, Any]] = []
        for path, _ in self._part_files("categories"):
            part = self.relative(path)
            with reading_part(self.url, part):
                parquet_file = pq.ParquetFile(io.BytesIO(self.fs.cat_file(path)))
                check_part_schema(self.url, part, parquet_file.schema_arrow, schema)
                table = parquet_file.read(columns=[n for n in schema.names if n in parquet_file.schema_arrow.names])
            rows.extend(self.current_names(table, "categories").cast(CATEGORIES_SCHEMA).to_pylist())
        best: dict[str, dict[str, Any]] = {}
        for row in rows:
            if row["name"] not in best or row["id"] < best[row["name"]]["id"]:
                best[row["name"]] = {**row, "synonyms": list(row["synonyms"] or [])}
        return sorted(best.values(), key=lambda c: c["id"])

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
        labeler's class order on a fresh dataset.
        """
        if category_to_index is None:
            category_to_index = {c["id"]: i for i, c in enumerate(self.categories())}
        current = self.images(config_hash=config_hash, statuses=statuses)
        if image_ids is not None:
            current = current.filter(pc.is_in(current["image_id"], value_set=pa.array(list(image_ids), pa.int64())))
        anns = self.annotations_for_labelings(current["labeling_id"], image_ids).select(
            ["labeling_id", "id", "category_id", "segmentation"]
        )
        by_labeling: dict[str, list[dict[str, Any]]] = {}
        for ann in anns.to_pylist():
            by_labeling.setdefault(ann["labeling_id"], []).append(ann)
        for row in current.to_pylist():
            if row["height"] is None or row["width"] is None:
                continue  # failed before decoding: there is no image to paint
            label_map = annotations_to_label_map(
                by_labeling.get(row["labeling_id"], []), row["height"], row["width"], category_to_index
            )
            yield row, label_map

    def annotations_for_labelings(
        self,
        labeling_ids: pa.ChunkedArray | pa.Array | Sequence[str],
        image_ids: Iterable[int] | None = None,
    ) -> pa.Table:
        """Annotations of exactly these labelings (e.g. ``images()["labeling_id"]``), deduplicated by id.

        Callers that already hold an images table use this to read one consistent snapshot.
        """
        if not isinstance(labeling_ids, pa.Array | pa.ChunkedArray):
            labeling_ids = pa.array(list(labeling_ids), pa.string())
        if len(labeling_ids) == 0:
            return ANNOTATIONS_SCHEMA.empty_table()
        wanted = pc.field("labeling_id").isin(pc.unique(labeling_ids))
        if image_ids is not None:  # lets Parquet statistics skip row groups
            wanted = wanted & pc.field("image_id").isin(pa.array(list(image_ids), pa.int64()))
        table = self.read_table("annotations", filter=wanted)
        table = table.sort_by([("image_id", "ascending"), ("category_id", "ascending"), ("id", "ascending")])
        return _drop_repeats(table, ["id"])

    # --- internals ----------------------------------------------------------------------------------

    def _part_url(self, table: str, part_name: str) -> str:
        return join_url(self.url, table, f"part-{part_name}.parquet")

    def relative(self, path: str) -> str:
        """``images/part-x.parquet`` for a part's path: how messages name it."""
        return path[len(self.root) :].lstrip("/") if path.startswith(self.root) else path

    def verify_parts(self) -> None:
        """Raise :class:`DatasetDamaged` for the first part whose footer or schema is bad (reads no rows)."""
        for table in ("images", "annotations"):
            self.table_dataset(table)
        self.categories()

    def table_dataset(self, table: str) -> ds.Dataset | None:
        """The pyarrow dataset of one table in its stored column names, or None when nothing was written yet.

        Every part's footer and schema are checked first, so a damaged or foreign part is refused with
        :class:`~maskclip_core.dataset.integrity.DatasetDamaged` naming it (and the repair command).
        """
        schema = stored_schema(table, self.format_version)
        dataset = open_dataset(self.fs, f"{self.root}/{table}", schema, self._arrow_fs)
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
        differ)."""
        dataset = self.table_dataset(table)
        if dataset is None:
            return TABLES[table].empty_table()
        with reading_part(self.url, f"{table}/"):
            return self.current_names(dataset.to_table(filter=filter), table)


# --- row validation -------------------------------------------------------------------------------------


def _image_row(row: Mapping[str, Any], bits: int) -> dict[str, Any]:
    _check_keys(row, IMAGES_SCHEMA, "images")
    out = {name: row.get(name) for name in IMAGES_SCHEMA.names}
    if out["created_at"] is None:
        out["created_at"] = utc_now()
    _check_required(out, IMAGES_SCHEMA, "images")
    if out["status"] not in ROW_STATUSES:
        raise ValueError(f"images row {out['uri']}: status {out['status']!r} not in {ROW_STATUSES}")
    if out["labeler"] not in LABELERS:
        raise ValueError(f"images row {out['uri']}: labeler {out['labeler']!r} not in {LABELERS}")
    if out["status"] in DONE_STATUSES and (out["sha256"] is None or out["image_id"] is None):
        raise ValueError(f"images row {out['uri']}: a {out['status']} row needs sha256 and image_id")
    if out["sha256"] is not None and out["image_id"] is not None:
        if image_id_from_sha256(out["sha256"], bits) != out["image_id"]:
            raise ValueError(f"images row {out['uri']}: image_id does not derive from sha256 in {bits} bits")
    if out["status"] == "labeled" and (out["width"] is None or out["height"] is None):
        raise ValueError(f"images row {out['uri']}: a labeled row needs width and height")
    return out


def _annotation_row(row: Mapping[str, Any]) -> dict[str, Any]:
    _check_keys(row, ANNOTATIONS_SCHEMA, "annotations")
    out = {name: row.get(name) for name in ANNOTATIONS_SCHEMA.names}
    _check_required(out, ANNOTATIONS_SCHEMA, "annotations")
    return out


def _check_keys(row: Mapping[str, Any], schema: pa.Schema, table: str) -> None:
    unknown = set(row) - set(schema.names)
    if unknown:
        raise ValueError(f"{table} row has unknown fields {sorted(unknown)}")


def _check_required(row: Mapping[str, Any], schema: pa.Schema, table: str) -> None:
    missing = [f.name for f in schema if not f.nullable and row.get(f.name) is None]
    if missing:
        raise ValueError(f"{table} row is missing required fields {missing}")


def _check_annotations_committed_by(annotations: list[dict[str, Any]], images: list[dict[str, Any]]) -> None:
    """Each annotation needs a labeled images row in the same batch, or it would stay invisible forever."""
    labeled = {r["labeling_id"]: r["image_id"] for r in images if r["status"] == "labeled"}
    for ann in annotations:
        if ann["labeling_id"] not in labeled:
            raise ValueError(f"annotation {ann['id']}: labeling {ann['labeling_id']!r} has no labeled images row")
        if labeled[ann["labeling_id"]] != ann["image_id"]:
            raise ValueError(f"annotation {ann['id']}: image_id differs from its images row")


# --- table helpers --------------------------------------------------------------------------------------

_HEX_NIBBLES = np.full(256, 255, dtype=np.uint8)
_HEX_NIBBLES[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)
_HEX_NIBBLES[np.frombuffer(b"ABCDEF", dtype=np.uint8)] = np.arange(10, 16, dtype=np.uint8)


def _hex_prefix_digests(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """:func:`~maskclip_core.dataset.digests.sha256_digest` of each non-null hex string, as an ``S16`` array.

    Vectorised (no Python object per row); a column with a value that is not at least 32 hex digits takes
    the per-value path, which raises as :func:`sha256_digest` does.
    """
    values = pc.drop_null(values)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    n = len(values)
    width = 2 * DIGEST_BYTES
    if n == 0:
        return np.empty(0, dtype=f"S{DIGEST_BYTES}")
    head = pc.utf8_slice_codeunits(values, 0, width)
    if pc.min(pc.binary_length(head)).as_py() == width:
        fixed = head.cast(pa.binary(width))
        chars = np.frombuffer(fixed.buffers()[1], dtype=np.uint8)[fixed.offset * width : (fixed.offset + n) * width]
        nibbles = _HEX_NIBBLES[chars].reshape(n, width)
        if not (nibbles == 255).any():
            digests = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
            return np.ascontiguousarray(digests).view(f"S{DIGEST_BYTES}").reshape(n)
    digests = [sha256_digest(v) for v in values.to_pylist()]
    short = next((v for v, d in zip(values.to_pylist(), digests, strict=True) if len(d) != DIGEST_BYTES), None)
    if short is not None:
        raise ValueError(f"sha256 {short!r} is not a hex SHA-256")
    return np.array(digests, dtype=f"S{DIGEST_BYTES}")


def _current_rows(table: pa.Table) -> pa.Table:
    """Newest row per (uri, config_hash); ties broken by labeling_id for determinism."""
    if table.num_rows == 0:
        return table
    work = table.append_column("_key", table["uri"])
    work = work.sort_by(
        [
            ("_key", "ascending"),
            ("config_hash", "ascending"),
            ("created_at", "descending"),
            ("labeling_id", "descending"),
        ]
    )
    current = _drop_repeats(work, ["_key", "config_hash"]).drop_columns(["_key"])
    return current.sort_by([("uri", "ascending"), ("config_hash", "ascending")])


def _drop_repeats(table: pa.Table, keys: Sequence[str]) -> pa.Table:
    """Keep the first row of each run of equal ``keys`` in an already sorted table."""
    n = table.num_rows
    if n <= 1:
        return table
    same = None
    for name in keys:
        col = table[name].combine_chunks()
        eq = pc.fill_null(pc.equal(col.slice(1), col.slice(0, n - 1)), False)
        same = eq if same is None else pc.and_(same, eq)
    first = pa.concat_arrays([pa.array([True]), pc.invert(same)])
    return table.filter(first)


def _uri_keys(uris: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit key per uri (the head of its SHA-256): collisions are out of reach below ~4 billion uris."""
    return np.array(
        [int.from_bytes(hashlib.sha256(u.encode()).digest()[:8], "big", signed=True) for u in uris.to_pylist()],
        dtype=np.int64,
    )


def _labeling_tiebreak(labeling_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The order of labeling ids among rows of one uri and time (as ``_current_rows`` breaks ties)."""
    out = np.zeros(len(labeling_ids), dtype=np.int64)
    for i, lid in enumerate(labeling_ids.to_pylist()):
        head = lid[:15]
        try:
            out[i] = int(head, 16)
        except ValueError:  # not hex (another tool's id): a stable number that sorts the same way per id
            out[i] = int.from_bytes(head.encode().ljust(8, b"\0")[:7], "big")
    return out
