"""Outputs of a labeling run do not change with a refactor: the COCO sample's 100 val photos, labeled by the tiny
random-weight teacher through the real CLI (``maskclip label`` then ``maskclip export coco``), reduce to the same
canonical digest as the code before the restructuring (commit 6562388) produced.

The digest covers what a user receives: per file name the image size and, per class name, the exact COCO RLE,
area, bbox and the score rounded to 1e-4 (ids and timestamps are left out: they may be renumbered). Run in a
subprocess with one torch thread, so reductions run in one order whatever the machine's core count.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from support.coco_sample import SAMPLE

ROOT = Path(__file__).resolve().parents[2]
VAL = SAMPLE / "val" / "images"
CLASSES = "person, car, dog, cat, tree, grass; lawn, road, building, sky, water, food, table"
# sha256 of the canonical export per kind of CPU, and its size. fp32 matmul kernels differ between CPU vendors
# (MKL and oneDNN take other code paths), which moves a few random-weight logits across a decision, so one code
# gives one digest per kind: c316df1b... from commit 6562388 (before the restructuring) on Intel Xeons (CI's),
# da0983ea... from commit 76aef38 (which CI had checked against c316df1b...) on an AMD EPYC (Zen 4, AVX512).
EXPECTED_DIGESTS = {
    "GenuineIntel": "c316df1bb780dacd4709eed85a9960f666dc45a22f5ab7fb24dea929aafe7353",
    "AuthenticAMD/AVX512": "da0983ea577fb865ec89ec665879c7beade2ae78932afc1244b72cf08e4aa045",
}
EXPECTED_COUNTS = {"images": 100, "annotations": 239}

_SCRIPT = r"""
import sys
from cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def cpu_kind() -> tuple[str, ...]:
    """Keys of this CPU, most specific first: vendor and ATen's vector capability, then the vendor alone."""
    import torch

    vendor = platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            vendor = next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), vendor)
    return (f"{vendor}/{torch.backends.cpu.get_cpu_capability()}", vendor)


def _maskclip(*argv: str, env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def canonical_digest(coco: dict) -> tuple[str, dict[str, int]]:
    """sha256 over the export's content keyed by file name and class name, and the counts behind it."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    images = {im["id"]: im for im in coco["images"]}
    per_image: dict[str, list] = {Path(im["file_name"]).name: [] for im in images.values()}
    for a in coco["annotations"]:
        seg = a["segmentation"]
        counts = seg["counts"] if isinstance(seg["counts"], str) else json.dumps(seg["counts"])
        per_image[Path(images[a["image_id"]]["file_name"]).name].append(
            (
                names[a["category_id"]],
                seg["size"],
                counts,
                int(a["area"]),
                [round(v, 2) for v in a["bbox"]],
                round(float(a.get("score", 1.0)), 4),
            )
        )
    rows = []
    for im in sorted(images.values(), key=lambda im: Path(im["file_name"]).name):
        key = Path(im["file_name"]).name
        rows.append((key, im["width"], im["height"], sorted(per_image[key])))
    blob = json.dumps(rows, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest(), {"images": len(images), "annotations": len(coco["annotations"])}


def label_and_export(tmp: Path) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MASKCLIP_CACHE_DIR": str(tmp / "cache"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",
        "PREFECT_HOME": str(tmp / "prefect-home"),
    }
    dataset = tmp / "dataset"
    # The old spellings (--output, --from) stay accepted as deprecated aliases, so this runs before and after.
    _maskclip(
        "label",
        "--source",
        str(VAL),
        "--output",
        str(dataset),
        "--classes",
        CLASSES,
        "--model",
        "maskclip-tiny-ViT",
        "--pretrained",
        "none",
        "--short-side",
        "224",
        "--crop",
        "224",
        "--stride",
        "112",
        "--min-confidence",
        "0",
        "--min-region-area",
        "0",
        "--min-region-confidence",
        "0",
        "--min-labeled-fraction",
        "0",
        "--batch-size",
        "25",
        "--thumbnails",
        "0",
        "--precision",
        "fp32",  # the fast path's default depends on the CPU; this compares the fp32 arithmetic
        env=env,
    )
    out = tmp / "coco.json"
    _maskclip("export", "coco", "--from", str(dataset), "--to", str(out), env=env)
    return json.loads(out.read_text())


@pytest.mark.skipif(not VAL.is_dir(), reason="../shared/data/coco-sample is absent")
def test_labels_of_coco_val_photos_unchanged(tmp_path: Path) -> None:
    coco = label_and_export(tmp_path)
    digest, counts = canonical_digest(coco)
    assert counts == EXPECTED_COUNTS
    # Ids left out of the digest are still JavaScript-safe (dataset format 3): Label Studio and CVAT hold them.
    ids = [x["id"] for table in ("images", "annotations", "categories") for x in coco[table]]
    ids += [a["image_id"] for a in coco["annotations"]]
    assert all(0 <= i < 2**53 for i in ids) and max(ids) >= 2**50
    expected = next((EXPECTED_DIGESTS[k] for k in cpu_kind() if k in EXPECTED_DIGESTS), None)
    if expected is None:
        pytest.skip(f"no golden digest for this kind of CPU {cpu_kind()}; this code gives {digest}")
    assert digest == expected


if __name__ == "__main__":  # print the golden values for the code at hand
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        digest, counts = canonical_digest(label_and_export(Path(tmp)))
        print(json.dumps({"digest": digest, "counts": counts}))
