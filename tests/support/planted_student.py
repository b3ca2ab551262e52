"""A planted segmentation dataset for student tests: textured shapes with known masks, and CLIP-like
corrupted pseudo-labels of them (wrong regions, patch-blocky boundaries, blobs of noise)."""

from __future__ import annotations

import numpy as np
import torch

from maskclip_core.segmentation_metrics import evaluate
from maskclip_core.student import AugmentConfig, StudentConfig, TrainConfig
from maskclip_core.types import IGNORE_INDEX, SegmentationResult

K = 4  # background + three textured shape classes
SIZE = 80
NAMES = ("ground", "brick", "water", "sand")

# Each class: a base colour and a texture.
COLORS = np.array([[90, 90, 90], [200, 50, 50], [40, 90, 210], [220, 200, 60]], dtype=np.float32)


def _texture(cls: int, rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    if cls == 0:
        t = rng.normal(0, 1, (size, size)).astype(np.float32)
    elif cls == 1:
        t = np.sign(np.sin(yy * 0.9 + phase))  # horizontal stripes
    elif cls == 2:
        t = np.sign(np.sin(xx * 0.7 + phase) * np.sin(yy * 0.7 + phase))  # checkerboard
    else:
        t = np.sin((xx + yy) * 0.5 + phase)  # diagonal waves
    return t


def planted_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A textured background with 3-4 textured ellipses / rectangles; returns (RGB uint8, true mask)."""
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for _ in range(int(rng.integers(3, 5))):
        cls = int(rng.integers(1, K))
        cy, cx = rng.uniform(10, SIZE - 10, size=2)
        ry, rx = rng.uniform(9, 22, size=2)
        if rng.random() < 0.5:
            region = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            region = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        mask[region] = cls
    image = np.zeros((SIZE, SIZE, 3), dtype=np.float32)
    for cls in range(K):
        tint = COLORS[cls] * rng.uniform(0.8, 1.2)
        layer = tint + 35 * _texture(cls, rng, SIZE)[..., None]
        image[mask == cls] = layer[mask == cls]
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def corrupt(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """CLIP-like pseudo-labels: whole regions mislabeled, blocky boundaries (patch resolution), and about
    a quarter of the pixels wrong in patch-sized blobs."""
    labels = mask.copy()
    for cls in range(1, K):  # a whole region now and then takes a wrong class
        if (mask == cls).any() and rng.random() < 0.15:
            labels[mask == cls] = rng.choice([c for c in range(K) if c != cls])
    patch = 8  # boundaries at patch resolution, off by a random sub-patch shift
    dy, dx = rng.integers(0, patch, size=2)
    coarse = labels[dy::patch, dx::patch]
    blocky = np.kron(coarse, np.ones((patch, patch), dtype=np.uint8))
    blocky = np.pad(blocky, ((dy, patch), (dx, patch)), mode="edge")[:SIZE, :SIZE]
    n = SIZE // 4  # 4 px blobs, 15% of them noise
    wrong = np.kron(rng.random((n, n)) < 0.15, np.ones((4, 4), dtype=bool))
    noise = (blocky + rng.integers(1, K, size=blocky.shape)) % K
    return np.where(wrong, noise, blocky).astype(np.uint8)


def planted(n: int, seed: int) -> tuple[list, list, list]:
    rng = np.random.default_rng(seed)
    images, masks, pseudo = [], [], []
    for _ in range(n):
        image, mask = planted_image(rng)
        images.append(image)
        masks.append(mask)
        pseudo.append(corrupt(mask, rng))
    return images, masks, pseudo


def threshold_filter(threshold: float):
    def label_filter(result: SegmentationResult) -> np.ndarray:
        labels = result.labels.astype(np.uint8)
        labels[result.confidence < threshold] = IGNORE_INDEX
        return labels

    return label_filter


def miou(preds, masks) -> float:
    return evaluate(zip(preds, masks, strict=True), K).miou()


def text_embeddings(dim: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, K, generator=g))
    return q.T.contiguous()  # [K, D], orthonormal rows


SEED = 1


def native(crop: int, **kw) -> AugmentConfig:
    """Augmentation scaled relative to the images as they are (they are tiny here, not 512 px)."""
    return AugmentConfig(crop_size=crop, base_short_side=None, **kw)


def small_student() -> StudentConfig:
    # Orthonormal 16-d "text" embeddings separate classes far more than CLIP's, hence a small temperature.
    return StudentConfig(
        embed_dim=16,
        backbone="resnet18",
        output_stride=8,
        head_channels=64,
        temperature=5.0,
        backbone_weights="none",
    )


def planted_train_config(**overrides) -> TrainConfig:
    """The planted run: 80 iterations, one self-training round."""
    # From scratch in 80 iterations a tenth is too little to learn from, so the pseudo-label phase gets
    # 60% here (the paper's tenth assumes 8k iterations from ImageNet weights). Photometric jitter is
    # off: it slows learning this short; it is tested on its own in test_student_training.
    return TrainConfig(
        iterations=80,
        batch_size=8,
        rounds=1,
        pseudo_fraction=0.6,
        lr=0.04,
        augment=native(64, scale_range=(0.75, 1.5), photometric=False),
        relabel_short_side=None,
        eval_short_side=None,
        seed=SEED,
        log_every=0,
        **overrides,
    )
