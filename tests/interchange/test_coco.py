"""COCO export / import, end to end: predictions -> filter -> RLE -> store -> COCO JSON -> masks."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskclip_core.dataset.ids import image_id_from_sha256
from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.interchange.coco import build_coco_dict, export_coco, load_coco_annotations
from maskclip_core.labeling.annotations import encode_annotations
from maskclip_core.labeling.filter import FilterConfig, FilteredLabels, filter_labels
from maskclip_core.storage.fs import read_bytes
from maskclip_core.types import IGNORE_INDEX, SegmentationResult

COCO_SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco-sample"
CLASSES = ("road", "sky", "tree", "car")
FILTER = FilterConfig(min_confidence=0.4, min_region_area=20, min_region_confidence=0.5, min_labeled_fraction=0.2)
T0 = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)


def prediction(seed: int, h: int, w: int) -> SegmentationResult:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, len(CLASSES), (h // 8 + 1, w // 8 + 1))
    labels = np.kron(coarse, np.ones((8, 8), np.int64))[:h, :w]
    conf = (0.3 + 0.7 * rng.random((h, w))).astype(np.float32)
    return SegmentationResult(labels, conf, np.ones(4, np.float32), np.zeros(4, bool), CLASSES)


def quiet_coco(path_or_dataset: str | dict) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(path_or_dataset, str):
            return COCO(path_or_dataset)
        coco = COCO()
        coco.dataset = path_or_dataset
        coco.createIndex()
        return coco


def label_and_store(store: LabelDataset) -> dict[str, FilteredLabels]:
    """Run the data path for a few synthetic images; return the accepted filtered labels by uri."""
    category_ids = store.ensure_categories([(c, []) for c in CLASSES])
    cat_list = [category_ids[c] for c in CLASSES]
    sizes = [(40, 56), (33, 71), (64, 48), (24, 24)]
    rows, anns, accepted = [], [], {}
    for i, (h, w) in enumerate(sizes):
        result = prediction(i, h, w)
        if i == 3:
            result.confidence[:] = 0.1  # nothing survives: rejected
        filtered = filter_labels(result, FILTER)
        digest = hashlib.sha256(f"image-{i}".encode()).hexdigest()
        image_id = image_id_from_sha256(digest)
        uri = f"/photos/set{i % 2}/img{i}.jpg"
        labeling_id = f"lab-{i}"
        status = "labeled" if filtered.accepted else "rejected"
        rows.append(
            {"image_id": image_id, "uri": uri, "sha256": digest, "width": w, "height": h, "status": status,
             "reason": filtered.rejection, "config_hash": "cfg", "labeling_id": labeling_id,
             "labeler": "maskclip", "round": 0, "created_at": T0}
        )  # fmt: skip
        if filtered.accepted:
            anns += encode_annotations(
                filtered, category_ids=cat_list, image_id=image_id, labeling_id=labeling_id,
                labeler="maskclip", round=0,
            )  # fmt: skip
            accepted[uri] = filtered
    store.write_batch(rows, anns, part_name="b0")
    assert len(accepted) == 3
    return accepted


@pytest.fixture(params=["local", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[LabelDataset, str]:
    """A store and an export destination on the same backend."""
    if request.param == "local":
        return LabelDataset(str(tmp_path / "out")), str(tmp_path / "exports" / "coco.json")
    server = request.getfixturevalue("s3_server")
    url = server.fresh_url()
    return LabelDataset(f"{url}/out", server.storage_options), f"{url}/exports/coco.json"


def test_end_to_end_export_decodes_to_filtered_labels(target: tuple[LabelDataset, str], tmp_path: Path) -> None:
    store, destination = target
    accepted = label_and_store(store)
    summary = export_coco(store, destination)
    assert summary["images"] == 3 and summary["categories"] == len(CLASSES)

    local_copy = tmp_path / "downloaded.json"
    local_copy.write_bytes(read_bytes(destination, store.storage_options))
    coco = quiet_coco(str(local_copy))  # the standard loader accepts the file
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == set(CLASSES)
    index_of = {c["id"]: CLASSES.index(c["name"]) for c in coco.dataset["categories"]}
    assert len(coco.getImgIds()) == 3
    for img in coco.loadImgs(coco.getImgIds()):
        filtered = accepted[img["coco_url"]]
        assert (img["height"], img["width"]) == filtered.labels.shape
        painted = np.full(filtered.labels.shape, IGNORE_INDEX, np.uint8)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        assert len(anns) == len(filtered.regions)
        for ann in anns:
            mask = coco.annToMask(ann).astype(bool)
            assert not (painted[mask] != IGNORE_INDEX).any()
            painted[mask] = index_of[ann["category_id"]]
            assert ann["iscrowd"] == 0 and ann["area"] == mask.sum() and 0 < ann["score"] <= 1
        np.testing.assert_array_equal(painted, filtered.labels)

    # The import path reads the same file back into the same label maps.
    loaded = load_coco_annotations(str(local_copy))
    assert loaded.category_to_index == index_of  # position in id order == class index on a fresh store
    for img, label_map in loaded:
        np.testing.assert_array_equal(label_map, accepted[img["coco_url"]].labels)


def test_export_works_as_detections_for_cocoeval(tmp_path: Path) -> None:
    store = LabelDataset(str(tmp_path / "out"))
    label_and_store(store)
    coco_dict = build_coco_dict(store)
    gt = quiet_coco(coco_dict)
    with contextlib.redirect_stdout(io.StringIO()):
        dt_ = gt.loadRes([dict(a) for a in coco_dict["annotations"]])  # RLE results with scores
        ev = COCOeval(gt, dt_, "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)  # identical masks: perfect AP


def test_coco_dict_contents_and_filters(tmp_path: Path) -> None:
    store = LabelDataset(str(tmp_path / "out"))
    label_and_store(store)
    coco = build_coco_dict(store, file_name_root="/photos", info={"description": "test set"})
    assert coco["info"]["description"] == "test set" and coco["licenses"] == []
    assert sorted(i["file_name"] for i in coco["images"]) == [
        "set0/img0.jpg",
        "set0/img2.jpg",
        "set1/img1.jpg",
    ]
    assert [c["name"] for c in coco["categories"]] == list(CLASSES)
    assert all(set(c) == {"id", "name", "supercategory"} for c in coco["categories"])
    ann = coco["annotations"][0]
    assert set(ann) == {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd", "score"}
    assert isinstance(ann["segmentation"]["counts"], str)
    json.dumps(coco)

    one = coco["images"][0]["id"]
    subset = build_coco_dict(store, image_ids=[one])
    assert [i["id"] for i in subset["images"]] == [one]
    assert {a["image_id"] for a in subset["annotations"]} == {one}
    assert build_coco_dict(store, config_hash="nope")["images"] == []
    plain = build_coco_dict(store)
    assert sorted(i["file_name"] for i in plain["images"]) == ["img0.jpg", "img1.jpg", "img2.jpg"]


def test_coco_dict_from_tables_and_config_clash(tmp_path: Path) -> None:
    store = LabelDataset(str(tmp_path / "out"))
    label_and_store(store)
    images = store.images()
    tables = (images, store.annotations(), store.categories())
    from_tables = build_coco_dict(tables)
    from_store = build_coco_dict(store)
    for key in ("images", "annotations", "categories"):  # the order of annotations carries no meaning
        assert sorted(from_tables[key], key=lambda x: x["id"]) == sorted(from_store[key], key=lambda x: x["id"])

    # The same image under a second config: two current rows with one image_id.
    row = {k: v for k, v in images.slice(0, 1).to_pylist()[0].items()}
    row.update(config_hash="cfg2", labeling_id="other", status="labeled")
    store.write_batch([row], [], part_name="b1")
    with pytest.raises(ValueError, match="config_hash"):
        build_coco_dict(store)
    assert len(build_coco_dict(store, config_hash="cfg2")["images"]) == 1


# --- import of foreign COCO files -------------------------------------------------------------------


def test_load_polygons_crowd_rle_and_unmapped_categories(tmp_path: Path) -> None:
    dataset = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 10, "height": 8}, {"id": 3, "file_name": "b.jpg",
                    "width": 4, "height": 4}],
        "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}, {"id": 11, "name": "ufo"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 5, "iscrowd": 0,
             "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]},
            {"id": 2, "image_id": 7, "category_id": 9, "iscrowd": 1,
             "segmentation": {"counts": [56, 8, 16], "size": [8, 10]}},  # column 7 set
            {"id": 3, "image_id": 7, "category_id": 11, "iscrowd": 0,
             "segmentation": [[8, 0, 10, 0, 10, 2, 8, 2]]},
            {"id": 4, "image_id": 7, "category_id": 5, "iscrowd": 0, "segmentation": []},  # no shape: skipped
        ],
    }  # fmt: skip
    path = tmp_path / "foreign.json"
    path.write_text(json.dumps(dataset))
    loaded = load_coco_annotations(str(path), category_to_index={5: 0, 9: 1})
    assert [img["id"] for img in loaded.images] == [3, 7] and len(loaded) == 2
    a = loaded.label_map(7)
    assert a.shape == (8, 10)
    assert (a[:4, :4] == 0).all() and (a[:, 7] == 1).all()
    assert (a[:2, 8:] == IGNORE_INDEX).all()  # "ufo" is not mapped
    assert (loaded.label_map(3) == IGNORE_INDEX).all()  # no annotations
    assert load_coco_annotations(str(path)).category_to_index == {5: 0, 9: 1, 11: 2}


def test_load_overlapping_instances(tmp_path: Path) -> None:
    square = [[0, 0, 4, 0, 4, 4, 0, 4]]
    shifted = [[2, 2, 6, 2, 6, 6, 2, 6]]
    dataset = {
        "images": [{"id": 1, "file_name": "x.jpg", "width": 8, "height": 8}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": square},
            {"id": 2, "image_id": 1, "category_id": 2, "iscrowd": 0, "segmentation": shifted},
        ],
    }
    path = tmp_path / "overlap.json"
    path.write_text(json.dumps(dataset))
    with pytest.raises(ValueError, match="overlaps"):
        load_coco_annotations(str(path)).label_map(1)
    out = load_coco_annotations(str(path), overlap="ignore").label_map(1)
    assert out[1, 1] == 0 and out[5, 5] == 1 and out[3, 3] == IGNORE_INDEX


def test_load_real_coco_sample() -> None:
    path = COCO_SAMPLE / "train" / "annotations.json"
    if not path.is_file():
        pytest.skip("coco-sample data not available")
    identity = {c["id"]: c["id"] for c in json.loads(path.read_text())["categories"]}
    loaded = load_coco_annotations(str(path), category_to_index=identity)
    assert len(loaded) == 100
    for img, label_map in list(loaded)[:15]:
        png = np.array(Image.open(COCO_SAMPLE / "train" / "masks-coco" / (Path(img["file_name"]).stem + ".png")))
        np.testing.assert_array_equal(label_map, np.where(png == 0, IGNORE_INDEX, png))
