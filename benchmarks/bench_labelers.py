"""Cost of each labeler relative to MaskCLIP, on the same COCO val photos, in one run.

    .venv/bin/python benchmarks/bench_labelers.py [--limit 100] [--threads 1] [--only naclip proxyclip-dino-b8]
                                                  [--out cost.json]

Labelers: MaskCLIP without and with key smoothing / prompt denoising, ClearCLIP, SCLIP, NACLIP, ProxyCLIP with
a DINO ViT-B/8 and a DINOv2 ViT-B/14 (+registers) proxy, PAMR on MaskCLIP and on NACLIP, Trident (DINO ViT-B/16
proxy, SAM ViT-B at its 1024-pixel input), the global final block on the four last blocks and on ProxyCLIP with
DINOv2 (``+global``), and two students (MobileNetV3 "light" and MaskCLIP+'s ResNet-101 DeepLab-v2). ViT-B/16
CLIP; every model has random weights (the cost is that of trained ones). All run the
teacher's default protocol: short side 448, 448-pixel windows at stride 224, the 20 VOC classes (students: short
side 448, whole image; Trident: its own 336-pixel windows at stride 224, on the same short side).

Speed: one process holds every labeler; each photo goes through all of them, in an order rotated photo by
photo, so drifting machine load spreads over all of them alike and MaskCLIP, the reference, is measured side by
side with the rest. ``speed_vs_maskclip`` = labeler images/s / MaskCLIP images/s over the whole run (below 1:
slower), with the range of the ratios per call (``--batch`` photos). Before timing, each labeler labels one
448 x 448 crop (text classifier, allocator, per-shape caches).

Memory: peak resident memory (VmHWM) of a fresh process that loads only what the labeler needs and labels the
first ``--memory-images`` photos (on CUDA also its peak allocated GPU memory); ``loaded_rss_mb`` is its resident
memory before the first photo.

Prints JSON (and writes it to ``--out`` after every photo, so a long run that is stopped keeps its numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    VOC,
    add_image_arguments,
    device_name,
    load_images,
    machine,
    peak_rss_mb,
    random_student,
)

from maskclip_core.student import StudentLabeler  # noqa: E402
from maskclip_core.teacher.clip_loader import ClipBundle, load_clip  # noqa: E402
from maskclip_core.teacher.labeler import MaskCLIPLabeler  # noqa: E402
from maskclip_core.teacher.proxy import ProxyBundle, load_proxy  # noqa: E402
from maskclip_core.teacher.sam import SamBundle, load_sam  # noqa: E402
from maskclip_core.teacher.text_classifier import TextClassifierCache  # noqa: E402
from maskclip_core.teacher.trident_labeler import TRIDENT_INFERENCE, TRIDENT_PROXY, TridentLabeler  # noqa: E402
from maskclip_core.teacher.vocabulary import Vocabulary  # noqa: E402
from maskclip_core.teacher.window_predictor import InferenceConfig  # noqa: E402
from maskclip_core.types import Labeler  # noqa: E402

REFERENCE = "maskclip"
ATTENTION = ("maskclip", "clearclip", "sclip", "naclip")
PLAIN = {"key_smoothing": False, "prompt_denoising": False}


@dataclass(frozen=True)
class BenchLabeler:
    """A teacher (``InferenceConfig`` fields, optionally a ProxyCLIP proxy, with SAM: Trident) or a student."""

    inference: dict[str, Any] = field(default_factory=dict)
    proxy: str | None = None
    sam: str | None = None
    student: str | None = None
    student_precision: str = "fp32"


LABELERS: dict[str, BenchLabeler] = {
    "maskclip": BenchLabeler(PLAIN),  # the default precision: the machine's fast path (bf16 on AMX / AVX512-BF16)
    "maskclip-fp32": BenchLabeler({**PLAIN, "precision": "fp32"}),
    "maskclip+ks+pd": BenchLabeler({}),
    "clearclip": BenchLabeler({**PLAIN, "attention": "clearclip"}),
    "sclip": BenchLabeler({**PLAIN, "attention": "sclip"}),
    "naclip": BenchLabeler({**PLAIN, "attention": "naclip"}),
    "proxyclip-dino-b8": BenchLabeler(PLAIN, proxy="dino_vitb8"),
    "proxyclip-dinov2-b14-reg": BenchLabeler(PLAIN, proxy="dinov2_vitb14_reg"),
    "maskclip+pamr": BenchLabeler({**PLAIN, "pamr": True}),
    "naclip+pamr": BenchLabeler({**PLAIN, "attention": "naclip", "pamr": True}),
    "trident": BenchLabeler(TRIDENT_INFERENCE, proxy=TRIDENT_PROXY, sam="vit_b"),
    "trident-fp32": BenchLabeler({**TRIDENT_INFERENCE, "precision": "fp32"}, proxy=TRIDENT_PROXY, sam="vit_b"),
    # The global final block (teacher/global_block.py) on each last-block variant and on ProxyCLIP (DINOv2 proxy).
    **{f"{name}+global": BenchLabeler({**PLAIN, "attention": name, "global_block": True}) for name in ATTENTION},
    "proxyclip-dinov2-b14-reg+global": BenchLabeler({**PLAIN, "global_block": True}, proxy="dinov2_vitb14_reg"),
    "student-light": BenchLabeler(student="light"),
    "student-light-bf16": BenchLabeler(student="light", student_precision="bf16"),
    "student-resnet101-v2": BenchLabeler(student="resnet101_v2"),
    "student-resnet101-v2-bf16": BenchLabeler(student="resnet101_v2", student_precision="bf16"),
}


class Models:
    """CLIP and the proxies, each loaded once on first use and shared by every labeler that needs it."""

    def __init__(self, device: str | None, text_cache: TextClassifierCache) -> None:
        self.device = device
        self.text_cache = text_cache
        self._clip: ClipBundle | None = None
        self._proxies: dict[str, ProxyBundle] = {}
        self._sams: dict[str, SamBundle] = {}

    @property
    def clip(self) -> ClipBundle:
        if self._clip is None:
            self._clip = load_clip("ViT-B-16", "none", device=self.device)
        return self._clip

    def proxy(self, key: str) -> ProxyBundle:
        if key not in self._proxies:
            self._proxies[key] = load_proxy(key, "none", device=self.clip.device)
        return self._proxies[key]

    def sam(self, key: str) -> SamBundle:
        if key not in self._sams:
            self._sams[key] = load_sam(key, "none", device=self.clip.device)
        return self._sams[key]

    def labeler(self, name: str) -> Labeler:
        spec = LABELERS[name]
        if spec.student is not None:
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            model = random_student(spec.student, device)
            return StudentLabeler(model, short_side=448, device=device, precision=spec.student_precision)
        proxy = self.proxy(spec.proxy) if spec.proxy else None
        inference = InferenceConfig(**spec.inference)
        if spec.sam is not None:
            sam = self.sam(spec.sam)
            return TridentLabeler(self.clip, proxy, sam, Vocabulary.parse(VOC), inference, text_cache=self.text_cache)
        return MaskCLIPLabeler(self.clip, Vocabulary.parse(VOC), inference, text_cache=self.text_cache, proxy=proxy)

    def description(self) -> dict[str, str]:
        models = {k: f"{p.name} ({p.patch_size}-px patches, random weights)" for k, p in self._proxies.items()}
        return models | {k: f"{s.name} ({s.input_size}-px input, random weights)" for k, s in self._sams.items()}


def _resident_mb() -> float:
    with open("/proc/self/statm") as fh:
        return round(int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def memory_worker(name: str, args: argparse.Namespace) -> dict[str, float]:
    """Run in a fresh process: load what ``name`` needs, label the first photos, report resident memory."""
    images = load_images(args.images, args.memory_images)
    labeler = Models(args.device, TextClassifierCache(args.text_cache)).labeler(name)
    loaded = _resident_mb()
    cuda = torch.cuda.is_available() and (args.device or "cuda").startswith("cuda")
    for start in range(0, len(images), args.batch):
        labeler.label(images[start : start + args.batch])
    out = {"loaded_rss_mb": loaded, "peak_rss_mb": peak_rss_mb()}
    if cuda:  # the models and the working tensors live on the GPU there
        out["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def measure_memory(name: str, args: argparse.Namespace, text_cache: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--memory-worker", name, "--text-cache", text_cache]
    cmd += ["--images", str(args.images), "--memory-images", str(args.memory_images), "--batch", str(args.batch)]
    cmd += ["--threads", str(args.threads), *(["--device", args.device] if args.device else [])]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory worker for {name} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(
    names: list[str], seconds: dict[str, list[float]], images: int, memory: dict[str, dict]
) -> dict[str, dict]:
    """Per labeler: images/s, its ratio to MaskCLIP's (whole run and the range over calls) and its memory."""
    reference = np.array(seconds[REFERENCE])
    base_rss = memory.get(REFERENCE, {}).get("peak_rss_mb")
    results = {}
    for name in names:
        own = np.array(seconds[name])
        entry: dict[str, Any] = {}
        if len(own):
            per_call = reference / own
            entry = {
                "images_per_second": round(images / own.sum(), 4),
                "speed_vs_maskclip": round(reference.sum() / own.sum(), 3),
                "per_call_speed_ratio_range": [round(float(per_call.min()), 3), round(float(per_call.max()), 3)],
            }
        if name in memory:
            entry.update(memory[name])
            if base_rss:
                entry["peak_rss_ratio_vs_maskclip"] = round(memory[name]["peak_rss_mb"] / base_rss, 2)
        results[name] = entry
    return results


def write_json(path: Path, report: dict) -> None:
    """Whole or not at all: a reader never sees half a report."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-labelers-text-") as text_cache:
        run(text_cache)


def run(text_cache: str) -> None:
    """The benchmark; ``text_cache`` holds the text classifier, encoded once and read by the memory workers."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_image_arguments(parser)
    parser.add_argument("--device", default=None, help="default: CUDA when present")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--batch", type=int, default=1, help="photos per labeler call")
    parser.add_argument("--only", nargs="+", default=None, choices=sorted(LABELERS), help=f"a subset (+ {REFERENCE})")
    parser.add_argument("--memory-images", type=int, default=1, help="photos each memory process labels")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here (after every photo)")
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--text-cache", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, args)))
        return

    images = load_images(args.images, args.limit)
    available = len(list(args.images.glob("*.jpg")))
    names = [REFERENCE, *[n for n in (args.only or LABELERS) if n != REFERENCE]]
    models = Models(args.device, TextClassifierCache(text_cache))
    labelers = {name: models.labeler(name) for name in names}  # the text classifier is encoded once, here
    device = models.clip.device
    crop = images[0][:448, :448]
    for labeler in labelers.values():
        labeler.label([crop])

    report: dict[str, Any] = {
        "benchmark": "bench_labelers",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "clip": "ViT-B-16 (random weights)",
        "proxies": models.description(),
        "device": device_name(device),
        "machine": machine(),
        "torch": torch.__version__,
        "protocol": "short side 448, 448 windows, stride 224, 20 VOC classes; PAMR 10 iterations, dilations (8, 16)",
        "images": 0,
        "of_images": available,
    }
    memory: dict[str, dict] = {}
    if not args.skip_memory:
        for name in names:
            memory[name] = measure_memory(name, args, text_cache)
        report["memory_images"] = args.memory_images

    seconds: dict[str, list[float]] = {name: [] for name in names}
    batches = [images[i : i + args.batch] for i in range(0, len(images), args.batch)]
    start = time.perf_counter()
    for b, batch in enumerate(batches):
        shift = b % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            labelers[name].label(batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds[name].append(time.perf_counter() - t0)
        done = sum(len(x) for x in batches[: b + 1])
        per_photo = sum(sum(s) for s in seconds.values()) / done
        report.update(
            images=done,
            mean_pixels=int(np.mean([im.shape[0] * im.shape[1] for im in images[:done]])),
            timing_minutes=round((time.perf_counter() - start) / 60, 1),
            all_images_estimate_minutes=round(per_photo * available / 60, 1),
            labelers=summarise(names, seconds, done, memory),
        )
        if done < available:  # a reader of the figures must see they cover part of the folder, and the cost of all
            report["reduced_count"] = (
                f"{done} of {available} photos; all {available} would take about "
                f"{report['all_images_estimate_minutes']} min of timing on this machine"
            )
        if args.out is not None:
            write_json(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
