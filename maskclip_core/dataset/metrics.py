"""``OUTPUT/metrics/part-*.parquet``: scores of the teacher's pseudo-labels and of the student after each round.

One row per (training run, model, round): mIoU, pixel accuracy and per-class IoU against a ground truth.
Each row set is written whole as one part file (temporary name + rename locally, one PUT on object stores),
named after (run, model, round), so writing the same round again replaces its own file; readers skip names
starting with ``_`` or ``.`` and keep the newest row per (run, model, round).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from maskclip_core.dataset.fs import atomic_write_bytes, join_url, resolve
from maskclip_core.dataset.parquet import open_dataset, parquet_bytes

MODELS = ("teacher", "student")

METRICS_SCHEMA = pa.schema(
    [
        pa.field("run", pa.string(), nullable=False),  # the training run (its checkpoint folder's name)
        pa.field("round", pa.int32()),  # student: 0 = pseudo-label phase, 1.. self-training; teacher: null
        pa.field("iteration", pa.int32()),  # training iterations done; teacher: null
        pa.field("model", pa.string(), nullable=False),  # teacher | student
        pa.field("miou", pa.float64()),  # over the classes the ground truth names (null: none scored)
        pa.field("pixel_accuracy", pa.float64()),
        pa.field("per_class_iou", pa.map_(pa.string(), pa.float64())),  # null IoU: class absent both sides
        pa.field("images", pa.int32()),  # ground-truth images scored
        pa.field("config_hash", pa.string()),  # the teacher labeling trained on
        pa.field("checkpoint", pa.string()),  # student weights URL of the round
        pa.field("ground_truth", pa.string()),  # URL of the ground truth
        pa.field("flow_run_id", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]*")


def part_name(run: str, model: str, round: int | None) -> str:
    """Deterministic part name of one row set: ``<run>-teacher`` or ``<run>-student-r002``."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if not _NAME.fullmatch(run):
        raise ValueError(f"run name {run!r}: use letters, digits, '.', '_', '=', '-'")
    return f"{run}-teacher" if model == "teacher" else f"{run}-student-r{int(round or 0):03d}"


def metrics_row(
    run: str,
    model: str,
    summary: Mapping[str, Any],
    *,
    round: int | None = None,
    iteration: int | None = None,
    images: int | None = None,
    config_hash: str | None = None,
    checkpoint: str | None = None,
    ground_truth: str | None = None,
    flow_run_id: str | None = None,
) -> dict[str, Any]:
    """A row from a metrics summary (``miou``, ``pixel_accuracy``, ``per_class_iou``)."""
    return {
        "run": run,
        "round": round,
        "iteration": iteration,
        "model": model,
        "miou": _float(summary.get("miou")),
        "pixel_accuracy": _float(summary.get("pixel_accuracy")),
        "per_class_iou": {str(k): _float(v) for k, v in dict(summary.get("per_class_iou") or {}).items()},
        "images": images,
        "config_hash": config_hash,
        "checkpoint": checkpoint,
        "ground_truth": ground_truth,
        "flow_run_id": flow_run_id,
        "created_at": dt.datetime.now(dt.UTC),
    }


def write_metrics(
    output_url: str, rows: Sequence[Mapping[str, Any]], storage_options: Mapping[str, Any] | None = None
) -> str:
    """Write the rows of one (run, model, round) as ``metrics/part-<name>.parquet``; returns its URL."""
    keys = {(r["run"], r["model"], r["round"]) for r in rows}
    if len(keys) != 1:
        raise ValueError(f"one part holds the rows of one (run, model, round), got {sorted(map(str, keys))}")
    run, model, round_ = keys.pop()
    url = join_url(output_url, "metrics", f"part-{part_name(run, model, round_)}.parquet")
    table = pa.Table.from_pylist([_as_arrow_row(r) for r in rows], schema=METRICS_SCHEMA)
    atomic_write_bytes(url, parquet_bytes(table), storage_options)
    return url


def read_metrics(
    output_url: str, storage_options: Mapping[str, Any] | None = None, *, run: str | None = None
) -> list[dict[str, Any]]:
    """The newest row per (run, model, round), ``per_class_iou`` as a dict; teacher first, then rounds."""
    fs, root = resolve(output_url, storage_options)
    dataset = open_dataset(fs, f"{root.rstrip('/')}/metrics", METRICS_SCHEMA)
    if dataset is None:
        return []
    table = dataset.to_table(filter=None if run is None else ds.field("run") == run)
    newest: dict[tuple[str, str, int | None], dict[str, Any]] = {}
    for row in table.to_pylist():
        row["per_class_iou"] = dict(row["per_class_iou"] or [])
        key = (row["run"], row["model"], row["round"])
        if key not in newest or row["created_at"] >= newest[key]["created_at"]:
            newest[key] = row
    return sorted(newest.values(), key=_order)


def table_rows(rows: Iterable[Mapping[str, Any]], class_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Flat rows for a Prefect table artifact or a terminal table: one column per class IoU."""
    rows = list(rows)
    if class_names is None:
        class_names = list(dict.fromkeys(name for r in rows for name in r["per_class_iou"]))
    out = []
    for r in sorted(rows, key=_order):
        flat = {
            "run": r["run"],
            "model": r["model"],
            "round": r["round"],
            "iteration": r["iteration"],
            "miou": _round(r["miou"]),
            "pixel_accuracy": _round(r["pixel_accuracy"]),
        }
        for name in class_names:
            flat[f"IoU {name}"] = _round(r["per_class_iou"].get(name))
        out.append(flat)
    return out


def _order(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return (row["run"], row["model"] != "teacher", -1 if row["round"] is None else row["round"])


def _as_arrow_row(row: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(row) - set(METRICS_SCHEMA.names)
    if unknown:
        raise ValueError(f"metrics row has unknown fields {sorted(unknown)}")
    out = {name: row.get(name) for name in METRICS_SCHEMA.names}
    if out["model"] not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {out['model']!r}")
    if out["created_at"] is None:
        out["created_at"] = dt.datetime.now(dt.UTC)
    out["per_class_iou"] = list(dict(out["per_class_iou"] or {}).items())
    return out


def _float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _round(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else round(float(value), 4)
