"""The dataset's index of content already labeled under a config, read once per process and run."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Mapping
from typing import Any

from maskclip_core.dataset.digests import DigestSet
from maskclip_core.dataset.label_dataset import LabelDataset

_LOCK = threading.Lock()  # concurrent batches of a run wait for one read instead of each reading the index


def known_sha256_index(
    dataset_url: str, storage_options: Mapping[str, Any] | None, config_hash: str, token: str
) -> DigestSet:
    """SHA-256 digests already done under ``config_hash`` at ``dataset_url``, read once per process and
    ``token`` (the run id): every batch of a run on this worker reuses it; a new run reads it again.

    Only the latest index is kept, so a long-lived worker does not accumulate indexes of past runs.
    """
    key = json.dumps([dataset_url, dict(storage_options or {}), config_hash, token], sort_keys=True, default=str)
    with _LOCK:
        return _read_index(key)


@functools.lru_cache(maxsize=1)
def _read_index(key: str) -> DigestSet:
    dataset_url, storage_options, config_hash, _ = json.loads(key)
    return LabelDataset(dataset_url, storage_options).known_sha256_digests(config_hash)
