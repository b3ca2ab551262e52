"""Image <-> network tensors: ImageNet normalisation, short-side resizing (training and labeling)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The RGB value that normalises to zero: padding with it is padding with "nothing" for the network.
MEAN_PIXEL = tuple(round(m * 255) for m in IMAGENET_MEAN)


def image_to_tensor(image: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> float32 [3, H, W] in 0..255 (on ``device``: moved as uint8, then converted)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).float()


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """0..255 float [..., 3, H, W] -> ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(3, 1, 1) * 255
    return (pixels - mean) / std


def resize_image(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of float [..., 3, H, W]; antialiased when shrinking (no aliasing)."""
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    shrink = size[0] < pixels.shape[-2] or size[1] < pixels.shape[-1]
    batched = pixels if pixels.ndim == 4 else pixels[None]
    out = F.interpolate(batched, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return out if pixels.ndim == 4 else out[0]


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an integer [H, W] label map."""
    if tuple(labels.shape) == tuple(size):
        return labels
    out = F.interpolate(labels[None, None].float(), size=size, mode="nearest-exact")
    return out[0, 0].to(labels.dtype)


def short_side_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(h, w) with the short side scaled to ``short_side`` (None keeps the size)."""
    if short_side is None:
        return height, width
    scale = short_side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def network_size(height: int, width: int, short_side: int | None, multiple: int | None = 32) -> tuple[int, int]:
    """Input size for labeling: the short side scaled to ``short_side``, then each side rounded to the
    nearest multiple of ``multiple`` (at 448 that moves only the long side, by at most 16 px: under 4 %).

    Photos come in many sizes and cuDNN prepares every convolution anew for each input shape it meets; on a
    GPU that, not the arithmetic, dominated a student's labeling time. Rounding bounds the shapes a worker
    ever sees and lets more images share a batch. ``short_side=None`` (label at the image's own size) or
    ``multiple=None`` keeps the exact size.
    """
    h, w = short_side_size(height, width, short_side)
    if short_side is None or multiple is None:
        return h, w
    return max(multiple, round(h / multiple) * multiple), max(multiple, round(w / multiple) * multiple)
