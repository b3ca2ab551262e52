"""A tiny VOC21 + ADE20K data root for the benchmark's CLI and flow tests, and the tiny random-weight model's
options sized for the CPU (the protocols' 336-pixel windows would only make the tests slower)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maskclip_core.benchmark.suites import get_suite
from support.benchmark_layouts import write_sample

TINY_MODEL = {"model": "maskclip-tiny-ViT", "pretrained": "none", "templates": "single", "device": "cpu"}
TINY_INFERENCE = {"short_side": 64, "crop": 64, "stride": 32}


def write_tiny_data_root(root: Path) -> Path:
    """Two VOC images (VOCdevkit/VOC2012) and two ADE20K images (ade/ADEChallengeData2016), 40 x 56 each."""
    rng = np.random.default_rng(0)
    for name, folder in (("voc21", "VOCdevkit/VOC2012"), ("ade20k", "ade/ADEChallengeData2016")):
        suite = get_suite(name)
        for i in range(2):
            labels = rng.integers(0, 4, (40, 56)).astype(np.uint8)
            labels[:4] = 255
            write_sample(root / folder, suite, f"img_{i}", labels, seed=i)
    return root
