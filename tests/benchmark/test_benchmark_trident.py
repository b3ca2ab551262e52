"""``maskclip benchmark --method trident``: the protocol row against Trident's configs, and a tiny end-to-end run."""

from __future__ import annotations

import json

from support.benchmark_tiny import TINY_INFERENCE, write_tiny_data_root

from cli.main import main
from maskclip_core.benchmark.protocols import METHODS
from maskclip_core.benchmark.scoring import BenchmarkParameters

# YuHengsss/Trident's configs written out (base_config.py + cfg_*.py): short side (Resize scale), crop, stride,
# prob_thd, cos_fac, refine_neg_cos; logit scale 40 (Trident's default), names: its cls_*.txt = ProxyCLIP's.
TRIDENT_CONFIGS = {
    "voc21": (448, 336, 224, 0.2, 1.2, True),
    "voc20": (336, 336, 112, 0.0, 0.0, True),
    "context60": (576, 336, 224, 0.15, 1.2, True),
    "context59": (576, 336, 224, 0.0, 1.2, True),
    "coco-object": (448, 336, 224, 0.25, 1.2, True),
    "coco-stuff": (448, 336, 224, 0.0, 1.2, True),
    "cityscapes": (688, 336, 224, 0.0, 3.0, False),
    "ade20k": (576, 336, 224, 0.0, 1.2, False),
}


def test_benchmark_row_follows_the_reference_configs():
    request = BenchmarkParameters(method="trident", suites=list(TRIDENT_CONFIGS), data_root="unused")
    assert METHODS["trident"].published_average == 45.8
    for suite, (short, crop, stride, prob_thd, cos_fac, neg) in TRIDENT_CONFIGS.items():
        settings = request.settings(suite)
        assert (settings.prob_threshold, settings.names) == (prob_thd, "proxyclip"), suite
        config = request.labeler_config(suite)
        inference = config.inference
        assert (inference.short_side, inference.crop, inference.stride) == (short, crop, stride), suite
        assert (inference.logit_scale, inference.proxy_beta, inference.proxy_gamma) == (40.0, 1.2, 3.0)
        assert (inference.resize, inference.position_resize) == ("opencv", "scale_factor")
        assert (config.sam_cos_fac, config.sam_refine_neg_cos) == (cos_fac, neg), suite
        assert (config.proxy, config.sam, config.templates) == ("vit_base_patch16_224.dino", "vit_b", "imagenet")


def test_cli_benchmark_method_trident(tmp_path, capsys, monkeypatch):
    root = write_tiny_data_root(tmp_path / "data")
    argv = ["benchmark", "--suite", "voc21", "--root", str(root), "--method", "trident", "--limit", "1", "--quiet"]
    argv += ["--model", "maskclip-tiny-ViT", "--pretrained", "none", "--templates", "single", "--device", "cpu"]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in TINY_INFERENCE.items()]
    options = {"proxy": "vit_small_patch16_224.dino", "proxy_weights": "none", "sam": "samvit_base_patch16_224"}
    assert main([*argv, "--labeler-options", json.dumps({**options, "sam_weights": "none"})]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["suites"]["voc21"]["images"] == 1
    # Without the model hub and no local SAM weights: one line saying what to pass.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main([*argv, "--labeler-options", json.dumps(options)]) != 0
    err = capsys.readouterr().err
    assert "Could not obtain the SAM weights for samvit_base_patch16_224" in err and "--sam-weights" in err
    assert "Traceback" not in err
