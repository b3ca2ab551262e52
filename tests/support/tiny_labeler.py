"""What the flow tests label with: the tiny random-weight MaskCLIP teacher, a filter that keeps every label,
and small images with a red and a blue block over noise (some labels survive any filter)."""

from __future__ import annotations

import numpy as np

from maskclip_core.labeling.filter import FilterConfig
from maskclip_core.labeling.registry import LabelerParameters
from maskclip_core.teacher.labeler import LabelerConfig
from maskclip_core.teacher.window_predictor import InferenceConfig

TINY = LabelerConfig(
    model="maskclip-tiny-ViT",
    pretrained="none",
    classes="red, green, blue",
    inference=InferenceConfig(short_side=64, crop=64, stride=32),
)
TINY_SPEC = LabelerParameters.maskclip(TINY, device="cpu")
KEEP_ALL = FilterConfig(min_confidence=0.0, min_region_area=0, min_region_confidence=0.0, min_labeled_fraction=0.0)
H, W = 40, 56


def block_image(rng: np.random.Generator) -> np.ndarray:
    """An H x W RGB image: noise, a red block top left and a blue block bottom right."""
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    rgb[:20, :28] = (230, 20, 20)
    rgb[20:, 28:] = (20, 20, 230)
    return rgb
