"""Readers during a compaction (a label run merging its images parts at its end) see the old parts or the new
ones, never a missing one: before, a part merged away between a reader's listing and its read failed the read
with FileNotFoundError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli_runner import run_cli
from support.review_store import CONFIG, build_store

from maskclip_core.dataset import known_index, parts
from maskclip_core.dataset.compaction import compact_images
from maskclip_core.dataset.label_dataset import LabelDataset


@pytest.fixture
def built(tmp_path: Path):
    return build_store(str(tmp_path / "out"), tmp_path / "src")  # two batches: two small images parts


def compact(url: str) -> None:
    merged = compact_images(parts.DatasetParts(url), min_parts=2)
    assert merged == {"merged_parts": 2, "written_parts": 1}


def test_an_export_while_the_images_parts_are_merged(built, tmp_path, capsys, monkeypatch) -> None:
    url = built.store.url
    expected = run_cli(capsys, "export", "coco", "--dataset", url, "--out", str(tmp_path / "before.json"))
    assert expected[0] == 0
    real_open = parts.open_dataset
    raced = []

    def listed_then_compacted(fs, path, *args, **kwargs):  # the listing is taken, then the parts are merged
        dataset = real_open(fs, path, *args, **kwargs)
        if path.endswith("/images") and not raced:
            raced.append(path)
            compact(url)
        return dataset

    monkeypatch.setattr(parts, "open_dataset", listed_then_compacted)
    code, _, err = run_cli(capsys, "export", "coco", "--dataset", url, "--out", str(tmp_path / "during.json"))
    assert raced and code == 0, err  # before: rc 2, "No such file or directory: .../images/part-....parquet"
    before = json.loads((tmp_path / "before.json").read_text())
    during = json.loads((tmp_path / "during.json").read_text())
    assert during["images"] == before["images"] and during["annotations"] == before["annotations"]


def test_the_known_index_while_the_images_parts_are_merged(built, monkeypatch) -> None:
    url = built.store.url
    expected = LabelDataset(url).known_sha256(CONFIG)
    real_scan = known_index.scan_config
    raced = []

    def compacted_after_listing(*args, **kwargs):
        if not raced:
            raced.append(True)
            compact(url)
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(known_index, "scan_config", compacted_after_listing)
    assert LabelDataset(url).known_sha256(CONFIG) == expected and raced
