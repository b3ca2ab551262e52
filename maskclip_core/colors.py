"""The PASCAL VOC colour map: the one palette for label PNGs, overlays and the review tools' exports.

Classes and categories take its entries from 1 on, in order, so none is black: black is ignore / unannotated."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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


def class_colors(n: int = 256) -> np.ndarray:
    """[n, 3] uint8 colours of class indices 0..n-1: the VOC colour map without its black entry 0."""
    return voc_colormap(n + 1)[1:]


def category_colors(categories: Sequence[Mapping[str, Any]]) -> dict[int, tuple[int, int, int]]:
    """Distinct non-black RGB colour per category id, by the category's position (as a class index)."""
    colors = class_colors(len(categories))
    return {int(c["id"]): tuple(int(v) for v in colors[i]) for i, c in enumerate(categories)}
