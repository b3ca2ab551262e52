"""The known-image index of a config: which contents and which listed files a run need not label again.

:func:`known_sha256`, :func:`known_sha256_digests` and :func:`known_sources` read the *current* rows
(``dataset.current_rows``, streaming strategy) that are labeled or rejected under one config. They stream the
images parts (:func:`scan_config`) in two passes, so memory holds a few numbers per row, not the rows,
however large the dataset.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from maskclip_core.dataset.current_rows import newest_mask
from maskclip_core.dataset.digests import DIGEST_BYTES, DigestSet, DigestSetBuilder, sha256_digest, source_digest
from maskclip_core.dataset.integrity import reading_part
from maskclip_core.dataset.parts import DatasetParts
from maskclip_core.dataset.schema import DONE_STATUSES, stored_schema

# Small parts are read whole, a few at once; larger (compacted) ones are streamed. ``dataset.compaction``
# merges the small ones.
SMALL_PART_BYTES = 1024 * 1024
# Small batches keep known_sha256's memory flat however large the dataset.
_SCAN_BATCH_ROWS = 64 * 1024
# The index reads small part files (the flow's one per batch: KBs) this many at once, within this many bytes
# in flight; larger (compacted) parts are streamed in record batches, one part at a time.
_SCAN_THREADS = 4
_SCAN_WINDOW_BYTES = 32 * 1024 * 1024


def known_sha256(parts: DatasetParts, config_hash: str) -> set[str]:
    """SHA-256 of the content of the *current* rows (newest per uri) labeled or rejected under ``config_hash``.

    A uri whose newest row failed, or which left the source (``gone``), does not count: its content is
    relabeled, not taken over from a labeling that no current file shows.
    """
    known: set[str] = set()
    for batch, current in scan_current(parts, config_hash, ["sha256"]):
        shas = batch.column("sha256").to_pylist()
        known.update(shas[i] for i in np.flatnonzero(current) if shas[i] is not None)
    return known


def known_sha256_digests(parts: DatasetParts, config_hash: str) -> DigestSet:
    """Like :func:`known_sha256`, as a compact :class:`DigestSet` of 16-byte digest prefixes."""
    builder = DigestSetBuilder()
    for batch, current in scan_current(parts, config_hash, ["sha256"]):
        column = batch.column("sha256").filter(pa.array(current))
        builder.add_array(_hex_prefix_digests(column))
    return builder.build()


def known_sources(parts: DatasetParts, config_hash: str) -> DigestSet:
    """Digests of the (uri, source_version) of the current rows labeled or rejected under ``config_hash``.

    Lets a re-run skip a listed file whose listing metadata did not change WITHOUT reading its bytes
    (:func:`maskclip_core.dataset.digests.source_digest` of ``SourceFile.uri`` and ``SourceFile.version``).
    Only the newest row of a uri counts, so a file restored with its old version token after it was
    marked gone, or reverted after an edit, is read again. Rows without a source_version (written by other
    tools) are left out, so their files are read and matched by SHA-256.
    """
    builder = DigestSetBuilder()
    for batch, current in scan_current(parts, config_hash, ["source_version"]):
        uris = batch.column("uri").to_pylist()
        versions = batch.column("source_version").to_pylist()
        builder.extend(source_digest(uris[i], versions[i]) for i in np.flatnonzero(current) if versions[i] is not None)
    return builder.build()


def scan_current(
    parts: DatasetParts, config_hash: str, columns: list[str]
) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    """Record batches of the rows under ``config_hash`` with a mask of those that are current and done.

    Two streaming passes over one listing: the first finds the newest row of each uri (:func:`newest_mask`),
    the second yields the batches again with the mask. A part that a compaction merged away meanwhile (its
    merged part written first) makes the scan start again once over a fresh listing: batches may then repeat,
    which the callers, building sets, do not mind.
    """
    for attempt in (1, 2):
        files = parts.part_files("images")
        try:
            yield from _scan_current(parts, config_hash, columns, files)
            return
        except FileNotFoundError:
            if attempt == 2:
                raise


def _scan_current(
    parts: DatasetParts, config_hash: str, columns: list[str], files: list[tuple[str, int]]
) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    newest = newest_mask(scan_config(parts, config_hash, [], files=files))
    if newest.size == 0:
        return
    offset = 0
    for batch in scan_config(parts, config_hash, columns, files=files):
        n = batch.num_rows
        status = batch.column("status")
        done = pc.is_in(status, value_set=pa.array(list(DONE_STATUSES))).to_numpy(zero_copy_only=False)
        yield batch, newest[offset : offset + n] & done
        offset += n


def scan_config(
    parts: DatasetParts, config_hash: str, columns: list[str], *, files: list[tuple[str, int]] | None = None
) -> Iterator[pa.RecordBatch]:
    """Record batches of ``columns`` (with uri, status, created_at, labeling_id) of the rows under
    ``config_hash`` in ``files`` (default: a fresh listing of the images parts), in the same order on every
    call over the same files.

    Part file by part file, never one pyarrow dataset over all of them: a dataset keeps state for each
    fragment it scanned (~50 KB, measured), and the flow writes one images part per batch, so a million
    images in batches of 16 (62,500 parts) would cost GBs. Small parts are read whole by a few threads at
    once within a byte budget (object-store latency overlaps); large (compacted) parts are streamed in
    record batches, one part at a time. Memory is bounded by the budget, not by the table.
    """
    files = parts.part_files("images") if files is None else files
    if not files:
        return
    read_columns = list(dict.fromkeys([*columns, "uri", "status", "created_at", "labeling_id"]))
    schema = stored_schema("images", parts.format_version)
    wanted = pc.field("config_hash") == config_hash

    def read_whole(path: str) -> pa.Table:
        # The table schema makes older parts with fewer columns read as nulls.
        with reading_part(parts.url, parts.relative(path)):
            fragment = parts.checked_fragment(path, schema)
            return fragment.to_table(schema=schema, columns=read_columns, filter=wanted, use_threads=False)

    def stream(path: str) -> Iterator[pa.RecordBatch]:
        scanner = ds.Scanner.from_fragment(
            parts.checked_fragment(path, schema),
            schema=schema,
            columns=read_columns,
            filter=wanted,
            batch_size=_SCAN_BATCH_ROWS,
            batch_readahead=2,
        )
        with reading_part(parts.url, parts.relative(path)):
            yield from scanner.to_batches()

    pool = ThreadPoolExecutor(max_workers=_SCAN_THREADS, thread_name_prefix="maskclip-scan")
    window: deque[tuple[Future[pa.Table], int]] = deque()
    window_bytes = 0
    try:
        for path, size in files:
            if size > SMALL_PART_BYTES:
                while window:
                    yield from window.popleft()[0].result().to_batches(max_chunksize=_SCAN_BATCH_ROWS)
                window_bytes = 0
                yield from stream(path)
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
