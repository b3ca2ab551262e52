"""A dataset whose manifest was deleted (sync tools skip ``_*`` files) keeps its format: readers and writers infer
it from its parts, ``maskclip dataset check`` reports the missing manifest and ``--repair`` writes it back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli_runner import run_cli as cli
from support.review_store import CONFIG, build_store, run
from test_manifest import labeling, write_v1_dataset

from maskclip_core.dataset import manifest
from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.manifest import MANIFEST_NAME, DatasetFormatError


@pytest.fixture
def built(tmp_path: Path):
    return build_store(str(tmp_path / "out"), tmp_path / "src")


def labeled_by(capsys, url: str, dest: Path, labeler: str) -> list[dict]:
    run(capsys, "export", "coco", "--dataset", url, "--out", str(dest), "--labeled-by", labeler)
    return json.loads(dest.read_text())["annotations"]


def test_a_deleted_manifest_keeps_the_format_and_check_repair_writes_it_back(built, tmp_path, capsys) -> None:
    root = Path(built.store.url)
    url = built.store.url
    expected = labeled_by(capsys, url, tmp_path / "before.json", "maskclip")
    assert expected
    (root / MANIFEST_NAME).unlink()  # what `rsync --exclude '_*'` or a sync tool leaves

    # Readers infer version 4 from the parts: the labeler of every annotation is still there.
    assert labeled_by(capsys, url, tmp_path / "after.json", "maskclip") == expected
    assert LabelDataset(url).format_version == 4

    code, stdout, err = cli(capsys, "dataset", "check", "--dataset", url)
    assert code == 1 and f"{MANIFEST_NAME}: missing" in stdout and "format version 4" in stdout and "--repair" in err

    # A new batch is written in the dataset's format (53-bit ids), not refused as format 1.
    row, anns = labeling("new")
    LabelDataset(url).write_batch([row], anns, part_name="b-new")
    assert LabelDataset(url).id_bits == 53

    (root / MANIFEST_NAME).unlink(missing_ok=True)
    code, stdout, _ = cli(capsys, "dataset", "check", "--dataset", url, "--repair", "--json")
    report = json.loads(stdout)
    assert code == 0 and [p["part"] for p in report["problems"]] == [MANIFEST_NAME] and not report["quarantined"]
    assert json.loads((root / MANIFEST_NAME).read_text())["format_version"] == 4
    code, stdout, _ = cli(capsys, "dataset", "check", "--dataset", url)
    assert code == 0 and "0 problems" in stdout
    assert {i for i in built.ids.values()} <= set(LabelDataset(url).images(config_hash=CONFIG)["image_id"].to_pylist())


def test_a_version_2_dataset_without_its_manifest_keeps_63_bit_ids(tmp_path: Path) -> None:
    root = tmp_path / "v2"
    root.mkdir()
    (root / MANIFEST_NAME).write_text(json.dumps({"format": manifest.FORMAT, "format_version": 2}))
    row, anns = labeling("old", bits=63)
    dataset = LabelDataset(str(root))
    dataset.ensure_categories(["a", "b"])
    dataset.write_batch([row], anns, part_name="b0")
    (root / MANIFEST_NAME).unlink()
    again = LabelDataset(str(root))
    assert again.format_version == 2 and again.id_bits == 63
    assert set(again.annotations()["labeler"].to_pylist()) == {"maskclip"}


def test_a_dataset_written_before_manifests_is_still_version_1_and_check_records_it(tmp_path, capsys) -> None:
    root = tmp_path / "old"
    write_v1_dataset(root)
    assert LabelDataset(str(root)).format_version == 1
    code, stdout, _ = cli(capsys, "dataset", "check", "--dataset", str(root))
    assert code == 1 and f"{MANIFEST_NAME}: missing" in stdout and "format version 1" in stdout
    assert not (root / MANIFEST_NAME).exists()  # checking writes nothing
    code, _, _ = cli(capsys, "dataset", "check", "--dataset", str(root), "--repair")
    assert code == 0 and json.loads((root / MANIFEST_NAME).read_text())["format_version"] == 1
    assert set(LabelDataset(str(root)).annotations()["labeler"].to_pylist()) == {"student"}


def test_parts_of_two_layouts_without_a_manifest_are_refused_in_one_line(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    write_v1_dataset(root)
    row, anns = labeling("new", bits=53)
    v4 = tmp_path / "v4"
    dataset = LabelDataset(str(v4))
    dataset.write_batch([row], anns, part_name="b1")
    (root / "annotations" / "part-b1.parquet").write_bytes((v4 / "annotations" / "part-b1.parquet").read_bytes())
    with pytest.raises(DatasetFormatError, match="maskclip dataset check") as e:
        LabelDataset(str(root)).annotations()
    assert "\n" not in str(e.value)
