"""`maskclip review pull` of a large Label Studio project: wall time and memory, printed as JSON.

Against a running Label Studio (``--label-studio``/``$LABEL_STUDIO_URL``, ``--api-key``/``$LABEL_STUDIO_API_KEY``):
a dataset of ``--tasks`` images (rows only: pull never reads the image files) and a project holding one task
per image, each with a prediction and a submitted brush annotation of ``--classes`` regions (what a push and
a review leave), imported in chunks. Then it times ``pull`` (pages of annotated tasks) and, with
``--compare-export``, the whole-project export pull used before (``exports.as_json``, one synchronous job with
the SDK's 60 s limit). The project is deleted afterwards unless ``--keep``.

    .venv/bin/python benchmarks/bench_label_studio_pull.py --label-studio http://localhost:8080 --tasks 10000
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from maskclip_core.dataset.ids import image_id_from_sha256  # noqa: E402
from maskclip_core.dataset.label_dataset import LabelDataset  # noqa: E402
from maskclip_core.interchange.label_studio import labeling_config  # noqa: E402
from maskclip_core.interchange.label_studio_client import connect  # noqa: E402
from maskclip_core.interchange.label_studio_project import DESCRIPTION_PREFIX, dataset_key  # noqa: E402
from maskclip_core.interchange.label_studio_rle import encode_mask  # noqa: E402
from maskclip_core.interchange.label_studio_sync import LabelStudioTarget, pull  # noqa: E402

CHUNK = 500  # tasks per import request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label-studio", default=os.environ.get("LABEL_STUDIO_URL"), metavar="URL")
    parser.add_argument("--api-key", default=os.environ.get("LABEL_STUDIO_API_KEY"))
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--classes", type=int, default=3, help="regions per annotation (one per class)")
    parser.add_argument("--compare-export", action="store_true", help="also time the whole-project export")
    parser.add_argument("--keep", action="store_true", help="keep the project (to time pulls again with --project)")
    parser.add_argument("--project", type=int, help="a project this script filled and kept: pull it again")
    args = parser.parse_args()
    if not args.label_studio or not args.api_key:
        parser.error("pass --label-studio and --api-key (or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)")

    client = connect(args.label_studio, args.api_key)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = str(Path(tmp) / "bench" / f"pull-{args.tasks}")
        names = [f"class{k}" for k in range(args.classes)]
        images = _dataset(dataset, names, args.tasks, args.height, args.width)
        config = labeling_config(LabelDataset(dataset).categories())
        if args.project is None:
            project = client.projects.create(
                title=f"bench pull {args.tasks} {os.getpid()}",
                description=DESCRIPTION_PREFIX + dataset_key(dataset),
                label_config=config,
            )
        else:
            project = client.projects.get(args.project)
        report = {}
        try:
            started = time.perf_counter()
            regions = _regions(names, args.height, args.width)
            for i in range(0, len(images) if args.project is None else 0, CHUNK):
                chunk = [_task(image_id, regions, args.height, args.width) for image_id in images[i : i + CHUNK]]
                client.projects.import_tasks(project.id, request=chunk)
            import_s = time.perf_counter() - started
            rss_before = _peak_rss_mib()
            started = time.perf_counter()
            summary = pull(LabelStudioTarget(args.label_studio, args.api_key, str(project.id)), dataset, client=client)
            pull_s = time.perf_counter() - started
            report = {
                "project": project.id,
                "tasks": args.tasks,
                "image": f"{args.height}x{args.width}",
                "regions_per_task": args.classes,
                "import_s": round(import_s, 1),
                "pull_s": round(pull_s, 1),
                "pull_tasks_per_s": round(args.tasks / pull_s, 1),
                "pulled_images": summary["images"],
                "peak_rss_mib_before_pull": round(rss_before),
                "peak_rss_mib_after_pull": round(_peak_rss_mib()),
                "reviewed_part_mib": round(Path(summary["url"]).stat().st_size / 2**20, 2),
            }
            print(json.dumps(report), file=sys.stderr, flush=True)  # kept if the export below runs long
            if args.compare_export:
                report.update(_time_export(client, project.id))
        finally:
            if not args.keep:
                _delete(client, project.id)
    print(json.dumps(report, indent=2))


def _delete(client, project_id: int) -> None:  # noqa: ANN001 - label_studio_sdk's client
    """Delete the project; a large one may take longer than a request waits (the server still finishes)."""
    try:
        client.projects.delete(project_id, request_options={"timeout_in_seconds": 600})
    except Exception as exc:  # noqa: BLE001 - the measurement is done; say what is left
        print(f"project {project_id} not deleted: {' '.join(str(exc).split())[:200]}", file=sys.stderr)


def _dataset(url: str, names: list[str], count: int, height: int, width: int) -> list[int]:
    """A dataset whose images table holds ``count`` labeled images of one size (no files, no annotations)."""
    store = LabelDataset(url)
    store.ensure_categories(names)
    when = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    rows = []
    for i in range(count):
        digest = hashlib.sha256(f"bench image {i}".encode()).hexdigest()
        rows.append(
            {
                "image_id": image_id_from_sha256(digest),
                "uri": f"/bench/images/{i:06d}.jpg",
                "sha256": digest,
                "width": width,
                "height": height,
                "status": "labeled",
                "reason": None,
                "config_hash": "bench",
                "labeling_id": f"bench:{digest[:16]}",
                "labeler": "maskclip",
                "round": 0,
                "created_at": when,
            }
        )
    store.write_batch(rows, [], part_name="bench")
    return [row["image_id"] for row in rows]


def _regions(names: list[str], height: int, width: int) -> list[dict]:
    """Brush regions splitting the image into vertical bands with ragged edges, one per class."""
    rng = np.random.default_rng(0)
    edges = np.linspace(0, width, len(names) + 1)
    cols = np.arange(width)[None, :] + rng.integers(-8, 9, size=(height, 1))
    out = []
    for k, name in enumerate(names):
        mask = (cols >= edges[k]) & (cols < edges[k + 1])
        value = {"format": "rle", "rle": encode_mask(mask), "brushlabels": [name]}
        out.append(
            {
                "id": f"r{k}",
                "from_name": "tag",
                "to_name": "image",
                "type": "brushlabels",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": value,
            }
        )
    return out


def _task(image_id: int, regions: list[dict], height: int, width: int) -> dict:
    """One pushed-and-reviewed task: our data, our prediction, and a submitted annotation."""
    data = {"image": f"/data/local-files/?d=bench/{image_id}.jpg", "image_id": str(image_id)}
    data.update(height=height, width=width)
    return {
        "data": data,
        "predictions": [{"model_version": "maskclip", "result": regions}],
        "annotations": [{"result": regions, "was_cancelled": False, "ground_truth": False}],
    }


def _time_export(client, project_id: int) -> dict:  # noqa: ANN001 - label_studio_sdk's client
    """The previous pull's read: one synchronous whole-project JSON export."""
    started = time.perf_counter()
    try:
        exported = client.projects.exports.as_json(project_id)
        outcome = {"export_tasks": len(exported)}
    except Exception as exc:  # noqa: BLE001 - reported, e.g. the SDK's 60 s export timeout
        outcome = {"export_error": " ".join(str(exc).split())[:200]}
    return {"export_s": round(time.perf_counter() - started, 1), **outcome}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
