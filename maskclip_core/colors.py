"""The PASCAL VOC colour map: the one palette for label PNGs, overlays and the VOC / CVAT mask exports."""

from __future__ import annotations

import numpy as np


def voc_colormap(n: int) -> np.ndarray:
    """[n, 3] uint8 PASCAL VOC palette (bit-interleaved index; entry 0 is black), the palette CVAT and
    datumaro use for VOC masks."""
    idx = np.arange(n)
    cmap = np.zeros((n, 3), dtype=np.int64)
    for shift in range(7, -1, -1):
        for c in range(3):
            cmap[:, c] |= ((idx >> c) & 1) << shift
        idx = idx >> 3
    return cmap.astype(np.uint8)
