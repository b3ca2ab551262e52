"""The teacher's opt-in CPU speed paths against fp32: images/s ratio and label agreement on the same photos.

    .venv/bin/python benchmarks/bench_cpu_paths.py [--limit 8] [--batch 2] [--paths fp32,bf16,int8,compile]

ViT-B/16 with random weights (the cost is that of trained weights; agreement with trained weights is likely
higher, since random features leave many pixels near a tie), the COCO sample's val photos, 20 VOC classes.
Every path labels every batch, in rotating order, so drifting machine load does not favour one; the first
call of each path (torch.compile's compilation) is timed apart and left out of images/s. Prints JSON: per
path images/s, speed-up over fp32, pixel agreement with the fp32 labels, confidence difference, first-call
seconds, and the CPU's bf16 / int8 features.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import IMAGES, VOC  # noqa: E402  (also puts the repository on the path)

from maskclip_core.labeling.decode import decode_image  # noqa: E402
from maskclip_core.teacher.clip_loader import load_clip  # noqa: E402
from maskclip_core.teacher.labeler import MaskCLIPLabeler  # noqa: E402
from maskclip_core.teacher.vocabulary import Vocabulary  # noqa: E402
from maskclip_core.teacher.window_predictor import InferenceConfig  # noqa: E402

# path name -> InferenceConfig fields
PATHS = {
    "fp32": {},
    "bf16": {"precision": "bf16"},
    "fp16": {"precision": "fp16"},
    "int8": {"precision": "int8"},
    "compile": {"compile": True},
    "compile-bf16": {"compile": True, "precision": "bf16"},
}


def cpu_features() -> list[str]:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    wanted = ("avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni", "avx512_fp16", "amx_fp16")
    return [f for f in wanted if f in flags.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=IMAGES)
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2, help="images per labeler call")
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, from {', '.join(PATHS)}")
    args = parser.parse_args()
    if not args.images.is_dir():
        sys.exit(f"no images at {args.images} (the shared COCO sample must sit beside the repo)")
    names = ["fp32", *[p for p in args.paths.split(",") if p and p != "fp32"]]
    unknown = set(names) - set(PATHS)
    if unknown:
        sys.exit(f"unknown paths: {sorted(unknown)}; choose from {', '.join(PATHS)}")

    paths = sorted(args.images.glob("*.jpg"))[: args.limit]
    images = [decode_image(p.read_bytes()).rgb for p in paths]
    bundle = load_clip(args.model, "none", device="cpu")
    vocabulary = Vocabulary.parse(VOC)
    labelers = {n: MaskCLIPLabeler(bundle, vocabulary, InferenceConfig(**PATHS[n])) for n in names}

    first_call = {}
    for name, labeler in labelers.items():  # warm-up; compilation happens here
        t0 = time.perf_counter()
        labeler.label(images[: args.batch])
        first_call[name] = time.perf_counter() - t0

    seconds = dict.fromkeys(names, 0.0)
    results: dict[str, list] = {n: [] for n in names}
    for b, start in enumerate(range(0, len(images), args.batch)):
        batch = images[start : start + args.batch]
        order = names[b % len(names) :] + names[: b % len(names)]
        for name in order:
            t0 = time.perf_counter()
            out = labelers[name].label(batch)
            seconds[name] += time.perf_counter() - t0
            results[name].extend(out)

    reference = results["fp32"]
    pixels = sum(r.labels.size for r in reference)
    report = {}
    for name in names:
        pairs = list(zip(results[name], reference, strict=True))
        same = sum(int((r.labels == e.labels).sum()) for r, e in pairs)
        conf = max(float(np.abs(r.confidence - e.confidence).max()) for r, e in pairs)
        report[name] = {
            "images_per_second": round(len(images) / seconds[name], 3),
            "speedup_vs_fp32": round(seconds["fp32"] / seconds[name], 3),
            "pixel_agreement_vs_fp32": round(same / pixels, 5),
            "max_confidence_difference": round(conf, 4),
            "first_call_seconds": round(first_call[name], 1),
        }
    print(
        json.dumps(
            {
                "benchmark": "bench_cpu_paths",
                "model": f"{args.model} (random weights)",
                "images": len(images),
                "batch": args.batch,
                "classes": len(vocabulary.names),
                "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
                "cpu_features": cpu_features(),
                "torch": torch.__version__,
                "paths": report,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
