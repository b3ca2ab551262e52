"""LabelDataset on local disk and on S3 (moto): commit protocol, current rows, crash orphans, readers."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from maskclip_core.dataset import known_index
from maskclip_core.dataset import parts as parts_module
from maskclip_core.dataset.ids import image_id_from_sha256
from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.schema import ANNOTATIONS_SCHEMA, CATEGORIES_SCHEMA, IMAGES_SCHEMA
from maskclip_core.labeling.annotations import encode_annotations
from maskclip_core.labeling.filter import Region
from maskclip_core.types import IGNORE_INDEX

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
CATEGORY_IDS = [1, 2, 3]  # class index -> category id on a fresh store


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> LabelDataset:
    if request.param == "local":
        return LabelDataset(str(tmp_path / "out"))
    server = request.getfixturevalue("s3_server")
    return LabelDataset(server.fresh_url("out"), storage_options=server.storage_options)


@pytest.fixture
def local_store(tmp_path: Path) -> LabelDataset:
    return LabelDataset(str(tmp_path / "out"))


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def label_map(seed: int, h: int = 6, w: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 3, (h, w)).astype(np.uint8)
    lab[rng.random((h, w)) < 0.2] = IGNORE_INDEX
    return lab


def labeling(
    name: str,
    labeling_id: str,
    *,
    labels: np.ndarray | None = None,
    config: str = "cfg",
    status: str = "labeled",
    created_at: dt.datetime = T0,
    **extra: object,
) -> tuple[dict, list[dict]]:
    """An images row and its annotation rows for image ``name``."""
    digest = sha(name)
    image_id = image_id_from_sha256(digest)
    h, w = labels.shape if labels is not None else (6, 8)
    row = {
        "image_id": image_id,
        "uri": f"/data/{name}.jpg",
        "sha256": digest,
        "width": w,
        "height": h,
        "status": status,
        "config_hash": config,
        "labeling_id": labeling_id,
        "labeler": "maskclip",
        "round": 0,
        "created_at": created_at,
        **extra,
    }
    anns: list[dict] = []
    if labels is not None:
        counts = np.bincount(labels.ravel(), minlength=256)
        regions = [Region(int(c), str(c), int(counts[c]), 0.9) for c in np.flatnonzero(counts[:3])]
        anns = encode_annotations(
            (labels, regions),
            category_ids=CATEGORY_IDS,
            image_id=image_id,
            labeling_id=labeling_id,
            labeler="maskclip",
            round=0,
        )
    return row, anns


def maps_by_uri(st: LabelDataset, **kwargs: object) -> dict[str, np.ndarray]:
    mapping = {cid: i for i, cid in enumerate(CATEGORY_IDS)}
    return {row["uri"]: m for row, m in st.iter_label_maps(category_to_index=mapping, **kwargs)}


# --- empty / missing output ---------------------------------------------------------------------------


def test_missing_output_reads_as_empty(store: LabelDataset) -> None:
    assert store.images().num_rows == 0 and store.images().schema == IMAGES_SCHEMA
    assert store.annotations().num_rows == 0 and store.annotations().schema == ANNOTATIONS_SCHEMA
    assert store.categories() == []
    assert store.known_sha256("cfg") == set()
    assert list(store.iter_label_maps()) == []


def test_empty_directories_read_as_empty(local_store: LabelDataset) -> None:
    for sub in ("images", "annotations", "categories"):
        os.makedirs(os.path.join(local_store.url, sub))
    assert local_store.images().num_rows == 0
    assert local_store.annotations().num_rows == 0
    assert local_store.categories() == []


# --- categories -------------------------------------------------------------------------------------


def test_categories_are_stable(store: LabelDataset) -> None:
    assert store.ensure_categories([("cat", ["kitty"]), ("dog", []), ("cat", [])]) == {"cat": 1, "dog": 2}
    assert store.ensure_categories([("bird", ["fowl"]), ("cat", ["other"])]) == {"bird": 3, "cat": 1}
    assert store.categories() == [
        {"id": 1, "name": "cat", "synonyms": ["kitty"]},
        {"id": 2, "name": "dog", "synonyms": []},
        {"id": 3, "name": "bird", "synonyms": ["fowl"]},
    ]
    parts = store.fs.ls(f"{store.root}/categories")
    assert store.ensure_categories(["dog", "bird"]) == {"dog": 2, "bird": 3}
    assert store.fs.ls(f"{store.root}/categories", refresh=True) == parts  # nothing new: nothing written
    assert len(parts) == 3  # one claim file per id: concurrent writers cannot hand out one id twice


# --- writing and reading ------------------------------------------------------------------------------


def test_write_and_read_back(store: LabelDataset) -> None:
    store.ensure_categories(["a", "b", "c"])
    maps = {f"img{i}": label_map(i) for i in range(4)}
    rows, anns = [], []
    for name, lab in maps.items():
        row, a = labeling(name, f"L-{name}", labels=lab, source_version="etag:1", notes="n")
        rows.append(row)
        anns += a
    rej, _ = labeling("dark", "L-dark", status="rejected", reason="low_labeled_fraction: 0.010 < 0.050")
    fail, _ = labeling("broken", "L-broken", status="failed", reason="truncated")
    written = store.write_batch([*rows, rej, fail], anns, part_name="batch-0001")
    assert written["images"].endswith("images/part-batch-0001.parquet")
    assert written["annotations"].endswith("annotations/part-batch-0001.parquet")

    images = store.images()
    assert images.schema == IMAGES_SCHEMA
    assert images["uri"].to_pylist() == sorted(r["uri"] for r in [*rows, rej, fail])
    assert store.images(statuses=["rejected"])["reason"].to_pylist() == ["low_labeled_fraction: 0.010 < 0.050"]
    assert store.known_sha256("cfg") == {sha(n) for n in [*maps, "dark"]}
    assert store.known_sha256("other") == set()

    got = {row["uri"]: m for row, m in store.iter_label_maps()}  # default mapping: registered categories
    assert set(got) == {f"/data/{n}.jpg" for n in maps}
    for name, lab in maps.items():
        np.testing.assert_array_equal(got[f"/data/{name}.jpg"], lab)
    annotations = store.annotations()
    assert annotations.num_rows == len(anns)
    assert sorted(annotations["id"].to_pylist()) == sorted(a["id"] for a in anns)
    one = image_id_from_sha256(sha("img1"))
    assert set(store.annotations(image_ids=[one])["image_id"].to_pylist()) == {one}


def test_created_at_defaults_to_now(local_store: LabelDataset) -> None:
    row, _ = labeling("x", "L")
    del row["created_at"]
    before = dt.datetime.now(dt.UTC)
    local_store.write_batch([row], [], part_name="p")
    (created,) = local_store.images()["created_at"].to_pylist()
    assert before - dt.timedelta(seconds=1) <= created <= dt.datetime.now(dt.UTC)


def test_crash_between_parts_leaves_annotations_invisible(store: LabelDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    lab = label_map(7)
    row, anns = labeling("img", "L1", labels=lab)
    real_write = parts_module.atomic_write_bytes

    def crash_on_images(url: str, data: bytes, storage_options: object = None) -> None:
        if "/images/" in url:
            raise ConnectionError("worker died")
        real_write(url, data, storage_options)

    monkeypatch.setattr(parts_module, "atomic_write_bytes", crash_on_images)
    with pytest.raises(ConnectionError):
        store.write_batch([row], anns, part_name="b1")
    monkeypatch.undo()
    raw = ds.dataset(f"{store.root}/annotations", filesystem=store._arrow_fs).to_table()
    assert raw.num_rows == len(anns) > 0  # the orphan part is there ...
    assert store.annotations().num_rows == 0  # ... but invisible
    assert store.images().num_rows == 0 and store.known_sha256("cfg") == set()
    assert list(store.iter_label_maps()) == []

    store.write_batch([row], anns, part_name="b1")  # the task retry commits it
    np.testing.assert_array_equal(maps_by_uri(store)["/data/img.jpg"], lab)


def test_relabeling_shows_only_the_newest(store: LabelDataset) -> None:
    old, new = label_map(1), label_map(2)
    row1, anns1 = labeling("img", "L-old", labels=old, created_at=T0)
    row2, anns2 = labeling("img", "L-new", labels=new, created_at=T0 + dt.timedelta(hours=1))
    store.write_batch([row2], anns2, part_name="second")  # write order does not matter: created_at does
    store.write_batch([row1], anns1, part_name="first")
    images = store.images()
    assert images["labeling_id"].to_pylist() == ["L-new"]
    assert set(store.annotations()["labeling_id"].to_pylist()) == {"L-new"}
    np.testing.assert_array_equal(maps_by_uri(store)["/data/img.jpg"], new)
    assert not {a["id"] for a in anns1} & {a["id"] for a in anns2}  # ids never collide across labelings


def test_newest_failed_hides_older_labels(store: LabelDataset) -> None:
    row1, anns1 = labeling("img", "L1", labels=label_map(1), created_at=T0)
    row2, _ = labeling("img", "L2", status="failed", reason="oom", created_at=T0 + dt.timedelta(minutes=1))
    store.write_batch([row1], anns1, part_name="a")
    store.write_batch([row2], [], part_name="b")
    assert store.images()["status"].to_pylist() == ["failed"]
    assert store.images(statuses=["labeled"]).num_rows == 0
    assert store.annotations().num_rows == 0
    assert store.known_sha256("cfg") == set()  # only current rows count: the image is labeled again


def test_configs_are_independent(local_store: LabelDataset) -> None:
    a, b = label_map(1), label_map(2)
    row_a, anns_a = labeling("img", "La", labels=a, config="A")
    row_b, anns_b = labeling("img", "Lb", labels=b, config="B", created_at=T0 + dt.timedelta(days=1))
    local_store.write_batch([row_a, row_b], anns_a + anns_b, part_name="p")
    assert sorted(local_store.images()["config_hash"].to_pylist()) == ["A", "B"]
    np.testing.assert_array_equal(maps_by_uri(local_store, config_hash="A")["/data/img.jpg"], a)
    np.testing.assert_array_equal(maps_by_uri(local_store, config_hash="B")["/data/img.jpg"], b)
    assert set(local_store.annotations(config_hash="A")["labeling_id"].to_pylist()) == {"La"}
    assert local_store.known_sha256("A") == local_store.known_sha256("B") == {sha("img")}


def test_same_batch_under_two_part_names_is_not_duplicated(local_store: LabelDataset) -> None:
    row, anns = labeling("img", "L", labels=label_map(3))
    local_store.write_batch([row], anns, part_name="try1")
    local_store.write_batch([row], anns, part_name="try2")
    assert local_store.images().num_rows == 1
    assert local_store.annotations().num_rows == len(anns)


def test_failed_rows_without_bytes_are_kept_per_uri(local_store: LabelDataset) -> None:
    rows = [
        {"uri": f"/data/unreadable{i}.jpg", "status": "failed", "reason": "read_error", "config_hash": "cfg",
         "labeling_id": f"F{i}", "labeler": "maskclip", "round": 0, "created_at": T0}
        for i in range(3)
    ]  # fmt: skip
    local_store.write_batch(rows, [], part_name="f")
    assert local_store.images()["uri"].to_pylist() == [r["uri"] for r in rows]
    assert list(local_store.iter_label_maps(statuses=["failed"])) == []


def test_many_labelings_have_unique_ids(local_store: LabelDataset) -> None:
    rows, anns = [], []
    for i in range(60):
        row, a = labeling(f"img{i}", f"L{i}", labels=label_map(i))
        rows.append(row)
        anns += a
    local_store.write_batch(rows, anns, part_name="big")
    ids = local_store.annotations()["id"].to_pylist()
    assert len(ids) == len(set(ids)) == len(anns)


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"status": "done"}, "status"),
        ({"labeler": "human"}, "labeler"),
        ({"typo": 1}, "unknown"),
        ({"config_hash": None}, "missing"),
        ({"image_id": 12345}, "derive"),
        ({"width": None}, "width"),
        ({"sha256": None}, "sha256"),
    ],
)
def test_invalid_images_rows(local_store: LabelDataset, change: dict, message: str) -> None:
    row, _ = labeling("img", "L")
    row.update(change)
    with pytest.raises(ValueError, match=message):
        local_store.write_batch([row], [], part_name="p")
    assert local_store.images().num_rows == 0


def test_annotations_need_a_labeled_row_in_the_batch(local_store: LabelDataset) -> None:
    row, anns = labeling("img", "L", labels=label_map(1))
    other, _ = labeling("img2", "L2")
    with pytest.raises(ValueError, match="no labeled images row"):
        local_store.write_batch([other], anns, part_name="p")
    with pytest.raises(ValueError, match="never become visible"):
        local_store.write_batch([], anns, part_name="p")
    row["status"] = "rejected"
    with pytest.raises(ValueError, match="no labeled images row"):
        local_store.write_batch([row], anns, part_name="p")
    assert not os.path.exists(os.path.join(local_store.url, "annotations"))


@pytest.mark.parametrize("name", ["../x", "a/b", "_hidden", ".dot", ""])
def test_bad_part_names(local_store: LabelDataset, name: str) -> None:
    row, _ = labeling("img", "L")
    with pytest.raises(ValueError, match="part name"):
        local_store.write_batch([row], [], part_name=name)


# --- files on disk ------------------------------------------------------------------------------------


def test_parts_readable_by_plain_pyarrow(local_store: LabelDataset) -> None:
    local_store.ensure_categories(["a", "b", "c"])
    row, anns = labeling("img", "L", labels=label_map(1))
    local_store.write_batch([row], anns, part_name="p")
    root = local_store.url
    assert ds.dataset(os.path.join(root, "images")).to_table().schema == IMAGES_SCHEMA
    assert ds.dataset(os.path.join(root, "annotations")).to_table().num_rows == len(anns)
    assert ds.dataset(os.path.join(root, "categories")).schema == CATEGORIES_SCHEMA
    assert sorted(os.listdir(os.path.join(root, "images"))) == ["part-p.parquet"]


def test_temporary_and_hidden_files_are_ignored(local_store: LabelDataset) -> None:
    row, anns = labeling("img", "L", labels=label_map(1))
    local_store.write_batch([row], anns, part_name="p")
    for sub in ("images", "annotations"):
        Path(local_store.url, sub, "_tmp-abc-part-x.parquet").write_bytes(b"half a parquet file")
        Path(local_store.url, sub, ".DS_Store").write_bytes(b"junk")
    assert local_store.images().num_rows == 1
    assert local_store.annotations().num_rows == len(anns)


def test_older_parts_without_new_columns_still_read(local_store: LabelDataset) -> None:
    row, _ = labeling("img", "L")
    old_schema = pa.schema([f for f in IMAGES_SCHEMA if f.name != "source_version"])
    os.makedirs(os.path.join(local_store.url, "images"))
    pq.write_table(
        pa.Table.from_pylist([row], schema=old_schema),
        os.path.join(local_store.url, "images", "part-old.parquet"),
    )
    images = local_store.images()
    assert images["source_version"].to_pylist() == [None] and images["uri"].to_pylist() == ["/data/img.jpg"]


def test_known_sha256_reads_three_columns_by_part(local_store: LabelDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    n_parts, per_part = 4, 10_000
    for p in range(n_parts):
        rows = []
        for i in range(per_part):
            digest = hashlib.sha256(f"{p}-{i}".encode()).hexdigest()
            rows.append(
                {"image_id": image_id_from_sha256(digest), "uri": f"/d/{p}/{i}.jpg", "sha256": digest,
                 "width": 4, "height": 4, "status": ("labeled", "rejected", "failed")[i % 3],
                 "config_hash": "cfg" if i % 2 else "other", "labeling_id": f"{p}-{i}",
                 "labeler": "student", "round": 1, "created_at": T0}
            )  # fmt: skip
        local_store.write_batch(rows, [], part_name=f"p{p}")
    calls: list[list[str]] = []
    real_scan = known_index.scan_config

    def spy(dataset_parts: parts_module.DatasetParts, config_hash: str, columns: list[str], **kwargs):
        calls.append(list(columns))
        for batch in real_scan(dataset_parts, config_hash, columns, **kwargs):
            # The few columns that pick the current row of a uri, plus the one asked for.
            assert sorted(batch.schema.names) == sorted({"uri", "status", "created_at", "labeling_id", *columns})
            assert batch.num_rows <= known_index._SCAN_BATCH_ROWS
            yield batch

    monkeypatch.setattr(known_index, "scan_config", spy)
    known = local_store.known_sha256("cfg")
    expected = sum(1 for i in range(per_part) if i % 2 and i % 3 != 2) * n_parts
    assert len(known) == expected
    assert calls == [[], ["sha256"]]  # two streaming passes: current rows, then their content


def test_known_sha256_digests_match_the_hex_set(local_store: LabelDataset) -> None:
    """The column-wise hex parsing gives exactly ``sha256_digest`` of each done row (upper case included)."""
    from maskclip_core.dataset.digests import sha256_digest

    rows = []
    for i in range(300):
        row, _ = labeling(f"img{i}", f"l{i}", status=("labeled", "rejected", "failed")[i % 3])
        if i % 7 == 0:
            row["sha256"] = row["sha256"].upper()
            row["image_id"] = image_id_from_sha256(row["sha256"])
        rows.append(row)
    local_store.write_batch(rows, [], part_name="p1")
    expected = {sha256_digest(r["sha256"]) for r in rows if r["status"] != "failed"}
    index = local_store.known_sha256_digests("cfg")
    assert len(index) == len(expected) == 200
    assert all(d in index for d in expected)
    assert sha256_digest(sha("img2")) not in index  # failed: retried
    assert len(local_store.known_sha256_digests("other")) == 0


def test_known_sha256_digests_reject_a_malformed_sha256(local_store: LabelDataset) -> None:
    row, _ = labeling("img", "l1")
    table = pa.Table.from_pylist([{**row, "sha256": "abcd", "image_id": 1}], schema=IMAGES_SCHEMA)
    os.makedirs(os.path.join(local_store.url, "images"))
    pq.write_table(table, os.path.join(local_store.url, "images", "part-x.parquet"))
    with pytest.raises(ValueError, match="not a hex SHA-256"):
        local_store.known_sha256_digests("cfg")


@pytest.mark.parametrize("small_part_bytes", [0, 1 << 40])  # every part streamed / every part read whole
def test_known_indexes_read_parts_whole_or_streamed(
    local_store: LabelDataset, monkeypatch: pytest.MonkeyPatch, small_part_bytes: int
) -> None:
    from maskclip_core.dataset.digests import sha256_digest, source_digest

    monkeypatch.setattr(known_index, "SMALL_PART_BYTES", small_part_bytes)
    monkeypatch.setattr(known_index, "_SCAN_WINDOW_BYTES", 1)  # a window of one part at a time
    expected_sources, expected_shas = set(), set()
    for p in range(5):
        rows = []
        for i in range(50):
            status = ("labeled", "rejected", "failed")[i % 3]
            row, _ = labeling(f"{p}-{i}", f"l{p}-{i}", status=status, source_version=f"v{i}")
            rows.append(row)
            if status != "failed":
                expected_sources.add(source_digest(row["uri"], f"v{i}"))
                expected_shas.add(sha256_digest(row["sha256"]))
        local_store.write_batch(rows, [], part_name=f"p{p}")
    old, _ = labeling("old", "l-old")  # a part written before source_version existed
    table = pa.Table.from_pylist([old], schema=IMAGES_SCHEMA).drop_columns(["source_version"])
    pq.write_table(table, os.path.join(local_store.url, "images", "part-old.parquet"))
    expected_shas.add(sha256_digest(old["sha256"]))
    sources = local_store.known_sources("cfg")
    shas = local_store.known_sha256_digests("cfg")
    assert len(sources) == len(expected_sources) and all(d in sources for d in expected_sources)
    assert len(shas) == len(expected_shas) and all(d in shas for d in expected_shas)


# --- compaction of the images index ---------------------------------------------------------------------


def _snapshot(st: LabelDataset) -> tuple:
    images = st.images().sort_by("uri").to_pylist()
    maps = {uri: (m.shape, m.tobytes()) for uri, m in maps_by_uri(st).items()}
    return images, maps, st.known_sha256("cfg"), len(st.known_sources("cfg"))


def test_compaction_merges_small_images_parts_and_changes_no_reader(store: LabelDataset) -> None:
    for i in range(12):  # 12 batches of 2 images, one relabeled later (its newest row must stay current)
        rows, anns = [], []
        for j in range(2):
            r, a = labeling(f"img{i}-{j}", f"L{i}-{j}", labels=label_map(i * 10 + j), source_version=f"v{i}")
            rows.append(r)
            anns += a
        store.write_batch(rows, anns, part_name=f"b{i:02d}")
    newer, newer_anns = labeling("img0-0", "L-new", labels=label_map(99), created_at=T0 + dt.timedelta(days=1))
    store.write_batch([newer], newer_anns, part_name="relabel")
    before = _snapshot(store)
    assert len(store._part_files("images")) == 13

    assert store.compact_images(min_parts=20) == {"merged_parts": 0, "written_parts": 0}  # below the threshold
    counts = store.compact_images(min_parts=5, max_rows=10)
    assert counts["merged_parts"] == 13 and counts["written_parts"] == 3  # 10 + 10 + 5 rows: at most 10 per part
    assert len(store._part_files("images")) == 3
    assert _snapshot(store) == before
    np.testing.assert_array_equal(maps_by_uri(store)["/data/img0-0.jpg"], label_map(99))


def test_compaction_interrupted_before_deleting_its_members_is_harmless(local_store: LabelDataset, monkeypatch) -> None:
    for i in range(6):
        row, anns = labeling(f"img{i}", f"L{i}", labels=label_map(i), source_version="v")
        local_store.write_batch([row], anns, part_name=f"b{i}")
    before = _snapshot(local_store)
    monkeypatch.setattr(local_store.fs, "rm", lambda paths: None)  # crash after the merged part, before deletes
    local_store.compact_images(min_parts=2)
    assert len(local_store._part_files("images")) == 7  # every row is now there twice
    assert _snapshot(local_store) == before
    monkeypatch.undo()
    assert local_store.compact_images(min_parts=2) == {"merged_parts": 7, "written_parts": 1}
    assert len(local_store._part_files("images")) == 1
    assert _snapshot(local_store) == before
