"""``maskclip export`` from a store built through the labeling path, read back by each tool's own library."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import datumaro as dm
import numpy as np
import pytest
from datumaro.components.annotation import AnnotationType
from label_studio_sdk.converter import brush
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from support.review_store import CONFIG, NAMES, Built, build_store, fails, run

from maskclip_core.dataset.reader import common_root, iter_export_images, source_root
from maskclip_core.interchange.coco import build_coco_dict
from maskclip_core.interchange.polygons import polygons_to_mask


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("export")
    return build_store(str(root / "out"), root / "src")


def export(built: Built, fmt: str, dest: Path | str, *extra: str) -> list[str]:
    """argv of ``maskclip export FMT --dataset <built store> --out DEST ...``."""
    return ["export", fmt, "--dataset", built.store.url, "--out", str(dest), *extra]


def read_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def names_to_ids(built: Built) -> dict[str, int]:
    return {name: built.category_ids[name] for name in NAMES}


def labeled_ids(built: Built) -> set[int]:
    return {i for i, s in built.status.items() if s == "labeled"}


# --- the four formats ---------------------------------------------------------------------------------


def test_coco_reads_back_with_pycocotools(built, tmp_path, capsys):
    dest = tmp_path / "coco.json"
    summary = run(capsys, "export", "coco", "--dataset", built.store.url, "--out", str(dest))
    assert (summary["images"], summary["annotations"]) == (3, 5)
    assert summary["annotations_per_class"] == {"cat": 2, "dog": 2, "grass": 1}
    coco = read_coco(dest)
    # names relative to the common source folder: the two img.png stay apart
    by_name = {img["file_name"]: img["id"] for img in coco.dataset["images"]}
    assert by_name == {n: built.ids[n] for n in ("a/img.png", "b/img.png", "b/c/other.png")}
    assert {c["name"] for c in coco.dataset["categories"]} == set(NAMES)
    seen = 0
    for ann in coco.dataset["annotations"]:
        expected = built.masks[ann["image_id"]][ann["category_id"]]
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), expected)
        assert ann["score"] == pytest.approx(built.scores[ann["image_id"]][ann["category_id"]])
        seen += 1
    assert seen == 5
    # the same entries as the labeling side's COCO export: equal content, dates and order aside
    same = build_coco_dict(built.store, file_name_root=source_root(built.store))
    doc = json.loads(dest.read_text())

    def by_id(entries: list[dict]) -> list[dict]:
        return sorted(entries, key=lambda e: e["id"])

    assert (by_id(doc["images"]), by_id(doc["annotations"]), doc["categories"]) == (
        by_id(same["images"]),
        by_id(same["annotations"]),
        same["categories"],
    )


def test_label_studio_reads_back_with_the_sdk(built, tmp_path, capsys):
    src, dest = str(built.source), tmp_path / "ls"
    run(capsys, *export(built, "label-studio", dest, "--document-root", src, "--model-version", "mc-7"))
    tasks = json.loads((dest / "tasks.json").read_text())
    labels = [e.get("value") for e in ET.parse(dest / "config.xml").getroot().iter("Label")]
    assert labels == list(NAMES)
    ids = names_to_ids(built)
    assert {int(t["data"]["image_id"]) for t in tasks} == labeled_ids(built)
    for task in tasks:
        image_id = int(task["data"]["image_id"])
        name = task["data"]["file_name"]
        assert built.ids[name] == image_id
        assert task["data"]["image"] == f"/data/local-files/?d={name}"
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == "mc-7"
        flat = [{**r, **r["value"]} for r in prediction["result"]]
        layers = brush.decode_from_annotation("tag", flat)
        assert len(layers) == len(built.masks[image_id])
        for cname, cid in ids.items():
            if cid in built.masks[image_id]:
                np.testing.assert_array_equal(layers[f"tag-{cname}-0"] != 0, built.masks[image_id][cid])

    run(capsys, *export(built, "label-studio", dest, "--document-root", src, "--polygons"))
    for task in json.loads((dest / "tasks.json").read_text()):
        image_id = int(task["data"]["image_id"])
        got: dict[int, np.ndarray] = {}
        for r in task["predictions"][0]["result"]:
            assert r["type"] == "polygonlabels"
            xy = np.asarray(r["value"]["points"]) * (r["original_width"] / 100, r["original_height"] / 100)
            rle = mask_utils.frPyObjects([xy.ravel().tolist()], r["original_height"], r["original_width"])
            cid = ids[r["value"]["polygonlabels"][0]]
            got[cid] = got.get(cid, False) | mask_utils.decode(rle)[:, :, 0].astype(bool)
        assert got.keys() == built.masks[image_id].keys()
        for cid, mask in got.items():
            np.testing.assert_array_equal(mask, built.masks[image_id][cid])


def test_label_studio_needs_a_document_root_for_local_files(built, tmp_path, capsys):
    err = fails(capsys, "export", "label-studio", "--dataset", built.store.url, "--out", str(tmp_path / "ls" / "x"))
    assert "document_root" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no half-written file, and no empty folder left behind
    # A folder that was there already stays, and so does what it holds.
    (tmp_path / "ls").mkdir()
    (tmp_path / "ls" / "notes.txt").write_text("mine")
    fails(capsys, *export(built, "label-studio", tmp_path / "ls" / "x"))
    assert [p.name for p in (tmp_path / "ls").iterdir()] == ["notes.txt"]


def test_label_studio_files_are_readable_by_the_label_studio_user(built, tmp_path, capsys):
    """Label Studio, a web server or a colleague reading the export may run as another user: 0644, as any file
    the user writes under the usual umask, not the 0600 of a temporary file."""
    previous = os.umask(0o022)
    try:
        run(capsys, *export(built, "label-studio", tmp_path / "ls", "--document-root", str(built.source)))
        run(capsys, *export(built, "coco", tmp_path / "coco.json"))
    finally:
        os.umask(previous)
    for path in (tmp_path / "ls" / "tasks.json", tmp_path / "ls" / "config.xml", tmp_path / "coco.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_cvat_coco_reads_back_with_datumaro(built, tmp_path, capsys):
    for polygons in (False, True):
        zpath = tmp_path / f"cvat-{polygons}.zip"
        extra = ["--polygons"] if polygons else ["--include-images"]
        run(capsys, "export", "cvat-coco", "--dataset", built.store.url, "--out", str(zpath), *extra)
        root = tmp_path / f"cvat-{polygons}"
        zipfile.ZipFile(zpath).extractall(root)
        ds = dm.Dataset.import_from(str(root), "coco_instances")
        labels = ds.categories()[AnnotationType.label]
        by_item = {Path(name).with_suffix("").as_posix(): image_id for name, image_id in built.ids.items()}
        got: dict[tuple[int, str], np.ndarray] = {}
        for item in ds:
            image_id = by_item[item.id]
            for ann in item.annotations:
                if ann.type == AnnotationType.bbox:
                    continue  # datumaro adds each shape's box
                if polygons:
                    assert ann.type == AnnotationType.polygon
                    mask = polygons_to_mask([list(ann.points)], 32, 48)
                else:
                    assert ann.type == AnnotationType.mask
                    mask = ann.image.astype(bool)
                key = (image_id, labels[ann.label].name)
                got[key] = got.get(key, False) | mask
        ids = names_to_ids(built)
        expected = {
            (i, n): m for i, masks in built.masks.items() for n, cid in ids.items() if (m := masks.get(cid)) is not None
        }
        assert got.keys() == expected.keys()
        for key, mask in expected.items():
            np.testing.assert_array_equal(got[key], mask)
    with zipfile.ZipFile(tmp_path / "cvat-False.zip") as zf:
        for name in ("a/img.png", "b/img.png"):
            assert zf.read(f"images/default/{name}") == (built.source / name).read_bytes()


def test_cvat_mask_reads_back_with_datumaro(built, tmp_path, capsys):
    zpath = tmp_path / "mask.zip"
    run(capsys, "export", "cvat-mask", "--dataset", built.store.url, "--out", str(zpath))
    zipfile.ZipFile(zpath).extractall(tmp_path / "mask")
    ds = dm.Dataset.import_from(str(tmp_path / "mask"), "voc_segmentation")
    labels = ds.categories()[AnnotationType.label]
    by_item = {Path(name).with_suffix("").as_posix(): image_id for name, image_id in built.ids.items()}
    ids = names_to_ids(built)
    assert {by_item[item.id] for item in ds} == labeled_ids(built)
    for item in ds:
        image_id = by_item[item.id]
        got = {labels[a.label].name: a.image.astype(bool) for a in item.annotations}
        assert {ids[n] for n in got} == built.masks[image_id].keys()
        for name, mask in got.items():
            np.testing.assert_array_equal(mask, built.masks[image_id][ids[name]])


# --- selection ----------------------------------------------------------------------------------------


def coco_selection(built: Built, tmp_path: Path, capsys: pytest.CaptureFixture, *flags: str) -> dict[int, set[str]]:
    """image id -> class names exported as COCO with ``flags``."""
    dest = tmp_path / "sel.json"
    summary = run(capsys, "export", "coco", "--dataset", built.store.url, "--out", str(dest), *flags)
    doc = json.loads(dest.read_text())
    names = {c["id"]: c["name"] for c in doc["categories"]}
    out: dict[int, set[str]] = {img["id"]: set() for img in doc["images"]}
    for ann in doc["annotations"]:
        out[ann["image_id"]].add(names[ann["category_id"]])
    assert summary["images"] == len(out) and summary["annotations"] == len(doc["annotations"])
    return out


def test_filters(built, tmp_path, capsys):
    a, b, other = built.ids["a/img.png"], built.ids["b/img.png"], built.ids["b/c/other.png"]
    assert coco_selection(built, tmp_path, capsys, "--classes", "kitty") == {a: {"cat"}, b: {"cat"}}  # a synonym
    assert coco_selection(built, tmp_path, capsys, "--classes", "3,dog") == {a: {"dog"}, b: {"grass"}, other: {"dog"}}
    assert coco_selection(built, tmp_path, capsys, "--min-score", "0.65") == {a: {"cat", "dog"}, b: {"grass"}}
    assert coco_selection(built, tmp_path, capsys, "--max-score", "0.55") == {other: {"dog"}}
    assert coco_selection(built, tmp_path, capsys, "--round", "1") == {other: {"dog"}}
    assert coco_selection(built, tmp_path, capsys, "--labeled-by", "maskclip") == {
        a: {"cat", "dog"},
        b: {"cat", "grass"},
    }
    assert coco_selection(built, tmp_path, capsys, "--image-ids", str(a)) == {a: {"cat", "dog"}}
    assert coco_selection(built, tmp_path, capsys, "--config-hash", "other") == {}
    assert coco_selection(built, tmp_path, capsys, "--classes", "cat", "--min-score", "0.7") == {a: {"cat"}}

    # rejected images travel to Label Studio too (review what the filter threw away), without predictions
    dest = tmp_path / "ls"
    root = str(built.source)
    summary = run(capsys, *export(built, "label-studio", dest, "--document-root", root, "--status", "labeled,rejected"))
    tasks = {t["data"]["file_name"]: t for t in json.loads((dest / "tasks.json").read_text())}
    assert summary["images"] == 4 and summary["filters"] == {"statuses": ["labeled", "rejected"]}
    assert tasks["d.png"]["data"]["status"] == "rejected" and tasks["d.png"]["predictions"][0]["result"] == []

    assert "unicorn" in fails(
        capsys, "export", "coco", "--dataset", built.store.url, "--out", str(dest), "--classes", "unicorn"
    )
    assert "labeled images only" in fails(
        capsys, "export", "coco", "--dataset", built.store.url, "--out", str(dest), "--status", "rejected"
    )
    err = fails(capsys, "export", "cvat-mask", "--dataset", built.store.url, "--out", str(dest), "--polygons")
    assert "polygons applies to label-studio, cvat-coco" in err
    assert "min_score" in fails(
        capsys,
        "export",
        "coco",
        "--dataset",
        built.store.url,
        "--out",
        str(dest),
        "--min-score",
        "0.9",
        "--max-score",
        "0.1",
    )


def test_lowest_scored_first(built, tmp_path, capsys):
    # image scores (area-weighted): a/img .85, b/img .65, b/c/other .50
    dest = tmp_path / "ls"
    run(capsys, *export(built, "label-studio", dest, "--document-root", str(built.source), "--lowest", "2"))
    tasks = json.loads((dest / "tasks.json").read_text())
    assert [t["data"]["file_name"] for t in tasks] == ["b/c/other.png", "b/img.png"]
    assert [t["predictions"][0]["score"] for t in tasks] == pytest.approx([0.5, 0.65])
    b = built.ids["b/img.png"]
    # filters first, then the ranking: the lowest image that has cat
    assert coco_selection(built, tmp_path, capsys, "--lowest", "1", "--classes", "cat") == {b: {"cat"}}
    assert "greater than or equal to 1" in fails(
        capsys, "export", "coco", "--dataset", built.store.url, "--out", str(dest), "--lowest", "0"
    )


# --- store edge cases ---------------------------------------------------------------------------------


def test_several_configs_need_config_hash(tmp_path, capsys):
    built = build_store(str(tmp_path / "out"), tmp_path / "src")
    build_store(str(tmp_path / "out"), tmp_path / "src", config="cfg-b")
    assert "config_hash" in fails(capsys, *export(built, "coco", tmp_path / "x.json"))
    assert "config_hash" in fails(capsys, *export(built, "label-studio", tmp_path / "ls", "--document-root", "/"))
    summary = run(capsys, *export(built, "cvat-mask", tmp_path / "m.zip", "--config-hash", CONFIG))
    assert summary["images"] == 3


def test_repeated_batches_and_unfinished_parts_are_invisible(tmp_path):
    built = build_store(str(tmp_path / "out"), tmp_path / "src")
    out = tmp_path / "out"
    # a batch written twice under two part names (a retried task) and a part still being written
    for table in ("images", "annotations"):
        shutil.copy(out / table / f"part-{CONFIG}-batch0.parquet", out / table / "part-retry.parquet")
    (out / "annotations" / "_tmp-1234-part-x.parquet").write_bytes(b"not parquet yet")
    images = list(iter_export_images(built.store))
    assert sorted(i.image_id for i in images) == sorted(labeled_ids(built))
    for image in images:
        assert sorted(a["category_id"] for a in image.annotations) == sorted(built.masks[image.image_id])
    # images without annotations come after, in uri order
    everything = list(iter_export_images(built.store, statuses=("labeled", "rejected")))
    assert everything[-1].image_id == built.ids["d.png"] and everything[-1].annotations == []
    lean = list(iter_export_images(built.store, with_annotations=False))
    assert [i.file_name for i in lean] == ["a/img.png", "b/c/other.png", "b/img.png"]


def test_common_root():
    assert common_root(["/data/a/x.jpg", "/data/b/y.jpg"]) == "/data"
    assert common_root(["/data/a/x.jpg"]) == "/data/a"
    assert common_root(["/a/x.jpg", "/b/y.jpg"]) == "/"
    assert common_root(["s3://bkt/p/a/x.jpg", "s3://bkt/p/y.jpg"]) == "s3://bkt/p"
    assert common_root(["s3://one/x.jpg", "s3://two/y.jpg"]) is None  # no folder in common: basenames
    assert common_root(["s3://bkt/x.jpg", "/local/x.jpg"]) is None
    assert common_root([]) is None


# --- the Prefect flow ---------------------------------------------------------------------------------


def test_export_flow_writes_files_and_a_summary_artifact(built, tmp_path, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from flows.export_annotations import ARTIFACT_KEY, export_annotations
    from maskclip_core.interchange.export import ExportParameters

    params = ExportParameters(
        format="cvat-coco", dataset=built.store.url, destination=str(tmp_path / "c.zip"), classes=["dog"]
    )
    state = export_annotations(params, return_state=True)
    summary = state.result()
    assert summary["images"] == 2 and summary["annotations_per_class"] == {"dog": 2}
    assert zipfile.ZipFile(tmp_path / "c.zip").namelist()[0] == "annotations/instances_default.json"
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[ARTIFACT_KEY]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            )
        )
    assert artifact.type == "markdown"
    assert "| dog | 2 |" in artifact.data and f"`{tmp_path / 'c.zip'}`" in artifact.data
    assert "classes=['dog']" in artifact.data


# --- file names a line-based item list cannot hold (issue 21, item 5) --------------------------------------


def odd_named_store(root: Path, names: list[str]) -> Built:
    """A store whose labeled images carry ``names`` (relative to the source folder), each labeled like
    ``a/img.png`` (cat left half, dog right half), in one batch."""
    return build_store(str(root / "out"), root / "src", batches=[names], predict_as="a/img.png")


# Names whose item id (the name without extension) datumaro's VOC reader, which CVAT imports with, would
# split into two lines, skip as a comment, or strip to another name.
UNLISTABLE = [
    "x\ny.png",
    "cr\rname.png",
    "crlf\r\nname.png",
    "#notes.png",
    "trailing .png",
    "tab\there.png",
    "sep\u2028x.png",
]


@pytest.mark.parametrize("bad", UNLISTABLE)
def test_cvat_mask_refuses_a_name_its_item_list_cannot_hold(tmp_path, capsys, bad):
    built = odd_named_store(tmp_path, ["ok.png", bad])
    dest = tmp_path / "m.zip"
    err = fails(capsys, *export(built, "cvat-mask", dest))
    assert len(err.strip().splitlines()) == 1, err  # one line, the name shown escaped
    assert repr(bad) in err and "cvat-coco" in err  # names the file, and the format that can carry it
    assert not dest.exists()  # nothing half written, no zip with the image's masks lost


def test_json_exports_carry_any_name_and_cvat_mask_reads_back_odd_but_listable_names(tmp_path, capsys):
    """JSON strings hold every name exactly (coco, label-studio, cvat-coco); names with spaces, quotes, a
    ``#`` inside or non-ASCII letters are fine in ``default.txt`` too, and datumaro reads back every item."""
    odd = ["a b.png", 'say "hi".png', "x#1.png", "dir/ü ñ.png", "ok.png"]
    built = odd_named_store(tmp_path, [*UNLISTABLE[:2], *odd])
    run(capsys, *export(built, "coco", tmp_path / "c.json"))
    assert {i["file_name"] for i in json.loads((tmp_path / "c.json").read_text())["images"]} == set(built.ids)
    run(capsys, *export(built, "label-studio", tmp_path / "ls", "--document-root", str(built.source)))
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert {t["data"]["file_name"] for t in tasks} == set(built.ids)
    assert all("\n" not in t["data"]["image"] and "\r" not in t["data"]["image"] for t in tasks)
    run(capsys, *export(built, "cvat-coco", tmp_path / "cc.zip"))
    doc = json.loads(zipfile.ZipFile(tmp_path / "cc.zip").read("annotations/instances_default.json"))
    assert {i["file_name"] for i in doc["images"]} == set(built.ids)

    odd_only = odd_named_store(tmp_path / "odd", odd)
    run(capsys, *export(odd_only, "cvat-mask", tmp_path / "m.zip"))
    zipfile.ZipFile(tmp_path / "m.zip").extractall(tmp_path / "m")
    ds = dm.Dataset.import_from(str(tmp_path / "m"), "voc_segmentation")
    labels = ds.categories()[AnnotationType.label]
    by_item = {Path(name).with_suffix("").as_posix(): image_id for name, image_id in odd_only.ids.items()}
    assert sorted(item.id for item in ds) == sorted(by_item)
    ids = names_to_ids(odd_only)
    for item in ds:
        image_id = by_item[item.id]
        got = {labels[a.label].name: a.image.astype(bool) for a in item.annotations}
        assert {ids[n] for n in got} == odd_only.masks[image_id].keys()
        for name, mask in got.items():
            np.testing.assert_array_equal(mask, odd_only.masks[image_id][ids[name]])


def test_an_empty_selection_exports_nothing_with_a_warning(built, tmp_path, capsys):
    from support.cli_runner import run_cli

    code, out, err = run_cli(capsys, *export(built, "coco", tmp_path / "none.json", "--max-score", "0"))
    assert code == 0 and json.loads(out)["images"] == 0
    assert "warning: no image matched the selection; the export is empty" in err
