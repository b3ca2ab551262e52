"""MaskCLIP+ end to end under the Prefect test harness, with the tiny random-weight CLIP and a tiny student.

Teacher labels -> train (checkpoint per round) -> label with the real student -> Parquet -> COCO round trip;
an interrupted training resumes to the uninterrupted result; metrics of the teacher and of every round against
a planted ground truth (PNG masks, COCO JSON) in the metrics table and a table artifact; the CLI.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from support.tiny_labeler import KEEP_ALL, TINY_SPEC, H, W, block_image

from flows.label_dataset import LabelingRunParameters
from flows.pseudo_label_and_train import (
    ExportStepParameters,
    RelabelStepParameters,
    TrainingStepParameters,
    pseudo_label_and_train,
)
from flows.train_student import train_student
from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.labelings import read_labeling_record
from maskclip_core.dataset.metrics_table import read_metrics
from maskclip_core.evaluation.ground_truth import GroundTruthParameters, restrict_summary
from maskclip_core.labeling.filter import filter_labels
from maskclip_core.segmentation_metrics import SegmentationMetrics
from maskclip_core.student import StudentLabeler, load_checkpoint, predict, read_latest
from maskclip_core.training.parameters import ScheduleParameters, StudentParameters, TrainingRunParameters
from maskclip_core.types import IGNORE_INDEX

pytestmark = pytest.mark.usefixtures("prefect_harness", "one_torch_thread")

FAST = LabelingRunParameters(batch_size=4, retries=0, thumbnails=0)
STUDENT = StudentParameters(
    backbone="mobilenet_v3_large", output_stride=16, head_channels=16, temperature=5.0, backbone_weights="none"
)
# Tiny images (40 x 56) are trained and scored at their own size: no 512 px base scale.
SCHEDULE = ScheduleParameters(
    iterations=6,
    rounds=1,
    pseudo_fraction=0.5,
    batch_size=2,
    crop_size=32,
    scale_range=(0.75, 1.25),
    base_short_side=None,
    relabel_short_side=None,
    eval_short_side=None,
    inference_batch_size=4,
    log_every=0,
)


def write_images(folder: Path, n: int, seed: int = 0) -> None:
    """Small PNGs with a red block (top left) and a blue block (bottom right) over noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(block_image(rng)).save(folder / f"img_{i:03d}.png")


def planted_truth() -> np.ndarray:
    """The human mask of every image: red block = red (0), blue block = blue (2), the rest 'sky' (3)."""
    truth = np.full((H, W), 3, np.uint8)
    truth[:20, :28] = 0
    truth[20:, 28:] = 2
    return truth


def write_mask_ground_truth(root: Path, names: list[str]) -> GroundTruthParameters:
    masks = root / "masks"
    masks.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(planted_truth()).save(masks / name)
    (root / "classes.json").write_text(json.dumps(["red", "green", "blue", "sky"]))
    return GroundTruthParameters(url=str(masks), class_map=str(root / "classes.json"))


def write_coco_ground_truth(root: Path, names: list[str]) -> GroundTruthParameters:
    truth = planted_truth()
    images, annotations = [], []
    categories = [{"id": 11, "name": "Red"}, {"id": 12, "name": "blue"}, {"id": 13, "name": "sky"}]
    for i, name in enumerate(names, start=1):
        images.append({"id": i, "file_name": name, "height": H, "width": W})
        for value, cid in ((0, 11), (2, 12), (3, 13)):
            enc = mask_utils.encode(np.asfortranarray((truth == value).astype(np.uint8)))
            seg = {"counts": enc["counts"].decode("ascii"), "size": [H, W]}
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": cid, "segmentation": seg})
    path = root / "ground_truth.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return GroundTruthParameters(url=str(path))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The pipeline flow once: teacher labels -> student (1 round) -> student labels in a fresh output -> COCO."""
    root = tmp_path_factory.mktemp("pipeline")
    src, out, relabeled = root / "src", str(root / "out"), str(root / "relabeled")
    write_images(src, 6)
    schedule = SCHEDULE.model_copy(update={"log_every": 1})  # the loss of every iteration in the run's logs
    state = pseudo_label_and_train(
        str(src),
        out,
        TINY_SPEC.config.classes,  # the one classes parameter (the spec's own here)
        TINY_SPEC,
        KEEP_ALL,
        FAST,
        TrainingStepParameters(student=STUDENT, schedule=schedule, options=TrainingRunParameters(device="cpu")),
        RelabelStepParameters(dataset=relabeled, device="cpu"),
        ExportStepParameters(),
        return_state=True,
    )
    return {
        "root": root,
        "src": src,
        "out": out,
        "relabeled": relabeled,
        "result": state.result(),
        "flow_run_id": state.state_details.flow_run_id,
    }


def test_train_checkpoint_label_with_the_student_parquet_coco_round_trip(pipeline: dict[str, Any]) -> None:
    from pycocotools.coco import COCO

    result, out, relabeled = pipeline["result"], pipeline["out"], pipeline["relabeled"]
    teacher, trained = result["teacher"], result["training"]
    assert teacher["labeled"] == 6 and teacher["labeler"] == "maskclip"
    record = read_labeling_record(out, teacher["config_hash"])
    assert record["spec"]["config"]["model"] == "maskclip-tiny-ViT" and record["filters"] == KEEP_ALL.model_dump()

    # Trained on the teacher's labeling with its CLIP's text embeddings; a checkpoint after each round.
    assert trained["config_hash"] == teacher["config_hash"] and trained["classes"] == ["red", "green", "blue"]
    assert trained["complete"] and trained["round"] == 1 and trained["resumed_from_round"] is None
    assert trained["data"]["samples"] == 6 and trained["data"]["pool"] == 6
    ckpt_dir = Path(trained["checkpoint_dir"])
    assert ckpt_dir == Path(out) / "checkpoints" / trained["run"]
    for r in (0, 1):
        assert (ckpt_dir / f"round-{r:03d}.safetensors").exists() and (ckpt_dir / f"round-{r:03d}.state.json").exists()
    assert read_latest(str(ckpt_dir))["round"] == 1 and trained["checkpoint"].endswith("round-001.safetensors")
    checkpoint = load_checkpoint(trained["checkpoint"])
    assert checkpoint.config.embed_dim == 64 and checkpoint.iteration == 6  # the tiny CLIP's embedding size
    assert checkpoint.vocabulary.class_names == ("red", "green", "blue")

    # Labeled again by the real student, in a fresh output: rows and annotations say student, round 1.
    assert result["relabel"]["labeler"] == "student" and result["relabel"]["labeled"] == 6
    store = LabelDataset(relabeled)
    assert {(r["labeler"], r["round"]) for r in store.images().to_pylist()} == {("student", 1)}
    anns = store.annotations()
    assert (
        anns.num_rows > 0 and set(anns["labeler"].to_pylist()) == {"student"} and set(anns["round"].to_pylist()) == {1}
    )
    # The stored labels are the checkpoint's predictions through the same filter.
    student = StudentLabeler.from_checkpoint(trained["checkpoint"], device="cpu")
    maps = {Path(row["uri"]).name: m for row, m in store.iter_label_maps()}
    for name, label_map in maps.items():
        rgb = np.array(Image.open(pipeline["src"] / name).convert("RGB"))
        [prediction] = student.label([rgb])
        np.testing.assert_array_equal(label_map, filter_labels(prediction, KEEP_ALL).labels)

    # COCO export: pycocotools gives back the stored label maps.
    exported = result["export"]
    assert exported["images"] == 6 and exported["files"] == [f"{relabeled}/exports/{trained['run']}-coco.json"]
    coco = COCO(exported["files"][0])
    index = {c["id"]: i for i, c in enumerate(store.categories())}
    for row, label_map in store.iter_label_maps():
        painted = np.full(label_map.shape, IGNORE_INDEX, np.uint8)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[row["image_id"]])):
            painted[coco.annToMask(ann).astype(bool)] = index[ann["category_id"]]
        np.testing.assert_array_equal(painted, label_map)


def _child_runs(parent: uuid.UUID) -> list[tuple[str, Any]]:
    """(flow name, flow run) of the direct sub-runs of ``parent``, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent]))
        )
        runs = sorted(runs, key=lambda r: r.created)
        return [(client.read_flow(r.flow_id).name, r) for r in runs]


def _artifacts_of(flow_run_ids: list[uuid.UUID]) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        runs = ArtifactFilterFlowRunId(any_=flow_run_ids)
        return client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=runs))


def test_parent_run_links_its_sub_runs_and_their_artifacts(pipeline: dict[str, Any]) -> None:
    children = _child_runs(pipeline["flow_run_id"])
    assert [name for name, _ in children] == ["label-dataset", "train-student", "label-dataset", "export-annotations"]
    [links] = _artifacts_of([pipeline["flow_run_id"]])
    assert links.key == "pseudo-label-and-train-steps" and links.type == "markdown"
    rows = [line for line in links.data.splitlines() if line.startswith("| ") and "/runs/flow-run/" in line]
    steps = ["teacher labels", "student training", "student labels", "COCO export"]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == steps
    child_artifacts = _artifacts_of([run.id for _, run in children])
    assert {"label-dataset-report", "train-student-report", "export-summary"} <= {a.key for a in child_artifacts}
    sections = links.data.split("\n## ")[1:]  # each step's artifacts, listed under the table (kept narrow)
    assert [section.splitlines()[0] for section in sections] == steps
    for row, section, (_, run) in zip(rows, sections, children, strict=True):
        assert f"[{run.name}](" in row and f"/runs/flow-run/{run.id})" in row and "| Completed |" in row
        mine = [a for a in child_artifacts if a.flow_run_id == run.id]
        assert mine and row.endswith(f"| {len(mine)} |"), row
        for artifact in mine:  # each of the sub-run's artifacts, in its step's list, linked by id
            assert f"/artifacts/artifact/{artifact.id})" in section, (artifact.key, section)
    assert max(len(row) for row in rows) < 200, rows  # no row wider than a page


def test_parent_run_links_a_failed_sub_run_and_the_training_loss_is_in_the_run_logs(
    pipeline: dict[str, Any], tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    # The loss of the pipeline's training went to the train-student run's logs (its Prefect run logger).
    APILogHandler().flush()  # the run logger sends its records in the background
    [train_run] = [run for name, run in _child_runs(pipeline["flow_run_id"]) if name == "train-student"]
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[train_run.id])))
    losses = [log.message for log in logs if " loss " in log.message]
    assert [m.split(" loss ")[0] for m in losses] == [
        f"round {0 if it <= 3 else 1} iteration {it}/6" for it in range(1, 7)
    ], losses
    assert all(float(m.split(" loss ")[1]) > 0 for m in losses)

    # A pipeline whose training fails (its ground truth is missing) still links the sub-runs, the failed one too.
    training = TrainingStepParameters(
        student=STUDENT,
        schedule=SCHEDULE,
        options=TrainingRunParameters(device="cpu"),
        ground_truth=GroundTruthParameters(url=str(tmp_path / "missing.json")),
    )
    state = pseudo_label_and_train(
        str(pipeline["src"]),
        pipeline["out"],
        TINY_SPEC.config.classes,
        TINY_SPEC,
        KEEP_ALL,
        FAST,
        training,
        return_state=True,
    )
    assert state.is_failed()
    [links] = [a for a in _artifacts_of([state.state_details.flow_run_id]) if a.key == "pseudo-label-and-train-steps"]
    rows = [line for line in links.data.splitlines() if "/runs/flow-run/" in line]
    assert len(rows) == 2
    assert rows[0].startswith("| teacher labels |") and "| Completed |" in rows[0]
    assert rows[1].startswith("| student training |") and "| Failed |" in rows[1]
    assert "storage" not in links.data  # Prefect's records of the failure's result are no artifacts to link


def test_pipeline_on_s3_relabels_into_the_same_output(s3_server, tmp_path: Path) -> None:
    """Source, dataset, checkpoints, metrics, ground truth and export on S3 (moto); the student's labels go
    into the teacher's own dataset under their own config hash."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_server.storage_options)
    bucket = s3_server.make_bucket("maskclip-plus")
    write_images(tmp_path / "src", 4, seed=5)
    for path in sorted((tmp_path / "src").iterdir()):
        fs.pipe_file(f"{bucket}/photos/{path.name}", path.read_bytes())
    local_truth = write_coco_ground_truth(tmp_path, ["img_000.png", "img_003.png"])
    fs.pipe_file(f"{bucket}/truth/gt.json", Path(local_truth.url).read_bytes())
    truth = GroundTruthParameters(url=f"s3://{bucket}/truth/gt.json", storage_options=s3_server.storage_options)
    so = s3_server.storage_options
    options = FAST.model_copy(update={"source_storage_options": so, "dataset_storage_options": so})
    out = f"s3://{bucket}/dataset"

    def run(*export: ExportStepParameters) -> dict[str, Any]:
        training = TrainingStepParameters(
            student=STUDENT, schedule=SCHEDULE, ground_truth=truth, options=TrainingRunParameters(device="cpu")
        )
        return pseudo_label_and_train(
            f"s3://{bucket}/photos",
            out,
            TINY_SPEC.config.classes,
            TINY_SPEC,
            KEEP_ALL,
            options,
            training,
            RelabelStepParameters(device="cpu"),
            *export,
        )

    result = run()
    trained = result["training"]
    assert trained["complete"] and trained["checkpoint"].startswith(f"s3://{bucket}/dataset/checkpoints/")
    assert fs.exists(trained["checkpoint"]) and read_latest(trained["checkpoint_dir"], so)["round"] == 1
    assert [(m["model"], m["round"]) for m in read_metrics(out, so, run=trained["run"])] == [
        ("teacher", None),
        ("student", 0),
        ("student", 1),
    ]
    store = LabelDataset(out, so)
    rows = store.images().to_pylist()
    assert {(r["labeler"], r["round"]) for r in rows} == {("maskclip", 0), ("student", 1)} and len(rows) == 8
    student_hash = result["relabel"]["config_hash"]
    assert student_hash != result["teacher"]["config_hash"]
    export = result["export"]
    assert export["files"] == [f"{out}/exports/{trained['run']}-coco.json"] and export["images"] == 4
    coco = json.loads(fs.cat_file(export["files"][0]))
    student_ids = {r["image_id"] for r in rows if r["labeler"] == "student"}
    assert {im["id"] for im in coco["images"]} == student_ids
    assert {a["id"] for a in coco["annotations"]} == set(store.annotations(config_hash=student_hash)["id"].to_pylist())
    # Everything done: a second run skips the labeled images and finds the training finished.
    again = run(ExportStepParameters(enabled=False))
    assert again["teacher"]["labeled"] == 0 and again["training"]["run"] == trained["run"]
    assert again["training"]["resumed_from_round"] == 1 and again["relabel"]["labeled"] == 0


def test_cli_label_with_the_real_student(
    pipeline: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli.main import main

    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "WARNING")
    trained = pipeline["result"]["training"]
    out = str(tmp_path / "student-labels")
    args = ["label", "--source", str(pipeline["src"]), "--output", out, "--labeler", "student"]
    args += ["--checkpoint", trained["checkpoint_dir"], "--device", "cpu", "--retries", "0", "--thumbnails", "0"]
    args += ["--min-confidence", "0", "--min-region-area", "0", "--min-region-confidence", "0"]
    args += ["--min-labeled-fraction", "0", "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out[captured.out.index("{") :])
    assert summary["labeler"] == "student" and summary["labeled"] == 6
    store = LabelDataset(out)
    assert {(r["labeler"], r["round"]) for r in store.images().to_pylist()} == {("student", 1)}
    anns = store.annotations()
    assert set(anns["labeler"].to_pylist()) == {"student"} and set(anns["round"].to_pylist()) == {1}
    # The checkpoint folder (newest round) labels exactly as its newest weights file did in the pipeline.
    expected = {Path(r["uri"]).name: m for r, m in LabelDataset(pipeline["relabeled"]).iter_label_maps()}
    for row, label_map in store.iter_label_maps():
        np.testing.assert_array_equal(label_map, expected[Path(row["uri"]).name])


def _student_rows(rows: list[dict[str, Any]]) -> list[tuple]:
    return [
        (r["round"], r["iteration"], r["miou"], r["pixel_accuracy"], r["per_class_iou"])
        for r in rows
        if r["model"] == "student"
    ]


def test_interrupted_training_resumes_to_the_uninterrupted_result(pipeline: dict[str, Any], tmp_path: Path) -> None:
    out = pipeline["out"]
    truth = write_mask_ground_truth(tmp_path, ["img_000.png", "img_002.png", "img_003.png"])
    schedule = SCHEDULE.model_copy(update={"rounds": 2, "pseudo_fraction": 0.34})  # rounds end at 2, 4, 6
    params = {"ground_truth": truth, "student": STUDENT, "schedule": schedule, "filters": KEEP_ALL}
    full = train_student(
        out, options=TrainingRunParameters(device="cpu", run_name=f"full-{uuid.uuid4().hex[:6]}"), **params
    )
    assert full["complete"] and [r for r, *_ in _student_rows(full["metrics"])] == [0, 1, 2]

    stopped = train_student(out, options=TrainingRunParameters(device="cpu", stop_after_round=1), **params)
    assert stopped["stopped"] and not stopped["complete"] and stopped["round"] == 1
    assert read_latest(stopped["checkpoint_dir"])["round"] == 1
    assert stopped["run"].startswith("student-") and stopped["run"] != full["run"]

    # The same parameters again: the same (derived) run, resumed after round 1.
    resumed = train_student(out, options=TrainingRunParameters(device="cpu"), **params)
    assert resumed["run"] == stopped["run"] and resumed["resumed_from_round"] == 1 and resumed["complete"]
    assert _student_rows(resumed["metrics"]) == _student_rows(full["metrics"])
    assert _student_rows(read_metrics(out, run=resumed["run"])) == _student_rows(full["metrics"])
    a, b = load_checkpoint(full["checkpoint"]).state_dict, load_checkpoint(resumed["checkpoint"]).state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # A finished run has nothing left to train; a run name reused for other settings is refused.
    again = train_student(out, options=TrainingRunParameters(device="cpu"), **params)
    assert again["resumed_from_round"] == 2 and _student_rows(again["metrics"]) == _student_rows(full["metrics"])
    with pytest.raises(ValueError, match="other settings or data"):
        train_student(
            out,
            options=TrainingRunParameters(device="cpu", run_name=full["run"]),
            **{**params, "schedule": schedule.model_copy(update={"lr": 0.02})},
        )


def test_metrics_of_teacher_and_rounds_in_the_table_and_the_artifact(pipeline: dict[str, Any], tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    out, src = pipeline["out"], pipeline["src"]
    names = ["img_001.png", "img_004.png", "img_005.png"]
    truth = write_coco_ground_truth(tmp_path, names)
    state = train_student(
        out,
        ground_truth=truth,
        student=STUDENT,
        schedule=SCHEDULE.model_copy(update={"seed": 3}),
        options=TrainingRunParameters(device="cpu"),
        return_state=True,
    )
    result = state.result()
    rows = read_metrics(out, run=result["run"])
    assert [(r["model"], r["round"], r["iteration"]) for r in rows] == [
        ("teacher", None, None),
        ("student", 0, 3),
        ("student", 1, 6),
    ]
    assert all(r["images"] == 3 and r["ground_truth"] == truth.url for r in rows)
    assert rows[2]["checkpoint"] == result["checkpoint"]

    # Independent scores: "Red" and "blue" are named by the ground truth (green is not, sky is no class).
    target = planted_truth()
    target[target == 3] = IGNORE_INDEX
    store = LabelDataset(out)
    pseudo = {Path(r["uri"]).name: m for r, m in store.iter_label_maps(config_hash=result["config_hash"])}
    teacher = SegmentationMetrics(3, ("red", "green", "blue"))
    for name in names:
        teacher.update(pseudo[name], target)
    expected = restrict_summary(teacher.summary(), ("red", "blue"))
    assert set(rows[0]["per_class_iou"]) == {"red", "blue"}
    assert rows[0]["miou"] == pytest.approx(expected["miou"]) and rows[0]["pixel_accuracy"] == pytest.approx(
        expected["pixel_accuracy"]
    )
    images = [np.array(Image.open(src / n).convert("RGB")) for n in names]
    for row in rows[1:]:
        model = load_checkpoint(row["checkpoint"]).build("cpu")
        student = SegmentationMetrics(3, ("red", "green", "blue"))
        for prediction in predict(model, images, short_side=None, batch_size=4):
            student.update(prediction.labels, target)
        expected = restrict_summary(student.summary(), ("red", "blue"))
        assert row["miou"] == pytest.approx(expected["miou"])
        assert row["per_class_iou"] == pytest.approx(expected["per_class_iou"])

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    by_key = {a.key: a for a in artifacts}
    assert {"train-student-metrics", "train-student-report", "train-student-progress"} <= set(by_key)
    table = by_key["train-student-metrics"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert [(t["model"], t["round"]) for t in table] == [("teacher", None), ("student", 0), ("student", 1)]
    assert table[0]["miou"] == pytest.approx(rows[0]["miou"], abs=1e-4) and "IoU red" in table[0]
    assert by_key["train-student-progress"].data == 100.0


def test_cli_train_prints_the_metrics_table(
    pipeline: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from cli import main as cli

    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "WARNING")
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert "train" in sub.choices  # registered by cli/main.py
    truth = write_mask_ground_truth(tmp_path, ["img_000.png", "img_001.png"])
    argv = ["train", "--from", pipeline["out"], "--backbone", "mobilenet_v3_large", "--backbone-weights", "none"]
    argv += ["--output-stride", "16", "--head-channels", "16", "--temperature", "5", "--iterations", "4"]
    argv += ["--rounds", "1", "--pseudo-fraction", "0.5", "--batch-size", "2", "--crop-size", "32"]
    argv += ["--base-short-side", "none", "--relabel-short-side", "none", "--eval-short-side", "none"]
    argv += ["--device", "cpu", "--ground-truth", truth.url, "--gt-class-map", str(truth.class_map), "--json"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out[captured.out.index("{") :])
    assert result["complete"] and [(m["model"], m["round"]) for m in result["metrics_table"]] == [
        ("teacher", None),
        ("student", 0),
        ("student", 1),
    ]
    assert "mIoU and per-class IoU" in captured.err and "IoU red" in captured.err and "teacher" in captured.err
    assert cli.main(["train", "--from", str(tmp_path / "nothing"), "--device", "cpu"]) == 2  # a message
    assert "maskclip: error:" in capsys.readouterr().err


def test_deployments_in_prefect_yaml() -> None:
    import yaml
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    root = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((root / "prefect.yaml").read_text())
    names = {(d["entrypoint"].rsplit(".", 1)[-1], d["name"]) for d in config["deployments"]}
    assert {("label_dataset", "nightly"), ("label_dataset", "new-dataset")} <= names  # kept
    assert {("pseudo_label_and_train", "teacher-to-student"), ("train_student", "student-from-dataset")} <= names
    expected = {
        "pseudo-label-and-train": {
            "TrainingStepParameters",
            "StudentParameters",
            "ScheduleParameters",
            "RelabelStepParameters",
            "ExportStepParameters",
        },
        "train-student": {
            "StudentParameters",
            "ScheduleParameters",
            "DataParameters",
            "TrainingRunParameters",
            "GroundTruthParameters",
        },
    }
    for d in config["deployments"]:
        flow = load_flow_from_entrypoint(d["entrypoint"])  # a module path (flows.<module>.<flow>)
        if flow.name in expected:
            # The UI's Run form: the pydantic models with their fields and bounds.
            assert expected[flow.name] <= set(parameter_schema(flow.fn).definitions), flow.name
