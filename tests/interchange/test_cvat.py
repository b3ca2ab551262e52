"""CVAT zips read back with datumaro (what CVAT imports them with) and pycocotools, mask by mask."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import datumaro as dm
import fsspec
import numpy as np
import pycocotools.mask as mask_utils
import pytest
from datumaro.components.annotation import AnnotationType
from PIL import Image
from pycocotools.coco import COCO
from support.coco_sample import load_sample, require_sample

from maskclip_core.dataset.records import category_masks
from maskclip_core.dataset.rle import annotation_mask
from maskclip_core.interchange import ExportImage, cvat_labelmap, export_cvat_coco, export_cvat_mask
from maskclip_core.interchange.cvat import uncompressed_rle
from maskclip_core.interchange.polygons import polygons_to_mask


@pytest.fixture(scope="module")
def sample():
    require_sample()
    return load_sample()


def unzip(path: Path, into: Path) -> Path:
    zipfile.ZipFile(path).extractall(into)
    return into


def test_uncompressed_rle_matches_pycocotools():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (3, 7), (20, 9)]:
        for mask in (np.zeros(shape, bool), np.ones(shape, bool), rng.random(shape) < 0.4):
            rle = uncompressed_rle(mask)
            assert sum(rle["counts"]) == mask.size
            back = mask_utils.decode(mask_utils.frPyObjects(rle, *shape))
            np.testing.assert_array_equal(back, mask)


def test_coco_masks_read_back_by_datumaro_and_pycocotools(sample, tmp_path):
    categories, images = sample
    zpath = Path(export_cvat_coco(images, categories, str(tmp_path / "coco.zip")))
    names = zipfile.ZipFile(zpath).namelist()
    assert "annotations/instances_default.json" in names and "images/default/" in names
    root = unzip(zpath, tmp_path / "coco")
    doc = json.loads((root / "annotations" / "instances_default.json").read_text())
    assert [c["id"] for c in doc["categories"]] == list(range(1, len(categories) + 1))
    assert all(a["iscrowd"] == 1 and isinstance(a["segmentation"]["counts"], list) for a in doc["annotations"])

    originals = {a["id"]: (img, a) for img in images for a in img.annotations}
    our_name = {i + 1: c["name"] for i, c in enumerate(categories)}
    coco = COCO(str(root / "annotations" / "instances_default.json"))
    for ann in coco.dataset["annotations"]:
        img, orig = originals[ann["id"]]
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), annotation_mask(orig))
        assert our_name[ann["category_id"]] == next(c["name"] for c in categories if c["id"] == orig["category_id"])
        assert ann["area"] == orig["area"]

    ds = dm.Dataset.import_from(str(root), "coco_instances")
    labels = ds.categories()[AnnotationType.label]
    by_file = {Path(img.file_name).stem: img for img in images}
    seen = 0
    for item in ds:
        img = by_file[item.id]
        for ann in item.annotations:
            if ann.type != AnnotationType.mask:
                continue
            _, orig = originals[ann.id]
            assert (
                labels[ann.label].name
                == our_name[next(i + 1 for i, c in enumerate(categories) if c["id"] == orig["category_id"])]
            )
            np.testing.assert_array_equal(ann.image.astype(bool), annotation_mask(orig))
            assert ann.image.shape == (img.height, img.width)
            seen += 1
    assert seen == len(originals)


def test_coco_polygons_read_back_by_datumaro(sample, tmp_path):
    categories, images = sample
    images = images[:4]
    root = unzip(Path(export_cvat_coco(images, categories, str(tmp_path / "p.zip"), mode="polygon")), tmp_path / "p")
    ds = dm.Dataset.import_from(str(root), "coco_instances")
    originals = {a["id"]: (img, a) for img in images for a in img.annotations}
    rings: dict[int, list[list[float]]] = {}
    for item in ds:
        for ann in item.annotations:
            if ann.type == AnnotationType.polygon:
                rings.setdefault(ann.id, []).append(list(ann.points))
    assert rings.keys() == originals.keys()
    for ann_id, polys in rings.items():
        img, orig = originals[ann_id]
        np.testing.assert_array_equal(polygons_to_mask(polys, img.height, img.width), annotation_mask(orig))


def test_segmentation_mask_zip_read_back_by_datumaro(sample, tmp_path):
    categories, images = sample
    zpath = Path(export_cvat_mask(images, categories, str(tmp_path / "mask.zip")))
    root = unzip(zpath, tmp_path / "mask")
    lines = (root / "labelmap.txt").read_text().splitlines()
    assert lines[0] == "# label:color_rgb:parts:actions" and lines[1] == "background:0,0,0::"
    assert [ln.split(":")[0] for ln in lines[2:]] == [c["name"] for c in categories]
    assert (root / "ImageSets" / "Segmentation" / "default.txt").read_text().split() == [
        Path(i.file_name).stem for i in images
    ]
    name_to_id = {c["name"]: c["id"] for c in categories}
    by_item = {Path(i.file_name).stem: i for i in images}

    # With SegmentationObject/ datumaro yields one mask per instance (background is instance 0, not yielded);
    # without it, one mask per class colour, background included: check both readings.
    for with_instances in (True, False):
        if not with_instances:
            shutil.rmtree(root / "SegmentationObject")
        ds = dm.Dataset.import_from(str(root), "voc_segmentation")
        labels = ds.categories()[AnnotationType.label]
        assert [lab.name for lab in labels] == ["background"] + [c["name"] for c in categories]
        assert {item.id for item in ds} == by_item.keys()
        for item in ds:
            img = by_item[item.id]
            expected = category_masks(img)
            got: dict[str, np.ndarray] = {}
            for ann in item.annotations:
                assert ann.type == AnnotationType.mask
                name = labels[ann.label].name
                assert name not in got, "one instance per (image, class) region"
                got[name] = ann.image.astype(bool)
            # unannotated pixels (about 10% of COCO) are the background label, black in both PNGs
            unannotated = ~np.any(list(expected.values()), axis=0)
            assert unannotated.any()
            if with_instances:
                assert "background" not in got
            else:
                np.testing.assert_array_equal(got.pop("background"), unannotated)
            assert {name_to_id[n] for n in got} == expected.keys()
            for name, mask in got.items():
                np.testing.assert_array_equal(mask, expected[name_to_id[name]])


def test_segmentation_pngs_are_cvat_colours(sample, tmp_path):
    categories, images = sample
    root = unzip(Path(export_cvat_mask(images[:1], categories, str(tmp_path / "m.zip"))), tmp_path / "m")
    colours = {
        ln.split(":")[0]: tuple(map(int, ln.split(":")[1].split(",")))
        for ln in cvat_labelmap(categories).splitlines()[1:]
    }
    img = images[0]
    png = np.asarray(Image.open(root / "SegmentationClass" / f"{Path(img.file_name).stem}.png"))
    assert png.shape == (img.height, img.width, 3)
    for c in categories:
        if c["id"] in category_masks(img):
            np.testing.assert_array_equal((png == colours[c["name"]]).all(axis=2), category_masks(img)[c["id"]])
    assert len(set(colours.values())) == len(colours)


def test_images_included(sample, tmp_path):
    categories, images = sample
    images = images[:2]
    with zipfile.ZipFile(export_cvat_coco(images, categories, str(tmp_path / "c.zip"), include_images=True)) as zf:
        for img in images:
            assert zf.read(f"images/default/{img.file_name}") == Path(img.uri).read_bytes()
    with zipfile.ZipFile(export_cvat_mask(images, categories, str(tmp_path / "m.zip"), include_images=True)) as zf:
        for img in images:
            assert zf.read(f"JPEGImages/{img.file_name}") == Path(img.uri).read_bytes()
    ds = dm.Dataset.import_from(str(unzip(tmp_path / "m.zip", tmp_path / "m")), "voc_segmentation")
    assert all(item.media is not None and item.media.has_data for item in ds)


def test_writes_are_atomic(sample, tmp_path):
    categories, images = sample
    dest = tmp_path / "out" / "coco.zip"
    export_cvat_coco(images[:1], categories, str(dest))
    before = dest.read_bytes()
    broken = ExportImage(
        image_id=7,
        uri=images[1].uri,
        width=images[1].width,
        height=images[1].height,
        annotations=[{**images[1].annotations[0], "category_id": 250}],
    )
    with pytest.raises(ValueError, match="unknown category"):
        export_cvat_mask([images[0], broken], categories, str(dest))
    with pytest.raises(ValueError, match="share the name"):
        export_cvat_coco([images[0], images[0]], categories, str(dest))
    assert dest.read_bytes() == before  # the old zip is intact and no temp file is left behind
    assert [p.name for p in dest.parent.iterdir()] == ["coco.zip"]

    url = export_cvat_mask(images[:1], categories, "memory://exports/mask.zip")
    with fsspec.open(url, "rb") as f, zipfile.ZipFile(f) as zf:
        assert "labelmap.txt" in zf.namelist()


def test_labelmap_rejects_unwritable_names():
    with pytest.raises(ValueError, match="background"):
        cvat_labelmap([{"id": 1, "name": "background"}])
    with pytest.raises(ValueError, match="labelmap"):
        cvat_labelmap([{"id": 1, "name": "a:b"}])
    with pytest.raises(ValueError, match="duplicate"):
        cvat_labelmap([{"id": 1, "name": "a"}, {"id": 2, "name": "a"}])
