"""``DATASET/metrics/part-*.parquet``: scores of the teacher's pseudo-labels and of the student after each round.

One row per (training run, model, round): mIoU, pixel accuracy and per-class IoU against a ground truth.
Each row set is written whole as one part file (``storage.fs.atomic_write_bytes``),
named after (run, model, round), so writing the same round again replaces its own file; readers skip names
starting with ``_`` or ``.`` and keep the newest row per (run, model, round).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.manifest import ensure_manifest
from maskclip_core.dataset.parquet import parquet_bytes
from maskclip_core.dataset.schema import METRICS_SCHEMA, MODELS, PART_NAME
from maskclip_core.storage.fs import atomic_write_bytes, join_url


def metrics_part_name(run: str, model: str, round: int | None) -> str:
    """Deterministic part name of one row set: ``<run>-teacher`` or ``<run>-student-r002``."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if not PART_NAME.fullmatch(run):
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
    dataset_url: str, rows: Sequence[Mapping[str, Any]], storage_options: Mapping[str, Any] | None = None
) -> str:
    """Write the rows of one (run, model, round) as ``metrics/part-<name>.parquet``; returns its URL."""
    keys = {(r["run"], r["model"], r["round"]) for r in rows}
    if len(keys) != 1:
        raise ValueError(f"one part holds the rows of one (run, model, round), got {sorted(map(str, keys))}")
    run, model, round_ = keys.pop()
    url = join_url(dataset_url, "metrics", f"part-{metrics_part_name(run, model, round_)}.parquet")
    table = pa.Table.from_pylist([_as_arrow_row(r) for r in rows], schema=METRICS_SCHEMA)
    ensure_manifest(dataset_url, storage_options)
    atomic_write_bytes(url, parquet_bytes(table), storage_options)
    return url


def read_metrics(
    dataset_url: str, storage_options: Mapping[str, Any] | None = None, *, run: str | None = None
) -> list[dict[str, Any]]:
    """The newest row per (run, model, round), ``per_class_iou`` as a dict; teacher first, then rounds."""
    dataset = LabelDataset(dataset_url, storage_options)
    table = dataset.read_table("metrics", filter=None if run is None else ds.field("run") == run)
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
