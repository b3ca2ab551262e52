"""Each benchmark method's path gives its reference segmentor's label map (issue 22): the same random weights and
photos through ``maskclip benchmark``'s labeler and through an independent rewrite of the reference's arithmetic
(``support.reference_segmentors``), on small VOC21, VOC20 and COCO-Object fixtures in mmsegmentation's layouts,
at the protocol's background threshold and at 0. Label maps must agree on >= 99.99 % of the pixels, exact ties
in the reference (two classes with the same probability) counted apart.

The photos are the shared COCO sample's (skipped without it), halved, one cut to an odd size so whole-image
NACLIP meets a side that is no multiple of the patch size. Random weights leave the probabilities near uniform,
so the protocol thresholds mostly give background; the threshold-0 maps have many classes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from support.coco_sample import SAMPLE
from support.reference_segmentors import (
    ReferenceSegmentor,
    ReferenceSetup,
    class_file,
    exact_ties,
    prediction,
    query_features,
)

from maskclip_core.benchmark.scoring import BenchmarkParameters, build_labeler
from maskclip_core.benchmark.suites import get_suite, list_samples, load_image, to_ground_truth_ids
from maskclip_core.teacher import labeler as teacher_labeler
from maskclip_core.teacher.proxy import ProxyBundle

PHOTOS = ("000000000139", "000000000285", "000000000724")
SUITES = ("voc21", "voc20", "coco-object")
MIN_AGREEMENT = 0.9999

# The references' configs (configs/cfg_*.py and segmentor defaults), written out here so the protocol table is
# checked too: (short side, slide crop (0: whole image), stride, logit scale, prob_thd, area_thd) per suite.
_SCLIP_FRAMEWORK = {"voc21": (336, 224, 112, 40, 0.1, None), "voc20": (336, 224, 112, 40, 0.0, None)}
REFERENCE_CONFIGS = {
    "maskclip": {**_SCLIP_FRAMEWORK, "coco-object": (336, 224, 112, 40, 0.1, None)},
    "sclip": {
        "voc21": (336, 224, 112, 65, 0.1, 0.1),
        "voc20": (336, 224, 112, 40, 0.0, None),
        "coco-object": (336, 224, 112, 50, 0.1, None),
    },
    "naclip": {
        "voc21": (336, 0, 112, 40, 0.1, None),
        "voc20": (336, 0, 112, 40, 0.0, None),
        "coco-object": (336, 224, 112, 40, 0.1, None),
    },
    "clearclip": {
        "voc21": (448, 448, 224, 50, 0.5, None),
        "voc20": (448, 448, 224, 50, 0.0, None),
        "coco-object": (448, 448, 224, 50, 0.4, None),
    },
    "proxyclip": {
        "voc21": (336, 336, 112, 40, 0.2, None),
        "voc20": (336, 336, 112, 40, 0.0, None),
        "coco-object": (336, 336, 112, 40, 0.25, None),
    },
}
REFERENCE_CONFIGS["naclip-pamr"] = REFERENCE_CONFIGS["naclip"]
# Each repository's class files: SCLIP's (synonyms, 26 background words), ProxyCLIP's (plain names, its lists),
# ClearCLIP's (ProxyCLIP's names, background the one word).
NAME_TABLES = {"maskclip": "sclip", "sclip": "sclip", "naclip": "sclip", "naclip-pamr": "sclip"}
NAME_TABLES |= {"clearclip": "proxyclip", "proxyclip": "proxyclip"}


def _write_photo(path: Path, stem: str, odd: bool) -> tuple[int, int]:
    with Image.open(SAMPLE / "val" / "images" / f"{stem}.jpg") as im:
        photo = im.convert("RGB").resize((im.width // 2, im.height // 2), Image.BILINEAR)
    if odd:
        photo = photo.crop((0, 0, photo.width - 3, photo.height - 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    photo.save(path, quality=95)
    return photo.height, photo.width


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """VOC2012 and COCO-Object folders holding the three photos (label maps all background: not scored here)."""
    if not (SAMPLE / "val" / "images").is_dir():
        pytest.skip(f"the COCO sample is not at {SAMPLE}")
    root = tmp_path_factory.mktemp("reference-fixtures")
    voc, coco = root / "VOCdevkit/VOC2012", root / "coco_stuff164k"
    for i, stem in enumerate(PHOTOS):
        h, w = _write_photo(voc / "JPEGImages" / f"{stem}.jpg", stem, odd=i == 2)
        _write_photo(coco / "images/val2017" / f"{stem}.jpg", stem, odd=i == 2)
        label = Image.new("P", (w, h))
        (voc / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        label.save(voc / "SegmentationClass" / f"{stem}.png")
        (coco / "annotations/val2017").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((h, w), np.uint8)).save(coco / "annotations/val2017" / f"{stem}_instanceTrainIds.png")
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/val.txt").write_text("".join(f"{s}\n" for s in PHOTOS))
    return root


def _small_dino() -> ProxyBundle:
    """DINO's patch-8 ViT cut to 2 blocks with random weights: the B/8 proxy's arithmetic at CPU cost."""
    torch.manual_seed(5)
    model = timm.create_model(
        "vit_small_patch8_224.dino", pretrained=False, num_classes=0, dynamic_img_size=True, depth=2
    )
    return ProxyBundle.from_model(model, "vit_small_patch8_224.dino", "vit_small_patch8_224.dino/random-seed5")


def _reference_rows(method: str, suite_name: str) -> list[list[str]]:
    classes, background = get_suite(suite_name).queries(NAME_TABLES[method])
    if method == "clearclip" and background:
        background = ("background",)
    return class_file(classes, background)


_QUERY_FEATURES: dict[tuple[str, ...], torch.Tensor] = {}


def _compare(method: str, suite_name: str, data_root: Path, monkeypatch, short_side: int | None = None) -> dict:
    proxy = _small_dino() if method == "proxyclip" else None
    if proxy is not None:
        monkeypatch.setattr(teacher_labeler, "cached_proxy", lambda *a, **k: proxy)
    request = BenchmarkParameters(
        suites=[suite_name],
        data_root=str(data_root),
        method=method,
        model="maskclip-tiny-ViT",
        pretrained="none",
        seed=3,
        device="cpu",
        inference={"precision": "fp32", **({"short_side": short_side} if short_side else {})},
    )
    labeler = build_labeler(request, suite_name)
    short, crop, stride, scale, prob_thd, area_thd = REFERENCE_CONFIGS[method][suite_name]
    short = short_side or short
    assert request.settings(suite_name).prob_threshold == prob_thd
    setup = ReferenceSetup(
        method="naclip" if method == "naclip-pamr" else method,
        short_side=short,
        slide_crop=crop,
        slide_stride=stride,
        logit_scale=scale,
        area_thd=area_thd,
        pamr_steps=10 if method == "naclip-pamr" else 0,
    )
    rows = _reference_rows(method, suite_name)
    words = tuple(w for row in rows for w in row)
    if words not in _QUERY_FEATURES:  # the same seed's text encoder for every method: encoded once per table
        _QUERY_FEATURES[words] = query_features(labeler.bundle.model, labeler.bundle.tokenizer, list(words))
    features = _QUERY_FEATURES[words]
    reference = ReferenceSegmentor(setup, labeler.bundle.model, rows, features, proxy.model if proxy else None)
    suite = get_suite(suite_name)
    counts = {"pixels": 0, "ties": 0, "differ": {}, "differ_at_ties": 0, "classes": set()}
    for sample in list_samples(suite, data_root):
        image = load_image(sample.image)
        [result] = labeler.label([image])
        probs = reference.class_probabilities(image)
        ties = exact_ties(probs)
        counts["pixels"] += image.shape[0] * image.shape[1]
        counts["ties"] += int(ties.sum())
        for threshold in sorted({prob_thd, 0.0}):
            ours = to_ground_truth_ids(suite, result.labels, result.confidence, threshold)
            theirs = prediction(probs, threshold)
            differ = ours != theirs
            counts["differ"][threshold] = counts["differ"].get(threshold, 0) + int((differ & ~ties).sum())
            counts["differ_at_ties"] += int((differ & ties).sum())
            if threshold == 0.0:
                counts["classes"] |= set(np.unique(theirs).tolist())
    return counts


# NACLIP's PAMR (every query map through 16 shifts, 10 times, in both rewrites) costs a minute per suite on two
# shared cores: VOC21 (56 queries, background words, the whole image, a threshold) checks its arithmetic.
CASES = [(m, s) for m in ("maskclip", "sclip", "naclip", "clearclip", "proxyclip") for s in SUITES]
CASES.insert(6, ("naclip-pamr", "voc21"))


@pytest.mark.parametrize(("method", "suite_name"), CASES)
def test_benchmark_path_gives_the_reference_label_map(method, suite_name, data_root, monkeypatch) -> None:
    counts = _compare(method, suite_name, data_root, monkeypatch)
    agreement = {t: 1 - d / counts["pixels"] for t, d in counts["differ"].items()}
    record = {"method": method, "suite": suite_name, "pixels": counts["pixels"], "exact_ties": counts["ties"]}
    record["differ_at_ties"] = counts["differ_at_ties"]  # both thresholds
    record |= {"agreement": agreement, "classes_at_threshold_0": len(counts["classes"])}
    print(json.dumps(record))
    if os.environ.get("REFERENCE_AGREEMENT_LOG"):  # the numbers for a closing note
        with open(os.environ["REFERENCE_AGREEMENT_LOG"], "a") as f:
            f.write(json.dumps(record) + "\n")
    assert len(counts["classes"]) >= 3, f"degenerate fixture: classes {sorted(counts['classes'])}"
    assert min(agreement.values()) >= MIN_AGREEMENT, record


def test_clearclip_pads_a_window_smaller_than_the_crop_centred(data_root, monkeypatch) -> None:
    """Short side 200 under ClearCLIP's 448 crop: one window per image, its sides (200 x 267 ...) no multiple of
    16, padded centred to whole patches and cut back, as its ``compute_padsize``."""
    counts = _compare("clearclip", "voc20", data_root, monkeypatch, short_side=200)
    assert len(counts["classes"]) >= 3
    assert 1 - counts["differ"][0.0] / counts["pixels"] >= MIN_AGREEMENT, counts
