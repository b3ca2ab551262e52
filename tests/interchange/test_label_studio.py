"""Label Studio export (tasks JSON, config XML), round trip through import, and export subset filters."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import fsspec
import numpy as np
import pytest
from label_studio_sdk.converter import brush
from support.coco_sample import SAMPLE, load_sample, require_sample

from maskclip_core.dataset.records import category_masks
from maskclip_core.interchange import (
    ExportImage,
    export_label_studio,
    filter_images,
    import_label_studio,
    label_map_from_annotations,
    label_studio_tasks,
    labeling_config,
    lowest_scored,
    mask_to_polygons,
    polygons_to_mask,
    resolve_classes,
)
from maskclip_core.interchange.label_studio import image_url


@pytest.fixture(scope="module")
def sample():
    require_sample()
    return load_sample(varied=True)


def as_label_studio_export(tasks: list[dict], source: str = "predictions") -> list[dict]:
    """What Label Studio's JSON export gives back after a reviewer submits the pre-annotations unchanged."""
    exported = []
    for i, task in enumerate(json.loads(json.dumps(tasks))):  # through JSON, as the file would be
        result = task.pop(source)[0]["result"]
        annotation = {"id": 100 + i, "completed_by": 1, "result": result, "was_cancelled": False}
        exported.append({"id": i + 1, **task, "annotations": [annotation], "predictions": []})
    return exported


def test_image_urls():
    assert image_url("s3://bucket/a b.jpg") == "s3://bucket/a b.jpg"
    assert image_url("https://host/x.jpg?sig=1") == "https://host/x.jpg?sig=1"
    assert image_url("/data/imgs/sub dir/a#1.jpg", "/data") == "/data/local-files/?d=imgs/sub%20dir/a%231.jpg"
    assert image_url("file:///data/imgs/a.jpg", "/data/") == "/data/local-files/?d=imgs/a.jpg"
    with pytest.raises(ValueError, match="outside"):
        image_url("/elsewhere/a.jpg", "/data")
    with pytest.raises(ValueError, match="document_root"):
        image_url("/data/a.jpg")


def test_config_xml_matches_results(sample):
    categories, images = sample
    for mode, tag, kind in (
        ("brush", "BrushLabels", "brushlabels"),
        ("polygon", "PolygonLabels", "polygonlabels"),
    ):
        root = ET.fromstring(labeling_config(categories, mode))
        image_tag = root.find("Image")
        control = root.find(tag)
        assert root.tag == "View" and image_tag.get("value") == "$image"
        assert control.get("toName") == image_tag.get("name")
        labels = [label.get("value") for label in control.findall("Label")]
        assert labels == [c["name"] for c in categories]
        colours = [label.get("background") for label in control.findall("Label")]
        assert len(set(colours)) == len(colours) and "#000000" not in colours
        task = label_studio_tasks(images[:1], categories, mode=mode, document_root=str(SAMPLE))[0]
        for r in task["predictions"][0]["result"]:
            assert (r["from_name"], r["to_name"], r["type"]) == (
                control.get("name"),
                image_tag.get("name"),
                kind,
            )
            assert r["value"][kind][0] in labels
    # names that need XML escaping survive
    odd = [{"id": 1, "name": 'a "b" & <c>', "synonyms": []}]
    assert ET.fromstring(labeling_config(odd)).find("BrushLabels/Label").get("value") == 'a "b" & <c>'


def test_task_shape(sample):
    categories, images = sample
    tasks = label_studio_tasks(images, categories, document_root=str(SAMPLE), model_version="mc-1")
    assert len(tasks) == len(images)
    for task, image in zip(tasks, images, strict=True):
        data = task["data"]
        assert data["image"] == f"/data/local-files/?d=train/images/{image.file_name}"
        assert data["image_id"] == str(image.image_id) and data["sha256"] == image.sha256
        assert (data["width"], data["height"]) == (image.width, image.height)
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == "mc-1" and 0.3 <= prediction["score"] <= 1.0
        results = prediction["result"]
        assert len(results) == len(image.annotations)  # one region per class
        assert len({r["id"] for r in results}) == len(results)
        for r in results:
            assert r["original_width"] == image.width and r["original_height"] == image.height
            assert r["image_rotation"] == 0 and r["value"]["format"] == "rle"
            assert all(isinstance(b, int) and 0 <= b <= 255 for b in r["value"]["rle"])
    json.dumps(tasks)  # JSON-able as is


def test_results_decode_with_official_sdk(sample):
    categories, images = sample
    names = {c["id"]: c["name"] for c in categories}
    task = label_studio_tasks(images[:3], categories, document_root=str(SAMPLE))
    for t, image in zip(task, images[:3], strict=True):
        # the SDK's converters read flattened results: value fields beside type / size fields
        flat = [{**r, **r["value"]} for r in t["predictions"][0]["result"]]
        layers = brush.decode_from_annotation("tag", flat)
        expected = category_masks(image)
        assert len(layers) == len(expected)
        for cid, mask in expected.items():
            np.testing.assert_array_equal(layers[f"tag-{names[cid]}-0"] != 0, mask)


def test_brush_round_trip_is_exact(sample):
    categories, images = sample
    tasks = label_studio_tasks(images, categories, document_root=str(SAMPLE))
    reviewed = import_label_studio(as_label_studio_export(tasks), categories)
    assert [r.image_id for r in reviewed] == [img.image_id for img in images]
    for r, image in zip(reviewed, images, strict=True):
        assert r.sha256 == image.sha256 and r.tool == "label-studio" and r.reviewer == "1"
        expected = label_map_from_annotations(image)
        assert (expected != 255).any()
        np.testing.assert_array_equal(r.label_map, expected)


def test_polygon_round_trip(sample):
    categories, images = sample
    images = images[:5]
    exact = label_studio_tasks(images, categories, mode="polygon", document_root=str(SAMPLE))
    for task in exact:
        for r in task["predictions"][0]["result"]:
            pts = np.asarray(r["value"]["points"])
            assert pts.shape[1] == 2 and pts.min() >= 0 and pts.max() <= 100
    for r, image in zip(import_label_studio(as_label_studio_export(exact), categories), images, strict=True):
        np.testing.assert_array_equal(r.label_map, label_map_from_annotations(image))

    # Simplified polygons for lighter review: every region over 100 px keeps IoU >= 0.95.
    light = label_studio_tasks(images, categories, mode="polygon", document_root=str(SAMPLE), polygon_tolerance=1.5)
    n_exact = sum(len(r["value"]["points"]) for t in exact for r in t["predictions"][0]["result"])
    n_light = sum(len(r["value"]["points"]) for t in light for r in t["predictions"][0]["result"])
    assert n_light < 0.7 * n_exact
    names = {c["name"]: c["id"] for c in categories}
    for task, image in zip(light, images, strict=True):
        got: dict[int, np.ndarray] = {}
        for r in task["predictions"][0]["result"]:
            xy = np.asarray(r["value"]["points"]) * (image.width / 100, image.height / 100)
            cid = names[r["value"]["polygonlabels"][0]]
            got[cid] = got.get(cid, False) | polygons_to_mask([xy.ravel().tolist()], image.height, image.width)
        for cid, mask in category_masks(image).items():
            if mask.sum() > 100:
                iou = (got[cid] & mask).sum() / (got[cid] | mask).sum()
                assert iou >= 0.95, (image.image_id, cid, iou)


def test_export_writes_files(sample, tmp_path):
    categories, images = sample
    out = export_label_studio(images[:2], categories, str(tmp_path / "ls"), document_root=str(SAMPLE))
    assert json.loads(Path(out["tasks"]).read_text())[0]["data"]["image_id"] == str(images[0].image_id)
    assert ET.parse(out["config"]).getroot().tag == "View"
    assert sorted(p.name for p in (tmp_path / "ls").iterdir()) == ["config.xml", "tasks.json"]
    out = export_label_studio(images[:1], categories, "memory://ls-export", mode="polygon", document_root=str(SAMPLE))
    with fsspec.open(out["tasks"], "rb") as f:
        assert json.load(f)[0]["predictions"][0]["result"][0]["type"] == "polygonlabels"


def test_large_ids_survive_javascript():
    image = ExportImage(image_id=(1 << 62) + 1, uri="s3://b/x.png", width=2, height=2)
    task = label_studio_tasks([image], [{"id": 0, "name": "cat", "synonyms": []}])[0]
    assert task["data"]["image_id"] == str((1 << 62) + 1)
    assert task["data"]["image"] == "s3://b/x.png" and task["data"]["file_name"] == "x.png"
    assert task["predictions"][0]["result"] == [] and "score" not in task["predictions"][0]


def test_filters(sample):
    categories, images = sample
    before = copy.deepcopy([img.annotations for img in images])
    person = resolve_classes(categories, ["person"])
    assert person == {1} and resolve_classes(categories, [1, "2"]) == {1, 2}
    with pytest.raises(ValueError):
        resolve_classes(categories, ["unicorn"])

    kept = list(filter_images(images, category_ids=person, drop_empty=True))
    assert kept and all(a["category_id"] == 1 for img in kept for a in img.annotations)
    assert len(kept) == sum(any(a["category_id"] == 1 for a in img.annotations) for img in images)
    assert len(list(filter_images(images, category_ids=person))) == len(images)

    scored = list(filter_images(images, min_score=0.5, max_score=0.8))
    assert all(0.5 <= a["score"] <= 0.8 for img in scored for a in img.annotations)
    assert sum(len(i.annotations) for i in scored) < sum(len(i.annotations) for i in images)
    assert all(a["round"] == 2 for i in filter_images(images, rounds=[2]) for a in i.annotations)
    assert all(a["labeler"] == "student" for i in filter_images(images, labelers=["student"]) for a in i.annotations)
    assert list(filter_images(images, statuses=["rejected"])) == []
    assert [i.image_id for i in filter_images(images, image_ids=[images[3].image_id])] == [images[3].image_id]
    assert [img.annotations for img in images] == before  # inputs untouched

    worst = lowest_scored(images, 3)
    scores = sorted(
        sum(a["area"] * a["score"] for a in img.annotations) / sum(a["area"] for a in img.annotations) for img in images
    )
    got = [sum(a["area"] * a["score"] for a in i.annotations) / sum(a["area"] for a in i.annotations) for i in worst]
    np.testing.assert_allclose(got, scores[:3])


def winding_numbers(poly: list[float], h: int, w: int) -> np.ndarray:
    """Winding number of each pixel centre around a closed polygon (crossing rule)."""
    a = np.asarray(poly, float).reshape(-1, 2)
    b = np.roll(a, -1, axis=0)
    ys, xs = np.mgrid[0:h, 0:w]
    px, py = xs.ravel()[:, None] + 0.5, ys.ravel()[:, None] + 0.5
    cross = (b[:, 0] - a[:, 0]) * (py - a[:, 1]) - (px - a[:, 0]) * (b[:, 1] - a[:, 1])
    up = (a[:, 1] <= py) & (b[:, 1] > py) & (cross > 0)
    down = (b[:, 1] <= py) & (a[:, 1] > py) & (cross < 0)
    return (up.sum(1) - down.sum(1)).reshape(h, w)


def test_polygons_with_holes_fill_right_under_every_rule():
    # Label Studio draws polygons on a canvas (non-zero rule), pycocotools rasterises with even-odd:
    # bridged holes must come out empty under both, islands inside holes filled.
    nested = np.zeros((30, 30), bool)
    nested[2:28, 2:28] = True
    nested[6:24, 6:24] = False
    nested[10:20, 10:20] = True
    nested[13:17, 13:17] = False
    rng = np.random.default_rng(0)
    masks = [nested] + [rng.random(rng.integers(1, 25, 2)) < rng.random() for _ in range(150)]
    for mask in masks:
        h, w = mask.shape
        polygons = mask_to_polygons(mask)
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
        np.testing.assert_array_equal(polygons_to_mask(polygons, h, w), mask)
        nonzero = np.zeros((h, w), bool)
        even_odd = np.zeros((h, w), bool)
        for p in polygons:
            wn = winding_numbers(p, h, w)
            nonzero |= wn != 0
            even_odd |= wn % 2 != 0
        np.testing.assert_array_equal(nonzero, mask)
        np.testing.assert_array_equal(even_odd, mask)
    assert mask_to_polygons(np.zeros((4, 4), bool)) == []
