"""The label flow against an untrustworthy world: symlink loops, an output under a file, a damaged dataset, a
dataset another run holds, and a source that changed (edit, delete) between runs."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from PIL import Image
from support.tiny_labeler import KEEP_ALL, TINY_SPEC, block_image

from flows.label_dataset import LabelingRunParameters, label_dataset
from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.lease import acquire_lease
from maskclip_core.dataset.reader import iter_export_images

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAST = LabelingRunParameters(batch_size=4, retries=0, retry_delay_seconds=0.01, thumbnails=0)
CLI_MODEL = ["--classes", "red, green, blue", "--model", "maskclip-tiny-ViT", "--pretrained", "none"]
CLI_MODEL += ["--device", "cpu", "--short-side", "64", "--crop", "64", "--stride", "32", "--retries", "0"]


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(block_image(np.random.default_rng(seed))).save(buf, "PNG")
    return buf.getvalue()


def run(source: Path, output: str) -> dict[str, Any]:
    state = label_dataset(str(source), output, labeler=TINY_SPEC, filters=KEEP_ALL, options=FAST, return_state=True)
    assert state.is_completed(), state.result(raise_on_failure=False)
    return state.result()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    from cli.main import main

    code = main(list(argv))
    return code, capsys.readouterr().err


def test_a_symlink_loop_is_recorded_and_the_files_after_it_are_labeled(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(png(1))
    os.symlink("b-loop.png", src / "b-loop.png")  # points at itself
    (src / "c.png").write_bytes(png(2))
    summary = run(src, str(tmp_path / "out"))
    assert summary["labeled"] == 2 and summary["failed_by_reason"] == {"unreadable": 1}
    rows = {Path(r["uri"]).name: r for r in LabelDataset(str(tmp_path / "out")).images().to_pylist()}
    assert rows["b-loop.png"]["status"] == "failed" and "symbolic links" in rows["b-loop.png"]["reason"]
    assert {rows["a.png"]["status"], rows["c.png"]["status"]} == {"labeled"}


def test_source_edits_and_deletions_show_in_the_next_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out = tmp_path / "src", str(tmp_path / "out")
    src.mkdir()
    for i in range(3):
        (src / f"{i}.png").write_bytes(png(i))
    run(src, out)
    (src / "0.png").write_bytes(png(10))
    os.utime(src / "0.png", (1e9, 1e9))
    (src / "2.png").unlink()
    summary = run(src, out)
    assert summary["labeled"] == 1 and summary["gone"] == 1
    exported = {Path(i.uri).name: i for i in iter_export_images(LabelDataset(out))}
    assert sorted(exported) == ["0.png", "1.png"]
    assert exported["0.png"].sha256 == __import__("hashlib").sha256(png(10)).hexdigest()

    # The history keeps every row: 0.png's two contents, 1.png, 2.png labeled then gone.
    code, _ = cli(capsys, "dataset", "history", "--dataset", out, "--out", str(tmp_path / "history.csv"))
    history = pacsv.read_csv(tmp_path / "history.csv").to_pylist()
    assert code == 0 and len(history) == 5
    by_name: dict[str, list[tuple[str, bool]]] = {}
    for row in history:
        by_name.setdefault(Path(row["uri"]).name, []).append((row["status"], row["current"]))
    assert by_name == {
        "0.png": [("labeled", False), ("labeled", True)],
        "1.png": [("labeled", True)],
        "2.png": [("labeled", False), ("gone", True)],
    }
    one = str(tmp_path / "one.jsonl")
    code, _ = cli(capsys, "dataset", "history", "--dataset", out, "--out", one, "--uri", history[0]["uri"])
    assert code == 0 and len(Path(one).read_text().splitlines()) == 2
    code, err = cli(capsys, "dataset", "history", "--dataset", out, "--out", str(tmp_path / "history.txt"))
    assert code == 2 and err.count("\n") == 1 and ".parquet, .csv or .jsonl" in err


def test_output_under_a_regular_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.png").write_bytes(png(1))
    (tmp_path / "file").write_text("not a folder")
    code, err = cli(capsys, "label", "--source", str(tmp_path / "src"), "--dataset", str(tmp_path / "file" / "out"),
                    *CLI_MODEL)  # fmt: skip
    assert code == 2 and "cannot hold a dataset" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("maskclip")]) == 1


def test_label_refuses_a_damaged_dataset_and_a_held_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "a.png").write_bytes(png(1))
    argv = ["label", "--source", str(src), "--dataset", str(out), *CLI_MODEL]
    with acquire_lease(str(out), owner="other-run"):
        code, err = cli(capsys, *argv)
    assert code == 2 and "in use by run other-run" in err and "--force-lease" in err
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "annotations" / "part-x.parquet").write_bytes(b"garbage")
    code, err = cli(capsys, *argv)
    assert code == 2 and "annotations/part-x.parquet" in err and "maskclip dataset check" in err
    assert "Traceback" not in err
    pq.write_table(pa.table({"x": [1]}), out / "images.parquet")  # stray files beside the tables are not parts
    code, _ = cli(capsys, "dataset", "check", "--dataset", str(out), "--repair")
    assert code == 0
    code, _ = cli(capsys, *argv)
    assert code == 0


def test_an_emptied_source_marks_nothing_gone_without_the_users_say_so(tmp_path: Path, capsys) -> None:
    """An unmounted mount point (the folder still there, empty) lists completely and finds nothing: the run
    marks nothing gone and fails in one line naming --max-gone-fraction; the export keeps every image. With
    --max-gone-fraction 1 the deletion is taken as meant; a deletion of a few files needs no say-so."""
    src, out = tmp_path / "mount", str(tmp_path / "out")
    src.mkdir()
    for i in range(4):
        (src / f"{i}.png").write_bytes(png(i))
    assert cli(capsys, "label", "--source", str(src), "--dataset", out, *CLI_MODEL)[0] == 0
    (src / "0.png").unlink()  # one of four files deleted: marked gone as before
    assert cli(capsys, "label", "--source", str(src), "--dataset", out, *CLI_MODEL)[0] == 0
    assert len(list(iter_export_images(LabelDataset(out)))) == 3

    hidden = tmp_path / "hidden"
    src.rename(hidden)
    src.mkdir()  # the mount point without its filesystem
    code, err = cli(capsys, "label", "--source", str(src), "--dataset", out, *CLI_MODEL)
    assert code == 1
    said = " ".join(err.split())  # the console wraps long lines
    assert "misses 3 of the 3 files" in said and "--max-gone-fraction 1" in said
    assert len(list(iter_export_images(LabelDataset(out)))) == 3  # nothing was marked gone

    code, _ = cli(capsys, "label", "--source", str(src), "--dataset", out, *CLI_MODEL, "--max-gone-fraction", "1")
    assert code == 0 and list(iter_export_images(LabelDataset(out))) == []
