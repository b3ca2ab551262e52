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


def source_digest(uri: str, version: str) -> bytes:
    """Digest of a listed file's identity: its URI and its change token (``SourceFile.version``)."""
    return hashlib.sha256(f"{uri}{_SEPARATOR}{version}".encode()).digest()[:DIGEST_BYTES]


def sha256_digest(hex_digest: str) -> bytes:
    """The first 16 bytes of a hex SHA-256 (an image's content identity)."""
    return bytes.fromhex(hex_digest[: 2 * DIGEST_BYTES])


class DigestSet:
    """An immutable set of 16-byte digests: a sorted, deduplicated numpy array searched by bisection.

    Build it with :class:`DigestSetBuilder` (streaming) or :meth:`from_iterable`.
    """

    __slots__ = ("_sorted",)

    def __init__(self, digests: np.ndarray | None = None) -> None:
        if digests is None:
            digests = np.empty(0, dtype=_DTYPE)
        if digests.dtype != _DTYPE:
            raise TypeError(f"expected dtype {_DTYPE}, got {digests.dtype}")
        self._sorted = np.unique(digests)  # sorts and deduplicates

    @classmethod
    def from_iterable(cls, digests: Iterable[bytes]) -> DigestSet:
        builder = DigestSetBuilder()
        builder.extend(digests)
        return builder.build()

    def __len__(self) -> int:
        return int(self._sorted.size)

    def __contains__(self, digest: object) -> bool:
        if not isinstance(digest, bytes) or len(digest) != DIGEST_BYTES or not self._sorted.size:
            return False
        key = np.array(digest, dtype=_DTYPE)
        i = int(np.searchsorted(self._sorted, key))
        # numpy's S dtype compares with trailing NULs stripped on both sides; with equal-length digests
        # that is still exact equality.
        return i < self._sorted.size and self._sorted[i] == key

    @property
    def nbytes(self) -> int:
        return int(self._sorted.nbytes)

    def __repr__(self) -> str:
        return f"DigestSet({len(self)} digests, {self.nbytes} bytes)"


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
