"""``maskclip benchmark`` end to end with the tiny random-weight model: table and JSON out, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.benchmark_tiny import TINY_INFERENCE, write_tiny_data_root

from cli.benchmark import parse_roots
from cli.main import main
from cli.options import METHODS
from maskclip_core.benchmark.protocols import METHOD_NAMES
from maskclip_core.benchmark.protocols import METHODS as METHODS_BY_NAME
from maskclip_core.benchmark.scoring import unavailable_reason

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_ARGS = ["--model", "maskclip-tiny-ViT", "--pretrained", "none", "--templates", "single", "--device", "cpu"]
SIZE_ARGS = ["--short-side", str(TINY_INFERENCE["short_side"]), "--crop", str(TINY_INFERENCE["crop"])]
SIZE_ARGS += ["--stride", str(TINY_INFERENCE["stride"])]


def test_benchmark_prints_a_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_tiny_data_root(tmp_path / "data")
    out = tmp_path / "report.json"
    argv = ["benchmark", "--suite", "voc21,ade20k", "--root", str(root), "--out", str(out), "--quiet"]
    rc = main([*argv, *TINY_ARGS, *SIZE_ARGS])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(captured.out)
    assert report == json.loads(out.read_text())
    assert list(report["suites"]) == ["voc21", "ade20k"]
    for suite in report["suites"].values():
        assert suite["images"] == 2 and suite["failed"] == 0
        assert 0 <= suite["miou"] <= 100 and suite["settings"]["short_side"] == 64
    assert report["method"] == "maskclip" and report["eight_suite_average"] is None
    assert "mean of 2" in captured.err and "RANDOM WEIGHTS" in captured.err  # the table and the banner


def test_benchmark_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["benchmark", "--suite", "cityscapes", "--root", str(tmp_path), *TINY_ARGS])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and err.startswith("maskclip: error: cityscapes: no leftImg8bit/val/ under")
    rc = main(["benchmark", "--suite", "voc21", "--root", str(tmp_path), "--method", "student", *TINY_ARGS])
    assert rc == 2 and "needs `checkpoint`" in capsys.readouterr().err
    rc = main(["benchmark", "--suite", "voc21", "--root", "a", "--root", "b", *TINY_ARGS])
    assert rc == 2 and "two data roots" in capsys.readouterr().err
    for method in [m for m in METHOD_NAMES if unavailable_reason(METHODS_BY_NAME[m])]:
        rc = main(["benchmark", "--suite", "voc21", "--root", str(tmp_path), "--method", method, *TINY_ARGS])
        assert rc == 2 and f"method '{method}' needs" in capsys.readouterr().err


def test_roots_and_methods() -> None:
    assert parse_roots(["data", "voc21=/x/VOC2012"], ["voc21", "ade20k"]) == ("data", {"voc21": "/x/VOC2012"})
    with pytest.raises(ValueError, match="not asked for: ade20k"):
        parse_roots(["ade20k=/y"], ["voc21"])
    assert tuple(METHODS) == METHOD_NAMES  # the parser's copy stays in step with the protocols


def test_benchmark_scores_a_student_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from maskclip_core.student import StudentConfig
    from maskclip_core.student.checkpoint import save_weights
    from maskclip_core.student.classifier import ClassVocabulary
    from maskclip_core.student.model import build_student

    # A random ResNet-18 student trained on two classes; the benchmark re-points it at each suite's classes
    # with the tiny CLIP's text embeddings (embedding size 64).
    config = StudentConfig(
        embed_dim=64, backbone="resnet18", output_stride=16, head_channels=16, temperature=5.0, backbone_weights="none"
    )
    torch.manual_seed(0)
    model = build_student(config, torch.randn(2, 64), ClassVocabulary(("a", "b"))).eval()
    url = save_weights(str(tmp_path / "ckpt"), model, round_index=1, iteration=10)
    root = write_tiny_data_root(tmp_path / "data")
    argv = ["benchmark", "--suite", "voc21,ade20k", "--root", str(root), "--method", "student", "--checkpoint", url]
    rc = main([*argv, *TINY_ARGS, "--short-side", "64", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(captured.out)
    assert report["suites"]["voc21"]["images"] == 2 and len(report["suites"]["voc21"]["per_class_iou"]) == 21
    assert report["suites"]["ade20k"]["images"] == 2 and len(report["suites"]["ade20k"]["per_class_iou"]) == 150
