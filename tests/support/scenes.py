"""Small deterministic photos for the teacher's tests: smooth colour regions with noise, so that several classes
win pixels even with random weights."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def scene(height: int, width: int, seed: int) -> np.ndarray:
    """An RGB uint8 [height, width, 3] image: a bicubic blow-up of 4 x 6 random colours plus noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(4, 6, 3)).astype(np.float32)
    big = F.interpolate(torch.from_numpy(coarse).permute(2, 0, 1)[None], size=(height, width), mode="bicubic")
    image = big[0].permute(1, 2, 0).numpy() + rng.normal(0, 10, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)
