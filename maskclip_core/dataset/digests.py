"""Compact sets of 16-byte digests: the incremental index of a labeling run, ~16 bytes per image.

A Python ``set`` of 64-character hex strings costs ~150 bytes per entry; a sorted numpy array of the first
16 bytes of each digest costs 16, so a million known images take 16 MB. 128 bits keep accidental
collisions out of reach (the birthday bound is ~2**64 entries).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

DIGEST_BYTES = 16
_DTYPE = np.dtype(f"S{DIGEST_BYTES}")
_SEPARATOR = "\x1f"  # cannot appear in URIs or version tokens
_PREFIX_BITS = 24  # the bucket of a digest is read from its first 3 bytes
_MAX_BUCKET_BITS = 24  # at most 16 Mi buckets (128 MB of offsets): beyond ~128 M digests buckets grow


def source_digest(uri: str, version: str) -> bytes:
    """Digest of a listed file's identity: its URI and its change token (``SourceFile.version``)."""
    return hashlib.sha256(f"{uri}{_SEPARATOR}{version}".encode()).digest()[:DIGEST_BYTES]


def sha256_digest(hex_digest: str) -> bytes:
    """The first 16 bytes of a hex SHA-256 (an image's content identity)."""
    return bytes.fromhex(hex_digest[: 2 * DIGEST_BYTES])


class DigestSet:
    """An immutable set of 16-byte digests: a sorted, deduplicated array with a bucket table.

    The digests are uniformly distributed, so their leading bits index a table of bucket starts (about 4 to 8
    digests per bucket, ~1 byte per digest) and a lookup is one slice search of the bucket's ~100 bytes:
    constant time (about a microsecond) however large the set, no Python object per entry. Build it with
    :class:`DigestSetBuilder` (streaming) or :meth:`from_iterable`.
    """

    __slots__ = ("_blob", "_sorted", "_starts", "_shift")

    def __init__(self, digests: np.ndarray | None = None) -> None:
        if digests is None:
            digests = np.empty(0, dtype=_DTYPE)
        if digests.dtype != _DTYPE:
            raise TypeError(f"expected dtype {_DTYPE}, got {digests.dtype}")
        self._set_sorted(np.unique(digests).tobytes())  # sorts and deduplicates

    def _set_sorted(self, blob: bytes) -> None:
        self._blob = blob  # the sorted digests back to back: lookups search it without numpy's per-call cost
        self._sorted = np.frombuffer(blob, dtype=_DTYPE)  # a view, no copy
        n = self._sorted.size
        bits = min(_MAX_BUCKET_BITS, max(0, n.bit_length() - 3))
        self._shift = _PREFIX_BITS - bits
        head = np.frombuffer(blob, dtype=np.uint8).reshape(n, DIGEST_BYTES)[:, :3].astype(np.uint32)
        prefixes = ((head[:, 0] << 16) | (head[:, 1] << 8) | head[:, 2]) >> self._shift
        starts = np.searchsorted(prefixes, np.arange((1 << bits) + 1, dtype=np.uint32)).astype(np.int64)
        self._starts = memoryview(starts * DIGEST_BYTES)  # byte offsets; indexing gives plain ints

    def __reduce__(self) -> tuple:
        return (_digest_set_from_sorted, (self._blob,))

    @classmethod
    def from_iterable(cls, digests: Iterable[bytes]) -> DigestSet:
        builder = DigestSetBuilder()
        builder.extend(digests)
        return builder.build()

    def __len__(self) -> int:
        return int(self._sorted.size)

    def __contains__(self, digest: object) -> bool:
        if not isinstance(digest, bytes) or len(digest) != DIGEST_BYTES:
            return False
        bucket = int.from_bytes(digest[:3], "big") >> self._shift
        lo, hi = self._starts[bucket], self._starts[bucket + 1]
        blob = self._blob
        i = blob.find(digest, lo, hi)
        while i >= 0:
            if (i - lo) % DIGEST_BYTES == 0:  # a match straddling two digests does not count
                return True
            i = blob.find(digest, i + 1, hi)
        return False

    @property
    def nbytes(self) -> int:
        return int(self._sorted.nbytes)

    def __repr__(self) -> str:
        return f"DigestSet({len(self)} digests, {self.nbytes} bytes)"


def _digest_set_from_sorted(blob: bytes) -> DigestSet:
    """Unpickle: the sorted digests as they were (the bucket table is rebuilt, not shipped)."""
    out = DigestSet.__new__(DigestSet)
    out._set_sorted(blob)
    return out


class DigestSetBuilder:
    """Collects digests in fixed-size numpy chunks (no per-entry Python objects are kept)."""

    def __init__(self, chunk: int = 64 * 1024) -> None:
        self._chunks: list[np.ndarray] = []
        self._pending: list[bytes] = []
        self._chunk = chunk

    def add(self, digest: bytes) -> None:
        if len(digest) != DIGEST_BYTES:
            raise ValueError(f"a digest has {DIGEST_BYTES} bytes, got {len(digest)}")
        self._pending.append(digest)
        if len(self._pending) >= self._chunk:
            self._flush()

    def extend(self, digests: Iterable[bytes]) -> None:
        for digest in digests:
            self.add(digest)

    def add_array(self, digests: np.ndarray) -> None:
        """Add a whole ``S16`` array at once (e.g. parsed column-wise from Parquet)."""
        if digests.dtype != _DTYPE:
            raise TypeError(f"expected dtype {_DTYPE}, got {digests.dtype}")
        if digests.size:
            self._flush()
            self._chunks.append(digests.copy())  # build() deduplicates; a per-chunk sort would double the work

    def _flush(self) -> None:
        if self._pending:
            # Deduplicate each chunk early: re-labelings of one image would otherwise pile up.
            self._chunks.append(np.unique(np.array(self._pending, dtype=_DTYPE)))
            self._pending = []

    def build(self) -> DigestSet:
        self._flush()
        if not self._chunks:
            return DigestSet()
        merged = np.concatenate(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
        self._chunks = []
        return DigestSet(merged)
