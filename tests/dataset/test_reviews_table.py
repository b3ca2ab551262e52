"""Reviewed labels: export -> a reviewer's edits -> ``maskclip import`` -> ``maskclip evaluate``, local and S3.

Metrics are worked out by hand from the geometry in ``review_store`` (images are 32 x 48 = 1536 px).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import zipfile
from pathlib import Path

import fsspec
import numpy as np
import pytest
from label_studio_sdk.converter import brush
from PIL import Image
from support.coco_sample import SAMPLE
from support.review_store import Built, H, W, build_store, fails, label_map, run

from cli.main import main
from cli.review import format_report
from maskclip_core.dataset.ids import image_id_from_sha256
from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.reviews import read_reviewed, reviewed_label_maps
from maskclip_core.labeling.annotations import encode_annotations
from maskclip_core.labeling.filter import FilterConfig, filter_labels
from maskclip_core.types import IGNORE_INDEX, SegmentationResult

# The reviewer's edit on a/img.png: the top-left 16 x 12 block of the dog half (192 px) is really cat.
BLOCK = (slice(0, 16), slice(24, 36))


def brush_result(name: str, mask: np.ndarray, rid: str) -> dict:
    """A brush region as Label Studio's frontend stores it (the SDK's own encoder)."""
    return {
        "id": rid,
        "type": "brushlabels",
        "from_name": "tag",
        "to_name": "image",
        "original_width": W,
        "original_height": H,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": brush.mask2rle(mask.astype(np.uint8) * 255), "brushlabels": [name]},
    }


def reviewed_export(tasks: list[dict], built: Built, *, edit: bool, grass_on_rejected: bool = True) -> list[dict]:
    """Label Studio's JSON export after a reviewer went through every task.

    Predictions are accepted as they are, except (``edit``) the BLOCK of a/img.png moved from dog to cat;
    the rejected d.png gets painted all grass.
    """
    exported = []
    for i, task in enumerate(copy.deepcopy(tasks)):
        name = task["data"]["file_name"]
        result = task.pop("predictions")[0]["result"]
        if name == "a/img.png" and edit:
            masks = built.masks[built.ids[name]]
            cat, dog = masks[1].copy(), masks[2].copy()
            cat[BLOCK], dog[BLOCK] = True, False
            result = [brush_result("cat", cat, "r1"), brush_result("dog", dog, "r2")]
        if name == "d.png" and grass_on_rejected:
            result = [brush_result("grass", np.ones((H, W), bool), "r3")]
        annotation = {"id": 100 + i, "completed_by": 7, "result": result, "updated_at": "2025-03-01T10:00:00Z"}
        exported.append({"id": i + 1, **task, "annotations": [annotation]})
    return exported


def export_tasks(built: Built, dest: str, capsys: pytest.CaptureFixture, storage: tuple[str, ...] = ()) -> list[dict]:
    root = str(built.source)
    argv = ["export", "label-studio", "--from", built.store.url, "--to", dest, "--document-root", root]
    run(capsys, *argv, "--status", "labeled,rejected", *storage)
    with fsspec.open(f"{dest}/tasks.json", "rb", **_options(storage)) as f:
        return json.load(f)


def _options(storage: tuple[str, ...]) -> dict:
    return json.loads(storage[1]) if storage else {}


def write_json(path: Path, doc: object) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def positions(built: Built, image_id: int) -> np.ndarray:
    """Pseudo label map with category positions (cat 0, dog 1, grass 2), as training reads them."""
    ids = label_map(built, image_id)
    out = np.full_like(ids, 255)
    for pos, cid in enumerate(sorted(built.category_ids.values())):
        out[ids == cid] = pos
    return out


# Hand-computed scores of the edited review (d.png has no pseudo-labels: missing, not scored).
#   cat:   pseudo a 768 + b 768 = 1536; reviewed a 768 + 192 + b 768 = 1728; overlap 1536      -> 8/9
#   dog:   pseudo a 768 + other 1472 = 2240; reviewed a 576 + other 1472 = 2048; overlap 2048 -> 32/35
#   grass: pseudo b 768; reviewed b 768; overlap 768                                          -> 1
#   pixels scored: 1536 + 1536 + (1536 - 64 unannotated on other.png) = 4544, wrong 192       -> 4352/4544
EDITED = {"cat": 8 / 9, "dog": 32 / 35, "grass": 1.0}
EDITED_ACCURACY = 4352 / 4544


def check_edited(report: dict, built: Built) -> None:
    assert report["per_class_iou"] == pytest.approx(EDITED)
    assert report["miou"] == pytest.approx(sum(EDITED.values()) / 3)
    assert report["pixel_accuracy"] == pytest.approx(EDITED_ACCURACY)
    assert report["images"] == 3 and report["reviewed_images"] == 4
    assert report["missing"] == [built.ids["d.png"]]


def test_label_studio_round_trip(tmp_path, capsys):
    built = build_store(str(tmp_path / "out"), tmp_path / "src")
    out = built.store.url
    tasks = export_tasks(built, str(tmp_path / "ls"), capsys)
    assert len(tasks) == 4
    review = write_json(tmp_path / "export.json", reviewed_export(tasks, built, edit=True))
    summary = run(capsys, "import", "label-studio", review, "--into", out)
    assert summary["images"] == 4 and summary["regions"] == 6 and summary["skipped"] == []
    assert Path(summary["url"]).parent == tmp_path / "out" / "reviewed"

    check_edited(run(capsys, "evaluate", "--reviewed", out, "--json"), built)
    capsys.readouterr()
    assert main(["evaluate", "--reviewed", out]) == 0
    table = capsys.readouterr().out
    assert "cat    0.889" in table and "dog    0.914" in table and "grass  1.000" in table
    assert "images 3 of 4 reviewed (1 missing)" in table

    # Clean labels for training: category positions, the edit included, the rejected image now usable.
    maps = {row["uri"]: (row, m) for row, m in reviewed_label_maps(out)}
    assert list(maps) == sorted(str(built.source / n) for n in built.ids)
    row, a = maps[str(built.source / "a/img.png")]
    expected = positions(built, built.ids["a/img.png"])
    expected[BLOCK] = 0
    np.testing.assert_array_equal(a, expected)
    assert row["image_id"] == built.ids["a/img.png"] and row["review"]["reviewer"] == "7"
    assert row["review"]["tool"] == "label-studio" and row["review"]["reviewed_at"] == "2025-03-01T10:00:00Z"
    _, d = maps[str(built.source / "d.png")]
    assert d.dtype == np.uint8 and (d == 2).all()
    _, other = maps[str(built.source / "b/c/other.png")]
    np.testing.assert_array_equal(other, positions(built, built.ids["b/c/other.png"]))  # 64 px stay 255
    row, by_id = next(reviewed_label_maps(out, category_to_index={1: 1, 2: 2, 3: 3}))  # category ids instead
    assert row["uri"] == str(built.source / "a/img.png")
    np.testing.assert_array_equal(by_id, np.where(expected == 255, 255, expected + 1))


def test_label_studio_json_min_export_imports_like_the_json_export(tmp_path, capsys):
    """Label Studio's JSON-MIN export (made here by label-studio-sdk's own converter from the JSON export):
    the same reviews, the same hand-computed scores."""
    from label_studio_sdk.converter import Converter

    built = build_store(str(tmp_path / "out"), tmp_path / "src")
    tasks = export_tasks(built, str(tmp_path / "ls"), capsys)
    review = write_json(tmp_path / "export.json", reviewed_export(tasks, built, edit=True))
    converter = Converter(str(tmp_path / "ls" / "config.xml"), str(tmp_path))
    converter.convert_to_json_min(review, str(tmp_path / "min"), is_dir=False)
    json_min = tmp_path / "min" / "result.json"
    records = json.loads(json_min.read_text())
    assert len(records) == 4 and all("data" not in r and "annotation_id" in r and "tag" in r for r in records)

    summary = run(capsys, "import", "label-studio", str(json_min), "--dataset", built.store.url)
    assert summary["images"] == 4 and summary["regions"] == 6 and summary["skipped"] == []
    check_edited(run(capsys, "evaluate", "--dataset", built.store.url, "--json"), built)
    row, a = next(reviewed_label_maps(built.store.url))
    assert row["review"]["reviewer"] == "7" and row["review"]["reviewed_at"] == "2025-03-01T10:00:00Z"
    expected = positions(built, built.ids["a/img.png"])
    expected[BLOCK] = 0
    np.testing.assert_array_equal(a, expected)


def test_import_refuses_a_file_without_reviews_in_one_line(tmp_path, capsys):
    built = build_store(str(tmp_path / "out"), tmp_path / "src")
    export_tasks(built, str(tmp_path / "ls"), capsys)
    # Our own tasks.json (predictions, no annotation): nothing was reviewed.
    err = fails(capsys, "import", "label-studio", str(tmp_path / "ls" / "tasks.json"), "--dataset", built.store.url)
    assert "holds no annotated task" in err and len(err.strip().splitlines()) == 1
    # Neither JSON nor JSON-MIN (e.g. the CSV-like records of another tool).
    other = write_json(tmp_path / "other.json", [{"name": "a.png", "label": "cat"}])
    err = fails(capsys, "import", "label-studio", other, "--dataset", built.store.url)
    assert "not a Label Studio JSON or JSON-MIN export" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "reviewed").exists()


def test_an_emptied_mask_is_not_scored_unless_reviewed_images_count_as_fully_annotated(tmp_path, capsys):
    built = build_store(str(tmp_path / "out"), tmp_path / "src")
    out = built.store.url
    exported = reviewed_export(export_tasks(built, str(tmp_path / "ls"), capsys), built, edit=False)
    [a] = [t for t in exported if t["data"]["file_name"] == "a/img.png"]
    a["annotations"][0]["result"] = [r for r in a["annotations"][0]["result"] if r["value"]["brushlabels"] != ["dog"]]
    run(capsys, "import", "label-studio", write_json(tmp_path / "export.json", exported), "--dataset", out)

    # The reviewer deleted a/img.png's dog mask (768 px): those pixels are unannotated, so not scored.
    default = run(capsys, "evaluate", "--dataset", out, "--json")
    assert default["per_class_iou"] == pytest.approx({"cat": 1.0, "dog": 1.0, "grass": 1.0})
    assert default["pixel_accuracy"] == 1.0 and default["fully_annotated"] is False
    # Fully annotated: they are "no class", so a's 768 dog pixels are false positives.
    #   dog: pseudo a 768 + other 1472 = 2240; reviewed other 1472; overlap 1472 -> 1472 / 2240
    #   pixels: a 1536 + b 1536 + other 1536 (its 64 unlabeled px agree: no class) = 4608, wrong 768
    full = run(capsys, "evaluate", "--dataset", out, "--json", "--fully-annotated")
    assert full["per_class_iou"] == pytest.approx({"cat": 1.0, "dog": 1472 / 2240, "grass": 1.0})
    assert full["miou"] == pytest.approx((2 + 1472 / 2240) / 3)
    assert full["pixel_accuracy"] == pytest.approx(3840 / 4608) and full["images"] == 3
    capsys.readouterr()
    assert main(["evaluate", "--dataset", out, "--fully-annotated"]) == 0
    table = capsys.readouterr().out
    assert "dog    0.657" in table and "unannotated pixels scored as 'no class'" in table


def test_coco_import_by_our_ids_then_by_file_name(tmp_path, capsys):
    built = build_store(str(tmp_path / "out"), tmp_path / "src")
    out = built.store.url
    ours = tmp_path / "coco.json"
    run(capsys, "export", "coco", "--from", out, "--to", str(ours))
    doc = json.loads(ours.read_text())
    # The reviewer: on b/img.png the right half of the grass (rows 16-31, columns 24-47: 384 px) is dog.
    b = built.ids["b/img.png"]
    grass = next(a for a in doc["annotations"] if a["image_id"] == b and a["category_id"] == 3)
    grass["segmentation"] = [[0, 16, 24, 16, 24, 32, 0, 32]]
    dog = {"id": 1, "image_id": b, "category_id": 2, "iscrowd": 0, "segmentation": [[24, 16, 48, 16, 48, 32, 24, 32]]}
    doc["annotations"].append(dog)
    summary = run(capsys, "import", "coco", write_json(tmp_path / "edited.json", doc), "--into", out)
    assert summary["images"] == 3 and summary["regions"] == 6
    report = run(capsys, "evaluate", "--reviewed", out, "--json")
    # cat 1; dog: pseudo 768 + 1472 (all reviewed dog too), reviewed adds 384 on b -> 2240/2624;
    # grass: pseudo 768 on b, reviewed 384 of them -> 384/768. Every scored pixel but those 384 agrees.
    assert report["per_class_iou"] == pytest.approx({"cat": 1.0, "dog": 2240 / 2624, "grass": 0.5})
    assert report["pixel_accuracy"] == pytest.approx(1 - 384 / (3 * 1536 - 64))
    assert report["missing"] == []

    # A CVAT "COCO 1.0" export renumbers images and categories: matched by file_name, and a/img.png and
    # b/img.png share a basename, so only the folder tells them apart.
    zpath = tmp_path / "cvat.zip"
    run(capsys, "export", "cvat-coco", "--from", out, "--to", str(zpath), "--polygons")
    cvat = json.loads(zipfile.ZipFile(zpath).read("annotations/instances_default.json"))
    renumber = {img["id"]: k for k, img in enumerate(cvat["images"], start=1)}
    cvat["images"] = [dict(img, id=renumber[img["id"]]) for img in cvat["images"]]
    cvat["categories"] = [dict(c, id=c["id"] + 10) for c in cvat["categories"]]
    cvat["annotations"] = [
        dict(a, image_id=renumber[a["image_id"]], category_id=a["category_id"] + 10) for a in cvat["annotations"]
    ]
    cvat["info"]["contributor"] = ""
    summary = run(capsys, "import", "coco", write_json(tmp_path / "cvat.json", cvat), "--into", out)
    assert summary["images"] == 3
    for row, m in reviewed_label_maps(out):  # the newer import supersedes the edited one
        np.testing.assert_array_equal(m, positions(built, row["image_id"]))
    report = run(capsys, "evaluate", "--reviewed", out, "--json")
    assert report["miou"] == 1.0 and report["pixel_accuracy"] == 1.0

    unknown = dict(cvat, images=[dict(cvat["images"][0], file_name="elsewhere/img.png")])
    assert "matches none" in fails(capsys, "import", "coco", write_json(tmp_path / "u.json", unknown), "--into", out)


def test_reimport_supersedes_and_unfinished_parts_are_ignored(tmp_path, capsys):
    built = build_store(str(tmp_path / "out"), tmp_path / "src")
    out = built.store.url
    tasks = export_tasks(built, str(tmp_path / "ls"), capsys)
    edited = write_json(tmp_path / "edited.json", reviewed_export(tasks, built, edit=True))
    accepted = write_json(tmp_path / "accepted.json", reviewed_export(tasks, built, edit=False))

    run(capsys, "import", "label-studio", edited, "--into", out)
    run(capsys, "import", "label-studio", accepted, "--into", out)
    assert run(capsys, "evaluate", "--reviewed", out, "--json")["miou"] == 1.0
    run(capsys, "import", "label-studio", edited, "--into", out)  # the edited file again: newest wins
    check_edited(run(capsys, "evaluate", "--reviewed", out, "--json"), built)
    parts = sorted(os.listdir(tmp_path / "out" / "reviewed"))
    assert len(parts) == 2  # the same file imported twice rewrites its own part

    # The reviewer wiped a/img.png: a review with nothing annotated still supersedes the older ones.
    wiped = reviewed_export(tasks, built, edit=False)
    for task in wiped:
        if task["data"]["file_name"] == "a/img.png":
            task["annotations"][0]["result"] = []
    summary = run(capsys, "import", "label-studio", write_json(tmp_path / "wiped.json", wiped), "--into", out)
    assert summary["images"] == 4
    (tmp_path / "out" / "reviewed" / "_tmp-0123-part-x.parquet").write_bytes(b"half written")
    (tmp_path / "out" / "reviewed" / ".part-y.parquet").write_bytes(b"hidden")
    current = read_reviewed(out)
    assert set(current["import_id"].to_pylist()) == {summary["import_id"]}
    maps = {row["image_id"]: m for row, m in reviewed_label_maps(out)}
    assert (maps[built.ids["a/img.png"]] == 255).all()
    report = run(capsys, "evaluate", "--reviewed", out, "--json")
    # a/img.png now scores no pixel; the rest agree
    assert report["pixel_accuracy"] == 1.0 and report["images"] == 3


def test_unknown_images_fail_unless_skipped(tmp_path, capsys):
    built = build_store(str(tmp_path / "out"), tmp_path / "src")
    out = built.store.url
    tasks = reviewed_export(export_tasks(built, str(tmp_path / "ls"), capsys), built, edit=False)
    stranger = copy.deepcopy(tasks[0])
    stranger["data"]["image_id"] = "12345"
    path = write_json(tmp_path / "x.json", [*tasks, stranger])
    assert "12345 is not in the dataset" in fails(capsys, "import", "label-studio", path, "--into", out)
    assert not (tmp_path / "out" / "reviewed").exists()  # nothing half-imported
    summary = run(capsys, "import", "label-studio", path, "--into", out, "--skip-unknown")
    assert summary["skipped"] == [12345] and summary["images"] == 4
    changed = copy.deepcopy(tasks[0])
    changed["data"]["sha256"] = "0" * 64
    err = fails(capsys, "import", "label-studio", write_json(tmp_path / "y.json", [changed]), "--into", out)
    assert "different sha256" in err
    assert "no reviewed images" in fails(capsys, "evaluate", "--reviewed", str(tmp_path / "empty"))


def test_s3_output(s3_server, tmp_path, capsys):
    out = s3_server.fresh_url("run/out")
    storage = ("--storage-options", json.dumps(s3_server.storage_options))
    built = build_store(out, tmp_path / "src", storage_options=s3_server.storage_options)
    dest = out.rsplit("/", 1)[0] + "/ls"
    tasks = export_tasks(built, dest, capsys, storage)
    review = write_json(tmp_path / "export.json", reviewed_export(tasks, built, edit=True))
    summary = run(capsys, "import", "label-studio", review, "--into", out, *storage)
    assert summary["url"].startswith(out + "/reviewed/part-")
    check_edited(run(capsys, "evaluate", "--reviewed", out, "--json", *storage), built)
    maps = {row["image_id"]: m for row, m in reviewed_label_maps(out, s3_server.storage_options)}
    assert (maps[built.ids["d.png"]] == 2).all() and len(maps) == 4


def test_report_table_marks_classes_without_pixels():
    report = {
        "per_class_iou": {"cat": 0.5, "unicorn": None},
        "miou": 0.5,
        "pixel_accuracy": 0.75,
        "images": 1,
        "reviewed_images": 2,
        "missing": [9],
    }
    assert format_report(report).splitlines() == [
        "class    IoU",
        "-------  -----",
        "cat      0.500",
        "unicorn  -",
        "mIoU 0.500   pixel accuracy 0.750   images 1 of 2 reviewed (1 missing)",
    ]


def test_real_photos_through_cvat_and_back(tmp_path, capsys):
    """coco-sample's human masks as pseudo-labels: through a CVAT COCO round trip they come back unchanged."""
    if not (SAMPLE / "categories.tsv").exists():
        pytest.skip("coco-sample data absent")
    rows = [line.split("\t") for line in (SAMPLE / "categories.tsv").read_text().splitlines()[1:]]
    names = tuple(r[1] for r in rows)
    store = LabelDataset(str(tmp_path / "out"))
    ids = store.ensure_categories(names)  # fresh store: category position == class index
    index_of = np.full(256, IGNORE_INDEX, np.uint8)  # panoptic id -> class index; 0 (unlabeled) -> ignore
    index_of[[int(r[0]) for r in rows]] = np.arange(len(rows))
    expected, images, anns = {}, [], []
    for path in sorted((SAMPLE / "train" / "images").glob("*.jpg"))[:4]:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        index = index_of[np.asarray(Image.open(SAMPLE / "train" / "masks-coco" / f"{path.stem}.png"))]
        known = index != IGNORE_INDEX
        result = SegmentationResult(
            labels=np.where(known, index, 0).astype(np.int64),
            confidence=np.where(known, 0.9, 0.0).astype(np.float32),
            class_scores=np.zeros(len(names), np.float32),
            dropped=np.zeros(len(names), bool),
            class_names=names,
        )
        filtered = filter_labels(result, FilterConfig(min_region_area=0, min_labeled_fraction=0.0))
        image_id, labeling_id = image_id_from_sha256(digest), f"gt:{digest[:16]}"
        h, w = index.shape
        row = {"image_id": image_id, "uri": str(path), "sha256": digest, "width": w, "height": h, "round": 0}
        images.append(
            {**row, "status": "labeled", "config_hash": "gt", "labeling_id": labeling_id, "labeler": "maskclip"}
        )
        category_ids = [ids[n] for n in names]
        anns += encode_annotations(
            filtered, category_ids=category_ids, image_id=image_id, labeling_id=labeling_id, labeler="gt", round=0
        )
        expected[image_id] = filtered.labels
        np.testing.assert_array_equal(filtered.labels, index)  # nothing filtered away: the masks as they are
    store.write_batch(images, anns, part_name="gt")

    zpath = tmp_path / "cvat.zip"
    run(capsys, "export", "cvat-coco", "--from", store.url, "--to", str(zpath))
    doc = json.loads(zipfile.ZipFile(zpath).read("annotations/instances_default.json"))
    renumber = {img["id"]: k for k, img in enumerate(doc["images"], start=1)}  # as CVAT renumbers
    doc["images"] = [dict(img, id=renumber[img["id"]]) for img in doc["images"]]
    doc["annotations"] = [dict(a, image_id=renumber[a["image_id"]]) for a in doc["annotations"]]
    summary = run(capsys, "import", "coco", write_json(tmp_path / "cvat.json", doc), "--into", store.url)
    assert summary["images"] == 4
    got = {row["image_id"]: m for row, m in reviewed_label_maps(store.url)}
    assert got.keys() == expected.keys()
    for image_id, m in got.items():
        np.testing.assert_array_equal(m, expected[image_id])
    report = run(capsys, "evaluate", "--reviewed", store.url, "--json")
    assert report["miou"] == 1.0 and report["pixel_accuracy"] == 1.0 and report["images"] == 4
