"""The student's data from a labeling run's dataset: store -> samples (255 where nothing is annotated),
reviewed label maps replacing pseudo-labels (category positions mapped to class indices), the pool, lazy
images, the fingerprint; ground truth (COCO JSON, PNG masks + class map) and the metrics table."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from support.coco_sample import SAMPLE

from maskclip_core.dataset.ids import image_id_from_sha256
from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.labelings import labeling_record, read_labeling_record, write_labeling_record
from maskclip_core.dataset.metrics_table import metrics_row, read_metrics, table_rows, write_metrics
from maskclip_core.evaluation.ground_truth import (
    GroundTruthParameters,
    GroundTruthRef,
    load_ground_truth,
    restrict_summary,
)
from maskclip_core.interchange.review_import import import_reviews
from maskclip_core.labeling.annotations import encode_annotations
from maskclip_core.labeling.filter import FilterConfig, Region
from maskclip_core.labeling.registry import LabelerParameters
from maskclip_core.teacher.labeler import LabelerConfig
from maskclip_core.teacher.vocabulary import Vocabulary
from maskclip_core.training.data import (
    ImageChangedError,
    ImageReader,
    load_training_set,
    training_fingerprint,
)
from maskclip_core.training.plan import training_vocabulary
from maskclip_core.types import IGNORE_INDEX

H, W = 24, 32
CLASSES = ("cat", "dog", "grass")  # the teacher's classes, in its order
CONFIG = "cfg-teacher"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_png(path: Path, seed: int) -> tuple[bytes, np.ndarray]:
    rgb = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path.read_bytes(), rgb


def rle(mask: np.ndarray) -> dict:
    enc = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"counts": enc["counts"].decode("ascii"), "size": [int(mask.shape[0]), int(mask.shape[1])]}


class Dataset:
    """A store written the way the labeling flow writes one; an extra category ("other", from another
    labeling) comes first, so category positions (1, 2, 3) differ from the class indices (0, 1, 2)."""

    def __init__(self, root: Path) -> None:
        self.source = root / "src"
        self.output = str(root / "out")
        store = LabelDataset(self.output)
        store.ensure_categories([("other", [])])
        ids = store.ensure_categories([("cat", ["kitty"]), ("dog", []), ("grass", [])])
        self.category_ids = [ids[n] for n in CLASSES]
        spec = LabelerParameters.maskclip(
            LabelerConfig(model="maskclip-tiny-ViT", pretrained="none", classes="cat; kitty, dog, grass")
        )
        record = labeling_record(
            CONFIG,
            spec,
            {"labeler": "maskclip"},
            FilterConfig(),
            [("cat", ["kitty"]), ("dog", []), ("grass", [])],
            max_pixels=10**6,
        )
        write_labeling_record(self.output, record)

        self.rgb: dict[str, np.ndarray] = {}
        self.ids: dict[str, int] = {}
        self.sha: dict[str, str] = {}
        self.pseudo: dict[str, np.ndarray] = {}
        labels_a = np.full((H, W), IGNORE_INDEX, np.uint8)
        labels_a[:, :12] = 0  # cat
        labels_a[:, 20:] = 1  # dog; columns 12..19 unannotated
        labels_b = np.full((H, W), 2, np.uint8)
        labels_b[:6, :6] = IGNORE_INDEX
        plan = {"a.png": ("labeled", labels_a), "b.png": ("labeled", labels_b), "c.png": ("rejected", None)}
        plan["sub/d.png"] = ("rejected", None)
        plan["e.png"] = ("failed", None)
        rows, anns = [], []
        for seed, (name, (status, labels)) in enumerate(plan.items()):
            data, rgb = write_png(self.source / name, seed)
            sha = hashlib.sha256(data).hexdigest()
            image_id = image_id_from_sha256(sha)
            self.rgb[name], self.ids[name], self.sha[name] = rgb, image_id, sha
            row = {
                "image_id": image_id,
                "uri": str(self.source / name),
                "sha256": sha,
                "width": W,
                "height": H,
                "status": status,
                "config_hash": CONFIG,
                "labeling_id": f"lab-{name}",
                "labeler": "maskclip",
                "round": 0,
            }
            if status == "failed":
                row.update(width=None, height=None, reason="labeler_error: boom")
            rows.append(row)
            if labels is not None:
                regions = [
                    Region(int(c), CLASSES[c], int((labels == c).sum()), 0.9)
                    for c in np.unique(labels)
                    if c != IGNORE_INDEX
                ]
                anns += encode_annotations(
                    (labels, regions),
                    category_ids=self.category_ids,
                    image_id=image_id,
                    labeling_id=row["labeling_id"],
                    labeler="maskclip",
                    round=0,
                )
                self.pseudo[name] = labels
        store.write_batch(rows, anns, part_name="batch-0")

    def review(self, tmp: Path) -> dict[str, np.ndarray]:
        """Human reviews of b (dog on top, bottom unannotated) and of the rejected c (all grass)."""
        dog = np.zeros((H, W), bool)
        dog[: H // 2] = True
        coco = {
            "images": [
                {"id": self.ids["b.png"], "file_name": "b.png", "height": H, "width": W},
                {"id": self.ids["c.png"], "file_name": "c.png", "height": H, "width": W},
            ],
            "annotations": [
                {"id": 1, "image_id": self.ids["b.png"], "category_id": 7, "segmentation": rle(dog), "iscrowd": 0},
                {
                    "id": 2,
                    "image_id": self.ids["c.png"],
                    "category_id": 9,
                    "segmentation": rle(np.ones((H, W), bool)),
                    "iscrowd": 0,
                },
            ],
            "categories": [{"id": 7, "name": "dog"}, {"id": 9, "name": "grass"}],
        }
        path = tmp / "review.json"
        path.write_text(json.dumps(coco))
        import_reviews(self.output, str(path), "coco")
        b = np.full((H, W), IGNORE_INDEX, np.uint8)
        b[: H // 2] = 1
        return {"b.png": b, "c.png": np.full((H, W), 2, np.uint8)}


@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    return Dataset(tmp_path)


def by_name(samples, source: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for i in range(len(samples)):
        sample = samples[i]
        name = str(Path(samples.items[i].ref.uri).relative_to(source))
        out[name] = (sample.image, sample.labels)
    return out


def test_samples_are_the_pseudo_labels_with_255_where_nothing_is_annotated(dataset: Dataset) -> None:
    data = load_training_set(dataset.output, CONFIG, CLASSES, use_reviewed=True)
    got = by_name(data.samples, dataset.source)
    assert sorted(got) == ["a.png", "b.png"]  # rejected and failed images carry no labels
    for name, (image, labels) in got.items():
        np.testing.assert_array_equal(image, dataset.rgb[name])
        assert labels.dtype == np.uint8
        np.testing.assert_array_equal(labels, dataset.pseudo[name])
    assert (got["a.png"][1][:, 12:20] == IGNORE_INDEX).all() and (got["b.png"][1][:6, :6] == IGNORE_INDEX).all()
    assert [Path(r.uri).name for r in data.pool.refs] == ["a.png", "b.png"]
    assert len(data.clean) == 0 and data.counts["reviewed"] == 0
    with_rejected = load_training_set(dataset.output, CONFIG, CLASSES, pool_rejected=True)
    assert [Path(r.uri).name for r in with_rejected.pool.refs] == ["a.png", "b.png", "c.png", "d.png"]
    assert with_rejected.fingerprint != data.fingerprint


def test_reviewed_label_maps_replace_pseudo_labels(dataset: Dataset, tmp_path: Path) -> None:
    before = load_training_set(dataset.output, CONFIG, CLASSES)
    reviewed = dataset.review(tmp_path)
    data = load_training_set(dataset.output, CONFIG, CLASSES)
    got = by_name(data.samples, dataset.source)
    assert sorted(got) == ["a.png", "b.png", "c.png"]  # the rejected c has human labels now
    np.testing.assert_array_equal(got["a.png"][1], dataset.pseudo["a.png"])
    np.testing.assert_array_equal(got["b.png"][1], reviewed["b.png"])  # dog = class 1, not position 2
    np.testing.assert_array_equal(got["c.png"][1], reviewed["c.png"])
    np.testing.assert_array_equal(got["c.png"][0], dataset.rgb["c.png"])
    assert [item.origin for item in data.samples.items] == ["pseudo", "reviewed", "reviewed"]
    # Reviewed images are not relabelled by the student: they stay clean samples in every round.
    assert [Path(r.uri).name for r in data.pool.refs] == ["a.png"]
    assert sorted(Path(i.ref.uri).name for i in data.clean.items) == ["b.png", "c.png"]
    assert data.fingerprint != before.fingerprint
    ignoring = load_training_set(dataset.output, CONFIG, CLASSES, use_reviewed=False)
    assert ignoring.fingerprint == before.fingerprint
    np.testing.assert_array_equal(by_name(ignoring.samples, dataset.source)["b.png"][1], dataset.pseudo["b.png"])


def test_fingerprint_without_reading_images(dataset: Dataset, tmp_path: Path) -> None:
    dataset.review(tmp_path)
    for reviewed in (True, False):
        for rejected in (True, False):
            data = load_training_set(dataset.output, CONFIG, CLASSES, use_reviewed=reviewed, pool_rejected=rejected)
            quick = training_fingerprint(dataset.output, CONFIG, CLASSES, use_reviewed=reviewed, pool_rejected=rejected)
            assert quick == data.fingerprint
    with pytest.raises(ValueError, match="no labeled images"):
        training_fingerprint(dataset.output, "nothing", CLASSES)


def test_images_are_read_lazily_with_a_bounded_cache(dataset: Dataset) -> None:
    reader = ImageReader(cache_bytes=H * W * 3)  # room for one image
    data = load_training_set(dataset.output, CONFIG, CLASSES, reader=reader)
    assert reader.reads == 0  # nothing read while building the samples
    for _ in range(2):
        for i in range(len(data.samples)):
            data.samples[i]
    assert reader.reads == 4 and reader.cached_bytes <= H * W * 3
    data.samples[1]
    assert reader.hits == 1
    assert [im.shape for im in data.pool[0:2]] == [(H, W, 3), (H, W, 3)]
    # A file replaced since it was labeled is an error, not silently wrong labels.
    write_png(dataset.source / "a.png", seed=99)
    with pytest.raises(ImageChangedError, match="changed since it was labeled"):
        ImageReader().read(data.samples.items[0].ref)


def test_vocabulary_comes_from_the_labeling_record(dataset: Dataset) -> None:
    store = LabelDataset(dataset.output)
    record = read_labeling_record(dataset.output, CONFIG)
    assert record["spec"]["config"]["model"] == "maskclip-tiny-ViT"
    vocabulary = training_vocabulary(record, store)
    assert vocabulary.names == CLASSES and vocabulary.queries()[:2] == [("cat", 0), ("kitty", 0)]
    fallback = training_vocabulary(None, store)  # no record: every category, synonyms as queries
    assert fallback.names == ("other", *CLASSES) and ("kitty", 1) in fallback.queries()
    assert read_labeling_record(dataset.output, "unknown") is None


def test_plan_names_the_run_after_its_settings_and_data(dataset: Dataset, tmp_path: Path) -> None:
    from maskclip_core.training.parameters import (
        DataParameters,
        ScheduleParameters,
        StudentParameters,
        TrainingRunParameters,
    )
    from maskclip_core.training.plan import plan_training

    student = StudentParameters(backbone="resnet18", backbone_weights="none")
    plan = plan_training(dataset.output, student=student, schedule=ScheduleParameters(iterations=10, rounds=1))
    assert plan.config_hash == CONFIG and plan.class_names == CLASSES
    assert plan.clip == {"model": "maskclip-tiny-ViT", "pretrained": "none", "seed": 0, "templates": "maskclip"}
    assert plan.student_config["embed_dim"] == 64 and plan.filters == FilterConfig().model_dump()
    assert plan.run.startswith("student-") and plan.checkpoint_url == f"{dataset.output}/checkpoints/{plan.run}"
    assert (Path(plan.checkpoint_url) / "run.json").exists()
    same = plan_training(
        dataset.output,
        student=student,
        schedule=ScheduleParameters(iterations=10, rounds=1),
        options=TrainingRunParameters(device="cpu"),
    )
    assert same.run == plan.run  # the device does not name the run
    other = plan_training(dataset.output, student=student, schedule=ScheduleParameters(iterations=12, rounds=1))
    assert other.run != plan.run
    dataset.review(tmp_path)  # new data: a new run
    assert (
        plan_training(dataset.output, student=student, schedule=ScheduleParameters(iterations=10, rounds=1)).run
        != plan.run
    )
    with pytest.raises(ValueError, match="other settings or data"):
        plan_training(dataset.output, student=student, options=TrainingRunParameters(run_name=plan.run))
    with pytest.raises(ValueError, match="no images labeled by the teacher"):
        plan_training(str(tmp_path / "empty"))
    # Without a labeling record the CLIP must be given; the classes are then the dataset's categories.
    Path(dataset.output, "labelings", f"{CONFIG}.json").unlink()
    with pytest.raises(ValueError, match="give the CLIP model"):
        plan_training(dataset.output, student=student)
    from maskclip_core.training.parameters import ClipParameters

    given = plan_training(
        dataset.output, clip=ClipParameters(model="maskclip-tiny-ViT", pretrained="none"), student=student
    )
    assert given.class_names == ("other", *CLASSES)
    store = LabelDataset(dataset.output)
    row = store.images(config_hash=CONFIG, statuses=["labeled"]).to_pylist()[0]
    store.write_batch([{**row, "config_hash": "cfg-2", "labeling_id": "lab-2"}], [], part_name="second")
    with pytest.raises(ValueError, match="choose one with config_hash"):
        plan_training(dataset.output, clip=ClipParameters(), student=student)
    assert plan_training(
        dataset.output, clip=ClipParameters(), student=student, data=DataParameters(config_hash="cfg-2")
    ).run


def test_clean_samples_stay_in_every_self_training_round(monkeypatch) -> None:
    from maskclip_core.student import ClassVocabulary, Sample, StudentConfig, TrainConfig, fit_student
    from maskclip_core.student import train as train_module
    from maskclip_core.student.augment import AugmentConfig

    seen = []

    def fake_steps(model, optimizer, source, config, round_index, start, end, device, logger) -> None:
        seen.append((round_index, len(source), source[len(source) - 1].labels.copy()))

    monkeypatch.setattr(train_module, "_train_steps", fake_steps)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    samples = [Sample(image, np.zeros((16, 16), np.uint8)) for _ in range(3)]
    clean = [Sample(image, np.full((16, 16), 1, np.uint8))]
    torch.manual_seed(0)
    fit_student(
        StudentConfig(embed_dim=8, backbone="resnet18", output_stride=16, head_channels=8, backbone_weights="none"),
        torch.randn(2, 8),
        ClassVocabulary(("x", "y")),
        samples + clean,
        TrainConfig(iterations=6, batch_size=2, rounds=2, pseudo_fraction=0.3, augment=AugmentConfig(crop_size=16)),
        unlabeled=[image, image],
        label_filter=lambda r: np.full(r.labels.shape, IGNORE_INDEX, np.uint8),
        clean=clean,
        device="cpu",
    )
    assert [(r, n) for r, n, _ in seen] == [(0, 4), (1, 3), (2, 3)]  # pool of 2 + the clean sample
    assert all((labels == 1).all() for _, _, labels in seen)


# --- ground truth -------------------------------------------------------------------------------------------


def gt_refs(dataset: Dataset) -> list[GroundTruthRef]:
    return [GroundTruthRef(dataset.ids[n], str(dataset.source / n), H, W) for n in ("a.png", "b.png", "sub/d.png")]


def test_ground_truth_png_masks_with_a_class_map(dataset: Dataset, tmp_path: Path) -> None:
    masks = tmp_path / "masks"
    (masks / "sub").mkdir(parents=True)
    a = np.zeros((H, W), np.uint8)  # 0 background (not a class of ours), 3 Cat, 5 lawn (grass's synonym? no)
    a[:, :10] = 3
    a[:, 10:] = 5
    Image.fromarray(a).save(masks / "a.png")
    d = np.full((H, W), 4, np.uint8)
    Image.fromarray(d).save(masks / "sub" / "d.png")
    (tmp_path / "classes.tsv").write_text("value\tname\n0\tbackground\n3\tCat\n4\tDOG\n5\tgreen_grass\n")
    vocabulary = Vocabulary.parse("cat; kitty, dog, grass")
    spec = GroundTruthParameters(url=str(masks), class_map=str(tmp_path / "classes.tsv"))
    truth = load_ground_truth(spec, gt_refs(dataset), vocabulary, default_root=str(dataset.source))
    assert [Path(r.uri).name for r in truth.refs] == ["a.png", "d.png"]  # b has no mask
    assert truth.evaluated == ("cat", "dog") and truth.unmatched == ("background", "green_grass")
    expected = np.full((H, W), IGNORE_INDEX, np.uint8)
    expected[:, :10] = 0
    np.testing.assert_array_equal(truth.target(0), expected)
    np.testing.assert_array_equal(truth.target(1), np.full((H, W), 1, np.uint8))
    # An alias maps a ground-truth name onto a class; a JSON class map works the same.
    (tmp_path / "classes.json").write_text(json.dumps({"3": "cat", "4": "dog", "5": "green_grass"}))
    aliased = load_ground_truth(
        spec.model_copy(
            update={"class_map": str(tmp_path / "classes.json"), "class_aliases": {"green_grass": "grass"}}
        ),
        gt_refs(dataset),
        vocabulary,
        default_root=str(dataset.source),
    )
    assert aliased.evaluated == CLASSES
    assert (aliased.target(0)[:, 10:] == 2).all()
    pairs = aliased.pairs([np.zeros((H, W, 3), np.uint8)] * 2)
    assert len(pairs[0:2]) == 2 and pairs[1][1].shape == (H, W)
    with pytest.raises(ValueError, match="matches none"):
        load_ground_truth(spec, gt_refs(dataset)[1:2], vocabulary, default_root=str(dataset.source))


def test_ground_truth_coco_by_file_name_or_image_id(dataset: Dataset, tmp_path: Path) -> None:
    cat = np.zeros((H, W), bool)
    cat[:8] = True
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": H, "width": W},
            {"id": 2, "file_name": "sub/d.png", "height": H, "width": W},
            {"id": 3, "file_name": "elsewhere.png", "height": H, "width": W},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 17, "segmentation": rle(cat), "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": rle(~cat), "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 18, "segmentation": rle(np.ones((H, W), bool)), "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(coco))
    vocabulary = Vocabulary.parse(",".join(CLASSES))
    truth = load_ground_truth(
        GroundTruthParameters(url=str(path)), gt_refs(dataset), vocabulary, default_root=str(dataset.source)
    )
    assert [Path(r.uri).name for r in truth.refs] == ["a.png", "d.png"]
    expected = np.where(cat, 0, IGNORE_INDEX).astype(np.uint8)  # person is no class of ours: not scored
    np.testing.assert_array_equal(truth.target(0), expected)
    assert truth.evaluated == ("cat", "dog") and truth.unmatched == ("person",)
    # Our own image ids (a COCO file from our export) match without any file name.
    coco["images"][0].update(id=dataset.ids["a.png"], file_name="renamed.png")
    for ann in coco["annotations"][:2]:
        ann["image_id"] = dataset.ids["a.png"]
    path.write_text(json.dumps(coco))
    by_id = load_ground_truth(GroundTruthParameters(url=str(path)), gt_refs(dataset), vocabulary)
    assert [Path(r.uri).name for r in by_id.refs] == ["a.png"]
    np.testing.assert_array_equal(by_id.target(0), expected)


def test_restricted_miou_counts_only_classes_the_ground_truth_names() -> None:
    summary = {"miou": 0.3, "pixel_accuracy": 0.5, "per_class_iou": {"cat": 0.8, "dog": None, "grass": 0.0}}
    out = restrict_summary(summary, ("cat", "dog"))
    assert out["per_class_iou"] == {"cat": 0.8, "dog": None} and out["miou"] == pytest.approx(0.8)


@pytest.mark.skipif(not SAMPLE.exists(), reason="coco-sample not available")
def test_coco_sample_annotations_equal_its_masks() -> None:
    """Real human masks two ways: annotations.json and masks-coco/ + categories.tsv give the same targets."""
    val = SAMPLE / "val"
    names = sorted(p.name for p in (val / "images").glob("*.jpg"))[:3]
    refs = []
    for i, name in enumerate(names):
        with Image.open(val / "images" / name) as im:
            refs.append(GroundTruthRef(i + 1, str(val / "images" / name), im.height, im.width))
    vocabulary = Vocabulary.parse(
        "person, car, sky; sky other merged, tree; tree merged, wall; wall other merged, dog, table; table merged, "
        "building; building other merged, grass; grass merged, floor; floor other merged"
    )
    root = str(val / "images")
    coco = load_ground_truth(
        GroundTruthParameters(url=str(val / "annotations.json")), refs, vocabulary, default_root=root
    )
    masks = load_ground_truth(
        GroundTruthParameters(url=str(val / "masks-coco"), class_map=str(SAMPLE / "categories.tsv")),
        refs,
        vocabulary,
        default_root=root,
    )
    assert [r.uri for r in coco.refs] == [r.uri for r in masks.refs] == [r.uri for r in refs]
    assert coco.evaluated == masks.evaluated and "person" in coco.evaluated
    scored = 0
    for i in range(len(refs)):
        a, b = coco.target(i), masks.target(i)
        np.testing.assert_array_equal(a, b)
        scored += int((a != IGNORE_INDEX).sum())
    assert scored > 1000


# --- the metrics table ----------------------------------------------------------------------------------------


def test_metrics_table_round_trip(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    assert read_metrics(out) == []
    summary = {"miou": 0.5, "pixel_accuracy": 0.75, "per_class_iou": {"cat": 0.5, "dog": None}}
    write_metrics(out, [metrics_row("run-1", "teacher", summary, images=3, config_hash="h")])
    write_metrics(out, [metrics_row("run-1", "student", {**summary, "miou": 0.6}, round=0, iteration=10)])
    write_metrics(out, [metrics_row("run-1", "student", {**summary, "miou": 0.7}, round=0, iteration=10)])  # again
    write_metrics(out, [metrics_row("run-2", "student", {**summary, "miou": float("nan")}, round=1, iteration=20)])
    rows = read_metrics(out, run="run-1")
    assert [(r["model"], r["round"], r["miou"]) for r in rows] == [("teacher", None, 0.5), ("student", 0, 0.7)]
    assert rows[0]["per_class_iou"] == {"cat": 0.5, "dog": None} and rows[0]["created_at"].tzinfo is not None
    assert read_metrics(out, run="run-2")[0]["miou"] is None
    assert sorted(p.name for p in (tmp_path / "out" / "metrics").iterdir()) == [
        "part-run-1-student-r000.parquet",
        "part-run-1-teacher.parquet",
        "part-run-2-student-r001.parquet",
    ]
    flat = table_rows(rows, ["cat", "dog"])
    assert flat[1] == {
        "run": "run-1",
        "model": "student",
        "round": 0,
        "iteration": 10,
        "miou": 0.7,
        "pixel_accuracy": 0.75,
        "IoU cat": 0.5,
        "IoU dog": None,
    }
    with pytest.raises(ValueError, match="run name"):
        write_metrics(out, [metrics_row("../x", "teacher", summary)])


def test_the_student_form_is_the_checkpoints_architecture() -> None:
    """``StudentParameters`` (the form) has ``StudentConfig``'s fields and defaults, less the CLIP's embedding size."""
    import dataclasses

    from maskclip_core.student.model import StudentConfig
    from maskclip_core.training.parameters import StudentParameters

    stored = {f.name: f.default for f in dataclasses.fields(StudentConfig) if f.name != "embed_dim"}
    form = {name: field.default for name, field in StudentParameters.model_fields.items()}
    assert form == stored
    assert StudentParameters().config(512) == StudentConfig(embed_dim=512)
