"""Identities of a labeling: the config hash ("already labeled under the same configuration"), the labeling
id of one file in one run, and the part-file name of one batch. All deterministic, so re-runs and retried
batches rewrite the same ids and files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from maskclip_core.labeling.decode import DEFAULT_MAX_PIXELS
from maskclip_core.labeling.filter import FilterConfig


def labeling_config_hash(
    labeler_config: Mapping[str, Any], filters: FilterConfig, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> str:
    """Identity of "the same labeling configuration" for incremental runs.

    Hashes ``labeler.config()`` (model, weights identity, vocabulary, templates, inference settings, or the
    student checkpoint), the confidence-filter thresholds, and the decoder's pixel limit (it decides which
    images are rejected). Anything else (batch sizes, devices, task runners) does not change labels.
    """
    payload = {
        "labeler": dict(labeler_config),
        "filters": filters.model_dump(mode="json"),
        "decode": {"max_pixels": int(max_pixels)},
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def make_labeling_id(run_id: str, uri: str, sha256: str | None, config_hash: str) -> str:
    """One labeling of one file in one run: deterministic, so a retried batch rewrites the same ids."""
    text = "\x1f".join([run_id, uri, sha256 or "", config_hash])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def batch_part_name(run_id: str, batch_index: int) -> str:
    """Deterministic part-file name of a batch: a retried batch overwrites its own parts."""
    return f"{run_id}-b{batch_index:06d}"


def recorded_precision(records: Sequence[Mapping[str, Any]], labeler_config: Mapping[str, Any]) -> str | None:
    """The precision to keep for a run whose precision was left to the default: ``None`` when the dataset
    has no labeling of these labeler settings under another precision (or has one under ours), else the
    precision its earlier labeling records, so that a changed default never relabels a dataset.

    ``records`` are the dataset's labeling records (``dataset.labelings``); settings are compared without
    their ``inference.precision`` (absent means fp32: hashes from before the option existed).
    """
    ours, precision = _without_precision(labeler_config)
    kept = sorted(
        {p for theirs, p in map(_without_precision, (r.get("labeler_config") or {} for r in records)) if theirs == ours}
    )
    if not kept or precision in kept:
        return None
    return "fp32" if "fp32" in kept else kept[0]


def _without_precision(labeler_config: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    config = json.loads(json.dumps(dict(labeler_config), default=str))  # a deep copy, as the record stores it
    inference = config.get("inference")
    precision = inference.pop("precision", "fp32") if isinstance(inference, dict) else "fp32"
    return config, precision
