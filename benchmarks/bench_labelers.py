"""Cost of each training-free labeler relative to MaskCLIP, on the same COCO val photos, in one run.

    .venv/bin/python benchmarks/bench_labelers.py [--limit 100] [--device cpu] [--only naclip proxyclip-dino]

Labelers (ViT-B/16 CLIP, random weights: the cost is that of real weights): MaskCLIP without and with key
smoothing / prompt denoising, ClearCLIP, SCLIP, NACLIP, ProxyCLIP with DINO ViT-B/8 and with DINOv2 ViT-B/14
(+registers) proxies (random weights), and PAMR on top of MaskCLIP and NACLIP. All share one protocol
(short side 448, 448-pixel windows, stride 224, the 20 VOC classes) and one loaded CLIP. Images go through in
batches; within each batch every labeler runs once, in an order rotated per batch, so drifting machine load
spreads over all of them. Prints JSON: images/s, time ratio to MaskCLIP (``slowdown``), and peak working
memory above the loaded models (CUDA: peak allocated; CPU: peak resident memory sampled every 2 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskclip_core.labeling.decode import decode_image  # noqa: E402
from maskclip_core.teacher.clip_loader import load_clip  # noqa: E402
from maskclip_core.teacher.labeler import MaskCLIPLabeler  # noqa: E402
from maskclip_core.teacher.proxy import load_proxy  # noqa: E402
from maskclip_core.teacher.vocabulary import Vocabulary  # noqa: E402
from maskclip_core.teacher.window_predictor import InferenceConfig  # noqa: E402

IMAGES = ROOT.parent / "shared" / "data" / "coco-sample" / "val" / "images"
VOC = (
    "aeroplane, bicycle, bird, boat, bottle, bus, car, cat, chair, cow, dining table, dog, horse, motorbike, "
    "person, potted plant, sheep, sofa, train, tv monitor"
)
PLAIN = {"key_smoothing": False, "prompt_denoising": False}
# name -> (inference settings, proxy key or None)
LABELERS: dict[str, tuple[dict, str | None]] = {
    "maskclip": (PLAIN, None),
    "maskclip+ks+pd": ({}, None),
    "clearclip": ({**PLAIN, "attention": "clearclip"}, None),
    "sclip": ({**PLAIN, "attention": "sclip"}, None),
    "naclip": ({**PLAIN, "attention": "naclip"}, None),
    "proxyclip-dino-b8": (PLAIN, "dino_vitb8"),
    "proxyclip-dinov2-b14-reg": (PLAIN, "dinov2_vitb14_reg"),
    "maskclip+pamr": ({**PLAIN, "pamr": True}, None),
    "naclip+pamr": ({**PLAIN, "attention": "naclip", "pamr": True}, None),
}


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator statistics, or resident memory sampled on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = self._peak = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, self._rss())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, self._rss())
        self.peak_bytes = max(self.peak_bytes, peak - self._base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=IMAGES)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch", type=int, default=2, help="images per labeler call")
    parser.add_argument("--only", nargs="+", default=None, choices=sorted(LABELERS), help="a subset (+ maskclip)")
    args = parser.parse_args()
    if not args.images.is_dir():
        sys.exit(f"no images at {args.images} (the shared COCO sample must sit beside the repo)")

    paths = sorted(args.images.glob("*.jpg"))[: args.limit]
    images = [decode_image(p.read_bytes()).rgb for p in paths]
    bundle = load_clip("ViT-B-16", "none", device=args.device)
    device = bundle.device
    names = ["maskclip", *[n for n in (args.only or LABELERS) if n != "maskclip"]]
    proxies = {key: load_proxy(key, "none", device=device) for key in {LABELERS[n][1] for n in names} - {None}}
    vocabulary = Vocabulary.parse(VOC)
    labelers = {}
    for name in names:
        settings, proxy = LABELERS[name]
        inference = InferenceConfig(**settings)
        labelers[name] = MaskCLIPLabeler(bundle, vocabulary, inference, proxy=proxies.get(proxy))
        labelers[name].label([images[0]])  # warm-up: allocator, kernels, cached positional embeddings

    seconds = dict.fromkeys(names, 0.0)
    memory = {name: PeakMemory(device) for name in names}
    batches = [images[i : i + args.batch] for i in range(0, len(images), args.batch)]
    for b, batch in enumerate(batches):
        shift = b % len(names)
        for name in names[shift:] + names[:shift]:
            with memory[name]:
                t0 = time.perf_counter()
                labelers[name].label(batch)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds[name] += time.perf_counter() - t0

    base_seconds, base_memory = seconds["maskclip"], max(memory["maskclip"].peak_bytes, 1)
    results = {
        name: {
            "images_per_second": round(len(images) / seconds[name], 3),
            "slowdown_vs_maskclip": round(seconds[name] / base_seconds, 2),
            "peak_working_memory_mb": round(memory[name].peak_bytes / 2**20, 1),
            "peak_memory_ratio_vs_maskclip": round(memory[name].peak_bytes / base_memory, 2),
        }
        for name in names
    }
    print(
        json.dumps(
            {
                "benchmark": "bench_labelers",
                "clip": "ViT-B-16 (random weights)",
                "proxies": {k: f"{p.name} ({p.patch_size}-px patches, random weights)" for k, p in proxies.items()},
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
                "images": len(images),
                "mean_pixels": int(np.mean([im.shape[0] * im.shape[1] for im in images])),
                "protocol": "short side 448, 448 windows, stride 224, 20 VOC classes, PAMR 10 iterations (8, 16)",
                "labelers": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
