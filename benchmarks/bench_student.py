"""Labeling speed of MaskCLIP+ students against the MaskCLIP teacher, and the cost of a training step.

    .venv/bin/python benchmarks/bench_student.py [--limit N] [--variants light,resnet50] [--device cpu]

Labels the COCO sample's val images (random weights everywhere: the cost is that of trained ones) with
the teacher (ViT-B/16, the project's MaskCLIPLabeler: short side 448, 448 windows at stride 224) and with
each student at the same resolution (short side 448), and prints JSON: images/s per labeler, each
student's speed-up over the teacher, and one training iteration (crop 512, batch 4) per student: seconds
and peak memory (CUDA: max allocated; CPU: peak RSS of a fresh process, and its growth during the step).

On CUDA each labeler makes two passes over the images (``--passes``): the first ("cold") includes cuDNN's
setup for every input shape it has not met, the second ("warm") is the steady state of a long run.
Students run in fp32 there, as ``StudentLabeler`` does by default (``--student-precision fp16|both``);
the teacher's encoder uses fp16 autocast.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import STUDENT_VARIANTS as VARIANTS  # noqa: E402
from _common import VOC, add_image_arguments, load_images, machine, peak_rss_mb, random_student  # noqa: E402

from maskclip_core.device import default_device  # noqa: E402
from maskclip_core.student import AugmentConfig, StudentLabeler, make_batch  # noqa: E402

SHORT_SIDE = 448  # teacher and students label at the same resolution


def _throughput(label, images: list[np.ndarray], batch: int, passes: int) -> dict:
    """Images/s of the first pass (cold: on CUDA it includes cuDNN's setup for each new input shape) and,
    with ``passes`` > 1, of the last one (warm: a long labeling run, every shape met before)."""
    label(images[:2])  # warm-up: allocator, kernels
    out: dict = {}
    for p in range(passes):
        start = time.perf_counter()
        for i in range(0, len(images), batch):
            label(images[i : i + batch])
        seconds = time.perf_counter() - start
        prefix = "" if p == 0 else "warm_"
        if p in (0, passes - 1):
            out[f"{prefix}seconds"] = round(seconds, 2)
            out[f"{prefix}images_per_second"] = round(len(images) / seconds, 3)
    return out


def _teacher(device: str):
    from maskclip_core.teacher.clip_loader import load_clip
    from maskclip_core.teacher.labeler import MaskCLIPLabeler
    from maskclip_core.teacher.prompts import SINGLE_TEMPLATE
    from maskclip_core.teacher.text_classifier import TextClassifierCache
    from maskclip_core.teacher.vocabulary import Vocabulary
    from maskclip_core.teacher.window_predictor import InferenceConfig

    bundle = load_clip("ViT-B-16", "none", device=device)
    # One template: the text classifier is built once before timing, so this only shortens the run.
    cache = TextClassifierCache(tempfile.mkdtemp(prefix="bench-student-text-"))
    return MaskCLIPLabeler(
        bundle,
        Vocabulary.parse(VOC),
        InferenceConfig(short_side=SHORT_SIDE),
        templates=SINGLE_TEMPLATE,
        text_cache=cache,
    )


def train_step_worker(variant: str, device: str, crop: int, batch: int) -> dict:
    """One SGD iteration after a warm-up one; run in a fresh process so that peak RSS is this step's."""
    model = random_student(variant, device).train()
    rng = np.random.default_rng(0)
    samples = [
        (rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), rng.integers(0, 20, (480, 640), dtype=np.uint8))
        for _ in range(batch)
    ]
    aug = AugmentConfig(crop_size=crop)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step(i: int) -> None:
        images, labels = make_batch(samples, aug, batch, seed=0, stream=0, step=i)
        logits = model(images.to(device))
        loss = torch.nn.functional.cross_entropy(logits, labels.to(device), ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(0)
    rss_before = peak_rss_mb()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    step(1)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    out = {"seconds": round(time.perf_counter() - start, 2)}
    if device.startswith("cuda"):
        out["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    out["peak_rss_mb"] = peak_rss_mb()
    out["peak_rss_mb_before_timed_step"] = rss_before
    return out


def _train_step(variant: str, device: str, crop: int, batch: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--train-step-worker", variant, "--device", device]
    cmd += ["--crop", str(crop), "--train-batch", str(batch), "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_image_arguments(parser)
    parser.add_argument("--variants", default="light,resnet50", help=f"comma separated, of {list(VARIANTS)}")
    parser.add_argument("--device", default=str(default_device()))
    parser.add_argument("--batch", type=int, default=4, help="images per labeler call")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-teacher", action="store_true")
    parser.add_argument("--passes", type=int, default=None, help="passes over the images (default: 2 on CUDA)")
    parser.add_argument(
        "--student-precision", choices=["fp16", "fp32", "both"], default="fp32", help="students on CUDA"
    )
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--train-step-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.train_step_worker:
        print(json.dumps(train_step_worker(args.train_step_worker, args.device, args.crop, args.train_batch)))
        return
    images = load_images(args.images, args.limit)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]

    passes = args.passes or (2 if args.device.startswith("cuda") else 1)
    precisions = {"fp16": [True], "fp32": [False], "both": [True, False]}[args.student_precision]
    if not args.device.startswith("cuda"):
        precisions = [False]  # autocast applies on CUDA only

    labeling: dict[str, dict] = {}
    if not args.skip_teacher:
        teacher_precision = "fp16 autocast" if args.device.startswith("cuda") else "fp32"
        labeling["teacher_vit_b16"] = {
            "precision": teacher_precision,
            **_throughput(_teacher(args.device).label, images, args.batch, passes),
        }
    for variant in variants:
        for half in precisions:
            model = random_student(variant, args.device)
            labeler = StudentLabeler(
                model, short_side=SHORT_SIDE, batch_size=8, device=args.device, half_precision=half
            )
            name = f"student_{variant}" + ("_fp16" if half else "")
            precision = "fp16 autocast" if half else "fp32"
            labeling[name] = {"precision": precision, **_throughput(labeler.label, images, args.batch, passes)}
            del labeler, model
    if "teacher_vit_b16" in labeling:
        teacher = labeling["teacher_vit_b16"]
        for name, entry in labeling.items():
            if name.startswith("student_"):
                for prefix in ("", "warm_"):
                    if f"{prefix}images_per_second" in entry:
                        speedup = entry[f"{prefix}images_per_second"] / teacher[f"{prefix}images_per_second"]
                        entry[f"{prefix}speedup_over_teacher"] = round(speedup, 2)

    training = {}
    if not args.skip_train:
        for variant in variants:
            training[variant] = _train_step(variant, args.device, args.crop, args.train_batch, args.threads)

    result = {
        "benchmark": "bench_student",
        "device": args.device,
        "machine": machine(),
        "images": len(images),
        "short_side": SHORT_SIDE,
        "classes": len(VOC.split(",")),
        "variants": {v: VARIANTS[v].to_dict() for v in variants},
        "labeling": labeling,
        "train_iteration": {"crop": args.crop, "batch": args.train_batch, **training},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
