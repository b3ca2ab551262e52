"""One VOC palette: class colours of overlays and review-tool colours come from ``maskclip_core.colors``."""

from __future__ import annotations

import numpy as np

from maskclip_core.colors import category_colors, class_colors, voc_colormap

# The first entries of the PASCAL VOC colour map, as published with the dataset's devkit.
VOC = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128), (0, 128, 128)]


def test_voc_colormap_is_the_published_one() -> None:
    np.testing.assert_array_equal(voc_colormap(7), np.array(VOC, np.uint8))
    assert tuple(voc_colormap(256)[255]) == (224, 224, 192)  # VOC's "void" colour


def test_class_colours_skip_black() -> None:
    np.testing.assert_array_equal(class_colors(6), np.array(VOC[1:], np.uint8))
    assert category_colors([{"id": 7, "name": "a"}, {"id": 3, "name": "b"}]) == {7: VOC[1], 3: VOC[2]}
