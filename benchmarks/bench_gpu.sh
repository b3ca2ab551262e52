#!/usr/bin/env bash
# One command on a CUDA machine: issue 13's target figures as one JSON object (the scripts' own reports under
# "reports", the targets beside what was measured under "targets"), with every training-free labeler's cost
# relative to MaskCLIP (bench_labelers) among the reports.
#
#   benchmarks/bench_gpu.sh                      # the COCO sample beside the repo (../shared/data/coco-sample)
#   IMAGES=/data/photos benchmarks/bench_gpu.sh  # any folder of .jpg files
#   BATCH=32 WINDOW_BATCH=32 PRECISION=fp16 benchmarks/bench_gpu.sh
#   PY=python3 benchmarks/bench_gpu.sh           # an interpreter that already has the dependencies (offline GPU box)
#
# Random weights everywhere (the cost is that of trained weights). Takes a few minutes on an H200; the
# correctness of the GPU paths is checked separately by `pytest tests/gpu`.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGES=${IMAGES:-../shared/data/coco-sample/val/images}
BATCH=${BATCH:-32}
WINDOW_BATCH=${WINDOW_BATCH:-32}
PRECISION=${PRECISION:-fp32}   # InferenceConfig.precision; fp32 means fp16 autocast on CUDA (half_precision)
LIMIT=${LIMIT:-100}

if [[ -z "${PY:-}" ]]; then
    make install >/dev/null
    PY=.venv/bin/python
fi
$PY - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("bench_gpu.sh: no CUDA device visible to PyTorch (check the driver / CUDA_VISIBLE_DEVICES)")
PY
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
# Each script prints its JSON on stdout (warnings go to stderr, shown).
$PY benchmarks/bench_teacher_bytes.py --device cuda --images "$IMAGES" --limit "$LIMIT" --batch "$BATCH" \
    --window-batch "$WINDOW_BATCH" --precision "$PRECISION" > "$OUT/bytes.json"
$PY benchmarks/bench_dense.py --device cuda --images "$IMAGES" --limit "$LIMIT" --batch "$BATCH" \
    --window-batch "$WINDOW_BATCH" > "$OUT/dense.json"
$PY benchmarks/bench_student.py --device cuda --images "$IMAGES" --limit "$LIMIT" --batch "$BATCH" \
    --variants light,resnet18,resnet101_v2 --student-precision fp32 --skip-train > "$OUT/student.json"
$PY benchmarks/bench_labelers.py --device cuda --images "$IMAGES" --limit "$LIMIT" --batch "$BATCH" \
    > "$OUT/labelers.json"
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
import torch

out = Path(sys.argv[1])
reports = {name: json.loads((out / f"{name}.json").read_text()) for name in ("bytes", "dense", "student", "labelers")}
e2e = max(reports["bytes"]["images_per_second"].values())
ratio = reports["dense"]["ratio_labeler_to_bare_forward"]
labeling = reports["student"]["labeling"]
light = labeling["student_light"]["warm_speedup_over_teacher"]
r101 = labeling["student_resnet101_v2"]["warm_speedup_over_teacher"]
targets = {
    "teacher_images_per_second_from_jpeg_bytes": {"measured": e2e, "target": ">= 1000", "met": e2e >= 1000},
    "labeler_to_bare_encoder_ratio": {"measured": ratio, "target": "<= 1.15", "met": ratio <= 1.15},
    "light_student_vs_teacher_warm": {"measured": light, "target": ">= 3", "met": light >= 3},
    "resnet101_student_vs_teacher_warm": {"measured": r101, "target": "> 1", "met": r101 > 1},
}
print(json.dumps({
    "benchmark": "bench_gpu",
    "gpu": torch.cuda.get_device_name(0),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "targets": targets,
    "reports": reports,
}, indent=2))
PY
