"""``maskclip label`` follows edits that tools hide: a file rewritten with its mtime put back (``cp -p``,
``rsync -t``, archive extraction) is relabeled, not kept with its old labels and size."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.cli_runner import run_cli

from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.reader import iter_export_images

pytestmark = pytest.mark.usefixtures("prefect_harness")

CLI_MODEL = ["--classes", "red, green, blue", "--model", "maskclip-tiny-ViT", "--pretrained", "none"]
CLI_MODEL += ["--device", "cpu", "--short-side", "64", "--crop", "64", "--stride", "32", "--retries", "0"]


def png(height: int, width: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def exported_sizes(dataset: str) -> dict[str, tuple[int, int]]:
    return {Path(i.uri).name: (i.width, i.height) for i in iter_export_images(LabelDataset(dataset))}


def test_an_edit_that_keeps_its_mtime_is_relabeled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out = tmp_path / "src", str(tmp_path / "out")
    src.mkdir()
    (src / "a.png").write_bytes(png(40, 63, 1))
    (src / "b.png").write_bytes(png(30, 30, 2))
    label = ["label", "--source", str(src), "--dataset", out, *CLI_MODEL]
    assert run_cli(capsys, *label)[0] == 0
    assert exported_sizes(out) == {"a.png": (63, 40), "b.png": (30, 30)}

    st = os.stat(src / "a.png")
    (src / "a.png").write_bytes(png(50, 70, 3))  # what `cp -p new.png a.png` does
    os.utime(src / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(src / "a.png").st_mtime_ns == st.st_mtime_ns
    assert run_cli(capsys, *label)[0] == 0
    assert exported_sizes(out) == {"a.png": (70, 50), "b.png": (30, 30)}  # before: a.png stayed 63 x 40

    # A run over an untouched source reads nothing again.
    code, stdout, _ = run_cli(capsys, *label, "--json")
    assert code == 0 and json.loads(stdout)["skipped_unchanged"] == 2
