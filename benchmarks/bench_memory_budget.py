"""Peak RSS of one labeling batch of decompression bombs, with and without the per-worker memory budget.

    .venv/bin/python benchmarks/bench_memory_budget.py [--bombs 6] [--megapixels 24] [--budget-mb 1600]

Each arm runs in its own fresh process (peak RSS is per process) on the same batch of PNG bombs (~30 KB each,
``megapixels`` once decoded): "unbounded" with a budget larger than the whole batch (the old behaviour),
"budget" with ``--budget-mb``. The labeler is a stand-in that allocates what a real one returns (int64 labels,
float32 confidence at full size), so the figures are those of the pipeline around it. Prints JSON with both
peaks and their ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def arm(bombs: int, megapixels: int, budget_mb: int) -> dict:
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import time

    import numpy as np
    from support.bad_inputs import png_bomb
    from support.tiny_labeler import KEEP_ALL

    from maskclip_core.labeling.batch import process_batch
    from maskclip_core.labeling.memory_budget import MemoryBudget
    from maskclip_core.labeling.run_records import LabelingPlan, SourceItem
    from maskclip_core.types import SegmentationResult

    classes = ("a", "b", "c")

    class FullSizeLabeler:
        class_names = classes

        def label(self, images):
            return [
                SegmentationResult(
                    np.zeros(im.shape[:2], np.int64),
                    np.full(im.shape[:2], 0.9, np.float32),
                    np.full(3, 0.9, np.float32),
                    np.zeros(3, bool),
                    classes,
                )
                for im in images
            ]

    side = int((megapixels * 1_000_000) ** 0.5)
    files = {f"bomb{i}.png": png_bomb(side + i, side) for i in range(bombs)}
    plan = LabelingPlan("bench", "cfg", classes, (1, 2, 3), KEEP_ALL, max_label_pixels=10**10)
    budget = MemoryBudget(budget_mb << 20)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    result = process_batch(
        [SourceItem(u) for u in files], FullSizeLabeler(), plan, read=files.__getitem__, budget=budget
    )
    return {
        "seconds": round(time.perf_counter() - t0, 2),
        "rss_before_mb": base // 1024,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "labeled": result.stats.labeled,
        "deferred": len(result.stats.memory_deferred),
        "budget_peak_mb": budget.peak >> 20,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bombs", type=int, default=6)
    p.add_argument("--megapixels", type=int, default=24)
    p.add_argument("--budget-mb", type=int, default=1600)
    p.add_argument("--arm", choices=["unbounded", "budget"], default=None)
    args = p.parse_args()
    if args.arm:
        budget = args.budget_mb if args.arm == "budget" else 1 << 24
        print(json.dumps(arm(args.bombs, args.megapixels, budget)))
        return
    out = {"machine": platform.processor() or platform.machine(), "bombs": args.bombs, "megapixels": args.megapixels}
    for name in ("unbounded", "budget"):
        cmd = [sys.executable, __file__, "--arm", name, "--bombs", str(args.bombs)]
        cmd += ["--megapixels", str(args.megapixels), "--budget-mb", str(args.budget_mb)]
        out[name] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    growth = {k: out[k]["peak_rss_mb"] - out[k]["rss_before_mb"] for k in ("unbounded", "budget")}
    out["growth_mb"] = growth
    out["growth_ratio_budget_vs_unbounded"] = round(growth["budget"] / max(1, growth["unbounded"]), 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
