"""A run that ``maskclip label`` refuses writes nothing: no dataset folder for a missing source, no lease files
in a dataset of a newer format, no empty ``_lease/`` or partial folders after a run that failed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from support.cli_runner import run_cli
from test_label_cli_read_only import without_logging_errors
from test_label_cli_source_edits import CLI_MODEL, png

from maskclip_core.dataset.manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(autouse=True)
def prefect_warnings_only(caplog: pytest.LogCaptureFixture) -> None:
    """What ``maskclip label`` sets in its own process (PREFECT_LOGGING_LEVEL=WARNING), which the harness's
    logging, configured once for the whole session, does not follow."""
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        caplog.set_level(logging.WARNING, logger=name)


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def one_error_line(err: str) -> str:
    err = without_logging_errors(err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len([x for x in lines if x.startswith("maskclip: error")]) == 1, err
    return " ".join(err.split())


def test_a_missing_source_creates_no_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "label", "--source", str(tmp_path / "no-such"), "--dataset", str(out), *CLI_MODEL)
    assert code == 2 and "no-such" in one_error_line(err)
    assert not out.exists()  # before: out/_lease, categories/, labelings/ and the manifest


def test_a_newer_format_dataset_is_refused_without_lease_files(tmp_path, capsys) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "a.png").write_bytes(png(8, 8, 1))
    out.mkdir()
    (out / MANIFEST_NAME).write_text(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION + 1}))
    code, _, err = run_cli(capsys, "label", "--source", str(src), "--dataset", str(out), *CLI_MODEL)
    assert code == 2 and f"format version {FORMAT_VERSION + 1}" in one_error_line(err)
    assert tree(out) == [MANIFEST_NAME]  # before: _lease/000000000001.json too


def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path, capsys) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "a.png").write_bytes(png(8, 8, 1))
    missing = str(tmp_path / "no-checkpoint.safetensors")
    code, _, err = run_cli(capsys, "label", "--source", str(src), "--dataset", str(out), "--labeler", "student",
                           "--checkpoint", missing, "--device", "cpu", "--retries", "0")  # fmt: skip
    assert code == 2 and "no-checkpoint" in one_error_line(err)
    assert not out.exists()  # before: an empty out/_lease/
