"""A categories part that reuses a claimed id (valid schema, another name): ``maskclip dataset check`` reports it,
``--repair`` quarantines it, and readers resolve the id to its claim file ``categories/part-id-<id>.parquet``
meanwhile, so exports never list two categories with one id."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.cli_runner import run_cli as cli
from support.review_store import CONFIG, build_store, run

from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.schema import CATEGORIES_SCHEMA

EVIL = "categories/part-evil.parquet"


@pytest.fixture
def built(tmp_path: Path):
    return build_store(str(tmp_path / "out"), tmp_path / "src")


def exported_categories(capsys, built, dest: Path) -> list[tuple[int, str]]:
    run(capsys, "export", "coco", "--dataset", built.store.url, "--out", str(dest), "--config-hash", CONFIG)
    return sorted((c["id"], c["name"]) for c in json.loads(dest.read_text())["categories"])


def reuse(built, name: str, part: str = EVIL) -> None:
    cat = built.category_ids["cat"]
    rows = [{"id": cat, "name": name, "synonyms": []}]
    pq.write_table(pa.Table.from_pylist(rows, schema=CATEGORIES_SCHEMA), Path(built.store.url) / part)


@pytest.mark.parametrize("part", [EVIL, "categories/part-id-0000000009.parquet", "categories/part-a.parquet"])
def test_a_part_reusing_a_claimed_id_is_reported_quarantined_and_never_exported_twice(
    built, tmp_path, capsys, part
) -> None:
    before = exported_categories(capsys, built, tmp_path / "before.json")
    reuse(built, "horse", part)

    # Readers resolve the id to its claim file: the export lists one category per id, the claimed one.
    assert exported_categories(capsys, built, tmp_path / "reused.json") == before
    assert [c["name"] for c in LabelDataset(built.store.url).categories()] == ["cat", "dog", "grass"]

    code, stdout, err = cli(capsys, "dataset", "check", "--dataset", built.store.url)
    assert code == 1 and f"damaged: {part}: reuses category id {built.category_ids['cat']}" in stdout
    assert "categories/part-id-0000000001.parquet" in stdout and "--repair" in err

    code, stdout, _ = cli(capsys, "dataset", "check", "--dataset", built.store.url, "--repair", "--json")
    report = json.loads(stdout)
    assert code == 0 and [p["part"] for p in report["problems"]] == [part]
    assert not (Path(built.store.url) / part).exists() and report["marked_for_relabel"] == []
    code, stdout, _ = cli(capsys, "dataset", "check", "--dataset", built.store.url)
    assert code == 0 and "0 problems" in stdout
    assert exported_categories(capsys, built, tmp_path / "after.json") == before


def test_a_repeated_row_of_the_same_category_is_no_problem(built, capsys) -> None:
    reuse(built, "cat")
    code, stdout, _ = cli(capsys, "dataset", "check", "--dataset", built.store.url)
    assert code == 0 and "0 problems" in stdout
