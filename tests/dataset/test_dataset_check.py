"""A damaged dataset is refused with one line naming the repair; ``maskclip dataset check --repair`` heals it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.review_store import CONFIG, build_store, fails

from maskclip_core.dataset.check import check_dataset
from maskclip_core.dataset.integrity import DatasetDamaged
from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.reader import iter_export_images


@pytest.fixture
def built(tmp_path: Path):
    return build_store(str(tmp_path / "out"), tmp_path / "src")


def out(built) -> Path:
    return Path(built.store.url)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    from cli.main import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_foreign_parquet_file_in_images_is_refused_by_label_and_export(built, tmp_path, capsys) -> None:
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), out(built) / "images" / "part-foreign.parquet")
    with pytest.raises(DatasetDamaged, match=r"images/part-foreign.parquet: not a part of this table"):
        built.store.images()
    with pytest.raises(DatasetDamaged):
        built.store.verify_parts()  # what `label` runs first
    with pytest.raises(DatasetDamaged):
        built.store.known_sources(CONFIG)
    err = fails(capsys, "export", "coco", "--dataset", built.store.url, "--out", str(tmp_path / "c.json"))
    assert err.count("\n") == 1 and "part-foreign.parquet" in err and "maskclip dataset check" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("table", "damage", "problem"),
    [
        ("images", lambda b: b[: len(b) // 2], "not a readable Parquet file"),
        ("annotations", lambda b: b"", "zero bytes"),
        ("annotations", lambda b: b"PAR1 garbage " * 40, "not a readable Parquet file"),
        ("categories", lambda b: b[:-9], "not a readable Parquet file"),
    ],
)
def test_check_repair_quarantines_and_the_next_label_relabels_exactly_the_lost_images(
    built, capsys, table, damage, problem
) -> None:
    part = sorted((out(built) / table).glob("part-*.parquet"))[0]
    part.write_bytes(damage(part.read_bytes()))
    rel = f"{table}/{part.name}"
    with pytest.raises(DatasetDamaged, match=rel):
        built.store.verify_parts()

    code, stdout, err = cli(capsys, "dataset", "check", "--dataset", built.store.url)
    assert code == 1 and f"damaged: {rel}: {problem}" in stdout and "--repair" in err

    done_before = built.store.known_sha256(CONFIG) if table != "images" else set()
    code, stdout, _ = cli(capsys, "dataset", "check", "--dataset", built.store.url, "--repair", "--json")
    report = json.loads(stdout)
    # A lost images part leaves its batch's annotations uncommitted: an orphan, quarantined with it.
    also = [f"annotations/{part.name}"] if table == "images" else []
    assert code == 0 and sorted(p["part"] for p in report["problems"]) == sorted([rel, *also])
    assert all((out(built) / q).exists() for q in report["quarantined"]) and not part.exists()
    assert rel in [p["part"] for p in json.loads(Path(report["report_url"]).read_text())["problems"]]

    store = LabelDataset(built.store.url)
    assert check_dataset(store.url).healthy
    exported = list(iter_export_images(store, config_hash=CONFIG))  # export works again
    marked = set(report["marked_for_relabel"])
    if table == "annotations":  # the batch's labeled images are marked; the other batch is untouched
        batch0 = {str(built.source / n) for n in ("a/img.png", "b/img.png")}
        assert marked == batch0 & {r["uri"] for r in store.history().to_pylist() if r["status"] == "labeled"}
        assert not marked & {i.uri for i in exported}
        lost = {r["sha256"] for r in store.history().to_pylist() if r["uri"] in marked}
        assert store.known_sha256(CONFIG) == done_before - lost  # exactly these are labeled again
    if table == "categories":  # every labeling naming a lost id is marked
        assert marked and all(i.annotations for i in exported)
        ids = {c["id"] for c in store.categories()}
        assert all(a["category_id"] in ids for i in exported for a in i.annotations)


def test_residue_of_killed_runs_is_not_a_problem_and_repair_removes_it(built, capsys) -> None:
    """After SIGKILLs: an annotations part whose run died before its images part, and stale ``_tmp-*`` files.
    The content is right, so check exits 0 and names them residue; --repair deletes them (before: check
    exited 1 calling the part an orphan problem, and repair never removed the temp files)."""
    src = sorted((out(built) / "annotations").glob("part-*.parquet"))[0]
    table = pq.read_table(src)
    orphan = table.set_column(table.schema.get_field_index("labeling_id"), "labeling_id",
                              pa.array(["killed-run"] * table.num_rows))  # fmt: skip
    pq.write_table(orphan, out(built) / "annotations" / "part-killed-b000000.parquet")
    stale = [out(built) / "images" / "_tmp-0a1b-part-killed.parquet", out(built) / "_tmp-9f-_maskclip_dataset.json"]
    for path in stale:
        path.write_bytes(b"half a part")
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    live = out(built) / "annotations" / "_tmp-live-part-running.parquet"  # a writer at work right now
    live.write_bytes(b"being written")
    before = [(i.uri, len(i.annotations)) for i in iter_export_images(built.store, config_hash=CONFIG)]

    code, stdout, err = cli(capsys, "dataset", "check", "--dataset", built.store.url)
    assert code == 0 and "0 problems" in stdout and err == ""
    assert "residue (orphan): annotations/part-killed-b000000.parquet" in stdout
    assert "residue (temp): images/_tmp-0a1b-part-killed.parquet" in stdout
    assert "residue (temp): _tmp-9f-_maskclip_dataset.json" in stdout and "_tmp-live" not in stdout

    code, stdout, _ = cli(capsys, "dataset", "check", "--dataset", built.store.url, "--repair", "--json")
    report = json.loads(stdout)
    assert code == 0 and report["problems"] == [] and report["marked_for_relabel"] == []
    assert sorted(report["removed"]) == sorted(
        ["annotations/part-killed-b000000.parquet", "images/_tmp-0a1b-part-killed.parquet", stale[1].name]
    )
    assert (
        not any(p.exists() for p in stale) and not (out(built) / "annotations" / "part-killed-b000000.parquet").exists()
    )
    assert live.exists()  # not stale: left to its writer
    assert [(i.uri, len(i.annotations)) for i in iter_export_images(built.store, config_hash=CONFIG)] == before
    code, stdout, _ = cli(capsys, "dataset", "check", "--dataset", built.store.url)
    assert code == 0 and "residue (" not in stdout


def test_a_healthy_dataset_checks_clean(built, capsys) -> None:
    code, stdout, _ = cli(capsys, "dataset", "check", "--dataset", built.store.url)
    assert code == 0 and "0 problems" in stdout
