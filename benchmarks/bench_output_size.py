"""The teacher's host-side output: stitching, upsampling and label / confidence maps, before and after.

    .venv/bin/python benchmarks/bench_output_size.py [--limit 16] [--batch 8] [--device cpu]

The encoder and the refinements run once (ViT-B/16, random weights, the COCO sample's val photos); their
patch-level window probabilities are saved, and two child processes, alternating, turn them into label and
confidence maps for whole batches and hold each batch's results as a labeling batch does: ``before`` with the
code as it was (``canvas / count``, int64 label maps), ``after`` with the predictor's own code (in-place
division, label maps narrowed to uint8 on the device, one host copy per batch on CUDA). Prints JSON: time per
image of each, their ratio, peak memory above each child's baseline, bytes held per image, and whether labels
and confidences are bit-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import IMAGES, VOC  # noqa: E402  (also puts the repository on the path)

from maskclip_core.labeling.decode import decode_image  # noqa: E402
from maskclip_core.teacher.window_predictor import DensePredictor, InferenceConfig, _to_host, upsample_argmax  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def reset_peak_rss() -> None:
    """Start the kernel's peak-RSS mark (VmHWM) afresh; ru_maxrss cannot be reset and a child inherits its
    parent's, the model-holding process's, across exec."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def save_windows(args: argparse.Namespace, path: Path) -> dict:
    """Run the encoder and refinements once; save what the output step starts from, batch by batch."""
    from maskclip_core.teacher.clip_loader import load_clip
    from maskclip_core.teacher.labeler import MaskCLIPLabeler
    from maskclip_core.teacher.vocabulary import Vocabulary

    paths = sorted(args.images.glob("*.jpg"))[: args.limit]
    images = [decode_image(p.read_bytes()).rgb for p in paths]
    labeler = MaskCLIPLabeler(load_clip("ViT-B-16", "none", device=args.device), Vocabulary.parse(VOC))
    predictor = labeler.predictor
    batches = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(images), args.batch):
            batch = images[start : start + args.batch]
            pixels = [predictor._prepare(im) for im in batch]
            per_image = [predictor._windows(i, p.shape[1], p.shape[2]) for i, p in enumerate(pixels)]
            flat = [w for ws in per_image for w in ws]
            predictor._encode(pixels, flat)
            predictor._refine_windows(flat, len(batch))
            batches.append(
                {
                    "sizes": [im.shape[:2] for im in batch],
                    "pixels": [p.cpu() for p in pixels],
                    "windows": [[(w.box, w.grid, w.probs.cpu()) for w in ws] for ws in per_image],
                }
            )
    encode_seconds = time.perf_counter() - t0
    torch.save({"batches": batches, "classes": len(labeler.class_names)}, path)
    return {"images": len(images), "encode_and_refine_seconds": round(encode_seconds, 2)}


def before(predictor: DensePredictor, pixels: torch.Tensor, windows: list, size: tuple[int, int]) -> tuple:
    """The output step as it was: a second K x H x W buffer for the average, int64 labels on the host."""
    K = predictor.classifier.num_classes
    canvas = torch.zeros((K, *pixels.shape[1:]), device=predictor.device)
    count = torch.zeros((1, *pixels.shape[1:]), device=predictor.device)
    for win in windows:
        gh, gw = win.grid
        y0, y1, x0, x1 = win.box
        up = torch.nn.functional.interpolate(
            win.probs[None], size=(gh * predictor.stride, gw * predictor.stride), mode="bilinear", align_corners=False
        )[:, :, : y1 - y0, : x1 - x0]
        canvas[:, y0:y1, x0:x1] += up[0]
        count[:, y0:y1, x0:x1] += 1
    labels, conf = upsample_argmax(canvas / count, size)
    return labels.cpu().numpy().astype(np.int64, copy=False), conf.float().cpu().numpy()


def after(predictor: DensePredictor, batch: list[tuple]) -> list[tuple]:
    """The predictor's own output step for a batch (``DensePredictor.predict`` after refinement)."""
    maps = []
    for pixels, windows, size in batch:
        labels, conf = upsample_argmax(predictor._stitch(pixels, windows), size, dtype=predictor._label_dtype)
        maps.append((labels, conf.float()))
    return _to_host(maps)


def run_stage(stage: str, state_path: Path, device: str) -> dict:
    from maskclip_core.teacher.window_predictor import _Window

    state = torch.load(state_path, weights_only=False)
    K = state["classes"]
    classifier = SimpleNamespace(num_classes=K, class_names=tuple(str(k) for k in range(K)))
    predictor = DensePredictor(
        torch.nn.Identity(), classifier, stride=16, mean=(0, 0, 0), std=(1, 1, 1), config=InferenceConfig(),
        device=device,
    )  # fmt: skip
    digest = hashlib.sha256()
    baseline = rss_mb()
    reset_peak_rss()
    seconds, held, images = 0.0, 0, 0
    for b in state["batches"]:
        batch = []
        for px, wins, size in zip(b["pixels"], b["windows"], b["sizes"], strict=True):
            windows = [_Window(0, box, grid, probs=probs.to(device)) for box, grid, probs in wins]
            batch.append((px.to(device), windows, tuple(size)))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            if stage == "before":
                results = [before(predictor, px, windows, size) for px, windows, size in batch]
            else:
                results = after(predictor, batch)
        seconds += time.perf_counter() - t0
        # The batch's results are held together, as a labeling batch holds them until it has written them.
        held += sum(labels.nbytes + conf.nbytes for labels, conf in results)
        images += len(results)
        for labels, conf in results:
            digest.update(labels.astype(np.int64).tobytes())
            digest.update(conf.tobytes())
        del results, batch
    return {
        "seconds": seconds,
        "images": images,
        "held_bytes_per_image": held / images,
        "peak_rss_above_baseline_mb": peak_rss_mb() - baseline,
        "digest": digest.hexdigest(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=IMAGES)
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8, help="images per labeler call")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=4, help="before/after child pairs (alternating order)")
    parser.add_argument("--stage", choices=["before", "after"], help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(run_stage(args.stage, args.state, args.device)))
        return
    if not args.images.is_dir():
        sys.exit(f"no images at {args.images} (the shared COCO sample must sit beside the repo)")
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "windows.pt"
        info = save_windows(args, state)
        runs: dict[str, list[dict]] = {"before": [], "after": []}
        for r in range(args.repeats):
            for stage in ("before", "after") if r % 2 == 0 else ("after", "before"):
                cmd = [sys.executable, __file__, "--stage", stage, "--state", str(state), "--device", args.device]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                runs[stage].append(json.loads(out.strip().splitlines()[-1]))
    best = {s: min(r["seconds"] for r in rs) for s, rs in runs.items()}
    peak = {s: max(r["peak_rss_above_baseline_mb"] for r in rs) for s, rs in runs.items()}
    per_image = {s: 1000 * best[s] / runs[s][0]["images"] for s in best}
    print(
        json.dumps(
            {
                "benchmark": "bench_output_size",
                "model": "ViT-B-16 (random weights)",
                "device": args.device,
                "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
                "batch": args.batch,
                **info,
                "output_ms_per_image": {s: round(v, 1) for s, v in per_image.items()},
                "speedup_after_vs_before": round(best["before"] / best["after"], 3),
                "output_share_of_labeling_before": round(
                    best["before"] / (best["before"] + info["encode_and_refine_seconds"]), 4
                ),
                "peak_rss_above_baseline_mb": {s: round(v, 1) for s, v in peak.items()},
                "held_bytes_per_image": {s: int(rs[0]["held_bytes_per_image"]) for s, rs in runs.items()},
                "bit_identical": len({r["digest"] for rs in runs.values() for r in rs}) == 1,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
