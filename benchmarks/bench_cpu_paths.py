"""The teacher's opt-in CPU speed paths against fp32: images/s ratio and agreement on the same photos.

    .venv/bin/python benchmarks/bench_cpu_paths.py [--limit 6] [--batch 2] [--paths fp32,bf16,int8]
        [--labelers maskclip,clearclip,sclip,naclip,pamr,proxyclip] [--prompt-denoising]

ViT-B/16 with random weights, the COCO sample's val photos, 20 VOC classes. Every labeler variant runs every
path; within a variant every path labels every batch, in rotating order, so drifting machine load does not
favour one (timings of other processes on a shared machine still add noise: compare ratios, not images/s).
The first call of each path (torch.compile's compilation, oneDNN's kernel setup, the low-precision copy) is
timed apart and left out of images/s.

Agreement that means something: prompt denoising is off (``--prompt-denoising`` turns it on), since on random
weights it keeps a single class and every path would agree on a constant map; the number of classes present
in the fp32 labels is printed, and when fewer than ``--min-classes`` win pixels the agreement is reported as
not meaningful (null). ``dense_cosine`` compares the encoder's dense features (and keys) with fp32 on the first
photo's windows: cosine similarity per patch, mean and minimum. Random weights bound the rounding effects of
the arithmetic; trained CLIP (trained in mixed precision, with a few large activation channels) may differ
more, and random features leave more pixels near a tie than trained ones.

``matmul_ceiling``: one thread, a 1024x768 @ 768x3072 matmul in fp32 and in bf16 (GFLOP/s): the bf16 / fp32
ratio is about the most the bf16 path can gain on this CPU (AMX: ~8x; AVX512-BF16 without AMX: ~2x).
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import IMAGES, VOC  # noqa: E402  (also puts the repository on the path)

from maskclip_core.labeling.decode import decode_image  # noqa: E402
from maskclip_core.teacher.clip_loader import load_clip  # noqa: E402
from maskclip_core.teacher.fast_paths import cpu_bf16_support  # noqa: E402
from maskclip_core.teacher.labeler import MaskCLIPLabeler  # noqa: E402
from maskclip_core.teacher.proxy import load_proxy  # noqa: E402
from maskclip_core.teacher.vocabulary import Vocabulary  # noqa: E402
from maskclip_core.teacher.window_predictor import InferenceConfig  # noqa: E402

# path name -> InferenceConfig fields
PATHS = {
    "fp32": {"precision": "fp32"},  # explicit: the default ("auto") is bf16 on a CPU with AMX / AVX512-BF16
    "bf16": {"precision": "bf16"},
    "fp16": {"precision": "fp16"},
    "int8": {"precision": "int8"},
    "compile": {"compile": True, "precision": "fp32"},
    "compile-bf16": {"compile": True, "precision": "bf16"},
}
# labeler variant -> InferenceConfig fields (ProxyCLIP: a random DINO ViT-B/8 proxy as well)
LABELERS = {
    "maskclip": {},
    "clearclip": {"attention": "clearclip"},
    "sclip": {"attention": "sclip"},
    "naclip": {"attention": "naclip"},
    "pamr": {"pamr": True},
    "proxyclip": {},
}


def cpu_features() -> list[str]:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    wanted = ("avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni", "avx512_fp16", "amx_fp16")
    return [f for f in wanted if f in flags.split()]


def cpu_model() -> str:
    try:
        return next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        return platform.processor()


def matmul_ceiling(repeats: int = 5) -> dict:
    """fp32 and bf16 GFLOP/s of one thread on a ViT-B-sized matmul (median of alternating runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m, k, n = 1024, 768, 3072
        a, b = torch.randn(m, k), torch.randn(k, n)
        rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
        pairs = {"fp32": (a, b), "bf16": (a.bfloat16(), b.bfloat16())}
        for x, y in pairs.values():
            for _ in range(3):
                x @ y
        for _ in range(repeats):
            for name, (x, y) in pairs.items():
                t0 = time.perf_counter()
                for _ in range(5):
                    x @ y
                rates[name].append(2 * m * k * n * 5 / (time.perf_counter() - t0) / 1e9)
    finally:
        torch.set_num_threads(threads)
    gflops = {name: round(statistics.median(r), 1) for name, r in rates.items()}
    return {"threads": 1, "gflops": gflops, "bf16_over_fp32": round(gflops["bf16"] / gflops["fp32"], 2)}


def dense_of(labeler: MaskCLIPLabeler, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's dense features and keys of the first two windows of ``image``, as the labeler computes them."""
    predictor = labeler.predictor
    with torch.inference_mode():
        pixels = predictor._prepare(image)
        windows = predictor._windows(0, pixels.shape[1], pixels.shape[2])[:2]
        crops = []
        for win in windows:
            y0, y1, x0, x1 = win.box
            m = predictor.pad_multiple
            crop = pixels[:, y0:y1, x0:x1]
            crops.append(
                F.pad(
                    crop, (0, -(-crop.shape[2] // m) * m - crop.shape[2], 0, -(-crop.shape[1] // m) * m - crop.shape[1])
                )
            )
        batch = torch.stack(crops) if len({c.shape for c in crops}) == 1 else crops[0][None]
        dtype = predictor._autocast or torch.float16
        with torch.autocast("cpu", dtype=dtype, enabled=predictor._autocast is not None):
            features, keys = predictor._dense(batch)
    return features.float(), keys.float()


def cosine_figures(ours: torch.Tensor, reference: torch.Tensor) -> dict:
    cos = F.cosine_similarity(ours, reference, dim=1).flatten()
    return {"mean": round(float(cos.mean()), 6), "min": round(float(cos.min()), 6)}


def run_variant(variant, bundle, vocabulary, images, names, args, proxy) -> dict:
    base = {"prompt_denoising": args.prompt_denoising, **LABELERS[variant]}
    labelers = {n: MaskCLIPLabeler(bundle, vocabulary, InferenceConfig(**base, **PATHS[n]), proxy=proxy) for n in names}
    first_call = {}
    for name, labeler in labelers.items():  # warm-up; compilation and the low-precision copy happen here
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
    present = np.unique(np.concatenate([r.labels.ravel() for r in reference]))
    meaningful = len(present) >= args.min_classes
    dense_ref = dense_of(labelers["fp32"], images[0])
    report: dict = {
        "classes_in_fp32_labels": int(len(present)),
        "agreement_meaningful": bool(meaningful),
        "paths": {},
    }
    for name in names:
        pairs = list(zip(results[name], reference, strict=True))
        same = sum(int((r.labels == e.labels).sum()) for r, e in pairs)
        conf = max(float(np.abs(r.confidence - e.confidence).max()) for r, e in pairs)
        features, keys = dense_of(labelers[name], images[0])
        report["paths"][name] = {
            "images_per_second": round(len(images) / seconds[name], 3),
            "speedup_vs_fp32": round(seconds["fp32"] / seconds[name], 3),
            "dense_cosine": cosine_figures(features, dense_ref[0]),
            "keys_cosine": cosine_figures(keys, dense_ref[1]),
            "pixel_agreement_vs_fp32": round(same / pixels, 5) if meaningful else None,
            "max_confidence_difference": round(conf, 4),
            "first_call_seconds": round(first_call[name], 1),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=IMAGES)
    parser.add_argument("--limit", type=int, default=6)
    parser.add_argument("--batch", type=int, default=2, help="images per labeler call")
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--paths", default="fp32,bf16,int8", help=f"comma-separated, from {', '.join(PATHS)}")
    parser.add_argument("--labelers", default="maskclip", help=f"comma-separated, from {', '.join(LABELERS)}")
    parser.add_argument("--proxy", default="dino_vitb8", help="ProxyCLIP's proxy (random weights)")
    parser.add_argument("--prompt-denoising", action="store_true", help="on (the default labeling); off here")
    parser.add_argument("--min-classes", type=int, default=3, help="fewer classes in fp32 labels: no agreement")
    args = parser.parse_args()
    if not args.images.is_dir():
        sys.exit(f"no images at {args.images} (the shared COCO sample must sit beside the repo)")
    names = ["fp32", *[p for p in args.paths.split(",") if p and p != "fp32"]]
    variants = [v for v in args.labelers.split(",") if v]
    unknown = (set(names) - set(PATHS)) | (set(variants) - set(LABELERS))
    if unknown:
        sys.exit(
            f"unknown paths / labelers: {sorted(unknown)}; paths: {', '.join(PATHS)}; labelers: {', '.join(LABELERS)}"
        )

    paths = sorted(args.images.glob("*.jpg"))[: args.limit]
    images = [decode_image(p.read_bytes()).rgb for p in paths]
    bundle = load_clip(args.model, "none", device="cpu")
    vocabulary = Vocabulary.parse(VOC)
    report = {}
    for variant in variants:
        proxy = load_proxy(args.proxy, "none", device="cpu") if variant == "proxyclip" else None
        report[variant] = run_variant(variant, bundle, vocabulary, images, names, args, proxy)
    print(
        json.dumps(
            {
                "benchmark": "bench_cpu_paths",
                "model": f"{args.model} (random weights)",
                "images": len(images),
                "batch": args.batch,
                "classes": len(vocabulary.names),
                "prompt_denoising": args.prompt_denoising,
                "machine": f"{platform.machine()}, {cpu_model()}, {torch.get_num_threads()} torch threads",
                "cpu_features": cpu_features(),
                "cpu_bf16_support": cpu_bf16_support(),
                "torch": torch.__version__,
                "matmul_ceiling": matmul_ceiling(),
                "labelers": report,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
