"""The benchmark on tiny datasets written in each suite's exact layout, with planted predictions: the mIoU of
every suite is computed by hand below, including ignore values, reduce_zero_label and the background rules."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.benchmark_layouts import PlantedLabeler, write_sample

from maskclip_core.benchmark.protocols import METHODS
from maskclip_core.benchmark.scoring import BenchmarkParameters, run_benchmark
from maskclip_core.benchmark.suites import (
    SUITE_NAMES,
    SUITES,
    dataset_dir,
    expected_class_names,
    get_suite,
    label_lookup,
    list_samples,
    load_label_map,
    parse_suites,
)

# suite: (class A, class B, class C, stored id of A, B, C, stored value of the ignored row, sample name).
# Stored ids are the datasets' own: VOC person 15 / cat 8; Context (60) person 37 / cat 15; COCO-Object
# person 1 / cat 16; COCO-Stuff train ids person 0 / cat 15 / grass 112; Cityscapes train ids road 0 /
# car 13 / sky 10; ADE20K wall 1 / sky 3 / person 13. Suites with reduce_zero_label store 0 in the ignored
# row (0 = unlabeled there), the others 255.
SCENARIOS = {
    "voc21": ("background", "person", "cat", 0, 15, 8, 255, "2007_000033"),
    "voc20": ("aeroplane", "person", "cat", 1, 15, 8, 0, "2007_000033"),
    "context60": ("background", "person", "cat", 0, 37, 15, 255, "2008_000002"),
    "context59": ("aeroplane", "person", "cat", 1, 37, 15, 0, "2008_000002"),
    "coco-object": ("background", "person", "cat", 0, 1, 16, 255, "000000000139"),
    "coco-stuff": ("person", "cat", "grass", 0, 15, 112, 255, "000000000139"),
    "cityscapes": ("road", "car", "sky", 0, 13, 10, 255, "frankfurt/frankfurt_000000_000294"),
    "ade20k": ("wall", "sky", "person", 1, 3, 13, 0, "ADE_val_00000001"),
}
# Image 1 (4 x 4): ground truth A A B B in rows 0-2, the ignored row 3; predicted A A A B / A A B B / B B B B,
# the ignored row C; the pixel (2, 1) (truth A, predicted B) at probability 0.05, all others 0.9.
# Image 2 (1 x 2): truth B B, predicted B C.
#   Without a background rule: A: truth 6, predicted 5, hit 4 -> 4/7; B: truth 8, predicted 8, hit 6 -> 6/10;
#   C: truth 0, predicted 1 -> 0. mIoU = (4/7 + 6/10 + 0) / 3 = 39.05 %.
#   With background A and prob_thd 0.1, pixel (2, 1) becomes A: A: 6, 6, 5 -> 5/7; B: 8, 7, 6 -> 6/9;
#   C -> 0. mIoU = (5/7 + 6/9 + 0) / 3 = 46.03 %.
# Every other class is absent from truth and prediction, so it is left out of the mean.
PLAIN = 100 * (4 / 7 + 6 / 10 + 0) / 3
THRESHOLDED = 100 * (5 / 7 + 6 / 9 + 0) / 3


@pytest.fixture(autouse=True)
def _two_image_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixtures' two images are each suite's whole split here (the real ones have 500 to 5105)."""
    for name, suite in SUITES.items():
        monkeypatch.setitem(SUITES, name, replace(suite, official_images=2))


def _build(tmp_path: Path, suite_name: str) -> tuple[Path, PlantedLabeler]:
    suite = get_suite(suite_name)
    a, b, c, sa, sb, sc, ignore, name = SCENARIOS[suite_name]
    root = tmp_path / suite_name / suite.folder
    labeler = PlantedLabeler(expected_class_names(suite))
    stored1 = np.array([[sa, sa, sb, sb]] * 3 + [[ignore] * 4])
    image1 = write_sample(root, suite, name, stored1, seed=1)
    pred1 = np.array([[a, a, a, b], [a, a, b, b], [b, b, b, b], [c, c, c, c]], dtype=object)
    conf1 = np.full((4, 4), 0.9)
    conf1[2, 1] = 0.05
    labeler.plant(image1, pred1, conf1)
    second = name[:-1] + ("8" if name[-1] != "8" else "7")
    image2 = write_sample(root, suite, second, np.array([[sb, sb]]), seed=2)
    labeler.plant(image2, np.array([[b, c]], dtype=object))
    return tmp_path / suite_name, labeler


@pytest.mark.parametrize("suite_name", SUITE_NAMES)
def test_planted_predictions_give_the_hand_computed_miou(tmp_path: Path, suite_name: str) -> None:
    data_root, labeler = _build(tmp_path, suite_name)
    out = tmp_path / "predictions"
    report = run_benchmark(
        BenchmarkParameters(
            suites=[suite_name], data_root=str(data_root), method="maskclip", save_predictions=str(out)
        ),
        labeler_factory=lambda request, suite: labeler,
    )
    [result] = report.results
    suite = get_suite(suite_name)
    expected = THRESHOLDED if suite.has_background else PLAIN
    # The saved prediction: ground-truth ids of the suite's label space (reduce_zero_label applied), the
    # background rule applied; named after the image's stem.
    a, b, c = (suite.class_names.index(n) for n in SCENARIOS[suite_name][:3])
    first = [[a, a, a, b], [a, a, b, b], [b, a if suite.has_background else b, b, b], [c, c, c, c]]
    stem = Path(SCENARIOS[suite_name][-1]).name + suite.image_suffix.removesuffix(".png").removesuffix(".jpg")
    with Image.open(out / suite_name / f"{stem}.png") as saved:
        assert saved.mode == "L" and np.asarray(saved).tolist() == first
    assert report.to_dict()["predictions"] == str(out) and result.predictions == str(out / suite_name)
    assert result.images == 2 and result.failed == 0, result.failures
    assert result.miou == pytest.approx(expected, abs=1e-9)
    a, b, c = SCENARIOS[suite_name][:3]
    b_iou = 100 * (6 / 9 if get_suite(suite_name).has_background else 6 / 10)
    assert result.per_class_iou[b] == pytest.approx(b_iou, abs=0.01)
    assert result.per_class_iou[c] == 0.0
    assert sum(v is not None for v in result.per_class_iou.values()) == 3  # absent classes are not scored
    assert labeler.calls == 2


@pytest.mark.parametrize("suite_name", ["voc21", "context60", "coco-object"])
def test_without_a_threshold_background_suites_score_the_plain_argmax(tmp_path: Path, suite_name: str) -> None:
    data_root, labeler = _build(tmp_path, suite_name)
    request = BenchmarkParameters(suites=[suite_name], data_root=str(data_root), prob_threshold=0.0)
    report = run_benchmark(request, labeler_factory=lambda r, s: labeler)
    assert report.results[0].miou == pytest.approx(PLAIN, abs=1e-9)


def test_all_eight_suites_in_one_run_give_the_eight_suite_average(tmp_path: Path) -> None:
    labelers = {}
    roots = {}
    for name in SUITE_NAMES:
        roots[name], labelers[name] = _build(tmp_path, name)
    # One data root per suite here (each suite's folder under its own root); a shared root works the same.
    request = BenchmarkParameters(suites=list(SUITE_NAMES), suite_roots={k: str(v) for k, v in roots.items()})
    report = run_benchmark(request, labeler_factory=lambda r, suite: labelers[suite])
    expected = (3 * THRESHOLDED + 5 * PLAIN) / 8  # voc21, context60, coco-object have background
    assert report.eight_suite_average == pytest.approx(expected, abs=1e-9)
    data = report.to_dict()
    assert data["eight_suite_average"] == round(expected, 2)
    assert data["published_eight_suite_average"] == 30.3
    assert set(data["miou"]) == set(SUITE_NAMES)
    assert report.table_rows()[-1]["suite"] == "eight-suite average"
    limited = run_benchmark(request.model_copy(update={"limit": 1}), labeler_factory=lambda r, s: labelers[s])
    assert limited.eight_suite_average is None  # a --limit run is a quick look, not the protocol
    assert all(r.images == 1 for r in limited.results)


def test_one_data_root_holds_the_suites_in_their_mmseg_folders(tmp_path: Path) -> None:
    labelers = {}
    for name in ("voc21", "voc20", "ade20k"):
        suite = get_suite(name)
        a, b, _, sa, sb, _, ignore, sample = SCENARIOS[name]
        labeler = PlantedLabeler(expected_class_names(suite))
        image = write_sample(tmp_path / suite.folder, suite, sample, np.array([[sa, sb]]), seed=3)
        labeler.plant(image, np.array([[a, b]], dtype=object))
        labelers[name] = labeler
    # voc21 and voc20 share VOCdevkit/VOC2012 (one split line each: written twice, read as two samples).
    assert len(list_samples(get_suite("voc21"), tmp_path)) == 2
    assert dataset_dir(get_suite("ade20k"), tmp_path) == tmp_path / "ade/ADEChallengeData2016"
    assert dataset_dir(get_suite("ade20k"), tmp_path / "ade/ADEChallengeData2016") == (
        tmp_path / "ade/ADEChallengeData2016"
    )
    coco = get_suite("coco-object")
    write_sample(tmp_path / "coco_object", coco, "000000000139", np.array([[0, 1]]))
    assert dataset_dir(coco, tmp_path) == tmp_path / "coco_object"  # NACLIP's README's folder works too
    request = BenchmarkParameters(suites=["ade20k"], data_root=str(tmp_path), allow_incomplete=True)
    report = run_benchmark(request, labeler_factory=lambda r, s: labelers[s])
    assert report.results[0].miou == pytest.approx(100.0)


def test_reduce_zero_label_and_palette_label_maps(tmp_path: Path) -> None:
    ade = get_suite("ade20k")
    write_sample(tmp_path, ade, "x", np.array([[0, 1, 150, 255]]))
    assert load_label_map(tmp_path / ade.label_dir / "x.png", ade).tolist() == [[255, 0, 149, 255]]
    voc = get_suite("voc21")
    write_sample(tmp_path, voc, "y", np.array([[0, 15, 255, 20]]))
    with Image.open(tmp_path / voc.label_dir / "y.png") as im:
        assert im.mode == "P"  # as VOC ships them: read as indices, never as colours
    assert load_label_map(tmp_path / voc.label_dir / "y.png", voc).tolist() == [[0, 15, 255, 20]]
    assert load_label_map(tmp_path / voc.label_dir / "y.png", get_suite("voc20")).tolist() == [[255, 14, 255, 19]]


def test_label_values_outside_the_suites_ids_refuse_the_file(tmp_path: Path) -> None:
    # Values no class has (other than 255) mean another conversion: mmseg would drop them from the truth and
    # count the predictions there as false positives without a word; the file is refused, its values named.
    voc = get_suite("voc21")
    write_sample(tmp_path, voc, "z", np.array([[0, 15, 255, 21, 30]]))
    with pytest.raises(ValueError, match=r"z.png: label values 21, 30 are outside the suite's ids 0..20 and 255"):
        load_label_map(tmp_path / voc.label_dir / "z.png", voc)
    ade = get_suite("ade20k")
    write_sample(tmp_path, ade, "w", np.array([[0, 150, 151]]))
    with pytest.raises(ValueError, match=r"label values 150 are outside .*0..149 and 255 .*after reduce_zero_label"):
        load_label_map(tmp_path / ade.label_dir / "w.png", ade)


def test_background_is_the_labelers_last_class_and_ground_truth_zero() -> None:
    voc21 = SUITES["voc21"]
    names = expected_class_names(voc21)
    assert names[-1] == "background" and names[14] == "person" and len(names) == 21
    assert label_lookup(voc21)[20] == 0 and label_lookup(voc21)[14] == 15
    assert voc21.class_names[15] == "person"
    assert expected_class_names(SUITES["context60"])[-1] == "background"
    assert SUITES["context60"].vocabulary_fields()["background"] == "background"
    # ProxyCLIP's COCO-Object queries: plain person, the 17-word background.
    fields = SUITES["coco-object"].vocabulary_fields("proxyclip")
    assert fields["classes"].startswith("person, bicycle") and len(fields["background"].split(", ")) == 17
    assert SUITES["coco-object"].vocabulary_fields("sclip")["classes"].startswith("person; person in shirt")
    sizes = {s.name: s.num_classes for s in SUITES.values()}
    assert sizes == {
        "voc21": 21, "voc20": 20, "context60": 60, "context59": 59, "coco-object": 81, "coco-stuff": 171,
        "cityscapes": 19, "ade20k": 150,
    }  # fmt: skip


def test_protocols_resolve_per_suite() -> None:
    maskclip = BenchmarkParameters(suites=["cityscapes"], data_root="/data", method="maskclip")
    config = maskclip.labeler_config("cityscapes")
    assert (config.inference.short_side, config.inference.crop, config.inference.stride) == (560, 224, 112)
    assert not config.inference.key_smoothing and not config.inference.prompt_denoising
    assert config.inference.max_long_side == 2048 and config.inference.logit_scale == 40
    clear = BenchmarkParameters(suites=["voc21"], data_root="/data", method="clearclip")
    assert clear.settings("voc21").prob_threshold == 0.5 and clear.settings("voc21").names == "clearclip"
    assert clear.labeler_config("voc21").inference.crop == 448
    sclip = BenchmarkParameters(suites=["voc21"], data_root="/data", method="sclip", inference={"crop": 336})
    assert sclip.labeler_config("voc21").inference.logit_scale == 65
    assert sclip.labeler_config("voc21").inference.crop == 336  # the request's overrides win
    assert METHODS["maskclip-kspd"].inference["key_smoothing"]
    naclip = BenchmarkParameters(suites=["voc21"], data_root="/data", method="naclip")
    assert naclip.settings("voc21").crop is None  # NACLIP: VOC as whole images
    slide = naclip.model_copy(update={"inference": {"mode": "slide"}})
    assert slide.settings("voc21").crop == 448  # the report states InferenceConfig's window then


def test_methods_this_version_lacks_fail_with_one_line(tmp_path: Path) -> None:
    from maskclip_core.benchmark.scoring import unavailable_reason

    for method in METHODS.values():
        request = BenchmarkParameters(suites=["voc20"], data_root=str(tmp_path), method=method.name, checkpoint="x")
        reason = unavailable_reason(method)
        if reason is None:
            if method.labeler == "maskclip":  # builds, with the method's own settings
                config = request.labeler_config("voc20")
                assert config.inference.attention == method.inference["attention"]
            continue
        assert "needs" in reason
        with pytest.raises(ValueError, match=f"method '{method.name}' needs"):
            run_benchmark(request)
    assert unavailable_reason(METHODS["maskclip"]) is None and unavailable_reason(METHODS["sclip"]) is None


def test_layout_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="expected mmsegmentation's layout"):
        list_samples(get_suite("cityscapes"), tmp_path)
    suite = get_suite("ade20k")
    write_sample(tmp_path, suite, "a", np.array([[1]]))
    (tmp_path / suite.label_dir / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match="1 of 1 images or label maps missing"):
        list_samples(suite, tmp_path)
    with pytest.raises(ValueError, match="unknown benchmark suite 'voc'"):
        parse_suites("voc21,voc")
    assert parse_suites("all") == list(SUITE_NAMES)
    with pytest.raises(ValueError, match="no data root for voc21"):
        BenchmarkParameters(suites=["voc21"])


def test_an_unreadable_image_is_counted_and_the_suite_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_root, labeler = _build(tmp_path, "cityscapes")
    suite = get_suite("cityscapes")
    bad = data_root / suite.folder / suite.image_dir / "frankfurt" / "frankfurt_000000_000000_leftImg8bit.png"
    bad.write_bytes(b"not a png")
    label = bad.parents[3] / suite.label_dir / "frankfurt" / "frankfurt_000000_000000_gtFine_labelTrainIds.png"
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(label)
    request = BenchmarkParameters(suites=["cityscapes"], data_root=str(data_root))
    with pytest.raises(FileNotFoundError, match="cityscapes: 3 images in .* the official val split has 2"):
        run_benchmark(request, labeler_factory=lambda r, s: labeler)  # checked before the first image
    monkeypatch.setitem(SUITES, "cityscapes", replace(suite, official_images=3))
    report = run_benchmark(request, labeler_factory=lambda r, s: labeler)
    [result] = report.results
    assert result.images == 2 and result.failed == 1
    assert "frankfurt_000000_000000" in result.failures[0]
    assert result.miou == pytest.approx(PLAIN, abs=1e-9)
    assert math.isfinite(report.to_dict()["images_per_second"])
    # A failed image fails the run: no average, unless the request allows it.
    assert report.failed and report.to_dict()["average"] is None
    allowed = run_benchmark(request.model_copy(update={"allow_incomplete": True}), labeler_factory=lambda r, s: labeler)
    assert not allowed.failed and allowed.to_dict()["average"] == round(PLAIN, 2) and not allowed.complete
