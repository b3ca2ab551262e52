"""The benchmark on real COCO photos in mmseg's coco_stuff164k layout (COCO-Object and COCO-Stuff ids written
from the shared sample's panoptic masks): an oracle labeler scores 100, and the tiny random-weight MaskCLIP
runs end to end through the default labeler construction."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from support.benchmark_layouts import write_coco_sample_layout
from support.coco_sample import SAMPLE, require_sample

from maskclip_core.benchmark.scoring import BenchmarkParameters, run_benchmark
from maskclip_core.benchmark.suites import (
    expected_class_names,
    get_suite,
    label_lookup,
    list_samples,
    load_label_map,
)
from maskclip_core.types import SegmentationResult

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_sample()
    root = tmp_path_factory.mktemp("benchmark-data")
    write_coco_sample_layout(SAMPLE, root, limit=6)
    return root


class OracleLabeler:
    """Answers each image with its own ground truth, mapped back to labeler class indices."""

    def __init__(self, suite_name: str, root: Path) -> None:
        self.suite = get_suite(suite_name)
        self.class_names = expected_class_names(self.suite)
        to_index = np.zeros(256, np.int64)
        to_index[label_lookup(self.suite)] = np.arange(len(self.class_names))
        self.truth = {}
        for sample in list_samples(self.suite, root):
            gt = load_label_map(sample.label, self.suite)
            self.truth[gt.shape] = self.truth.get(gt.shape, []) + [to_index[gt]]

    def label(self, images: list[np.ndarray]) -> list[SegmentationResult]:
        out = []
        for image in images:
            labels = self.truth[image.shape[:2]].pop(0)  # samples come in the split's order
            k = len(self.class_names)
            conf = np.ones(labels.shape, np.float32)
            out.append(SegmentationResult(labels, conf, np.ones(k, np.float32), np.zeros(k, bool), self.class_names))
        return out

    def config(self) -> dict:
        return {"labeler": "oracle"}


@pytest.mark.parametrize("suite_name", ["coco-object", "coco-stuff"])
def test_real_layout_with_an_oracle_scores_100(coco_root: Path, suite_name: str) -> None:
    suite = get_suite(suite_name)
    samples = list_samples(suite, coco_root)
    assert len(samples) == 6
    gt = load_label_map(samples[0].label, suite)
    assert gt.max() < suite.num_classes or gt.max() == 255
    if suite_name == "coco-object":
        assert (gt == 0).any() and (gt > 0).any()  # background and things
    else:
        assert (gt == 255).any() and (gt < 80).any() and ((gt >= 80) & (gt < 171)).any()  # ignore, things, stuff
    request = BenchmarkParameters(suites=[suite_name], data_root=str(coco_root))
    # 6 of val2017's 5000 photos: what a half-extracted folder looks like, refused before the first image ...
    with pytest.raises(FileNotFoundError, match=f"{suite_name}: 6 images in .* the official val split has 5000"):
        run_benchmark(request, labeler_factory=lambda r, s: OracleLabeler(s, coco_root))
    # ... and scored when the user allows it, the split's shortfall in the report.
    request = request.model_copy(update={"allow_incomplete": True})
    report = run_benchmark(request, labeler_factory=lambda r, s: OracleLabeler(s, coco_root))
    assert report.results[0].images == 6 and report.results[0].failed == 0
    assert report.results[0].miou == pytest.approx(100.0)
    assert report.results[0].split["listed_images"] == 6 and not report.complete


def test_tiny_random_maskclip_runs_end_to_end(coco_root: Path) -> None:
    request = BenchmarkParameters(
        suites=["coco-object", "coco-stuff"],
        data_root=str(coco_root),
        model="maskclip-tiny-ViT",
        pretrained="none",
        templates="single",
        device="cpu",
        limit=2,
        inference={"short_side": 112, "crop": 112, "stride": 56},  # small, for the CPU; the protocol is 336
    )
    report = run_benchmark(request)
    data = report.to_dict()
    for suite in ("coco-object", "coco-stuff"):
        result = data["suites"][suite]
        assert result["images"] == 2 and result["failed"] == 0, result["failures"]
        assert 0.0 <= result["miou"] <= 100.0
        assert result["settings"]["short_side"] == 112 and result["settings"]["crop"] == 112  # what really ran
    assert math.isfinite(data["images_per_second"]) and data["images_per_second"] > 0
    assert data["eight_suite_average"] is None and data["average"] is not None
