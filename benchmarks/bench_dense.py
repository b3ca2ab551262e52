"""Cost of the MaskCLIP labeler against a bare forward of the same encoder over the same windows.

    .venv/bin/python benchmarks/bench_dense.py [--limit N] [--model ViT-B-16] [--device cpu]

Labels the COCO sample's val images with random weights (the cost is that of real weights) and prints
JSON: images/s, peak RSS and ``ratio`` = labeler time / bare-forward time, both measured batch by batch
side by side in this one run. The bare forward is the standard CLIP image encoder (all blocks with their
normal attention, then pooling) on exactly the windows the labeler cuts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import VOC, add_image_arguments, device_name, load_images, machine, peak_rss_mb  # noqa: E402

from maskclip_core.teacher.clip_loader import load_clip  # noqa: E402
from maskclip_core.teacher.dense import image_embedding  # noqa: E402
from maskclip_core.teacher.labeler import MaskCLIPLabeler  # noqa: E402
from maskclip_core.teacher.vocabulary import Vocabulary  # noqa: E402
from maskclip_core.teacher.window_predictor import InferenceConfig  # noqa: E402


def bare_windows(labeler: MaskCLIPLabeler, images: list[np.ndarray]) -> list[torch.Tensor]:
    """The exact padded windows the labeler's predictor feeds its encoder."""
    predictor = labeler.predictor
    windows = []
    for i, image in enumerate(images):
        pixels = predictor._prepare(image)
        for win in predictor._windows(i, pixels.shape[1], pixels.shape[2]):
            y0, y1, x0, x1 = win.box
            crop = pixels[:, y0:y1, x0:x1]
            ph, pw = win.grid[0] * predictor.stride, win.grid[1] * predictor.stride
            windows.append(F.pad(crop, (0, pw - crop.shape[2], 0, ph - crop.shape[1])))
    return windows


@torch.inference_mode()
def bare_forward(labeler: MaskCLIPLabeler, windows: list[torch.Tensor]) -> None:
    size = labeler.inference.window_batch
    by_shape: dict[tuple, list[torch.Tensor]] = {}
    for w in windows:
        by_shape.setdefault(tuple(w.shape), []).append(w)
    device = labeler.bundle.device
    # The labeler's own encoder and precision (its bf16 copy on a CPU, autocast on CUDA), and a sync on CUDA.
    encoder, autocast = labeler.predictor.encoder, labeler.predictor._autocast
    for group in by_shape.values():
        for start in range(0, len(group), size):
            with torch.autocast(device_type=device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                image_embedding(encoder, torch.stack(group[start : start + size]))
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_profile(labeler: MaskCLIPLabeler, images: list[np.ndarray], batch: int, path: Path) -> None:
    """Operator and step (``maskclip.*`` ranges) times of a few labeler calls, CPU and CUDA."""
    from torch.profiler import ProfilerActivity, profile

    cuda = labeler.bundle.device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        for start in range(0, len(images), batch):
            labeler.label(images[start : start + batch])
    averages = prof.key_averages()
    tables = [f"# {len(images)} images, sorted by CPU time\n", averages.table(sort_by="cpu_time_total", row_limit=40)]
    if cuda:
        tables += ["\n# sorted by device time\n", averages.table(sort_by="self_device_time_total", row_limit=30)]
    path.write_text("".join(tables))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_image_arguments(parser)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch", type=int, default=4, help="images per labeler call")
    parser.add_argument("--window-batch", type=int, default=8, help="windows per encoder forward")
    parser.add_argument("--profile", type=Path, default=None, help="also write a torch.profiler table here")
    args = parser.parse_args()
    images = load_images(args.images, args.limit)
    bundle = load_clip(args.model, "none", device=args.device)
    labeler = MaskCLIPLabeler(bundle, Vocabulary.parse(VOC), InferenceConfig(window_batch=args.window_batch))
    labeler.label([images[0]])  # warm-up: allocator, kernels

    t_label = t_bare = 0.0
    n_windows = 0
    for start in range(0, len(images), args.batch):
        batch = images[start : start + args.batch]
        windows = bare_windows(labeler, batch)
        n_windows += len(windows)
        # Alternate which goes first, so drifting machine load does not favour either side.
        for which in ("label", "bare") if (start // args.batch) % 2 == 0 else ("bare", "label"):
            t0 = time.perf_counter()
            if which == "label":
                labeler.label(batch)
                t_label += time.perf_counter() - t0
            else:
                bare_forward(labeler, windows)
                t_bare += time.perf_counter() - t0

    if args.profile is not None:
        write_profile(labeler, images[: 2 * args.batch], args.batch, args.profile)

    print(
        json.dumps(
            {
                "benchmark": "bench_dense",
                "model": args.model,
                "device": device_name(bundle.device),
                "precision": labeler.inference.precision,
                "window_batch": args.window_batch,
                "machine": machine(),
                "images": len(images),
                "windows": n_windows,
                "classes": len(labeler.class_names),
                "labeler_seconds": round(t_label, 2),
                "bare_forward_seconds": round(t_bare, 2),
                "images_per_second": round(len(images) / t_label, 3),
                "ratio_labeler_to_bare_forward": round(t_label / t_bare, 3),
                "target_ratio": 1.15,
                "peak_rss_mb": peak_rss_mb(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
