"""The dataset's id scheme: ids that are the same on every run, below 2**53 for JavaScript tools."""

from __future__ import annotations

import hashlib

# Joins id parts; a control character cannot appear in the hashes, names and numbers we join.
_ID_SEPARATOR = "\x1f"


# Ids below 2**53 survive JavaScript's doubles (Label Studio, CVAT, browsers hold ids as Number). Datasets of
# format versions 1 and 2 used 63 bits; their ids keep that width (``dataset.manifest.id_bits``).
ID_BITS = 53


def stable_id(*parts: object, bits: int = ID_BITS) -> int:
    """First ``bits`` bits of sha256 of the joined parts: a non-negative id that is the same on every run."""
    digest = hashlib.sha256(_ID_SEPARATOR.join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - _check_bits(bits))


def image_id_from_sha256(hex_digest: str, bits: int = ID_BITS) -> int:
    """``image_id`` of an image: the first ``bits`` bits of the SHA-256 of its bytes."""
    if len(hex_digest) != 64:
        raise ValueError(f"expected a 64-character hex SHA-256, got {hex_digest!r}")
    return int(hex_digest[:16], 16) >> (64 - _check_bits(bits))


def _check_bits(bits: int) -> int:
    if not 1 <= bits <= 63:  # int64 columns: at most 63 bits keep ids non-negative
        raise ValueError(f"id width must be 1..63 bits, got {bits}")
    return bits
