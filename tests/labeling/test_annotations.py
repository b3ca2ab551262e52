"""Label maps <-> COCO RLE records: exact round trips on synthetic and real (coco-sample) masks."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskclip_core.dataset.ids import image_id_from_sha256, stable_id
from maskclip_core.dataset.rle import annotations_to_label_map, segmentation_to_mask
from maskclip_core.labeling.annotations import encode_annotations
from maskclip_core.labeling.filter import FilterConfig, Region, filter_labels
from maskclip_core.types import IGNORE_INDEX, SegmentationResult

COCO_SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco-sample"


def regions_of(labels: np.ndarray, names: list[str] | None = None) -> list[Region]:
    counts = np.bincount(labels.ravel(), minlength=256)
    return [
        Region(int(c), names[c] if names else str(c), int(counts[c]), 0.5 + c / 1000)
        for c in np.flatnonzero(counts[:IGNORE_INDEX])
    ]


# --- ids -----------------------------------------------------------------------------------------


def test_stable_id_is_first_53_bits_of_sha256() -> None:
    first64 = int.from_bytes(hashlib.sha256(b"lab-1\x1f7").digest()[:8], "big")
    assert stable_id("lab-1", 7) == first64 >> 11
    assert stable_id("lab-1", 7) == stable_id("lab-1", "7")
    assert stable_id("lab-1", 7, bits=63) == first64 >> 1  # datasets of format 1 and 2


def test_stable_id_range_and_separation() -> None:
    ids = {stable_id("labeling", i) for i in range(5000)}
    assert len(ids) == 5000
    assert all(0 <= i < 2**53 for i in ids)  # exact as a JavaScript Number
    assert all(float(i) == i for i in ids)
    assert stable_id("ab", "c") != stable_id("a", "bc")
    assert stable_id("a", "b") != stable_id("b", "a")


def test_image_id_from_sha256() -> None:
    digest = hashlib.sha256(b"image bytes").hexdigest()
    assert image_id_from_sha256(digest) == int(digest[:16], 16) >> 11
    assert image_id_from_sha256("f" * 64) == 2**53 - 1  # Number.MAX_SAFE_INTEGER
    assert image_id_from_sha256("f" * 64, 63) == 2**63 - 1
    assert image_id_from_sha256(digest, 63) == int(digest[:16], 16) >> 1
    with pytest.raises(ValueError):
        image_id_from_sha256("abc")
    with pytest.raises(ValueError, match="1..63 bits"):
        image_id_from_sha256(digest, 64)


# --- encoding ---------------------------------------------------------------------------------------


def test_encode_record_fields() -> None:
    labels = np.full((6, 8), IGNORE_INDEX, np.uint8)
    labels[1:3, 2:5] = 0
    labels[4, 7] = 2
    labels[5, 0] = 2  # one class, two separate parts: still one record
    regions = [Region(0, "a", 6, 0.8), Region(2, "c", 2, 0.7)]
    recs = encode_annotations(
        (labels, regions), category_ids=[11, 12, 13], image_id=99, labeling_id="L", labeler="maskclip", round=0
    )
    assert [r["category_id"] for r in recs] == [11, 13]
    a, c = recs
    assert a["id"] == stable_id("L", 11) and c["id"] == stable_id("L", 13)
    assert a["image_id"] == 99 and a["labeling_id"] == "L" and a["iscrowd"] == 0
    assert a["labeler"] == "maskclip" and a["round"] == 0
    assert isinstance(a["segmentation"]["counts"], str) and a["segmentation"]["size"] == [6, 8]
    assert a["area"] == 6 and a["bbox"] == [2.0, 1.0, 3.0, 2.0]
    assert c["area"] == 2 and c["bbox"] == [0.0, 4.0, 8.0, 2.0]
    assert a["score"] == pytest.approx(0.8)
    json.dumps(recs)  # plain JSON types only


def test_encode_skips_regions_absent_from_the_map() -> None:
    labels = np.zeros((4, 4), np.uint8)
    recs = encode_annotations(
        (labels, [Region(0, "a", 16, 0.9), Region(1, "b", 3, 0.9)]),
        category_ids=[1, 2],
        image_id=1,
        labeling_id="L",
        labeler="s",
        round=1,
    )
    assert [r["category_id"] for r in recs] == [1]


@pytest.mark.parametrize("seed", range(5))
def test_random_label_maps_round_trip_exactly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(1, 90)), int(rng.integers(1, 90))
    k = int(rng.integers(1, 12))
    labels = rng.integers(0, k, (h, w)).astype(np.uint8)
    labels[rng.random((h, w)) < 0.3] = IGNORE_INDEX
    category_ids = [1000 + 3 * i for i in range(k)]
    recs = encode_annotations(
        (labels, regions_of(labels)),
        category_ids=category_ids,
        image_id=5,
        labeling_id="x",
        labeler="s",
        round=0,
    )
    back = annotations_to_label_map(recs, h, w, {cid: i for i, cid in enumerate(category_ids)})
    np.testing.assert_array_equal(back, labels)
    for rec in recs:
        mask = labels == category_ids.index(rec["category_id"])
        ys, xs = np.nonzero(mask)
        assert rec["area"] == mask.sum()
        assert rec["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_filtered_labels_round_trip() -> None:
    rng = np.random.default_rng(3)
    labels = np.kron(rng.integers(0, 4, (6, 8)), np.ones((10, 10), np.int64))
    conf = rng.random(labels.shape).astype(np.float32)
    result = SegmentationResult(labels, conf, np.ones(4, np.float32), np.zeros(4, bool), ("a", "b", "c", "d"))
    filtered = filter_labels(result, FilterConfig(min_confidence=0.3, min_region_area=5, min_region_confidence=0.4))
    recs = encode_annotations(filtered, category_ids=[1, 2, 3, 4], image_id=1, labeling_id="L", labeler="m", round=0)
    assert [r["score"] for r in recs] == pytest.approx([r.mean_confidence for r in filtered.regions])
    back = annotations_to_label_map(recs, 60, 80, {1: 0, 2: 1, 3: 2, 4: 3})
    np.testing.assert_array_equal(back, filtered.labels)


# --- decoding --------------------------------------------------------------------------------------


def test_overlapping_masks_raise_or_become_ignore() -> None:
    a = np.zeros((4, 4), np.uint8)
    a[:2] = 1
    b = np.zeros((4, 4), np.uint8)
    b[1:3] = 1
    recs = [
        {"id": 1, "category_id": 1, "segmentation": encode_mask(a)},
        {"id": 2, "category_id": 2, "segmentation": encode_mask(b)},
    ]
    with pytest.raises(ValueError, match="overlaps"):
        annotations_to_label_map(recs, 4, 4, {1: 0, 2: 1})
    out = annotations_to_label_map(recs, 4, 4, {1: 0, 2: 1}, overlap="ignore")
    np.testing.assert_array_equal(out[:, 0], [0, IGNORE_INDEX, 1, IGNORE_INDEX])


def test_same_class_overlap_allowed_when_ignoring() -> None:
    a = np.zeros((3, 3), np.uint8)
    a[:2] = 1
    b = np.zeros((3, 3), np.uint8)
    b[1:] = 1
    recs = [{"category_id": 5, "segmentation": encode_mask(m)} for m in (a, b)]
    assert (annotations_to_label_map(recs, 3, 3, {5: 2}, overlap="ignore") == 2).all()


def test_unknown_category_and_bad_index_raise() -> None:
    rec = {"id": 1, "category_id": 9, "segmentation": encode_mask(np.ones((2, 2), np.uint8))}
    with pytest.raises(ValueError, match="no label index"):
        annotations_to_label_map([rec], 2, 2, {1: 0})
    with pytest.raises(ValueError, match="uint8"):
        annotations_to_label_map([rec], 2, 2, {9: 255})


def test_rle_size_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="size"):
        segmentation_to_mask(encode_mask(np.ones((2, 3), np.uint8)), 3, 2)


def test_uncompressed_rle_and_polygons() -> None:
    # Uncompressed RLE runs go column by column (Fortran order): 3 off, 3 on, 3 off = middle column.
    mask = segmentation_to_mask({"counts": [3, 3, 3], "size": [3, 3]}, 3, 3)
    np.testing.assert_array_equal(mask, [[0, 1, 0], [0, 1, 0], [0, 1, 0]])
    # Two polygon parts of one object are merged.
    square = [1, 1, 4, 1, 4, 4, 1, 4]
    other = [6, 6, 9, 6, 9, 9, 6, 9]
    poly = segmentation_to_mask([square, other], 10, 10)
    assert poly[2, 2] == 1 and poly[7, 7] == 1 and poly[5, 5] == 0 and poly[0, 0] == 0
    out = annotations_to_label_map([{"category_id": 3, "segmentation": [square]}], 10, 10, {3: 7})
    assert out[2, 2] == 7 and out[8, 8] == IGNORE_INDEX


def encode_mask(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"counts": rle["counts"].decode(), "size": list(rle["size"])}


# --- real masks ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coco_val() -> dict:
    path = COCO_SAMPLE / "val" / "annotations.json"
    if not path.is_file():
        pytest.skip("coco-sample data not available")
    return json.loads(path.read_text())


def test_real_coco_masks_round_trip(coco_val: dict) -> None:
    by_image: dict[int, list] = {}
    for ann in coco_val["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    identity = {c["id"]: c["id"] for c in coco_val["categories"]}
    for img in coco_val["images"][:12]:
        h, w = img["height"], img["width"]
        anns = by_image.get(img["id"], [])
        label_map = annotations_to_label_map(anns, h, w, identity)
        png = np.array(Image.open(COCO_SAMPLE / "val" / "masks-coco" / (Path(img["file_name"]).stem + ".png")))
        np.testing.assert_array_equal(label_map, np.where(png == 0, IGNORE_INDEX, png))

        # Our encoder, fed the dense map (class index == category id), reproduces it exactly ...
        recs = encode_annotations(
            (label_map, regions_of(label_map)),
            category_ids=list(range(256)),
            image_id=img["id"],
            labeling_id="gt",
            labeler="coco",
            round=0,
        )
        np.testing.assert_array_equal(annotations_to_label_map(recs, h, w, identity), label_map)
        # ... and for a category with a single segment its RLE string is the one pycocotools wrote.
        segments = Counter(a["category_id"] for a in anns)
        ours = {r["category_id"]: r for r in recs}
        for ann in anns:
            if segments[ann["category_id"]] == 1:
                assert ours[ann["category_id"]]["segmentation"]["counts"] == ann["segmentation"]["counts"]
                assert ours[ann["category_id"]]["area"] == ann["area"]
