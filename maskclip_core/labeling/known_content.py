"""The dataset's index of content already labeled under a config, read once per process and run."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from maskclip_core.dataset.digests import DigestSet
from maskclip_core.dataset.label_dataset import LabelDataset

_KNOWN: dict[str, DigestSet] = {}
_KNOWN_LOCK = threading.Lock()


def known_sha256_index(
    dataset_url: str, storage_options: Mapping[str, Any] | None, config_hash: str, token: str
) -> DigestSet:
    """SHA-256 digests already done under ``config_hash`` at ``dataset_url``, read once per process and
    ``token`` (the run id): every batch of a run on this worker reuses it; a new run reads it again.

    Only the latest index is kept, so a long-lived worker does not accumulate indexes of past runs.
    """
    key = json.dumps([dataset_url, dict(storage_options or {}), config_hash, token], sort_keys=True, default=str)
    with _KNOWN_LOCK:
        index = _KNOWN.get(key)
        if index is None:
            index = LabelDataset(dataset_url, storage_options).known_sha256_digests(config_hash)
            _KNOWN.clear()
            _KNOWN[key] = index
        return index
