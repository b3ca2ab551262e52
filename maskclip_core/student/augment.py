"""Training augmentation as in MaskCLIP+ / mmseg: random scale, crop (ignore-padded), flip, photometric
distortion. Every random draw comes from the caller's numpy Generator, so a sample's augmentation is a
pure function of its seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from maskclip_core.student.preprocess import (
    MEAN_PIXEL,
    image_to_tensor,
    normalize,
    resize_image,
    resize_labels,
    short_side_size,
)
from maskclip_core.types import IGNORE_INDEX


@dataclass(frozen=True)
class AugmentConfig:
    crop_size: int = 512
    scale_range: tuple[float, float] = (0.5, 2.0)
    # Scale relative to this short side (mmseg's img_scale (2048, 512)); None: to the image as given.
    base_short_side: int | None = 512
    # Re-draw a crop (up to 10 times) where one class covers more than this share (mmseg's cat_max_ratio).
    cat_max_ratio: float = 0.75
    flip: bool = True
    photometric: bool = True


def _crop_box(labels: np.ndarray, crop: int, max_ratio: float, rng: np.random.Generator) -> tuple[int, int]:
    h, w = labels.shape
    top = left = 0
    for _ in range(10):
        top = int(rng.integers(0, max(h - crop, 0) + 1))
        left = int(rng.integers(0, max(w - crop, 0) + 1))
        if max_ratio >= 1.0:
            break
        counts = np.bincount(labels[top : top + crop, left : left + crop].ravel(), minlength=256)[:IGNORE_INDEX]
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max() / counts.sum() < max_ratio:
            break
    return top, left


def photometric_distortion(pixels: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """mmseg's PhotoMetricDistortion on 0..255 float [3, H, W]: brightness, contrast, saturation, hue,
    each with probability 1/2; contrast before or after the colour changes."""
    x = pixels
    if rng.random() < 0.5:
        x = (x + float(rng.uniform(-32, 32))).clamp(0, 255)
    contrast_first = rng.random() < 0.5
    do_contrast, alpha = rng.random() < 0.5, float(rng.uniform(0.5, 1.5))
    if contrast_first and do_contrast:
        x = (x * alpha).clamp(0, 255)
    if rng.random() < 0.5:
        x = TF.adjust_saturation(x / 255, float(rng.uniform(0.5, 1.5))) * 255
    if rng.random() < 0.5:
        x = TF.adjust_hue(x / 255, float(rng.uniform(-18, 18)) / 360) * 255
    if not contrast_first and do_contrast:
        x = (x * alpha).clamp(0, 255)
    return x


def augment(
    image: np.ndarray, labels: np.ndarray, config: AugmentConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB uint8 [H, W, 3] + uint8 [H, W] labels -> normalised float [3, c, c] + int64 [c, c] (255 ignore)."""
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    h, w = labels.shape
    base_h, base_w = short_side_size(h, w, config.base_short_side)
    ratio = float(rng.uniform(*config.scale_range))
    size = (max(1, round(base_h * ratio)), max(1, round(base_w * ratio)))
    pixels = resize_image(image_to_tensor(image), size)
    lab = resize_labels(torch.from_numpy(np.ascontiguousarray(labels)), size)

    c = config.crop_size
    top, left = _crop_box(lab.numpy(), c, config.cat_max_ratio, rng)
    pixels = pixels[:, top : top + c, left : left + c]
    lab = lab[top : top + c, left : left + c]
    if config.flip and rng.random() < 0.5:
        pixels, lab = pixels.flip(-1), lab.flip(-1)
    if config.photometric:
        pixels = photometric_distortion(pixels, rng)

    # Pad bottom / right to the crop size: mean pixel (zero after normalising) and ignore labels.
    out = torch.tensor(MEAN_PIXEL, dtype=torch.float32).view(3, 1, 1).repeat(1, c, c)
    out_lab = torch.full((c, c), IGNORE_INDEX, dtype=torch.int64)
    ph, pw = lab.shape
    out[:, :ph, :pw] = pixels
    out_lab[:ph, :pw] = lab.to(torch.int64)
    return normalize(out), out_lab
