"""Small overlay JPEGs of labeled images, for reports and artifacts."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from maskclip_core.labeling.filter import FilteredLabels
from maskclip_core.labeling.overlays import overlay

THUMBNAIL_SIDE = 256
THUMBNAIL_QUALITY = 80


@dataclass
class Thumbnail:
    path: str  # relative to the dataset URL: thumbnails/<run id>/<sha256 prefix>.jpg
    data: bytes
    uri: str  # the source image


def thumbnail_jpeg(rgb: np.ndarray, filtered: FilteredLabels, *, side: int = THUMBNAIL_SIDE) -> bytes:
    """A small JPEG of the filtered labels over the image (``overlays.overlay``), long side ``side``."""
    height, width = filtered.labels.shape
    scale = min(1.0, side / max(height, width))
    image, labels = rgb, filtered.labels
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
        labels = np.asarray(Image.fromarray(filtered.labels).resize(size, Image.Resampling.NEAREST))
    buf = io.BytesIO()
    overlay(image, labels, filtered.class_names).save(buf, "JPEG", quality=THUMBNAIL_QUALITY)
    return buf.getvalue()
