"""filter_labels on planted predictions whose right answer is known, plus a slow reference on random ones."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import ndimage

from maskclip_core.labeling.filter import ClassThresholds, FilterConfig, Region, filter_labels
from maskclip_core.types import IGNORE_INDEX, SegmentationResult

# Only the step under test is active unless a test says otherwise.
OFF = {"min_confidence": 0.0, "min_region_area": 0, "min_region_confidence": 0.0, "min_labeled_fraction": 0.0}


def result(labels: np.ndarray, conf: np.ndarray | float, names: tuple[str, ...], dropped=None) -> SegmentationResult:
    labels = np.asarray(labels, dtype=np.int64)
    conf = np.broadcast_to(np.asarray(conf, dtype=np.float32), labels.shape).copy()
    k = len(names)
    return SegmentationResult(
        labels=labels,
        confidence=conf,
        class_scores=np.ones(k, np.float32),
        dropped=np.zeros(k, bool) if dropped is None else np.asarray(dropped, bool),
        class_names=names,
    )


def config(**kwargs) -> FilterConfig:
    return FilterConfig(**{**OFF, **kwargs})


# --- step 1: pixel confidence ------------------------------------------------------------------------


def test_low_confidence_pixels_become_ignore() -> None:
    labels = np.zeros((10, 10), np.int64)
    conf = np.full((10, 10), 0.9, np.float32)
    conf[2:4, 5:7] = 0.4
    conf[0, 0] = 0.5  # exactly the threshold: kept
    out = filter_labels(result(labels, conf, ("a",)), config(min_confidence=0.5))
    expected = np.zeros((10, 10), np.uint8)
    expected[2:4, 5:7] = IGNORE_INDEX
    np.testing.assert_array_equal(out.labels, expected)
    assert out.labels.dtype == np.uint8
    assert out.reason_counts["low_confidence"] == 4
    assert out.regions == [Region(0, "a", 96, pytest.approx((95 * 0.9 + 0.5) / 96, rel=1e-6))]


def test_nan_confidence_is_ignored() -> None:
    conf = np.full((4, 4), 0.9, np.float32)
    conf[1, 1] = np.nan
    out = filter_labels(result(np.zeros((4, 4)), conf, ("a",)), config(min_confidence=0.1))
    assert out.labels[1, 1] == IGNORE_INDEX and (out.labels != IGNORE_INDEX).sum() == 15
    assert np.isfinite(out.regions[0].mean_confidence)


def test_per_class_min_confidence_override() -> None:
    labels = np.array([[0, 0, 1, 1]])
    conf = np.array([[0.4, 0.9, 0.4, 0.9]])
    cfg = config(min_confidence=0.5, per_class={"sky": ClassThresholds(min_confidence=0.3)})
    out = filter_labels(result(labels, conf, ("cat", "sky")), cfg)
    np.testing.assert_array_equal(out.labels, [[IGNORE_INDEX, 0, 1, 1]])


def test_unknown_class_override_is_harmless() -> None:
    cfg = config(per_class={"unicorn": {"min_confidence": 0.99}})
    out = filter_labels(result(np.zeros((2, 2)), 0.9, ("a",)), cfg)
    assert (out.labels == 0).all()


# --- step 2: connected components ----------------------------------------------------------------------


def test_small_components_removed_per_component_not_per_class() -> None:
    labels = np.zeros((30, 30), np.int64)
    labels[1:4, 1:4] = 1  # 9 px blob of class 1
    labels[10:20, 10:20] = 1  # 100 px blob of class 1
    out = filter_labels(result(labels, 0.9, ("bg", "thing")), config(min_region_area=64))
    assert (out.labels[1:4, 1:4] == IGNORE_INDEX).all()
    assert (out.labels[10:20, 10:20] == 1).all()
    assert out.reason_counts["small_region"] == 9
    assert [r.area for r in out.regions] == [900 - 109, 100]


def test_components_are_eight_connected() -> None:
    labels = np.zeros((12, 12), np.int64)
    labels[0:4, 0:4] = 1
    labels[4:8, 4:8] = 1  # touches the first block only at a corner
    out = filter_labels(result(labels, 0.9, ("bg", "x")), config(min_region_area=20))
    assert (out.labels == labels).all()  # 32 px together; 16 each if 4-connected


def test_components_do_not_merge_across_classes() -> None:
    labels = np.zeros((10, 10), np.int64)
    labels[:, 5:] = 1
    labels[0:2, 4] = 2  # two px of class 2 next to both 0 and 1
    out = filter_labels(result(labels, 0.9, ("a", "b", "c")), config(min_region_area=3))
    assert (out.labels[0:2, 4] == IGNORE_INDEX).all()
    assert out.reason_counts["small_region"] == 2


def test_min_region_area_override_per_class() -> None:
    labels = np.zeros((10, 10), np.int64)
    labels[0:2, 0:2] = 1
    labels[5:7, 5:7] = 2
    cfg = config(min_region_area=5, per_class={"keep-small": ClassThresholds(min_region_area=0)})
    out = filter_labels(result(labels, 0.9, ("bg", "drop-small", "keep-small")), cfg)
    assert (out.labels[0:2, 0:2] == IGNORE_INDEX).all()
    assert (out.labels[5:7, 5:7] == 2).all()


def test_components_counted_after_pixel_confidence() -> None:
    labels = np.ones((1, 10), np.int64)
    conf = np.full((1, 10), 0.9)
    conf[0, 3] = 0.1  # splits the run into 3 px and 6 px
    out = filter_labels(result(labels, conf, ("a", "b")), config(min_confidence=0.5, min_region_area=4))
    np.testing.assert_array_equal(out.labels[0], [255, 255, 255, 255, 1, 1, 1, 1, 1, 1])


# --- step 3: region confidence ------------------------------------------------------------------------


def test_weak_class_dropped_on_mean_of_remaining_pixels() -> None:
    labels = np.zeros((4, 10), np.int64)
    labels[:, 5:] = 1
    conf = np.zeros((4, 10))
    conf[:, :5] = 0.55  # class 0 mean 0.55 < 0.6: dropped
    conf[:, 5:7] = 0.45  # class 1 has low pixels (ignored by step 1) ...
    conf[:, 7:] = 0.62  # ... and its remaining mean is 0.62, although its mean before step 1 was < 0.6
    cfg = config(min_confidence=0.5, min_region_confidence=0.6)
    out = filter_labels(result(labels, conf, ("weak", "strong")), cfg)
    assert (out.labels[:, :7] == IGNORE_INDEX).all() and (out.labels[:, 7:] == 1).all()
    assert out.weak_classes == ["weak"]
    assert out.regions == [Region(1, "strong", 12, pytest.approx(0.62, rel=1e-6))]
    assert out.reason_counts == {
        "denoised_class": 0,
        "low_confidence": 8,
        "small_region": 0,
        "weak_region": 20,
        "kept": 12,
        "total": 40,
    }


def test_min_region_confidence_override() -> None:
    labels = np.array([[0, 1]])
    cfg = config(min_region_confidence=0.8, per_class={"b": {"min_region_confidence": 0.5}})
    out = filter_labels(result(labels, 0.7, ("a", "b")), cfg)
    np.testing.assert_array_equal(out.labels, [[IGNORE_INDEX, 1]])


def test_denoised_classes_are_ignored() -> None:
    labels = np.array([[0, 1, 2]])
    out = filter_labels(result(labels, 0.9, ("a", "b", "c"), dropped=[False, True, False]), config())
    np.testing.assert_array_equal(out.labels, [[0, IGNORE_INDEX, 2]])
    assert out.reason_counts["denoised_class"] == 1


# --- step 4: image rejection --------------------------------------------------------------------------


def test_image_rejected_below_labeled_fraction() -> None:
    labels = np.zeros((1, 1000), np.int64)
    conf = np.zeros((1, 1000))
    conf[0, :31] = 0.9
    out = filter_labels(result(labels, conf, ("a",)), config(min_confidence=0.5, min_labeled_fraction=0.05))
    assert out.labeled_fraction == pytest.approx(0.031)
    assert out.rejection == "low_labeled_fraction: 0.031 < 0.050"
    assert not out.accepted
    assert (out.labels[0, :31] == 0).all()  # the label map still shows what survived


def test_image_accepted_at_labeled_fraction() -> None:
    labels = np.zeros((1, 100), np.int64)
    conf = np.where(np.arange(100) < 5, 0.9, 0.1)[None]
    out = filter_labels(result(labels, conf, ("a",)), config(min_confidence=0.5, min_labeled_fraction=0.05))
    assert out.accepted and out.labeled_fraction == 0.05


def test_defaults_on_a_clean_image() -> None:
    labels = np.zeros((64, 64), np.int64)
    labels[:, 32:] = 1
    out = filter_labels(result(labels, 0.8, ("road", "sky")), FilterConfig())
    assert out.accepted and out.labeled_fraction == 1.0
    assert [(r.class_name, r.area) for r in out.regions] == [("road", 2048), ("sky", 2048)]


# --- input checks ---------------------------------------------------------------------------------


def test_too_many_classes() -> None:
    names = tuple(f"c{i}" for i in range(256))
    with pytest.raises(ValueError, match="255"):
        filter_labels(result(np.zeros((2, 2)), 0.9, names), config())


def test_255_classes_fit_and_ignore_input_is_respected() -> None:
    names = tuple(f"c{i}" for i in range(255))
    labels = np.array([[0, 254, IGNORE_INDEX]])
    out = filter_labels(result(labels, 0.9, names), config())
    np.testing.assert_array_equal(out.labels, [[0, 254, IGNORE_INDEX]])


@pytest.mark.parametrize("bad", [-1, 3, 300])
def test_out_of_range_labels_raise(bad: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        filter_labels(result(np.array([[0, bad]]), 0.9, ("a", "b", "c")), config())


def test_shape_mismatch_raises() -> None:
    r = result(np.zeros((2, 2)), 0.9, ("a",))
    r.confidence = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="shape"):
        filter_labels(r, config())


def test_input_is_not_modified() -> None:
    labels = np.zeros((8, 8), np.int64)
    labels[0, 0] = 1
    r = result(labels, 0.2, ("a", "b"))
    before = r.labels.copy()
    filter_labels(r, FilterConfig())
    np.testing.assert_array_equal(r.labels, before)


# --- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"min_confidence": 1.5},
        {"min_confidence": -0.1},
        {"min_region_area": -1},
        {"min_region_confidence": 2},
        {"min_labeled_fraction": -1},
        {"per_class": {"a": {"min_confidence": 7}}},
        {"per_class": {"a": {"typo": 1}}},
        {"unknown": 1},
    ],
)
def test_config_bounds(bad: dict) -> None:
    with pytest.raises(ValidationError):
        FilterConfig(**bad)


def test_config_schema_has_descriptions_and_bounds() -> None:
    schema = FilterConfig.model_json_schema()
    props = schema["properties"]
    assert props["min_confidence"]["maximum"] == 1.0 and props["min_confidence"]["minimum"] == 0.0
    assert all(props[name].get("description") for name in props)
    assert FilterConfig.model_validate_json(FilterConfig().model_dump_json()) == FilterConfig()


# --- against a slow, obvious reference -----------------------------------------------------------------


def reference_filter(r: SegmentationResult, cfg: FilterConfig) -> np.ndarray:
    lab = r.labels.astype(np.int64).copy()
    conf = r.confidence
    for c, name in enumerate(r.class_names):
        o = cfg.per_class.get(name, ClassThresholds())
        t_conf = cfg.min_confidence if o.min_confidence is None else o.min_confidence
        lab[(r.labels == c) & ~(conf >= t_conf)] = IGNORE_INDEX
    for c, name in enumerate(r.class_names):
        o = cfg.per_class.get(name, ClassThresholds())
        t_area = cfg.min_region_area if o.min_region_area is None else o.min_region_area
        comps, n = ndimage.label(lab == c, structure=np.ones((3, 3)))
        for i in range(1, n + 1):
            if (comps == i).sum() < t_area:
                lab[comps == i] = IGNORE_INDEX
    for c, name in enumerate(r.class_names):
        o = cfg.per_class.get(name, ClassThresholds())
        t_reg = cfg.min_region_confidence if o.min_region_confidence is None else o.min_region_confidence
        m = lab == c
        if m.any() and conf[m].astype(np.float64).mean() < t_reg:
            lab[m] = IGNORE_INDEX
    return lab.astype(np.uint8)


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_on_random_predictions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 7))
    coarse = rng.integers(0, k, (12, 16))
    labels = np.kron(coarse, np.ones((5, 5), np.int64))  # blobs of 25 px and their unions
    labels = np.where(rng.random(labels.shape) < 0.05, rng.integers(0, k, labels.shape), labels)
    conf = rng.random(labels.shape).astype(np.float32) * 0.6 + rng.random(k)[labels].astype(np.float32) * 0.4
    names = tuple(f"class{i}" for i in range(k))
    cfg = FilterConfig(
        min_confidence=0.3,
        min_region_area=int(rng.integers(2, 40)),
        min_region_confidence=0.45,
        per_class={"class1": ClassThresholds(min_confidence=0.5, min_region_area=5)},
    )
    out = filter_labels(result(labels, conf, names), cfg)
    expected = reference_filter(result(labels, conf, names), cfg)
    np.testing.assert_array_equal(out.labels, expected)
    counts = np.bincount(expected.ravel(), minlength=256)
    assert [(r.class_index, r.area) for r in out.regions] == [(c, int(counts[c])) for c in range(k) if counts[c]]
    assert out.labeled_fraction == pytest.approx(counts[:k].sum() / expected.size)
    assert filter_labels(result(labels, conf, names), cfg).labels.tobytes() == out.labels.tobytes()


def test_large_image_is_fast() -> None:
    rng = np.random.default_rng(0)
    h, w, k = 3000, 4000, 20
    coarse = rng.integers(0, k, (h // 100, w // 100))
    labels = np.kron(coarse, np.ones((100, 100), np.int64))
    conf = rng.random((h, w), dtype=np.float32)
    r = result(labels, conf, tuple(f"c{i}" for i in range(k)))
    start = time.perf_counter()
    out = filter_labels(r, FilterConfig(min_confidence=0.2, min_region_area=64, min_region_confidence=0.3))
    elapsed = time.perf_counter() - start
    assert out.labels.shape == (h, w) and len(out.regions) == k
    assert elapsed < 10.0, f"{elapsed:.1f} s for a 12 Mpx image"
