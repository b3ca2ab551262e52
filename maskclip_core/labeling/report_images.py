"""Overlay thumbnails as images a browser can show wherever the report is read.

A Prefect UI in a browser cannot open ``/local/path.jpg`` nor, usually, ``s3://bucket/key``: the report artifact
embeds each thumbnail as a small ``data:`` URI (self-contained, never expires, needs no storage access from the
viewer). ``presigned`` links to the stored JPEG instead, through a time-limited S3 URL (smaller artifacts, but
the viewer must reach the endpoint and the link expires). The stored ``reports/<run>.md`` links the thumbnails
relatively, so it renders next to the dataset.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import fsspec
from PIL import Image

log = logging.getLogger(__name__)

ImageMode = Literal["inline", "presigned"]
INLINE_SIDE = 200  # pixels of the longer side in the artifact
INLINE_QUALITY = 70
INLINE_MAX_BYTES = 48_000  # per image, after base64: a page of 8 stays well under half a megabyte
PRESIGNED_EXPIRY_S = 7 * 24 * 3600  # S3's maximum for SigV4 links


def inline_jpeg(data: bytes, *, side: int = INLINE_SIDE, quality: int = INLINE_QUALITY) -> str:
    """``data:image/jpeg;base64,...`` of the image in ``data``, shrunk to at most ``side`` pixels."""
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        img.thumbnail((side, side))
        while True:
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=quality)
            uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
            if len(uri) <= INLINE_MAX_BYTES or img.width <= 32:
                return uri
            img.thumbnail((img.width // 2, img.height // 2))  # a huge legend made it big: halve until it fits


def presigned_url(url: str, storage_options: Mapping[str, Any] | None, expires_s: int = PRESIGNED_EXPIRY_S) -> str:
    """A time-limited HTTPS link to ``url`` (object stores that sign, e.g. S3); raises where none exists."""
    fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    return str(fs.sign(path, expiration=expires_s))


def thumbnail_sources(
    thumbnails: Sequence[Mapping[str, str]],
    storage_options: Mapping[str, Any] | None = None,
    *,
    mode: ImageMode = "inline",
    limit: int = 8,
) -> dict[str, str]:
    """``{thumbnail url: src a browser can load}`` for up to ``limit`` thumbnails (``{"url", "uri"}`` records).

    A thumbnail that cannot be read or signed is left out with a warning: the report is still written.
    """
    sources: dict[str, str] = {}
    for thumb in list(thumbnails)[:limit]:
        url = thumb["url"]
        try:
            if mode == "presigned":
                sources[url] = presigned_url(url, storage_options)
            else:
                with fsspec.open(url, "rb", **dict(storage_options or {})) as f:
                    sources[url] = inline_jpeg(f.read())
        except Exception as e:  # noqa: BLE001 - a missing picture must not fail the report
            log.warning("thumbnail %s not shown in the report: %s", url, e)
    return sources
