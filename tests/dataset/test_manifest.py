"""The dataset's format version: manifest written by the first write, old datasets read, newer ones refused."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maskclip_core.dataset import manifest
from maskclip_core.dataset.ids import image_id_from_sha256
from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    DatasetFormatError,
    check_format,
    dataset_format,
    package_version,
)
from maskclip_core.dataset.metrics_table import metrics_row, read_metrics, write_metrics
from maskclip_core.dataset.reader import iter_export_images
from maskclip_core.dataset.schema import ANNOTATIONS_SCHEMA, CATEGORIES_SCHEMA, IMAGES_SCHEMA, stored_schema
from maskclip_core.labeling.annotations import encode_annotations
from maskclip_core.labeling.filter import Region

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)

# The annotations schema as datasets were written before format version 2, spelled out here (not derived from
# the code under test): the labeler column was called "source".
V1_ANNOTATIONS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("labeling_id", pa.string(), nullable=False),
        pa.field("category_id", pa.int32(), nullable=False),
        pa.field(
            "segmentation",
            pa.struct([pa.field("counts", pa.string()), pa.field("size", pa.list_(pa.int32()))]),
            nullable=False,
        ),
        pa.field("area", pa.int64(), nullable=False),
        pa.field("bbox", pa.list_(pa.float64()), nullable=False),
        pa.field("iscrowd", pa.int8(), nullable=False),
        pa.field("score", pa.float32()),
        pa.field("source", pa.string()),
        pa.field("round", pa.int32()),
    ]
)


def labeling(name: str, labeler: str = "maskclip", round_: int = 0, bits: int = 53) -> tuple[dict, list[dict]]:
    digest = hashlib.sha256(name.encode()).hexdigest()
    image_id = image_id_from_sha256(digest, bits)
    labels = np.zeros((4, 6), np.uint8)
    labels[:, 3:] = 1
    row = {
        "image_id": image_id,
        "uri": f"/data/{name}.jpg",
        "sha256": digest,
        "width": 6,
        "height": 4,
        "status": "labeled",
        "config_hash": "cfg",
        "labeling_id": f"lab-{name}",
        "labeler": labeler,
        "round": round_,
        "created_at": T0,
    }
    regions = [Region(0, "a", 12, 0.9), Region(1, "b", 12, 0.8)]
    anns = encode_annotations(
        (labels, regions), category_ids=[1, 2], image_id=image_id, labeling_id=row["labeling_id"],
        labeler=labeler, round=round_, id_bits=bits,
    )  # fmt: skip
    return row, anns


def write_v1_dataset(root: Path) -> None:
    """A dataset as the code before the manifest wrote it: parts only, annotations with ``source``."""
    row, anns = labeling("old", labeler="student", round_=2, bits=63)
    legacy = [{("source" if k == "labeler" else k): v for k, v in a.items()} for a in anns]
    for table, rows, schema in [
        ("categories", [{"id": 1, "name": "a", "synonyms": []}, {"id": 2, "name": "b", "synonyms": []}], None),
        ("annotations", legacy, V1_ANNOTATIONS_SCHEMA),
        ("images", [row], None),
    ]:
        schema = schema or {"categories": CATEGORIES_SCHEMA, "images": IMAGES_SCHEMA}[table]
        os.makedirs(root / table, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / table / "part-b0.parquet")


def read_manifest_file(root: Path) -> dict:
    return json.loads((root / MANIFEST_NAME).read_text())


def test_first_write_creates_the_manifest(tmp_path: Path) -> None:
    root = tmp_path / "out"
    dataset = LabelDataset(str(root))
    assert dataset.format_version == 1 and not (root / MANIFEST_NAME).exists()  # nothing there: read as version 1
    dataset = LabelDataset(str(root))
    dataset.ensure_categories(["a", "b"])
    saved = read_manifest_file(root)
    assert saved["format_version"] == FORMAT_VERSION == 4
    assert saved["writer"] == {"package": "maskclip-labeler", "version": package_version()}
    row, anns = labeling("new")
    dataset.write_batch([row], anns, part_name="b0")
    assert read_manifest_file(root) == saved  # written once
    assert LabelDataset(str(root)).format_version == 4
    on_disk = pq.read_table(root / "annotations" / "part-b0.parquet")
    assert "labeler" in on_disk.column_names and "source" not in on_disk.column_names
    assert not [p for p in os.listdir(root) if p.startswith("_tmp")]  # the manifest was written atomically


def test_manifest_comes_before_any_part_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash after the manifest but before the parts leaves a dataset whose version is still known."""
    root = tmp_path / "out"
    from maskclip_core.dataset import parts

    def crash(url: str, data: bytes, storage_options: object = None) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(parts, "atomic_write_bytes", crash)
    row, anns = labeling("x")
    with pytest.raises(OSError, match="disk gone"):
        LabelDataset(str(root)).write_batch([row], anns, part_name="b0")
    assert read_manifest_file(root)["format_version"] == FORMAT_VERSION


def test_dataset_without_manifest_still_reads(tmp_path: Path) -> None:
    root = tmp_path / "old"
    write_v1_dataset(root)
    dataset = LabelDataset(str(root))
    assert dataset.format_version == 1
    anns = dataset.annotations()
    assert anns.schema == ANNOTATIONS_SCHEMA
    assert set(anns["labeler"].to_pylist()) == {"student"} and set(anns["round"].to_pylist()) == {2}
    [image] = iter_export_images(dataset)
    assert {a["labeler"] for a in image.annotations} == {"student"} and "source" not in image.annotations[0]
    assert [c["name"] for c in dataset.categories()] == ["a", "b"]
    assert not (root / MANIFEST_NAME).exists()  # reading writes nothing


def test_old_dataset_keeps_its_layout_when_written_to(tmp_path: Path) -> None:
    root = tmp_path / "old"
    write_v1_dataset(root)
    row, anns = labeling("new", bits=63)
    narrow_row, narrow_anns = labeling("narrow")
    with pytest.raises(ValueError, match="image_id does not derive from sha256 in 63 bits"):
        LabelDataset(str(root)).write_batch([narrow_row], narrow_anns, part_name="b2")  # its ids keep their width
    assert LabelDataset(str(root)).id_bits == 63
    LabelDataset(str(root)).write_batch([row], anns, part_name="b1")
    assert read_manifest_file(root)["format_version"] == 1  # recorded as what it is, not upgraded
    on_disk = pq.read_table(root / "annotations" / "part-b1.parquet")
    assert on_disk.schema == stored_schema("annotations", 1) and "source" in on_disk.column_names
    anns_read = LabelDataset(str(root)).annotations()
    by_image = dict(zip(anns_read["image_id"].to_pylist(), anns_read["labeler"].to_pylist(), strict=True))
    assert sorted(set(by_image.values())) == ["maskclip", "student"]


@pytest.mark.parametrize("version", [5, 99])
def test_newer_version_is_refused_with_both_versions(tmp_path: Path, version: int) -> None:
    root = tmp_path / "future"
    root.mkdir()
    text = json.dumps({"format": manifest.FORMAT, "format_version": version, "writer": {"version": "9.0"}})
    (root / MANIFEST_NAME).write_text(text)
    expected = (
        f"dataset {root} has format version {version}, newer than this maskclip-labeler {package_version()} "
        "reads format versions 1 to 4: upgrade maskclip-labeler"
    )
    dataset = LabelDataset(str(root))
    with pytest.raises(DatasetFormatError) as info:
        dataset.images()
    assert str(info.value) == expected and "\n" not in str(info.value)
    row, anns = labeling("x")
    with pytest.raises(DatasetFormatError, match=f"format version {version}"):
        LabelDataset(str(root)).write_batch([row], anns, part_name="b0")
    assert not (root / "images").exists()  # nothing written into a dataset it cannot write
    with pytest.raises(DatasetFormatError, match=f"format version {version}"):
        read_metrics(str(root))
    with pytest.raises(DatasetFormatError, match=f"format version {version}"):
        write_metrics(str(root), [metrics_row("run", "teacher", {"miou": 0.5})])


@pytest.mark.parametrize("version", ["2", None, 0, 1.5, True])
def test_unknown_version_is_refused(version: object) -> None:
    with pytest.raises(DatasetFormatError, match=r"has an unknown format version .*reads format versions 1 to 4"):
        check_format(version, "s3://b/x")


def test_known_versions_pass() -> None:
    assert [check_format(v, "x") for v in (1, 2, 3, 4)] == [1, 2, 3, 4]


def test_new_datasets_have_ids_javascript_holds_exactly(tmp_path: Path) -> None:
    """Format 3 on: image and annotation ids below 2**53; a format-2 dataset keeps its 63-bit ids (and its
    version: it is not upgraded in place)."""
    new = LabelDataset(str(tmp_path / "new"))
    assert new.id_bits == 53 and read_manifest_file(tmp_path / "new")["format_version"] == FORMAT_VERSION
    rows = [labeling(f"img{i}") for i in range(200)]
    new.write_batch([r for r, _ in rows], [a for _, anns in rows for a in anns], part_name="b0")
    ids = new.images()["image_id"].to_pylist() + new.annotations()["id"].to_pylist()
    assert len(ids) == 600 and all(0 <= i < 2**53 for i in ids)
    assert max(ids) >= 2**50  # the full 53 bits are used, not a narrower range

    old = tmp_path / "v2"
    old.mkdir()
    text = json.dumps({"format": manifest.FORMAT, "format_version": 2, "writer": {"version": "0.9"}})
    (old / MANIFEST_NAME).write_text(text)
    assert LabelDataset(str(old)).id_bits == 63
    wide_row, wide_anns = labeling("wide", bits=63)
    LabelDataset(str(old)).write_batch([wide_row], wide_anns, part_name="b0")
    [image_id] = LabelDataset(str(old)).images()["image_id"].to_pylist()
    assert image_id == image_id_from_sha256(hashlib.sha256(b"wide").hexdigest(), 63)
    assert read_manifest_file(old)["format_version"] == 2


def test_version_3_dataset_reads_and_is_upgraded_in_place_by_its_first_write(tmp_path: Path) -> None:
    """Version 4 only adds meanings (gone rows, shared labelings, current row per uri) to version 3's layout and
    ids: a version 3 dataset reads as it is, and a writer records version 4 before adding anything, so packages
    that read only up to version 3 refuse it instead of showing an edited file twice."""
    root = tmp_path / "v3"
    root.mkdir()
    v3 = {"format": manifest.FORMAT, "format_version": 3, "writer": {"package": "maskclip-labeler", "version": "0.9"}}
    (root / MANIFEST_NAME).write_text(json.dumps(v3))
    row, anns = labeling("old")
    (root / "images").mkdir()
    pq.write_table(pa.Table.from_pylist([row], schema=IMAGES_SCHEMA), root / "images" / "part-old.parquet")
    dataset = LabelDataset(str(root))
    assert dataset.format_version == 3 and dataset.images()["uri"].to_pylist() == [row["uri"]]
    assert read_manifest_file(root) == v3  # reading writes nothing
    new_row, new_anns = labeling("new")
    dataset.write_batch([new_row], new_anns, part_name="b1")
    saved = read_manifest_file(root)
    assert saved["format_version"] == 4 and saved["writer"] == v3["writer"]
    assert saved["upgraded"]["from"] == 3 and saved["upgraded"]["by"] == package_version()
    assert LabelDataset(str(root)).images().num_rows == 2 and LabelDataset(str(root)).id_bits == 53
    on_disk = pq.read_table(root / "annotations" / "part-b1.parquet")
    assert on_disk.schema == stored_schema("annotations", 3) == stored_schema("annotations", 4)


def test_a_file_that_is_no_manifest_is_refused(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text("[1, 2]")
    with pytest.raises(DatasetFormatError, match="not a maskclip dataset manifest"):
        dataset_format(str(tmp_path))
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(DatasetFormatError, match="is not JSON"):
        dataset_format(str(tmp_path))


def test_manifest_on_s3(s3_server) -> None:  # noqa: ANN001 - the conftest fixture
    url = s3_server.fresh_url("out")
    dataset = LabelDataset(url, s3_server.storage_options)
    row, anns = labeling("s3")
    dataset.write_batch([row], anns, part_name="b0")
    assert dataset_format(url, s3_server.storage_options) == FORMAT_VERSION
    assert LabelDataset(url, s3_server.storage_options).annotations()["labeler"].to_pylist() == ["maskclip"] * 2


def test_a_misspelt_status_is_refused_by_the_shared_reader(tmp_path: Path) -> None:
    """Export and review push select through one reader: a misspelt status is one error, never an empty result."""
    dataset = LabelDataset(str(tmp_path / "d"))
    row, anns = labeling("one")
    dataset.write_batch([row], anns, part_name="b0")
    assert [i.image_id for i in iter_export_images(dataset, statuses=("labeled",))] == [row["image_id"]]
    with pytest.raises(ValueError, match=r"unknown image statuses \['labelled'\]: choose from labeled, rejected"):
        list(iter_export_images(dataset, statuses=("labelled",)))
