"""Import of human corrections (Label Studio JSON export, COCO / CVAT JSON) and evaluation against them."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from support.coco_sample import SAMPLE, load_sample, require_sample
from support.review_store import build_store, run, write_image

from maskclip_core.evaluation.reviewed import evaluate_against_reviewed, pseudo_label_maps
from maskclip_core.interchange import (
    ExportImage,
    cvat_coco_json,
    import_coco_reviews,
    import_label_studio,
    label_map_from_annotations,
    label_studio_tasks,
    read_reviews,
)
from maskclip_core.interchange.label_studio_rle import encode_mask
from maskclip_core.interchange.polygons import mask_to_polygons

CATS = [{"id": 3, "name": "cat", "synonyms": ["kitty"]}, {"id": 7, "name": "grass", "synonyms": ["lawn"]}]


@pytest.fixture(scope="module")
def sample():
    require_sample()
    return load_sample()


def brush(region_id, label, mask):
    h, w = mask.shape
    return {
        "id": region_id,
        "type": "brushlabels",
        "from_name": "tag",
        "to_name": "image",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": encode_mask(mask), "brushlabels": [label]},
    }


def task(image_id, annotations, h=5, w=6):
    data = {"image": "s3://b/x.jpg", "image_id": str(image_id), "sha256": "abc", "width": w, "height": h}
    return {"id": image_id % 1000, "data": data, "annotations": annotations}


def test_label_studio_picks_the_right_annotation():
    h, w = 5, 6
    left, top = np.zeros((h, w), bool), np.zeros((h, w), bool)
    left[:, :2] = True
    top[:2, :] = True
    wide = np.zeros((h, w), bool)
    wide[:, :4] = True
    big_id = (1 << 62) + 12345  # beyond JavaScript's 2**53: must come back exact from the string
    corners = [(3, 0), (6, 0), (6, 4), (5, 4), (5, 1), (3, 1)]  # an L on pixel corners, in pixels
    ell = [[100 * x / w, 100 * y / h] for x, y in corners]  # Label Studio wants percent
    tasks = [
        task(
            1,
            [
                {
                    "id": 1,
                    "result": [brush("a", "cat", left)],
                    "updated_at": "2024-05-02T10:00:00Z",
                    "completed_by": 4,
                },
                {
                    "id": 2,
                    "result": [brush("b", "grass", left)],
                    "updated_at": "2024-05-03T10:00:00Z",
                    "completed_by": {"id": 9, "email": "r@x.org"},
                },
                {"id": 3, "result": [], "updated_at": "2024-06-01T00:00:00Z", "was_cancelled": True},
            ],
        ),
        task(
            2,
            [
                {"id": 4, "result": [brush("c", "cat", top)], "updated_at": "2024-05-09T00:00:00Z"},
                {
                    "id": 5,
                    "result": [brush("d", "lawn", top)],
                    "updated_at": "2024-05-01T00:00:00Z",
                    "ground_truth": True,
                },
            ],
        ),
        task(
            big_id,
            [
                {
                    "id": 6,
                    "result": [
                        brush("e", "cat", wide),
                        {
                            "id": "f",
                            "type": "polygonlabels",
                            "original_width": w,
                            "original_height": h,
                            "value": {"points": ell, "polygonlabels": ["grass"], "closed": True},
                        },
                        {"id": "g", "type": "choices", "value": {"choices": ["ok"]}},
                    ],
                }
            ],
        ),
        task(4, []),
        task(5, [{"id": 7, "result": [], "was_cancelled": True}]),
        task(6, [{"id": 8, "result": []}]),  # submitted with nothing drawn: reviewed, all unannotated
    ]
    reviewed = {r.image_id: r for r in import_label_studio(tasks, CATS)}
    assert sorted(reviewed) == [1, 2, 6, big_id]

    expect = np.full((h, w), 255, np.uint8)
    expect[left] = 7  # the latest live annotation (id 2) says grass
    np.testing.assert_array_equal(reviewed[1].label_map, expect)
    assert reviewed[1].reviewer == "r@x.org" and reviewed[1].reviewed_at == "2024-05-03T10:00:00Z"
    assert reviewed[1].sha256 == "abc" and reviewed[1].tool == "label-studio"

    expect = np.full((h, w), 255, np.uint8)
    expect[top] = 7  # ground truth wins over a newer annotation; "lawn" is grass's synonym
    np.testing.assert_array_equal(reviewed[2].label_map, expect)

    expect = np.full((h, w), 255, np.uint8)
    expect[wide] = 3
    expect[0, 3:] = 7  # the polygon comes later and wins at (0, 3)
    expect[1:4, 5] = 7
    np.testing.assert_array_equal(reviewed[big_id].label_map, expect)
    assert (reviewed[6].label_map == 255).all()


def test_label_studio_errors():
    mask = np.ones((5, 6), bool)
    with pytest.raises(ValueError, match="not one of our categories"):
        import_label_studio([task(1, [{"result": [brush("a", "dog", mask)]}])], CATS)
    no_id = task(1, [{"result": [brush("a", "cat", mask)]}])
    del no_id["data"]["image_id"]
    with pytest.raises(ValueError, match="image_id"):
        import_label_studio([no_id], CATS)
    two = brush("a", "cat", mask)
    two["value"]["brushlabels"] = ["cat", "grass"]
    with pytest.raises(ValueError, match="exactly one"):
        import_label_studio([task(1, [{"result": [two]}])], CATS)
    with pytest.raises(ValueError, match="inconsistent"):
        import_label_studio([task(1, [{"result": [brush("a", "cat", np.ones((4, 6), bool))]}])], CATS)


def test_label_studio_json_min_export_reads_like_the_json_export(tmp_path):
    """Polygons, several annotations per task, an empty submission and an unannotated task, through
    label-studio-sdk's own JSON -> JSON-MIN converter."""
    from label_studio_sdk.converter import Converter

    from maskclip_core.interchange.label_studio import labeling_config

    h, w = 5, 6
    ell = [[100 * x / w, 100 * y / h] for x, y in [(3, 0), (6, 0), (6, 4), (5, 4), (5, 1), (3, 1)]]
    box = [[0.0, 0.0], [50.0, 0.0], [50.0, 100.0], [0.0, 100.0]]

    def polygon(region_id, label, points):
        value = {"points": points, "polygonlabels": [label], "closed": True}
        return {"id": region_id, "type": "polygonlabels", "from_name": "tag", "to_name": "image", "value": value}

    def sized(result):
        return [{**r, "original_width": w, "original_height": h} for r in result]

    tasks = [
        task(
            1,
            [
                {"id": 1, "result": sized([polygon("a", "cat", box)]), "created_at": "2024-05-01T00:00:00Z"},
                {
                    "id": 2,
                    "result": sized([polygon("b", "cat", box), polygon("c", "grass", ell)]),
                    "created_at": "2024-05-02T00:00:00Z",
                    "updated_at": "2024-05-02T00:00:00Z",
                    "completed_by": 5,
                },
            ],
        ),
        task(2, []),
        task(3, [{"id": 3, "result": [], "created_at": "2024-05-03T00:00:00Z"}]),
    ]
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    converter = Converter(labeling_config(CATS, mode="polygon"), str(tmp_path))
    converter.convert_to_json_min(str(tmp_path / "export.json"), str(tmp_path / "min"), is_dir=False)
    records = json.loads((tmp_path / "min" / "result.json").read_text())
    assert len(records) == 4 and all("data" not in r for r in records)  # one record per annotation

    from_min = {r.image_id: r for r in import_label_studio(str(tmp_path / "min" / "result.json"), CATS)}
    from_json = {r.image_id: r for r in import_label_studio(tasks, CATS)}
    assert sorted(from_min) == sorted(from_json) == [1, 3]
    for image_id, review in from_json.items():
        np.testing.assert_array_equal(from_min[image_id].label_map, review.label_map)
        assert from_min[image_id].reviewed_at == review.reviewed_at and from_min[image_id].sha256 == "abc"
    assert from_min[1].reviewer == "5" and set(np.unique(from_min[1].label_map)) == {3, 7, 255}
    assert (from_min[3].label_map == 255).all()  # submitted with nothing drawn


def test_label_studio_refuses_what_is_no_export():
    with pytest.raises(ValueError, match="neither `data` nor `annotation_id`.*export the project as JSON"):
        import_label_studio([{"image": "x.jpg", "label": "cat"}], CATS)
    with pytest.raises(ValueError, match="item 0 is a int"):
        import_label_studio([1, 2], CATS)
    single = task(1, [{"result": [brush("a", "cat", np.ones((5, 6), bool))]}])
    assert len(import_label_studio(single, CATS)) == 1  # a one-task export is a bare object


def test_label_studio_corrections_on_real_images(sample, tmp_path):
    categories, images = sample
    images = images[:4]
    names = {c["id"]: c["name"] for c in categories}
    tasks = label_studio_tasks(images, categories, document_root=str(SAMPLE))
    # A reviewer relabels the first region of each image as "person" and deletes the second one.
    expected = {}
    for t, image in zip(tasks, images, strict=True):
        result = copy.deepcopy(t["predictions"][0]["result"])
        first, second = image.annotations[0], image.annotations[1]
        result[0]["value"]["brushlabels"] = ["person"]
        del result[1]
        t["annotations"] = [{"id": 1, "result": result, "completed_by": 2}]
        relabeled = [dict(a, category_id=1) if a is first else a for a in image.annotations if a is not second]
        expected[image.image_id] = label_map_from_annotations(
            ExportImage(image_id=0, uri="x", width=image.width, height=image.height, annotations=relabeled)
        )
        assert names[first["category_id"]] != "person"
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    reviewed = read_reviews(str(path), categories, "label-studio")
    assert len(reviewed) == len(images)
    for r in reviewed:
        np.testing.assert_array_equal(r.label_map, expected[r.image_id])

    report = evaluate_against_reviewed(pseudo_label_maps(images), reviewed, categories)
    pseudo = pseudo_label_maps(images)
    for cid, name in names.items():
        tp = sum(((pseudo[i] == cid) & (expected[i] == cid)).sum() for i in pseudo)
        union = sum(((pseudo[i] == cid) & (expected[i] != 255) | (expected[i] == cid)).sum() for i in pseudo)
        assert report["per_class_iou"][name] == (pytest.approx(tp / union) if union else None)
    valid = sum((expected[i] != 255).sum() for i in pseudo)
    correct = sum(((pseudo[i] == expected[i]) & (expected[i] != 255)).sum() for i in pseudo)
    assert report["pixel_accuracy"] == pytest.approx(correct / valid)
    assert report["images"] == 4 and report["missing"] == [] and report["miou"] < 1.0


def test_coco_import_of_a_cvat_round_trip(sample):
    categories, images = sample
    for mode in ("mask", "polygon"):
        doc = cvat_coco_json(images, categories, mode=mode)
        # CVAT renumbers images and categories on export; names are what survive.
        doc["categories"] = [dict(c, id=1000 - c["id"]) for c in doc["categories"]]
        id_map = {img["id"]: k + 1 for k, img in enumerate(doc["images"])}
        doc["images"] = [dict(img, id=id_map[img["id"]]) for img in doc["images"]]
        doc["annotations"] = [
            dict(a, image_id=id_map[a["image_id"]], category_id=1000 - a["category_id"]) for a in doc["annotations"]
        ]
        reviewed = import_coco_reviews(json.loads(json.dumps(doc)), categories, images=images)
        assert [r.image_id for r in reviewed] == [i.image_id for i in images]
        for r, image in zip(reviewed, images, strict=True):
            assert r.sha256 == image.sha256 and r.tool == "coco"
            np.testing.assert_array_equal(r.label_map, label_map_from_annotations(image))
        report = evaluate_against_reviewed(pseudo_label_maps(images), reviewed, categories)
        assert report["miou"] == 1.0 and report["pixel_accuracy"] == 1.0


def test_coco_import_forms_and_strictness(sample):
    categories, images = sample
    image = images[0]
    # Our own COCO form (compressed RLE strings), ids kept: no image list needed.
    doc = {
        "images": [{"id": image.image_id, "file_name": "renamed.jpg", "width": image.width, "height": image.height}],
        "categories": [{"id": c["id"], "name": c["name"]} for c in categories],
        "annotations": copy.deepcopy(image.annotations),
    }
    (r,) = import_coco_reviews(doc, categories)
    np.testing.assert_array_equal(r.label_map, label_map_from_annotations(image))
    with pytest.raises(ValueError, match="matches none"):
        import_coco_reviews(doc, categories, images=images)
    assert import_coco_reviews(doc, categories, images=images, strict=False) == []
    doc["categories"].append({"id": 999, "name": "unicorn"})
    with pytest.raises(ValueError, match="unicorn"):
        import_coco_reviews(doc, categories)
    # Polygons with a hole, and a box-only annotation that carries no mask.
    ring = np.zeros((image.height, image.width), bool)
    ring[10:60, 10:60] = True
    ring[20:30, 20:30] = False
    doc = {
        "images": [{"id": 5, "file_name": "sub/" + image.file_name, "width": image.width, "height": image.height}],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 1, "segmentation": mask_to_polygons(ring), "iscrowd": 0},
            {
                "id": 2,
                "image_id": 5,
                "category_id": 1,
                "segmentation": [],
                "bbox": [0, 0, 5, 5],
                "iscrowd": 0,
            },
        ],
    }
    (r,) = import_coco_reviews(doc, categories, images=images)  # matched by basename
    assert r.image_id == image.image_id
    np.testing.assert_array_equal(r.label_map == 1, ring)
    assert (r.label_map[~ring] == 255).all()


def test_evaluate_small_known_case():
    pred = {1: np.array([[3, 3, 7], [7, 7, 255]], np.uint8), 2: np.array([[3]], np.uint8)}
    target = {
        1: np.array([[3, 7, 7], [255, 7, 7]], np.uint8),
        2: np.array([[3]], np.uint8),
        9: np.zeros((1, 1)),
    }
    report = evaluate_against_reviewed(pred, target, CATS)
    # cat: tp 2 (one per image), fp 1, fn 0 -> 2/3; grass: tp 2, fp 0, fn 2 (a cat pixel, a missed 255) -> 2/4
    assert report["per_class_iou"] == {"cat": pytest.approx(2 / 3), "grass": pytest.approx(0.5)}
    assert report["miou"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert report["pixel_accuracy"] == pytest.approx(4 / 6)
    assert report["images"] == 2 and report["missing"] == [9]
    with pytest.raises(ValueError, match="outside"):  # int64 class maps must not wrap around into uint8
        evaluate_against_reviewed({1: np.array([[259]])}, {1: np.array([[3]], np.uint8)}, CATS)
    with pytest.raises(ValueError, match="unknown category ids"):
        evaluate_against_reviewed({1: np.array([[5]], np.uint8)}, {1: np.array([[3]], np.uint8)}, CATS)
    with pytest.raises(ValueError, match="shape"):
        evaluate_against_reviewed({1: np.zeros((2, 2), np.uint8) + 3}, {1: np.zeros((2, 3), np.uint8) + 3}, CATS)


def test_evaluate_fully_annotated_scores_unannotated_pixels_as_no_class():
    pred = {1: np.array([[3, 3, 7], [7, 7, 255]], np.uint8)}
    target = {1: np.array([[3, 255, 7], [255, 255, 255]], np.uint8)}
    default = evaluate_against_reviewed(pred, target, CATS)
    assert default["per_class_iou"] == {"cat": 1.0, "grass": 1.0} and default["pixel_accuracy"] == 1.0
    full = evaluate_against_reviewed(pred, target, CATS, fully_annotated=True)
    # cat: tp 1, fp 1 (on no class) -> 1/2; grass: tp 1, fp 2 -> 1/3; right: 3 px of 6 (no class at [1, 2])
    assert full["per_class_iou"] == {"cat": pytest.approx(1 / 2), "grass": pytest.approx(1 / 3)}
    assert full["miou"] == pytest.approx((1 / 2 + 1 / 3) / 2) and full["pixel_accuracy"] == pytest.approx(3 / 6)


def test_a_duplicate_content_photo_reviewed_under_its_alias_id_is_scored(tmp_path, capsys):
    """Two files with identical bytes: the export gives the later one an alias id; its review is scored, not
    listed as missing (issue 20)."""
    source = tmp_path / "src"
    write_image(source / "a" / "img.png", seed=1)
    (source / "a" / "twin.png").write_bytes((source / "a" / "img.png").read_bytes())
    files = [["a/img.png", "a/twin.png", "b/img.png"]]
    built = build_store(str(tmp_path / "ds"), source, batches=files, predict_as="a/img.png")
    out = ["--out", str(tmp_path / "ls"), "--document-root", str(tmp_path)]
    export = run(capsys, "export", "label-studio", "--dataset", built.store.url, *out)
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert export["images"] == 3 and len({t["data"]["image_id"] for t in tasks}) == 3  # the twin under an alias
    [twin] = [t for t in tasks if t["data"]["file_name"] == "a/twin.png"]
    assert int(twin["data"]["image_id"]) != built.ids["a/twin.png"]  # the alias, not the content's id
    twin["annotations"] = [  # the reviewer accepts the prediction of the twin only
        {"id": 1, "result": twin.pop("predictions")[0]["result"], "updated_at": "2025-03-01T10:00:00Z"}
    ]
    (tmp_path / "reviewed.json").write_text(json.dumps([twin]))
    run(capsys, "import", "label-studio", str(tmp_path / "reviewed.json"), "--dataset", built.store.url)
    report = run(capsys, "evaluate", "--dataset", built.store.url, "--json")
    assert (report["images"], report["reviewed_images"], report["missing"]) == (1, 1, [])
    assert report["pixel_accuracy"] == 1.0
