"""`maskclip segment` / `maskclip demo`: files written, label PNG values equal the labeler's labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cli.main import main
from maskclip_core.teacher.labeler import LabelerConfig, MaskCLIPLabeler
from maskclip_core.teacher.window_predictor import InferenceConfig

TINY = ["--model", "maskclip-tiny-ViT", "--pretrained", "none", "--short-side", "96", "--crop", "96", "--stride", "64"]


def _photo(path, h, w, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_segment_writes_labels_overlay_and_confidence(tmp_path, capsys):
    a = _photo(tmp_path / "a.png", 120, 90, 0)
    b = _photo(tmp_path / "b.png", 70, 150, 1)
    (tmp_path / "broken.jpg").write_text("not an image")
    out = tmp_path / "out"
    code = main(
        [
            "segment",
            str(a),
            str(b),
            str(tmp_path / "broken.jpg"),
            "--classes",
            "cat, grass; lawn, road",
            "--out",
            str(out),
            *TINY,
        ]
    )
    assert code == 1  # one input was rejected: reported, not fatal
    assert "MEANINGLESS" in capsys.readouterr().err
    summary = json.loads((out / "segment.json").read_text())
    assert [i["status"] for i in summary["images"]] == ["labeled", "labeled", "rejected"]
    assert summary["images"][2]["reason"] == "not_an_image"
    assert summary["classes"] == ["cat", "grass", "road"]

    labeler = MaskCLIPLabeler.from_config(
        LabelerConfig(
            model="maskclip-tiny-ViT",
            pretrained="none",
            classes="cat, grass; lawn, road",
            inference=InferenceConfig(short_side=96, crop=96, stride=64),
        )
    )
    for path in (a, b):
        [expected] = labeler.label([np.asarray(Image.open(path).convert("RGB"))])
        labels = Image.open(out / f"{path.stem}_labels.png")
        assert labels.mode == "P"
        np.testing.assert_array_equal(np.asarray(labels), expected.labels)
        confidence = np.asarray(Image.open(out / f"{path.stem}_confidence.png")).astype(np.float64) / 65535
        np.testing.assert_allclose(confidence, expected.confidence, atol=1 / 65535)
        overlay = Image.open(out / f"{path.stem}_overlay.png")
        assert overlay.height >= expected.labels.shape[0] and overlay.width > expected.labels.shape[1]  # + legend


def test_demo_runs_on_the_bundled_photos(tmp_path):
    assert main(["demo", "--out", str(tmp_path), *TINY]) == 0
    summary = json.loads((tmp_path / "segment.json").read_text())
    assert len(summary["images"]) == 4 and all(i["status"] == "labeled" for i in summary["images"])
    assert (tmp_path / "astronaut_overlay.png").exists()


def test_missing_weights_stop_with_the_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    img = _photo(tmp_path / "a.png", 32, 32, 0)
    code = main(["segment", str(img), "--classes", "cat", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "--pretrained /path/to/ViT-B-16.pt" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--classes", " , "], ["--classes", "a", "--stride", "500"]])
def test_bad_options_are_clear_errors(tmp_path, capsys, bad):
    img = _photo(tmp_path / "a.png", 32, 32, 0)
    code = main(["segment", str(img), "--out", str(tmp_path / "o"), *TINY, *bad])
    assert code == 2 and "maskclip: error:" in capsys.readouterr().err
