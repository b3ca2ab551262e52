"""The teacher end to end from encoded JPEG bytes in memory to label and confidence maps on the host.

    .venv/bin/python benchmarks/bench_teacher_bytes.py --device cuda [--batch 32] [--window-batch 32]

The pipeline's real unit of work, without storage: bytes -> decode -> label -> uint8 labels + float32
confidence as numpy arrays. Decoders, side by side in one run (passes alternate):

- ``cpu``: Pillow (``decode_image``) in a thread pool that decodes the next batch while this one labels;
- ``gpu``: one batched nvJPEG call per batch (``decode_jpegs_on_device``; CUDA only), the CPU for the rest.

ViT-B/16 with random weights, the COCO sample's val photos, 20 VOC classes. A warm-up pass (every window
shape met once) is left out. Prints JSON: images/s per decoder and the issue's target (1,000 on one GPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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


def cpu_pass(labeler: MaskCLIPLabeler, batches: list[list[bytes]], pool: ThreadPoolExecutor) -> int:
    def decode(batch: list[bytes]) -> list[np.ndarray]:
        return list(pool.map(lambda data: decode_image(data).rgb, batch))

    pixels = 0
    pending = pool.submit(decode, batches[0])
    for i in range(len(batches)):
        images = pending.result()
        if i + 1 < len(batches):
            pending = pool.submit(decode, batches[i + 1])  # decode ahead while this batch labels
        pixels += sum(r.labels.size for r in labeler.label(images))
    return pixels


def gpu_pass(labeler: MaskCLIPLabeler, batches: list[list[bytes]]) -> int:
    from maskclip_core.labeling.device_decode import decode_jpegs_on_device

    pixels = 0
    for batch in batches:
        decoded = decode_jpegs_on_device(batch, labeler.bundle.device)
        images = [d if d is not None else decode_image(data).rgb for d, data in zip(decoded, batch, strict=True)]
        pixels += sum(r.labels.size for r in labeler.label(images))
    return pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=IMAGES)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32, help="images per labeler call")
    parser.add_argument("--window-batch", type=int, default=32, help="windows per encoder forward")
    parser.add_argument("--precision", default="fp32", help="InferenceConfig.precision (fp32: fp16 autocast on CUDA)")
    parser.add_argument("--passes", type=int, default=None, help="timed passes over the images (default 5 on CUDA)")
    parser.add_argument("--decode-threads", type=int, default=8)
    parser.add_argument("--decoders", default=None, help="comma separated: cpu,gpu (default: both on CUDA)")
    args = parser.parse_args()
    if not args.images.is_dir():
        sys.exit(f"no images at {args.images} (the shared COCO sample must sit beside the repo)")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    decoders = (args.decoders or ("cpu,gpu" if cuda else "cpu")).split(",")
    passes = args.passes or (5 if cuda else 1)

    datas = [p.read_bytes() for p in sorted(args.images.glob("*.jpg"))[: args.limit]]
    batches = [datas[i : i + args.batch] for i in range(0, len(datas), args.batch)]
    inference = InferenceConfig(window_batch=args.window_batch, precision=args.precision)
    labeler = MaskCLIPLabeler(load_clip(args.model, "none", device=device), Vocabulary.parse(VOC), inference)
    pool = ThreadPoolExecutor(args.decode_threads)
    run = {"cpu": lambda: cpu_pass(labeler, batches, pool), "gpu": lambda: gpu_pass(labeler, batches)}

    for name in decoders:  # warm-up: kernels, cuDNN / allocator, every window shape
        run[name]()
    seconds = dict.fromkeys(decoders, 0.0)
    for p in range(passes):
        for name in decoders if p % 2 == 0 else decoders[::-1]:
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            run[name]()  # ends with the maps in host memory: the copies back synchronise
            seconds[name] += time.perf_counter() - t0
    pool.shutdown()
    images = len(datas) * passes
    print(
        json.dumps(
            {
                "benchmark": "bench_teacher_bytes",
                "model": f"{args.model} (random weights)",
                "device": torch.cuda.get_device_name(device) if cuda else "cpu",
                "torch": torch.__version__,
                "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
                "images": len(datas),
                "passes": passes,
                "batch": args.batch,
                "window_batch": args.window_batch,
                "precision": args.precision,
                "images_per_second": {n: round(images / s, 2) for n, s in seconds.items()},
                "target_images_per_second_on_one_gpu": 1000,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
