"""Colours of categories in review tools: distinct, stable, the PASCAL VOC palette CVAT and datumaro use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from maskclip_core.colors import voc_colormap


def category_colors(categories: Sequence[Mapping[str, Any]]) -> dict[int, tuple[int, int, int]]:
    """Distinct non-black RGB colour per category id: VOC palette entry position + 1 (black = unannotated)."""
    palette = voc_colormap(len(categories) + 1)
    return {int(c["id"]): tuple(int(v) for v in palette[i + 1]) for i, c in enumerate(categories)}
