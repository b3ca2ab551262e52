"""The label-dataset flow end to end against the bare labeler, and its peak memory against the image count.

    .venv/bin/python benchmarks/bench_flow.py [--limit N] [--model ViT-B-16] [--batch-size 8]
        [--sources local,s3,dask] [--dask-workers 2] [--memory-sizes 100,1000] [--skip-throughput] [--skip-memory]

Throughput: the COCO sample's val images (``../shared/data/coco-sample/val/images``) are copied to a local
folder and to a moto S3 server started here (its own process); in one process, with one model load,

- ``bare``: ``MaskCLIPLabeler.label`` on the already decoded images, in batches of ``--batch-size``,
  once before and once after the flows (their mean is the reference);
- ``flow_local`` / ``flow_s3``: the label-dataset flow from the folder / the bucket to a dataset in a
  temporary folder / the bucket (listing, reads, SHA-256, decoding, labeling, filtering, RLE encoding,
  Parquet parts, thumbnails, artifacts, Prefect task orchestration);
- ``flow_local_dask``: the same from the folder, with the batches on a local Dask cluster of
  ``--dask-workers`` worker processes (prefect-dask) instead of the default thread pool (its wall time
  includes starting the cluster and each worker's model load; ``ratio_to_thread_pool`` against flow_local);

with random weights (``pretrained="none"``: the cost is that of real weights) and the default inference
settings. ``ratio`` = flow wall time / bare labeling time (target <= 1.2).

Memory: for each size, that many tiny generated 64x64 JPEGs labeled by the tiny model in a fresh
subprocess; its peak RSS (``ru_maxrss``) next to its RSS once the model is loaded shows whether memory grows
with the number of images. Both parts share one temporary Prefect server. Prints JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

IMAGES = ROOT.parent / "shared" / "data" / "coco-sample" / "val" / "images"
VOC = (
    "aeroplane, bicycle, bird, boat, bottle, bus, car, cat, chair, cow, dining table, dog, horse, motorbike, "
    "person, potted plant, sheep, sofa, train, tv monitor"
)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    """Current resident set size of this process (Linux)."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident set size of this process since it started (VmHWM; unlike ``ru_maxrss`` it does not
    inherit the parent's peak across fork + exec)."""
    value = _status_mb("VmHWM")
    return value if value == value else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- throughput ------------------------------------------------------------------------------------------------


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or "moto_server"
    proc = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, endpoint
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto server did not start")


def throughput(args: argparse.Namespace) -> dict:
    import s3fs

    from flows.label_dataset import LabelingRunParameters, label_dataset
    from maskclip_core.labeling.decode import decode_image
    from maskclip_core.labeling.filter import FilterConfig
    from maskclip_core.labeling.registry import LabelerParameters, load_labeler
    from maskclip_core.teacher.labeler import LabelerConfig

    if not IMAGES.is_dir():
        return {"skipped": f"{IMAGES} not found"}
    files = sorted(IMAGES.glob("*.jpg"))[: args.limit]
    config = LabelerConfig(model=args.model, pretrained="none", classes=VOC)
    spec = LabelerParameters.maskclip(config, device=args.device)
    filters = FilterConfig()
    options = LabelingRunParameters(batch_size=args.batch_size, thumbnails=6)
    out: dict = {
        "images": len(files),
        "model": args.model,
        "batch_size": args.batch_size,
        "inference": config.inference.model_dump(mode="json"),
        "filters": "defaults",
    }

    t0 = time.perf_counter()
    labeler = load_labeler(spec)  # the flow reuses this very instance (per-process cache)
    out["model_load_s"] = round(time.perf_counter() - t0, 2)
    decoded = [decode_image(p.read_bytes()).rgb for p in files[:1]]
    labeler.label(decoded)  # warm-up (first-call allocations), for both sides

    t0 = time.perf_counter()
    decoded = [decode_image(p.read_bytes()).rgb for p in files]
    out["decode_only_s"] = round(time.perf_counter() - t0, 3)

    def bare_pass() -> float:
        t0 = time.perf_counter()
        for start in range(0, len(decoded), args.batch_size):
            labeler.label(decoded[start : start + args.batch_size])
        return time.perf_counter() - t0

    # Bare runs before and after the flows; their mean is the reference, so drifting machine load or
    # warm-up does not favour either side.
    bare_before = bare_pass()

    with tempfile.TemporaryDirectory(prefix="bench-flow-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for p in files:
            shutil.copy(p, src / p.name)
        runs: dict[str, tuple[str, str, LabelingRunParameters]] = {}
        if "local" in args.sources:
            runs["flow_local"] = (str(src), str(Path(tmp) / "out"), options)
        if "dask" in args.sources:
            # Same folder, batches on a local Dask cluster of worker processes (each loads the model once).
            dask_options = options.model_copy(update={"workers": args.dask_workers})
            runs["flow_local_dask"] = (str(src), str(Path(tmp) / "out-dask"), dask_options)
        moto = None
        if "s3" in args.sources:
            moto, endpoint = start_moto()
            storage = {
                "key": "bench",
                "secret": "bench",
                "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            }
            import boto3

            boto3.client(
                "s3",
                endpoint_url=endpoint,
                aws_access_key_id="bench",
                aws_secret_access_key="bench",
                region_name="us-east-1",
            ).create_bucket(Bucket="bench")
            fs = s3fs.S3FileSystem(skip_instance_cache=True, **storage)
            for p in files:
                fs.pipe_file(f"bench/images/{p.name}", p.read_bytes())
            s3_options = options.model_copy(
                update={"source_storage_options": storage, "dataset_storage_options": storage}
            )
            runs["flow_s3"] = ("s3://bench/images", "s3://bench/labels", s3_options)
        walls: dict[str, float] = {}
        summaries: dict[str, dict] = {}
        try:
            for name, (source, output, run_options) in runs.items():
                t0 = time.perf_counter()
                summaries[name] = label_dataset(source, output, labeler=spec, filters=filters, options=run_options)
                walls[name] = time.perf_counter() - t0
        finally:
            if moto is not None:
                moto.terminate()
                moto.wait(timeout=10)
        bare_after = bare_pass()
        bare = (bare_before + bare_after) / 2
        out["bare_labeler_s"] = round(bare, 2)
        out["bare_labeler_s_before_and_after"] = [round(bare_before, 2), round(bare_after, 2)]
        out["bare_images_per_s"] = round(len(files) / bare, 3)
        for name, summary in summaries.items():
            wall, label_s = walls[name], summary["seconds"].get("label", 0.0)
            source = runs[name][0]
            out[name] = {
                "source": source.split("://")[0] if "://" in source else "local folder",
                "wall_s": round(wall, 2),
                "images_per_s": round(len(files) / wall, 3),
                "ratio_to_bare": round(wall / bare, 3),
                "labeler_time_inside_flow_s": round(label_s, 2),
                "stage_seconds_summed_over_batches": summary["seconds"],
                "labeled": summary["labeled"],
                "rejected": summary["rejected_by_reason"],
                "failed": summary["failed"],
                "annotations": summary["annotations"],
            }
            if name == "flow_local_dask":
                # Includes starting the cluster and each worker's model load; labeler time is summed over
                # worker processes, so no overhead share.
                if "flow_local" in walls:
                    out[name]["ratio_to_thread_pool"] = round(wall / walls["flow_local"], 3)
            else:
                out[name]["overhead_share_of_wall"] = round(1 - label_s / wall, 3)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


# --- memory ----------------------------------------------------------------------------------------------------


def tiny_jpegs(directory: Path, n: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(n)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        rgb[:32, :32] = (220, 30, 30)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG", quality=85)
        (directory / f"{i:06d}.jpg").write_bytes(buf.getvalue())


def memory_child(source: str, output: str, batch_size: int) -> None:
    """One size, in a fresh process: RSS after setup, then the flow, then the peak."""
    from flows.label_dataset import LabelingRunParameters, label_dataset, progress_listener
    from maskclip_core.labeling.filter import FilterConfig
    from maskclip_core.labeling.registry import LabelerParameters, load_labeler
    from maskclip_core.teacher.labeler import LabelerConfig
    from maskclip_core.teacher.window_predictor import InferenceConfig

    config = LabelerConfig(
        model="maskclip-tiny-ViT",
        pretrained="none",
        classes="red, green, blue",
        inference=InferenceConfig(short_side=64, crop=64, stride=32),
    )
    spec = LabelerParameters.maskclip(config, device="cpu")
    load_labeler(spec)
    setup_rss = rss_mb()
    setup_peak = peak_rss_mb()
    # RSS sampled as batches finish: the labeling alone, apart from the end-of-run index compaction (which
    # holds up to its ``max_rows`` images rows at once by design).
    labeling_rss = [0.0]

    def on_event(event: str, _summary: object) -> None:
        if event == "batch":
            labeling_rss[0] = max(labeling_rss[0], rss_mb())

    t0 = time.perf_counter()
    with progress_listener(on_event):
        summary = label_dataset(
            source, output, labeler=spec, filters=FilterConfig(), options=LabelingRunParameters(batch_size=batch_size)
        )
    print(
        json.dumps(
            {
                "images": summary["images_seen"],
                "labeled": summary["labeled"],
                "rejected": summary["rejected"],
                "batches": summary["batches"]["submitted"],
                "wall_s": round(time.perf_counter() - t0, 2),
                "rss_after_setup_mb": round(setup_rss, 1),
                "peak_rss_after_setup_mb": round(setup_peak, 1),
                "max_rss_while_labeling_mb": round(labeling_rss[0], 1),
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "rss_at_end_mb": round(rss_mb(), 1),
            }
        )
    )


def memory(args: argparse.Namespace) -> dict:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_LOGGING_LEVEL": "WARNING"}
    out: dict = {"model": "maskclip-tiny-ViT", "image_size": "64x64 JPEG", "batch_size": args.memory_batch_size}
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        for n in args.memory_sizes:
            src = Path(tmp) / f"src{n}"
            tiny_jpegs(src, n)
            cmd = [sys.executable, __file__, "--memory-child", str(src), str(Path(tmp) / f"out{n}")]
            cmd += ["--memory-batch-size", str(args.memory_batch_size)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
            if proc.returncode != 0:
                out[str(n)] = {"error": proc.stderr[-2000:]}
                continue
            out[str(n)] = json.loads(proc.stdout.strip().splitlines()[-1])
    sizes = [str(n) for n in args.memory_sizes if "peak_rss_mb" in out.get(str(n), {})]
    if len(sizes) >= 2:
        first, last = out[sizes[0]], out[sizes[-1]]
        out["peak_growth_mb"] = round(last["peak_rss_mb"] - first["peak_rss_mb"], 1)
        out["peak_growth_per_1000_images_mb"] = round(
            1000 * (last["peak_rss_mb"] - first["peak_rss_mb"]) / (last["images"] - first["images"]), 2
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=100, help="COCO sample images (at most 100)")
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sources", default="local,s3", help="flow runs, comma separated: local, s3, dask")
    parser.add_argument("--dask-workers", type=int, default=2, help="worker processes of the dask run")
    parser.add_argument("--memory-sizes", default="100,1000")
    parser.add_argument("--memory-batch-size", type=int, default=16)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", nargs=2, metavar=("SOURCE", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child, batch_size=args.memory_batch_size)
        return
    args.sources = {s.strip() for s in args.sources.split(",") if s.strip()}
    args.memory_sizes = [int(n) for n in args.memory_sizes.split(",") if n.strip()]

    import torch
    from prefect.testing.utilities import prefect_test_harness

    result: dict = {
        "benchmark": "label-dataset flow vs bare MaskCLIPLabeler.label",
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
        },
    }
    t0 = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=120):  # a temporary Prefect server for every run here
        result["prefect_server_start_s"] = round(time.perf_counter() - t0, 1)
        if not args.skip_throughput:
            result["throughput"] = throughput(args)
        if not args.skip_memory:
            result["memory"] = memory(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
