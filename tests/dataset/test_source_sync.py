"""The dataset follows its source: edit in place, rename, delete, restore, identical bytes at two uris.

Each "run" is what the label-dataset flow does, without Prefect: list, skip unchanged (uri, version), label
the rest in a batch (reusing known content), then mark what the listing missed as gone.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from support.tiny_labeler import KEEP_ALL

from maskclip_core.dataset.digests import source_digest
from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.reader import iter_export_images, known_images
from maskclip_core.dataset.source_sync import ListedUris, mark_gone
from maskclip_core.labeling.run_records import LabelingPlan, SourceItem
from maskclip_core.labeling.write import label_and_write_batch
from maskclip_core.storage.fs import iter_source_files
from maskclip_core.types import SegmentationResult

CLASSES = ("red", "green", "blue")


class DominantChannel:
    class_names = CLASSES

    def __init__(self) -> None:
        self.images = 0

    def label(self, images):
        self.images += len(images)
        out = []
        for im in images:
            labels = im.astype(np.int64).argmax(axis=2)
            conf = np.full(labels.shape, 0.9, np.float32)
            out.append(SegmentationResult(labels, conf, np.full(3, 0.9, np.float32), np.zeros(3, bool), CLASSES))
        return out

    def config(self) -> dict:
        return {"labeler": "dominant"}


def png(h: int, w: int, channel: int) -> bytes:
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., channel] = 200
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def run(src: Path, store: LabelDataset, labeler: DominantChannel, n: int) -> dict:
    run_id = f"run{n}"
    ids = store.ensure_categories(list(CLASSES))
    plan = LabelingPlan(run_id, "cfg", CLASSES, tuple(ids[c] for c in CLASSES), KEEP_ALL)
    known_sources = store.known_sources("cfg")
    listed = ListedUris()
    items = []
    for f in iter_source_files(str(src)):
        listed.add(f.uri)
        if source_digest(f.uri, f.version) not in known_sources:
            items.append(SourceItem(f.uri, f.version))
    if items:
        label_and_write_batch(0, items, labeler, plan, store, known=store.known_sha256_digests("cfg"))
    gone = mark_gone(store, str(src), listed.build(), run_id=run_id)
    exported = {os.path.basename(i.uri): i for i in iter_export_images(store, config_hash="cfg")}
    return {"gone": gone, "exported": exported}


def sizes(exported: dict) -> dict:
    return {name: (i.width, i.height) for name, i in exported.items()}


def bump_mtime(path: Path, seconds: int) -> None:
    st = path.stat()
    os.utime(path, (st.st_atime + seconds, st.st_mtime + seconds))


def test_edit_rename_delete_restore_and_twins(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(png(8, 8, 0))
    (src / "b.png").write_bytes(png(8, 10, 1))
    (src / "c.png").write_bytes(png(8, 12, 2))
    store = LabelDataset(str(tmp_path / "out"))
    labeler = DominantChannel()
    first = run(src, store, labeler, 1)
    assert sizes(first["exported"]) == {"a.png": (8, 8), "b.png": (10, 8), "c.png": (12, 8)}
    assert labeler.images == 3

    # Edit in place: one record, the new size and labels (before: both, under the same file_name).
    (src / "a.png").write_bytes(png(16, 20, 2))
    bump_mtime(src / "a.png", 10)
    edited = run(src, store, labeler, 2)
    assert sizes(edited["exported"])["a.png"] == (20, 16)
    assert len(edited["exported"]) == 3
    assert {a["category_id"] for a in edited["exported"]["a.png"].annotations} == {3}  # blue now

    # Rename: the new name, labels reused without labeling again; the old name is gone.
    (src / "b.png").rename(src / "b2.png")
    renamed = run(src, store, labeler, 3)
    assert renamed["gone"] == [str(src / "b.png")]
    assert sorted(renamed["exported"]) == ["a.png", "b2.png", "c.png"]
    assert labeler.images == 4  # only the edit was labeled
    assert renamed["exported"]["b2.png"].annotations == first["exported"]["b.png"].annotations

    # Delete: no longer exported (before: still exported).
    shutil.move(src / "c.png", tmp_path / "c-backup.png")
    deleted = run(src, store, labeler, 4)
    assert deleted["gone"] == [str(src / "c.png")] and sorted(deleted["exported"]) == ["a.png", "b2.png"]

    # Restore with its old bytes and mtime: back in the export (before: its old (uri, version) was "known").
    shutil.move(tmp_path / "c-backup.png", src / "c.png")
    restored = run(src, store, labeler, 5)
    assert sorted(restored["exported"]) == ["a.png", "b2.png", "c.png"]
    assert labeler.images == 5  # no current file showed its content: labeled again, not revived

    # Identical bytes at two uris: both exported, distinct image and annotation ids, same labels.
    shutil.copy(src / "c.png", src / "c-copy.png")
    twins = run(src, store, labeler, 6)["exported"]
    assert sorted(twins) == ["a.png", "b2.png", "c-copy.png", "c.png"]
    assert twins["c.png"].sha256 == twins["c-copy.png"].sha256
    assert twins["c.png"].image_id != twins["c-copy.png"].image_id
    ids = [a["id"] for i in twins.values() for a in i.annotations]
    assert len(ids) == len(set(ids))
    strip = [{k: v for k, v in a.items() if k not in ("id", "image_id")} for a in twins["c-copy.png"].annotations]
    assert strip == [{k: v for k, v in a.items() if k not in ("id", "image_id")} for a in twins["c.png"].annotations]
    # Reviews come back under the export's ids (Label Studio tasks, COCO files): both twins are matched.
    known = {image.image_id: image.uri for image in known_images(store)}
    assert known[twins["c.png"].image_id] == str(src / "c.png")
    assert known[twins["c-copy.png"].image_id] == str(src / "c-copy.png")

    # The history keeps every row; exactly one current row per uri.
    history = store.history("cfg")
    current = history.filter(history["current"])
    assert sorted(current["uri"].to_pylist()) == sorted(
        str(src / n) for n in ["a.png", "b.png", "b2.png", "c-copy.png", "c.png"]
    )
    assert history.num_rows > current.num_rows
    statuses = dict(zip(current["uri"].to_pylist(), current["status"].to_pylist(), strict=True))
    assert statuses[str(src / "b.png")] == "gone"


def test_a_listing_restricted_by_glob_marks_only_its_own_files_gone(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    (src / "x" / "1.png").write_bytes(png(4, 4, 0))
    (src / "y.png").write_bytes(png(4, 4, 1))
    store = LabelDataset(str(tmp_path / "out"))
    run(src, store, DominantChannel(), 1)
    listed = ListedUris()  # a run over x/ only, which found nothing
    assert mark_gone(store, str(src), listed.build(), run_id="r2", glob="x/**") == [str(src / "x" / "1.png")]
