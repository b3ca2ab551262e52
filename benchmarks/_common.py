"""What the labeling benchmarks share: the COCO sample's photos, the VOC classes, random-weight students, and
how a run describes its machine. Imported by the scripts in this folder (run as files, so it sits beside them).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from maskclip_core.labeling.decode import decode_image  # noqa: E402
from maskclip_core.student import ClassVocabulary, StudentConfig, build_student  # noqa: E402

IMAGES = ROOT.parent / "shared" / "data" / "coco-sample" / "val" / "images"
VOC = (
    "aeroplane, bicycle, bird, boat, bottle, bus, car, cat, chair, cow, dining table, dog, horse, motorbike, "
    "person, potted plant, sheep, sofa, train, tv monitor"
)
VOC_NAMES = tuple(c.strip() for c in VOC.split(","))
EMBED_DIM = 512  # ViT-B/16's joint embedding dimension: what a student's frozen text head holds
STUDENT_VARIANTS = {
    name: StudentConfig(
        embed_dim=EMBED_DIM,
        backbone=backbone,
        output_stride=stride,
        head=head,
        head_channels=channels,
        backbone_weights="none",
    )
    for name, backbone, stride, head, channels in [
        ("light", "mobilenet_v3_large", 16, "deeplabv3", 256),
        ("resnet18", "resnet18", 16, "deeplabv3", 256),
        ("resnet50", "resnet50", 8, "deeplabv3", 256),
        ("resnet101_v2", "resnet101", 8, "deeplabv2", 512),  # MaskCLIP+'s own student
    ]
}


def add_image_arguments(parser: argparse.ArgumentParser, limit: int = 100) -> None:
    parser.add_argument("--images", type=Path, default=IMAGES, help="folder of .jpg photos")
    parser.add_argument("--limit", type=int, default=limit, help="the first N photos (sorted by name)")


def load_images(folder: Path, limit: int) -> list[np.ndarray]:
    """The first ``limit`` photos of ``folder`` as RGB arrays; exits with one line when the folder is absent."""
    if not folder.is_dir():
        sys.exit(f"no images at {folder} (the shared COCO sample must sit beside the repo)")
    return [decode_image(p.read_bytes()).rgb for p in sorted(folder.glob("*.jpg"))[:limit]]


def random_student(variant: str, device: str | torch.device) -> torch.nn.Module:
    """A student of ``variant`` with random weights and a random (seeded) text head over the VOC classes."""
    torch.manual_seed(0)
    text = torch.randn(len(VOC_NAMES), EMBED_DIM)
    return build_student(STUDENT_VARIANTS[variant], text, ClassVocabulary(VOC_NAMES)).to(device)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"


def peak_rss_mb() -> float:
    """This process's peak resident memory so far.

    Linux's VmHWM, not ru_maxrss: a child process inherits its parent's ru_maxrss through fork and exec, so a
    fresh worker started by a large benchmark process would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as fh:
            kib = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux; other systems: an estimate
    return round(kib / 1024, 1)
