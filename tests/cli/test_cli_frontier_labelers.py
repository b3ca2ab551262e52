"""`maskclip segment` / `maskclip demo` with the NACLIP, ProxyCLIP and PAMR options on the tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cli.main import main
from maskclip_core.teacher.labeler import LabelerConfig, MaskCLIPLabeler
from maskclip_core.teacher.window_predictor import InferenceConfig

TINY = ["--model", "maskclip-tiny-ViT", "--pretrained", "none", "--short-side", "64", "--crop", "64", "--stride", "48"]
OPTIONS = {
    "naclip": ["--attention", "naclip"],
    "proxyclip": ["--proxy", "dino_vits8", "--proxy-weights", "none", "--no-key-smoothing"],
    "pamr": ["--pamr", "--pamr-iterations", "3", "--pamr-dilations", "4", "8"],
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_segment_runs_with_the_new_labelers(tmp_path, option):
    photo = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "out"
    assert main(["segment", str(photo), "--classes", "cat, grass", "--out", str(out), *TINY, *OPTIONS[option]]) == 0
    summary = json.loads((out / "segment.json").read_text())
    assert summary["images"][0]["status"] == "labeled"
    labeler_config = summary["labeler"]
    if option == "proxyclip":
        assert labeler_config["proxy"]["model"] == "vit_small_patch8_224.dino"
        inference = InferenceConfig(short_side=64, crop=64, stride=48, key_smoothing=False)
        expected_config = LabelerConfig(
            model="maskclip-tiny-ViT",
            pretrained="none",
            classes="cat, grass",
            proxy="dino_vits8",
            proxy_weights="none",
            inference=inference,
        )
        [expected] = MaskCLIPLabeler.from_config(expected_config).label([np.asarray(Image.open(photo))])
        np.testing.assert_array_equal(np.asarray(Image.open(out / "a_labels.png")), expected.labels)
    elif option == "naclip":
        assert labeler_config["inference"]["attention"] == "naclip"
    else:
        assert labeler_config["inference"]["pamr_dilations"] == [4, 8]


def test_demo_runs_with_proxy_and_pamr(tmp_path):
    assert main(["demo", "--out", str(tmp_path), *TINY, *OPTIONS["proxyclip"], "--pamr"]) == 0
    summary = json.loads((tmp_path / "segment.json").read_text())
    assert all(i["status"] == "labeled" for i in summary["images"])


def test_unavailable_proxy_weights_stop_with_the_fix(tmp_path, capsys):
    photo = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(photo)
    args = ["segment", str(photo), "--classes", "cat", "--out", str(tmp_path / "o"), *TINY]
    assert main([*args, "--proxy", "dino_vits8", "--proxy-weights", str(tmp_path / "nope.pth")]) == 2
    assert "no such file" in capsys.readouterr().err
