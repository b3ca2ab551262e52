"""``DATASET/labelings/<config hash>.json``: what produced the labels of one config hash.

The images rows only carry the config hash; this record says which labeler (the teacher's ``LabelerConfig``
or the student checkpoint), which filter thresholds and which classes it stands for, so that later stages
(training a student, reports) can rebuild what the labeling used, e.g. the CLIP model and prompt templates
of the teacher's text embeddings. The label-dataset flow writes it once per run, before any batch; the
content is a function of the config, so rewriting it is harmless. Storage credentials are never written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from maskclip_core.dataset.manifest import ensure_manifest
from maskclip_core.storage.fs import atomic_write_bytes, join_url, resolve

FORMAT = "maskclip-labeling/1"
FOLDER = "labelings"


def labeling_record(
    config_hash: str,
    spec: Any,
    labeler_config: Mapping[str, Any],
    filters: Any,
    classes: Sequence[tuple[str, Sequence[str]]],
    *,
    max_pixels: int,
) -> dict[str, Any]:
    """The record of a labeling: ``spec`` is the flow's ``LabelerParameters``, ``filters`` its ``FilterConfig``."""
    spec_json = spec.model_dump(mode="json", exclude={"checkpoint_storage_options", "device"})
    return {
        "format": FORMAT,
        "config_hash": config_hash,
        "labeler": spec_json["labeler"],
        "spec": spec_json,
        "labeler_config": json.loads(json.dumps(dict(labeler_config), default=str)),
        "filters": filters.model_dump(mode="json"),
        "max_pixels": int(max_pixels),
        "classes": [{"name": name, "synonyms": list(synonyms)} for name, synonyms in classes],
    }


def record_url(dataset_url: str, config_hash: str) -> str:
    return join_url(dataset_url, FOLDER, f"{config_hash}.json")


def write_labeling_record(
    dataset_url: str, record: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None
) -> str:
    """Write (or rewrite, atomically) the record of ``record["config_hash"]``; returns its URL."""
    url = record_url(dataset_url, str(record["config_hash"]))
    ensure_manifest(dataset_url, storage_options)
    atomic_write_bytes(url, json.dumps(record, indent=2, sort_keys=True).encode("utf-8"), storage_options)
    return url


def read_labeling_record(
    dataset_url: str, config_hash: str, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The record of ``config_hash``, or None (a dataset labeled before records existed, or by another tool)."""
    fs, path = resolve(record_url(dataset_url, config_hash), storage_options)
    fs.invalidate_cache(path.rsplit("/", 1)[0])  # s3fs caches listings; the labeling flow may have just written it
    if not fs.exists(path):
        return None
    record = json.loads(fs.cat_file(path))
    if record.get("format") != FORMAT:
        raise ValueError(f"{record_url(dataset_url, config_hash)} is not a labeling record ({record.get('format')!r})")
    return record


def read_labeling_records(dataset_url: str, storage_options: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every labeling record of the dataset, by config hash; files that are not records are left out."""
    fs, path = resolve(join_url(dataset_url, FOLDER), storage_options)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return []
    records = []
    for name in sorted(fs.ls(path, detail=False)):
        if not name.endswith(".json") or name.rsplit("/", 1)[-1].startswith(("_", ".")):
            continue
        try:
            record = json.loads(fs.cat_file(name))
        except (OSError, ValueError):
            continue  # unreadable: it names no labeling this run could continue
        if isinstance(record, dict) and record.get("format") == FORMAT:
            records.append(record)
    return records
