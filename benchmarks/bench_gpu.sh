#!/usr/bin/env bash
# One command on a CUDA machine: images/s of the MaskCLIP teacher, of the MaskCLIP+ students and of every
# training-free labeler relative to MaskCLIP (bench_labelers), as JSON.
#
#   benchmarks/bench_gpu.sh                    # the COCO sample beside the repo (../shared/data/coco-sample)
#   IMAGES=/data/photos benchmarks/bench_gpu.sh  # any folder of .jpg files
#   WINDOW_BATCH=32 BATCH=16 benchmarks/bench_gpu.sh
#   PY=python3 benchmarks/bench_gpu.sh         # an interpreter that already has the dependencies (offline GPU box)
#
# Random weights everywhere (the cost is that of trained weights), fp16 autocast for the encoder on CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGES=${IMAGES:-../shared/data/coco-sample/val/images}
BATCH=${BATCH:-8}
WINDOW_BATCH=${WINDOW_BATCH:-16}
LIMIT=${LIMIT:-100}

if [[ -z "${PY:-}" ]]; then
    make install >/dev/null
    PY=.venv/bin/python
fi
$PY - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("bench_gpu.sh: no CUDA device visible to PyTorch (check the driver / CUDA_VISIBLE_DEVICES)")
print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}", file=sys.stderr)
PY
$PY benchmarks/bench_dense.py --device cuda --images "$IMAGES" --limit "$LIMIT" --batch "$BATCH" \
    --window-batch "$WINDOW_BATCH"
$PY benchmarks/bench_student.py --device cuda --images "$IMAGES" --limit "$LIMIT" --batch "$BATCH" \
    --variants light,resnet18,resnet50,resnet101_v2 --student-precision both
$PY benchmarks/bench_labelers.py --device cuda --images "$IMAGES" --limit "$LIMIT" --batch "$BATCH"
