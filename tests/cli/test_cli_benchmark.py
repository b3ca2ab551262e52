"""``maskclip benchmark`` end to end with the tiny random-weight model: table and JSON out, clear errors, and
what a real dataset does to a run (a missing suite, failed or missing images, saved predictions, no hub)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.benchmark_layouts import write_sample
from support.benchmark_tiny import TINY_INFERENCE, write_tiny_data_root

from cli.benchmark import parse_roots
from cli.main import main
from cli.options import METHODS
from maskclip_core.benchmark import scoring
from maskclip_core.benchmark.protocols import METHOD_NAMES
from maskclip_core.benchmark.protocols import METHODS as METHODS_BY_NAME
from maskclip_core.benchmark.scoring import unavailable_reason
from maskclip_core.benchmark.suites import SUITES, get_suite

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_ARGS = ["--model", "maskclip-tiny-ViT", "--pretrained", "none", "--templates", "single", "--device", "cpu"]
SIZE_ARGS = ["--short-side", str(TINY_INFERENCE["short_side"]), "--crop", str(TINY_INFERENCE["crop"])]
SIZE_ARGS += ["--stride", str(TINY_INFERENCE["stride"])]


def test_benchmark_prints_a_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_tiny_data_root(tmp_path / "data")
    out = tmp_path / "report.json"
    argv = ["benchmark", "--suite", "voc21,ade20k", "--root", str(root), "--out", str(out), "--limit", "2"]
    rc = main([*argv, *TINY_ARGS, *SIZE_ARGS])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(captured.out)
    assert report == json.loads(out.read_text())
    assert list(report["suites"]) == ["voc21", "ade20k"]
    for suite in report["suites"].values():
        assert suite["images"] == 2 and suite["failed"] == 0 and suite["split"]["count_checked"] is False
        assert 0 <= suite["miou"] <= 100 and suite["settings"]["short_side"] == 64
    assert report["method"] == "maskclip" and report["eight_suite_average"] is None
    assert "not the official splits" in report["limit_note"]  # a --limit run is exempt from the count, and says so
    assert "mean of 2" in captured.err and "RANDOM WEIGHTS" in captured.err  # the table and the banner
    # Status lines while models load and text is encoded (stderr), one per step.
    assert "voc21: loading maskclip-tiny-ViT (none) and encoding 21 classes' prompts" in captured.err
    assert "ade20k: ready in" in captured.err and "ade20k: mIoU" in captured.err


def test_benchmark_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["benchmark", "--suite", "cityscapes", "--root", str(tmp_path), *TINY_ARGS])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and err.startswith("maskclip: error: nothing was scored: cityscapes: no leftImg8bit/val/ under")
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
    rc = main([*argv, *TINY_ARGS, "--short-side", "64", "--quiet", "--allow-incomplete"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(captured.out)
    assert report["suites"]["voc21"]["images"] == 2 and len(report["suites"]["voc21"]["per_class_iou"]) == 21
    assert report["suites"]["ade20k"]["images"] == 2 and len(report["suites"]["ade20k"]["per_class_iou"]) == 150


# --- real datasets: what a new user meets ----------------------------------------------------------------------


def test_all_suites_with_missing_folders_stop_before_the_first_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_tiny_data_root(tmp_path / "data")  # VOC2012 and ADE20K only
    predictions = tmp_path / "pred"
    argv = ["benchmark", "--suite", "all", "--root", str(root), "--save-predictions", str(predictions)]
    rc = main([*argv, *TINY_ARGS, *SIZE_ARGS, "--quiet"])
    captured = capsys.readouterr()
    [line] = [x for x in captured.err.splitlines() if x.startswith("maskclip: error")]
    assert rc == 2 and captured.out == "" and not predictions.exists()  # nothing labeled, nothing loaded
    for missing in ("context60: no JPEGImages/", "context59", "coco-object", "coco-stuff", "cityscapes"):
        assert missing in line
    # The suites that are there but are not the official split are named in the same line.
    assert "voc21: 2 images in" in line and "the official val split has 1449" in line
    assert "ade20k: 2 images in" in line and "has 2000" in line


def test_finished_suites_survive_a_later_suites_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_tiny_data_root(tmp_path / "data")
    real = scoring.benchmark_suite

    def crash_on_ade(request, suite, **kwargs):  # noqa: ANN001, ANN202 - the function it stands in for
        if suite == "ade20k":
            raise FileNotFoundError("the disk went away")
        return real(request, suite, **kwargs)

    monkeypatch.setattr(scoring, "benchmark_suite", crash_on_ade)
    out = tmp_path / "report.json"
    argv = ["benchmark", "--suite", "voc21,ade20k", "--root", str(root), "--out", str(out), "--limit", "2"]
    rc = main([*argv, *TINY_ARGS, *SIZE_ARGS, "--quiet"])
    captured = capsys.readouterr()
    assert rc == 2 and "the disk went away" in captured.err
    for report in (json.loads(out.read_text()), json.loads(captured.out)):
        assert list(report["suites"]) == ["voc21"] and report["suites"]["voc21"]["images"] == 2
        assert report["pending"] == ["ade20k"] and report["average"] is None


def test_failed_or_missing_images_fail_the_run_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_tiny_data_root(tmp_path / "data")
    ade = get_suite("ade20k")
    folder = root / ade.folder
    (folder / ade.image_dir / "img_0.jpg").write_bytes(b"half a download")
    write_sample(folder, ade, "img_2", np.full((8, 8), 200, np.uint8))  # 200 - 1 is no ADE20K class
    monkeypatch.setitem(SUITES, "ade20k", replace(ade, official_images=3))  # the fixture's whole "split"
    argv = ["benchmark", "--suite", "ade20k", "--root", str(root), *TINY_ARGS, *SIZE_ARGS, "--quiet"]
    rc = main(argv)
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert rc == 1 and report["failed"] and report["average"] is None and report["miou"]["ade20k"] is not None
    failures = report["suites"]["ade20k"]["failures"]
    assert len(failures) == 2 and "img_0" in failures[0]
    assert "label values 199 are outside the suite's ids 0..149 and 255" in failures[1]  # refused, not counted
    assert "run failed: 2 images failed or missing, no average" in captured.err
    rc = main([*argv, "--allow-incomplete"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["average"] == report["miou"]["ade20k"] and report["complete"] is False

    # A half-extracted folder (fewer images than the official split) stops before the first image ...
    monkeypatch.setitem(SUITES, "ade20k", ade)
    (folder / ade.image_dir / "img_0.jpg").unlink()
    rc = main(argv)
    assert rc == 2 and "ade20k: 2 images in" in capsys.readouterr().err
    # ... and a split file's entry without its image is missing, not silently dropped.
    voc = get_suite("voc21")
    monkeypatch.setitem(SUITES, "voc21", replace(voc, official_images=2))
    (root / voc.folder / voc.image_dir / "img_1.jpg").unlink()
    rc = main(["benchmark", "--suite", "voc21", "--root", str(root), *TINY_ARGS, *SIZE_ARGS, "--quiet"])
    assert rc == 2 and "voc21: 1 of 2 missing: img_1 (no " in capsys.readouterr().err
    rc = main(["benchmark", "--suite", "voc21", "--root", str(root), *TINY_ARGS, *SIZE_ARGS, "--allow-incomplete"])
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert rc == 0 and report["suites"]["voc21"]["images"] == 1 and report["suites"]["voc21"]["split"]["missing"] == 1


def test_predictions_are_saved_per_image_in_the_suites_label_space(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_tiny_data_root(tmp_path / "data")
    predictions = tmp_path / "pred"
    argv = ["benchmark", "--suite", "voc21,ade20k", "--root", str(root), "--save-predictions", str(predictions)]
    rc = main([*argv, *TINY_ARGS, *SIZE_ARGS, "--quiet", "--limit", "2", "--prob-threshold", "0"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["predictions"] == str(predictions)
    for name, classes in (("voc21", 21), ("ade20k", 150)):
        assert report["suites"][name]["predictions"] == str(predictions / name)
        assert sorted(p.name for p in (predictions / name).iterdir()) == ["img_0.png", "img_1.png"]  # nothing else
        with Image.open(predictions / name / "img_0.png") as im:
            assert im.mode == "L" and im.size == (56, 40)
            assert np.asarray(im).max() < classes  # ground-truth ids (ADE20K: after reduce_zero_label)


def test_vit_only_methods_refuse_a_resnet_before_the_first_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_tiny_data_root(tmp_path / "data")
    tiny_rn = [*TINY_ARGS[:1], "maskclip-tiny-RN", *TINY_ARGS[2:]]
    for method, why in (("sclip", "attention 'sclip'"), ("proxyclip", "proxy 'dino_vitb8'")):
        argv = ["benchmark", "--suite", "voc21", "--root", str(root), "--method", method, "--limit", "1"]
        rc = main([*argv, *tiny_rn, "--quiet"])
        captured = capsys.readouterr()
        assert rc == 2 and captured.out == ""
        assert f"method '{method}' needs a ViT CLIP ({why}); maskclip-tiny-RN is a ResNet" in captured.err


def test_help_names_the_tiny_test_models_and_the_proxy_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["benchmark", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps at hyphens
    options = ("--proxy-weights", "--allow-incomplete", "--save-predictions")
    for words in ("maskclip-tiny-ViT", "maskclip-tiny-RN", *options):
        assert words in text


def test_proxyclip_takes_the_proxy_options_of_segment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_tiny_data_root(tmp_path / "data")
    argv = ["benchmark", "--suite", "voc21", "--root", str(root), "--method", "proxyclip", "--limit", "1"]
    proxy = ["--proxy", "dino_vits8", "--proxy-weights", "none"]
    rc = main([*argv, *proxy, *TINY_ARGS, *SIZE_ARGS, "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert json.loads(captured.out)["suites"]["voc21"]["images"] == 1
    # The protocol pads windows to 56 px as the reference does: a 16-pixel proxy is refused in one line.
    proxy = ["--proxy", "vit_tiny_patch16_224.augreg_in21k", "--proxy-weights", "none"]
    rc = main([*argv, *proxy, *TINY_ARGS, *SIZE_ARGS, "--quiet"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and "16 px" in error and "dino_vitb8" in error, error


def _run_offline(tmp_path: Path, *args: str) -> tuple[int, list[tuple[float, str]]]:
    """``maskclip benchmark ARGS`` in a fresh process whose model hub does not resolve; stderr lines with the
    seconds since start at which each arrived."""
    env = {
        **os.environ,
        "HF_ENDPOINT": "http://unresolvable.invalid",
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_OFFLINE": "0",
        "OMP_NUM_THREADS": "1",
    }
    root = write_tiny_data_root(tmp_path / "data")
    argv = [sys.executable, "-m", "cli.main", "benchmark", "--suite", "voc21", "--root", str(root), "--limit", "1"]
    start = time.monotonic()
    proc = subprocess.Popen(
        [*argv, "--device", "cpu", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    lines = [(time.monotonic() - start, line.rstrip()) for line in proc.stderr]
    return proc.wait(timeout=120), lines


@pytest.mark.parametrize(
    ("args", "what"),
    [
        ((), "Could not obtain the pretrained weights 'openai' for ViT-B-16"),  # the default model
        (("--method", "proxyclip", *TINY_ARGS[:4]), "Could not obtain the proxy weights for vit_base_patch8_224.dino"),
    ],
)
def test_without_the_model_hub_benchmark_fails_in_seconds_with_one_message(
    tmp_path: Path, args: tuple[str, ...], what: str
) -> None:
    rc, lines = _run_offline(tmp_path, *args)
    text = "\n".join(line for _, line in lines)
    assert rc == 2, text
    [(loading, _)] = [(t, line) for t, line in lines if "voc21: loading" in line]
    [(failed, error)] = [(t, line) for t, line in lines if line.startswith("maskclip: error:")]
    assert what in error and "name lookup of unresolvable.invalid failed" in error
    assert failed - loading < 10  # huggingface_hub's retries took ~50 s
    assert "Retrying" not in text and text.count("Could not obtain") == 1
