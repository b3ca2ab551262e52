"""Our template ensemble (text tower run without the padding positions) against open_clip's zero-shot
classifier builder (``open_clip.zero_shot_classifier.build_zero_shot_classifier``, full 77-token context).

    .venv/bin/python benchmarks/bench_text_classifier.py [--model maskclip-tiny-ViT] [--classes 5] [--repeats 3]

Random weights (the cost is that of real weights); the 85 MaskCLIP templates. Both builders run alternately
in this one process, best time of ``--repeats`` each; prints JSON with both times, ``speedup`` = open_clip's
time / ours, and the largest difference between the two classifiers (they must agree to float rounding).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from open_clip.zero_shot_classifier import build_zero_shot_classifier  # noqa: E402

from maskclip_core.teacher.clip_loader import load_clip  # noqa: E402
from maskclip_core.teacher.prompts import MASKCLIP_TEMPLATES  # noqa: E402
from maskclip_core.teacher.text_classifier import template_ensemble  # noqa: E402

CLASSES = ("person", "potted plant", "dining table", "tv monitor", "motorbike", "sheep", "sofa", "train", "cow", "bus")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="maskclip-tiny-ViT")
    parser.add_argument("--classes", type=int, default=5, help=f"first N of {len(CLASSES)} VOC class names")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    bundle = load_clip(args.model, "none", device="cpu")
    names = list(CLASSES[: args.classes])
    builders = {
        "ours": lambda: template_ensemble(bundle, names, MASKCLIP_TEMPLATES),
        "open_clip": lambda: (
            build_zero_shot_classifier(
                bundle.model, bundle.tokenizer, names, MASKCLIP_TEMPLATES, num_classes_per_batch=None
            ).T
        ),
    }
    best = {name: float("inf") for name in builders}
    results = {}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name, build in builders.items():
                start = time.perf_counter()
                results[name] = build()
                best[name] = min(best[name], time.perf_counter() - start)
    diff = (results["ours"].float() - results["open_clip"].float().cpu()).abs().max().item()
    print(
        json.dumps(
            {
                "model": args.model,
                "classes": len(names),
                "templates": len(MASKCLIP_TEMPLATES),
                "threads": args.threads,
                "seconds_ours": round(best["ours"], 3),
                "seconds_open_clip": round(best["open_clip"], 3),
                "speedup": round(best["open_clip"] / best["ours"], 2),
                "max_abs_difference": diff,
                "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
            }
        )
    )


if __name__ == "__main__":
    main()
