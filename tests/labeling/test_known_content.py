"""The known-content index: read once per process and run, only the latest run's kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from maskclip_core.dataset.digests import DigestSetBuilder
from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.labeling import known_content
from maskclip_core.labeling.known_content import known_sha256_index


def test_index_is_read_once_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[tuple[str, str]] = []

    def fake(self: LabelDataset, config_hash: str):  # noqa: ANN202 - the method's own type
        reads.append((self.url, config_hash))
        return DigestSetBuilder().build()

    monkeypatch.setattr(LabelDataset, "known_sha256_digests", fake)
    known_content._read_index.cache_clear()
    url = str(tmp_path / "out")
    first = known_sha256_index(url, {}, "cfg", "run-1")
    assert known_sha256_index(url, None, "cfg", "run-1") is first  # same run: no second read
    assert reads == [(url, "cfg")]
    known_sha256_index(url, {}, "cfg", "run-2")  # a new run reads again
    known_sha256_index(url, {}, "other", "run-2")
    assert reads == [(url, "cfg"), (url, "cfg"), (url, "other")]
    assert known_content._read_index.cache_info().currsize == 1  # past runs' indexes are not kept
    known_content._read_index.cache_clear()
