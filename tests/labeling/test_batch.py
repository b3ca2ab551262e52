"""maskclip_core.labeling.batch, digests and report without Prefect: one batch from bytes to rows, ids, index."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from support.bad_inputs import corpus_bytes
from support.tiny_labeler import KEEP_ALL, TINY

from maskclip_core.dataset.digests import DigestSet, DigestSetBuilder, sha256_digest, source_digest
from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.rle import annotations_to_label_map
from maskclip_core.labeling.batch import process_batch
from maskclip_core.labeling.config_hash import labeling_config_hash
from maskclip_core.labeling.filter import FilterConfig, filter_labels
from maskclip_core.labeling.registry import (
    LabelerParameters,
    StudentUnavailableError,
    labeler_categories,
    labeler_round,
    load_labeler,
)
from maskclip_core.labeling.report import RunSummary
from maskclip_core.labeling.run_records import FailedBatch, LabelingPlan, SourceItem
from maskclip_core.labeling.write import label_and_write_batch, write_batch_result
from maskclip_core.storage.fs import sha256_hex
from maskclip_core.types import IGNORE_INDEX, SegmentationResult

CLASSES = ("red", "green", "blue")


class ColorLabeler:
    """A deterministic stand-in for a model: each pixel gets its dominant RGB channel, confidence 0.9."""

    class_names = CLASSES

    def __init__(self, fail_width: int | None = None) -> None:
        self.fail_width = fail_width
        self.calls: list[int] = []

    def label(self, images):
        self.calls.append(len(images))
        out = []
        for im in images:
            if im.shape[1] == self.fail_width:
                raise RuntimeError("model exploded on this image")
            labels = im.astype(np.int64).argmax(axis=2)
            out.append(
                SegmentationResult(
                    labels=labels,
                    confidence=np.full(labels.shape, 0.9, np.float32),
                    class_scores=np.full(3, 0.9, np.float32),
                    dropped=np.zeros(3, bool),
                    class_names=CLASSES,
                )
            )
        return out

    def config(self) -> dict:
        return {"labeler": "color"}


def plan(run_id: str = "run-1", filters: FilterConfig = KEEP_ALL, **kw) -> LabelingPlan:
    return LabelingPlan(
        run_id=run_id, config_hash="cfg", class_names=CLASSES, category_ids=(1, 2, 3), filters=filters, **kw
    )


def jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def solid(h: int, w: int, channel: int) -> np.ndarray:
    rgb = np.full((h, w, 3), 20, np.uint8)
    rgb[..., channel] = 230
    return rgb


def label_map_of(rows: list[dict], annotations: list[dict], uri: str) -> np.ndarray:
    row = next(r for r in rows if r["uri"] == uri)
    anns = [a for a in annotations if a["labeling_id"] == row["labeling_id"]]
    return annotations_to_label_map(anns, row["height"], row["width"], {1: 0, 2: 1, 3: 2})


# --- one batch ----------------------------------------------------------------------------------------------


def test_bad_input_corpus_outcomes_and_exif_orientation() -> None:
    corpus = corpus_bytes()
    files = {f"mem://{name}": data for name, (data, _) in corpus.items()}
    items = [SourceItem(uri, "v1") for uri in files]
    result = process_batch(items, ColorLabeler(), plan(), read=files.__getitem__)

    by_name = {r["uri"].split("//", 1)[1]: r for r in result.images_rows}
    assert set(by_name) == set(corpus)
    for name, (_, expected) in corpus.items():
        row = by_name[name]
        if expected == "labeled":
            assert row["status"] == "labeled", (name, row["reason"])
            assert row["width"] and row["height"]
        else:
            assert row["status"] == "rejected", name
            assert row["reason"].split(":")[0] == expected, (name, row["reason"])
        assert row["source_version"] == "v1"
        assert row["sha256"] == sha256_hex(files[f"mem://{name}"])
    assert "CMYK" in by_name["cmyk.jpg"]["notes"]
    assert "16-bit" in by_name["sixteen_bit.png"]["notes"]
    assert "palette" in by_name["palette.png"]["notes"]
    assert "alpha" in by_name["rgba.png"]["notes"]
    assert "grayscale" in by_name["gray.png"]["notes"]
    assert by_name["ok.jpg"]["notes"] is None
    stats = result.stats
    assert stats.seen == len(corpus)
    assert stats.labeled == sum(v == "labeled" for _, v in corpus.values())
    assert sum(stats.rejected.values()) == len(corpus) - stats.labeled
    assert stats.rejected["too_many_pixels"] == 1 and stats.rejected["empty_file"] == 1

    # EXIF orientation 6: stored 48x64 (H x W), displayed 64x48, rotated 90 degrees clockwise. The stored
    # pattern has red top-left, green top-right (top third) and a blue bottom band, so the displayed one
    # has red top-right, green bottom-right (right third) and a blue band on the left.
    exif = by_name["exif_rotated.jpg"]
    assert (exif["height"], exif["width"]) == (64, 48)
    assert "EXIF orientation 6" in exif["notes"]
    labels = label_map_of(result.images_rows, result.annotation_rows, "mem://exif_rotated.jpg")
    red, green, blue = 0, 1, 2
    assert (labels[2:28, 36:46] == red).all()
    assert (labels[36:62, 36:46] == green).all()
    assert (labels[:, 1:10] == blue).all()


def test_known_content_skipped_missing_file_failed_storage_error_raised() -> None:
    a, b = jpeg(solid(20, 24, 0)), jpeg(solid(20, 24, 1))
    files = {"m://a.jpg": a, "m://b.jpg": b}

    def read(uri: str) -> bytes:
        if uri == "m://gone.jpg":
            raise FileNotFoundError(uri)
        return files[uri]

    known = {sha256_hex(a)}
    items = [SourceItem("m://a.jpg"), SourceItem("m://b.jpg"), SourceItem("m://gone.jpg")]
    result = process_batch(items, ColorLabeler(), plan(), read=read, is_known=known.__contains__)
    assert result.stats.skipped == 1 and result.stats.labeled == 1
    outcomes = {r["uri"]: r["status"] for r in result.images_rows}
    assert outcomes == {"m://b.jpg": "labeled", "m://gone.jpg": "failed"}
    gone = next(r for r in result.images_rows if r["status"] == "failed")
    assert gone["reason"].startswith("missing") and gone["sha256"] is None and gone["image_id"] is None
    assert result.stats.failed == {"missing": 1}

    def broken(uri: str) -> bytes:
        raise OSError("503 SlowDown")

    with pytest.raises(OSError, match="SlowDown"):
        process_batch(items, ColorLabeler(), plan(), read=broken)


def test_labeler_failure_costs_only_its_image() -> None:
    files = {f"m://{i}.jpg": jpeg(solid(20, 33 if i == 1 else 24, i % 3)) for i in range(3)}
    labeler = ColorLabeler(fail_width=33)
    result = process_batch([SourceItem(u) for u in files], labeler, plan(), read=files.__getitem__)
    status = {r["uri"]: (r["status"], r["reason"]) for r in result.images_rows}
    assert status["m://1.jpg"][0] == "failed" and status["m://1.jpg"][1].startswith("labeler_error: RuntimeError")
    assert status["m://0.jpg"] == ("labeled", None) and status["m://2.jpg"] == ("labeled", None)
    assert labeler.calls == [3, 1, 1, 1]  # the group, then one by one


def test_weakly_labeled_image_is_rejected_with_its_size() -> None:
    files = {"m://a.jpg": jpeg(solid(20, 24, 0))}
    strict = FilterConfig(min_confidence=0.95, min_labeled_fraction=0.5)
    result = process_batch([SourceItem("m://a.jpg")], ColorLabeler(), plan(filters=strict), read=files.__getitem__)
    [row] = result.images_rows
    assert row["status"] == "rejected" and row["reason"].startswith("low_labeled_fraction")
    assert (row["height"], row["width"]) == (20, 24)
    assert result.annotation_rows == [] and result.stats.rejected == {"low_labeled_fraction": 1}


def test_per_class_override_applies() -> None:
    files = {"m://r.jpg": jpeg(solid(20, 24, 0)), "m://g.jpg": jpeg(solid(20, 24, 1))}
    filters = FilterConfig(min_confidence=0.5, min_labeled_fraction=0.5, per_class={"red": {"min_confidence": 0.95}})
    result = process_batch(
        [SourceItem(u) for u in files], ColorLabeler(), plan(filters=filters), read=files.__getitem__
    )
    status = {r["uri"]: r["status"] for r in result.images_rows}
    assert status == {"m://r.jpg": "rejected", "m://g.jpg": "labeled"}


def test_ids_are_deterministic_per_run_and_differ_across_runs() -> None:
    files = {f"m://{i}.jpg": jpeg(solid(16, 16, i)) for i in range(3)}
    items = [SourceItem(u) for u in files]
    one = process_batch(items, ColorLabeler(), plan("run-1"), read=files.__getitem__)
    again = process_batch(items, ColorLabeler(), plan("run-1"), read=files.__getitem__)
    other = process_batch(items, ColorLabeler(), plan("run-2"), read=files.__getitem__)
    assert [a["id"] for a in one.annotation_rows] == [a["id"] for a in again.annotation_rows]
    assert [r["labeling_id"] for r in one.images_rows] == [r["labeling_id"] for r in again.images_rows]
    assert not {a["id"] for a in one.annotation_rows} & {a["id"] for a in other.annotation_rows}
    assert [r["image_id"] for r in one.images_rows] == [r["image_id"] for r in other.images_rows]


def test_rewriting_a_batch_is_idempotent_and_thumbnails_are_small_jpegs(tmp_path: Path) -> None:
    files = {f"m://{i}.jpg": jpeg(solid(300, 400, i)) for i in range(3)}
    store = LabelDataset(str(tmp_path / "out"))
    store.ensure_categories(list(CLASSES))
    result = process_batch([SourceItem(u) for u in files], ColorLabeler(), plan(), read=files.__getitem__, thumbnails=2)
    first = write_batch_result(store, result, "run-1-b000000")
    listing = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    second = write_batch_result(store, result, "run-1-b000000")  # a retried batch
    assert first == second
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()) == listing
    assert store.annotations().num_rows == len(result.annotation_rows) == 3
    assert store.images().num_rows == 3
    assert len(first["thumbnails"]) == 2
    for url in first["thumbnails"]:
        assert "/thumbnails/run-1/" in url
        with Image.open(url) as im:
            assert im.format == "JPEG" and max(im.size) <= 256 + 200  # the overlay adds a legend column


def test_label_and_write_batch_reads_through_fsspec_and_skips_known(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.jpg").write_bytes(jpeg(solid(16, 16, i)))
    store = LabelDataset(str(tmp_path / "out"))
    store.ensure_categories(list(CLASSES))
    items = [SourceItem(str(p), "v") for p in sorted(src.iterdir())]
    outcome = label_and_write_batch(0, items, ColorLabeler(), plan(), store)
    assert outcome.stats.labeled == 3 and outcome.part == "run-1-b000000"
    known = store.known_sha256_digests("cfg")
    outcome = label_and_write_batch(1, items, ColorLabeler(), plan(), store, known=known)
    assert outcome.stats.skipped == 3 and outcome.written["images"] is None


def test_tiny_model_rows_decode_to_the_filtered_labels() -> None:
    labeler = load_labeler(LabelerParameters.maskclip(TINY, device="cpu"))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8) for i in range(3)]
    files = {f"m://{i}.png": _png(im) for i, im in enumerate(images)}
    result = process_batch([SourceItem(u) for u in files], labeler, plan(), read=files.__getitem__)
    assert result.stats.labeled == 3
    expected = [filter_labels(r, KEEP_ALL).labels for r in labeler.label(images)]
    for i, want in enumerate(expected):
        got = label_map_of(result.images_rows, result.annotation_rows, f"m://{i}.png")
        np.testing.assert_array_equal(got, want)
        assert (got != IGNORE_INDEX).any()


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


# --- the labeler spec, identity and config hash -------------------------------------------------------------


def test_config_hash_tracks_what_changes_labels() -> None:
    labeler = load_labeler(LabelerParameters.maskclip(TINY, device="cpu"))
    base = labeling_config_hash(labeler.config(), KEEP_ALL)
    assert base == labeling_config_hash(labeler.config(), KEEP_ALL.model_copy())
    assert base != labeling_config_hash(labeler.config(), KEEP_ALL.model_copy(update={"min_confidence": 0.1}))
    per_class = FilterConfig.model_validate({**KEEP_ALL.model_dump(), "per_class": {"red": {"min_confidence": 0.7}}})
    assert base != labeling_config_hash(labeler.config(), per_class)
    assert base != labeling_config_hash(labeler.config(), KEEP_ALL, max_pixels=1000)
    other_weights = load_labeler(LabelerParameters.maskclip(TINY.model_copy(update={"seed": 1}), device="cpu"))
    assert base != labeling_config_hash(other_weights.config(), KEEP_ALL)
    other_classes = load_labeler(
        LabelerParameters.maskclip(TINY.model_copy(update={"classes": "red, green"}), device="cpu")
    )
    assert base != labeling_config_hash(other_classes.config(), KEEP_ALL)
    # window_batch does not change labels: same hash
    faster = TINY.model_copy(update={"inference": TINY.inference.model_copy(update={"window_batch": 2})})
    assert base == labeling_config_hash(
        load_labeler(LabelerParameters.maskclip(faster, device="cpu")).config(), KEEP_ALL
    )


def test_labeler_is_loaded_once_per_process() -> None:
    spec = LabelerParameters.maskclip(TINY, device="cpu")
    assert load_labeler(spec) is load_labeler(LabelerParameters.model_validate(spec.model_dump()))
    assert labeler_round(load_labeler(spec), "maskclip") == 0
    assert labeler_categories(load_labeler(spec)) == [("red", []), ("green", []), ("blue", [])]


def test_labeler_spec_validation() -> None:
    # a teacher without `config` is valid (the flows' `classes` completes it) but cannot be loaded as it is
    with pytest.raises(ValueError, match="needs classes"):
        load_labeler(LabelerParameters(labeler="maskclip"))
    with pytest.raises(ValidationError, match="needs `checkpoint`"):
        LabelerParameters(labeler="student")


def test_student_missing_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "maskclip_core.student", None)  # as if the package were absent
    with pytest.raises(StudentUnavailableError, match="maskclip_core.student.StudentLabeler"):
        load_labeler(LabelerParameters.student("file:///nowhere/student.safetensors"))


def test_student_round_comes_from_the_labeler_and_rows_carry_source_and_round() -> None:
    class FakeStudent:
        class_names = CLASSES

        def config(self) -> dict:
            return {"labeler": "maskclip-student", "round": 2}

    assert labeler_round(FakeStudent(), "student") == 2
    rows = process_batch(
        [SourceItem("m://a.jpg")],
        ColorLabeler(),
        plan(labeler_kind="student", round=2),
        read={"m://a.jpg": jpeg(solid(16, 16, 0))}.__getitem__,
    )
    assert rows.images_rows[0]["labeler"] == "student" and rows.images_rows[0]["round"] == 2
    assert {(a["labeler"], a["round"]) for a in rows.annotation_rows} == {("student", 2)}


# --- digests and the store's incremental index ---------------------------------------------------------------


def test_digest_set() -> None:
    digests = [source_digest(f"s3://b/{i}.jpg", "etag:1") for i in range(1000)]
    builder = DigestSetBuilder(chunk=64)
    builder.extend(digests + digests[:10])
    index = builder.build()
    assert len(index) == 1000 and index.nbytes == 16_000
    assert all(d in index for d in digests[::37])
    assert source_digest("s3://b/0.jpg", "etag:2") not in index
    assert b"short" not in index and "text" not in index
    assert source_digest("x", "y") not in DigestSet()
    tail_zero = bytes(15) + b"\x01"
    assert bytes(16) not in DigestSet.from_iterable([tail_zero])
    assert tail_zero in DigestSet.from_iterable([bytes(16), tail_zero])


def test_store_known_sources_and_sha256_digests(tmp_path: Path) -> None:
    store = LabelDataset(str(tmp_path / "out"))
    files = {f"m://{i}.jpg": jpeg(solid(16, 16, i)) for i in range(3)}
    files["m://bad.jpg"] = b""
    items = [SourceItem(u, f"v{i}") for i, u in enumerate(files)]
    result = process_batch(items, ColorLabeler(), plan(), read=files.__getitem__)
    failed = process_batch([SourceItem("m://gone.jpg", "v9")], ColorLabeler(), plan(), read=_missing)
    store.write_batch(result.images_rows + failed.images_rows, result.annotation_rows, part_name="p1")
    known = store.known_sources("cfg")
    assert len(known) == 4  # 3 labeled + 1 rejected; the failed one is retried
    assert all(source_digest(u, f"v{i}") in known for i, u in enumerate(files))
    assert source_digest("m://0.jpg", "v-changed") not in known
    assert source_digest("m://gone.jpg", "v9") not in known
    assert len(store.known_sources("other-config")) == 0
    shas = store.known_sha256_digests("cfg")
    assert all(sha256_digest(sha256_hex(data)) in shas for data in files.values())


def _missing(uri: str) -> bytes:
    raise FileNotFoundError(uri)


# --- the run summary ----------------------------------------------------------------------------------------


def test_run_summary_tables_and_markdown() -> None:
    corpus = corpus_bytes()
    files = {f"mem://{name}": data for name, (data, _) in corpus.items()}
    result = process_batch([SourceItem(u) for u in files], ColorLabeler(), plan(), read=files.__getitem__)
    from maskclip_core.labeling.run_records import BatchOutcome

    summary = RunSummary(
        run_id="r", source="src", dataset="out", config_hash="cfg", labeler="maskclip", classes=CLASSES
    )
    summary.listed = len(corpus) + 5
    summary.unchanged = 5
    summary.add_batch(BatchOutcome(0, "r-b000000", result.stats, {}, [{"url": "out/t.jpg", "uri": "mem://ok.jpg"}]))
    summary.add_failed_batch(FailedBatch(1, 4, "OSError: 503 SlowDown", "mem://x.jpg"))
    summary.finish()
    d = summary.to_dict()
    assert d["images_seen"] == len(corpus) + 5 and d["skipped"] == 5 and not d["ok"]
    assert d["failed"] == 4 and d["failed_by_reason"] == {"batch_failed": 4}
    assert d["rejected_by_reason"]["empty_file"] == 1
    shares = {c["class"]: c["pixel_share"] for c in d["classes"]}
    assert set(shares) == set(CLASSES) and abs(sum(shares.values()) - 1.0) < 1e-3  # nothing ignored
    rows = {r["item"]: r for r in summary.table_rows()}
    assert rows["rejected: too_many_pixels"]["images"] == 1 and rows["class: red"]["mean_confidence"] == 0.9
    md = summary.markdown()
    assert "FAILED" in md and "batch 1 (4 images): OSError: 503 SlowDown" in md and "(../t.jpg)" in md


def test_digest_set_matches_a_python_set() -> None:
    """Bucketed lookups: every size from empty to many digests per bucket, crafted prefixes, no straddling hits."""
    import pickle

    rng = np.random.default_rng(0)
    crafted = [bytes(16), bytes(15) + b"\x01", b"\xff" * 16, b"\xff" * 15 + b"\x00", b"\x00\x00\x00" + b"\x07" * 13]
    for n in (0, 1, 2, 9, 1000, 50_000):
        digests = [bytes(d) for d in rng.integers(0, 256, (n, 16), dtype=np.uint8)] + crafted
        index = DigestSet.from_iterable(digests)
        assert len(index) == len(set(digests)) and index.nbytes == 16 * len(index)
        assert all(d in index for d in digests)
        blob = b"".join(sorted(set(digests)))
        straddling = [blob[i : i + 16] for i in range(8, min(len(blob) - 16, 16_000), 16)]
        misses = [bytes(d) for d in rng.integers(0, 256, (2000, 16), dtype=np.uint8)]
        known = set(digests)
        assert all((d in index) == (d in known) for d in straddling + misses)
        copy = pickle.loads(pickle.dumps(index))
        assert len(copy) == len(index) and all(d in copy for d in digests[:100])


def test_digest_set_builder_takes_arrays() -> None:
    digests = [source_digest(f"s3://b/{i}.jpg", "etag:1") for i in range(100)]
    builder = DigestSetBuilder()
    builder.extend(digests[:10])
    builder.add_array(np.array(digests[5:], dtype="S16"))
    index = builder.build()
    assert len(index) == 100 and all(d in index for d in digests)
    with pytest.raises(TypeError):
        builder.add_array(np.zeros(3, dtype=np.int64))
