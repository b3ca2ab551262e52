"""A dataset that cannot be written (a read-only folder, a filesystem turned read-only mid-run, a full disk):
``maskclip label`` ends with one line naming the file and the run's summary, not a raw OSError traceback.

The tests run as any user (root ignores file modes), so the read-only filesystem is simulated: every write
call under the dataset folder fails with EROFS, as the kernel answers on a read-only mount."""

from __future__ import annotations

import builtins
import errno
import logging
import os
import re
from pathlib import Path

import pytest
from support.cli_runner import run_cli
from test_label_cli_source_edits import CLI_MODEL, png

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(autouse=True)
def prefect_warnings_only(caplog: pytest.LogCaptureFixture) -> None:
    """As ``maskclip label`` sets in its own process (PREFECT_LOGGING_LEVEL=WARNING)."""
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        caplog.set_level(logging.WARNING, logger=name)


def make_read_only(monkeypatch: pytest.MonkeyPatch, root: Path, *, except_under: tuple[str, ...] = ()) -> None:
    """Writes under ``root`` (but ``except_under`` its subfolders) fail with EROFS."""
    allowed = tuple(str(root / name) for name in except_under)

    def refused(path: object) -> bool:
        p = os.path.abspath(os.fspath(path))  # type: ignore[arg-type]
        return (p == str(root) or p.startswith(str(root) + os.sep)) and not p.startswith(allowed)

    def erofs(path: object) -> OSError:
        return OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))  # type: ignore[arg-type]

    real_open, real_makedirs, real_link, real_replace = builtins.open, os.makedirs, os.link, os.replace

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, str | os.PathLike) and set(mode) & set("wax+") and refused(file):
            raise erofs(file)
        return real_open(file, mode, *args, **kwargs)

    def makedirs(name, *args, **kwargs):
        if refused(name) and not os.path.isdir(name):
            raise erofs(name)
        return real_makedirs(name, *args, **kwargs)

    def link(src, dst, *args, **kwargs):
        if refused(dst):
            raise erofs(dst)
        return real_link(src, dst, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        if refused(dst):
            raise erofs(dst)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(os, "makedirs", makedirs)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "replace", replace)


def labeled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path, list[str]]:
    """A dataset labeled once, and a new file for the next run (in the test's body: Prefect's console handler
    binds the stream of the test phase that first runs a flow)."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "a.png").write_bytes(png(20, 20, 1))
    argv = ["label", "--source", str(src), "--dataset", str(out), *CLI_MODEL]
    assert run_cli(capsys, *argv)[0] == 0
    (src / "b.png").write_bytes(png(20, 20, 2))  # new work for the next run
    return src, out, argv


def without_logging_errors(err: str) -> str:
    """``err`` less the "--- Logging error ---" reports of Prefect's console handler, which the harness configured
    once per session on the capture stream of an earlier test, since closed (not what the command prints)."""
    return re.sub(r"--- Logging error ---\n.*?\nArguments: [^\n]*\n", "", err, flags=re.S)


def one_error_line(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("maskclip: error")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_a_read_only_dataset_is_one_line_and_mid_run_also_the_summary(tmp_path, capsys, monkeypatch) -> None:
    """One test: Prefect's console handler, configured once per session, binds the stream of the first test
    that runs a flow, so a second flow-running test here would print into a closed capture."""
    src, out, argv = labeled(tmp_path, capsys)
    with monkeypatch.context() as patch:  # the whole folder read-only: refused before anything
        make_read_only(patch, out)
        code, _, err = run_cli(capsys, *argv)
    line = one_error_line(without_logging_errors(err))
    assert code == 2 and "Read-only file system" in line and str(out) in line

    # Turned read-only after the run started: the batch fails, the run says so in one line with its summary.
    make_read_only(monkeypatch, out, except_under=("_lease", "categories", "labelings"))
    code, _, err = run_cli(capsys, *argv)
    err = without_logging_errors(err)
    said = " ".join(err.split())
    assert code == 1 and "Traceback" not in err, err
    assert "maskclip: 1 of 1 images failed" in said and "Read-only file system" in said
    assert "failed: batch_failed (1 batches)" in said  # the summary table
