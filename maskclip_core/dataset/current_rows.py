"""Which images row is current: the one rule every reader of the dataset follows, in its two strategies.

The rule: among the images rows of one uri under one ``config_hash``, the current row is the one with the
newest ``created_at``; rows of the same instant are ordered by ``labeling_id``, the larger winning, so every
reader picks the same row whatever order the parts were written or listed in. Older rows are history
(``LabelDataset.history``); annotations count only through a current row (see ``dataset.label_dataset``).

It is applied two ways, side by side here and checked against each other by tests/dataset/test_current_rows.py:

- :func:`current_rows` sorts an Arrow table held in memory (``LabelDataset.images`` and ``history``, content
  labelings): the newest row of each (uri, config_hash).
- :func:`newest_mask` streams the record batches of one config (the known-image index, ``dataset.known_index``)
  holding ~32 bytes per row, never the rows: a 64-bit key per uri, the time and a 64-bit tiebreak.

Both order a uri's rows by :data:`NEWEST_FIRST`; :func:`_labeling_tiebreak` is the number that sorts as
``labeling_id`` does for the ids this project writes (32 lowercase hex digits, ``labeling.config_hash``): it
reads their first 15 digits, so the strategies agree unless two rows of one uri, config and instant share
those 60 bits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# The order of the rows of one uri under one config, current first.
NEWEST_FIRST: tuple[tuple[str, str], ...] = (("created_at", "descending"), ("labeling_id", "descending"))


def current_rows(table: pa.Table) -> pa.Table:
    """Arrow strategy: the newest row per (uri, config_hash) of an images table, sorted by uri, config_hash.

    ``table`` needs the columns uri, config_hash, created_at and labeling_id; other columns ride along.
    """
    if table.num_rows == 0:
        return table
    work = table.append_column("_key", table["uri"])
    work = work.sort_by([("_key", "ascending"), ("config_hash", "ascending"), *NEWEST_FIRST])
    current = drop_repeats(work, ["_key", "config_hash"]).drop_columns(["_key"])
    return current.sort_by([("uri", "ascending"), ("config_hash", "ascending")])


def newest_mask(batches: Iterable[pa.RecordBatch]) -> np.ndarray:
    """Streaming strategy: a mask over the rows of ``batches``, in order, True on the newest row of each uri.

    Every row must be under one config (the caller filters on it). The batches need the columns uri,
    created_at and labeling_id; they are consumed as they come, keeping only the keys of each row.
    """
    keys: list[np.ndarray] = []
    times: list[np.ndarray] = []
    ties: list[np.ndarray] = []
    for batch in batches:
        keys.append(_uri_keys(batch.column("uri")))
        times.append(batch.column("created_at").cast(pa.int64()).to_numpy(zero_copy_only=False))
        ties.append(_labeling_tiebreak(batch.column("labeling_id")))
    if not keys:
        return np.zeros(0, dtype=bool)
    key, time_, tie = np.concatenate(keys), np.concatenate(times), np.concatenate(ties)
    del keys, times, ties
    order = np.lexsort((-tie, -time_, key))  # NEWEST_FIRST within a uri
    first = np.ones(order.size, dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    newest = np.zeros(order.size, dtype=bool)
    newest[order[first]] = True
    return newest


def drop_repeats(table: pa.Table, keys: Sequence[str]) -> pa.Table:
    """Keep the first row of each run of equal ``keys`` in an already sorted table (the current row of each
    uri here; the one copy of an annotation id written twice in ``dataset.reads``)."""
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
    """The order of labeling ids among rows of one uri and time, as :data:`NEWEST_FIRST` sorts them."""
    out = np.zeros(len(labeling_ids), dtype=np.int64)
    for i, lid in enumerate(labeling_ids.to_pylist()):
        head = lid[:15]
        try:
            out[i] = int(head, 16)
        except ValueError:  # not hex (another tool's id): a stable number that sorts the same way per id
            out[i] = int.from_bytes(head.encode().ljust(8, b"\0")[:7], "big")
    return out
