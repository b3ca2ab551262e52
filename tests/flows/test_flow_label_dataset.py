"""The label-dataset flow end to end under one Prefect test server (the session's ``prefect_harness``).

Local folders, memory://, S3 (moto and a real SeaweedFS), incremental runs, the bad-input corpus, a killed
run resumed, a storage fault outliving its retries, COCO round trip through the CLI, and a Dask cluster of
two worker processes giving the same labels as the thread pool. The tiny random-weight model keeps it fast.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds
import pytest
from PIL import Image, ImageOps
from support.bad_inputs import write_bad_input_corpus
from support.tiny_labeler import KEEP_ALL, TINY_SPEC, block_image

import maskclip_core.labeling.write as pipeline_module
from flows.label_dataset import LabelingIncomplete, LabelingRunParameters, label_dataset
from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.rle import segmentation_to_mask
from maskclip_core.labeling.filter import FilterConfig, filter_labels
from maskclip_core.labeling.registry import LabelerParameters, StudentUnavailableError, load_labeler
from maskclip_core.storage.fs import sha256_hex

pytestmark = pytest.mark.usefixtures("prefect_harness")

FAST = LabelingRunParameters(batch_size=3, retries=1, retry_delay_seconds=0.01, thumbnails=2)


# --- helpers -------------------------------------------------------------------------------------------------


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def images(n: int, seed: int = 0) -> dict[str, bytes]:
    """``n`` small distinct PNGs with coloured blocks (some labels survive any filter) and noise."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        out[f"img_{seed}_{i:03d}.png"] = png(block_image(rng))
    return out


def write_folder(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def run(source: str, output: str, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """Run the flow; return (final state, summary dict) whether it completed or failed."""
    params: dict[str, Any] = {"labeler": TINY_SPEC, "filters": KEEP_ALL, "options": FAST, **kwargs}
    state = label_dataset(source, output, return_state=True, **params)
    if state.is_completed():
        return state, state.result()
    error = state.result(raise_on_failure=False)
    if isinstance(error, LabelingIncomplete):
        return state, error.summary
    raise error


@contextlib.contextmanager
def count_reads() -> Iterator[Counter[str]]:
    """Count the source reads of the batches (they run in this process with the thread pool)."""
    reads: Counter[str] = Counter()
    real = pipeline_module.read_bytes

    def counting(uri: str, storage_options=None) -> bytes:
        reads[uri.rsplit("/", 1)[-1]] += 1
        return real(uri, storage_options)

    pipeline_module.read_bytes = counting
    try:
        yield reads
    finally:
        pipeline_module.read_bytes = real


def label_maps_by_sha(store: LabelDataset) -> dict[str, np.ndarray]:
    return {row["sha256"]: m for row, m in store.iter_label_maps()}


def expected_label_map(data: bytes, filters: FilterConfig = KEEP_ALL) -> np.ndarray:
    """What the labels must be: the tiny model on the displayed pixels, then the filter."""
    with Image.open(io.BytesIO(data)) as im:
        rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    [result] = load_labeler(TINY_SPEC).label([rgb])
    return filter_labels(result, filters).labels


def raw_rows(output: str | Path, table: str) -> list[dict[str, Any]]:
    """Every row of every part file, committed or not (what a plain Parquet reader sees)."""
    path = Path(output) / table
    if not path.exists():
        return []
    return ds.dataset(str(path), format="parquet").to_table().to_pylist()


def flow_run_id(state: Any) -> str:
    return str(state.state_details.flow_run_id)


def run_and_chunk_task_runs(run_id: str) -> list[Any]:
    """The task runs of a label-dataset run: its own and those of its ``label-chunk`` sub-runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    parent = uuid.UUID(run_id)
    with get_client(sync_client=True) as client:
        children = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent]))
        chunks = client.read_flow_runs(flow_run_filter=children)
        ids = [parent, *(c.id for c in chunks)]
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))


# --- local folders, incremental runs -------------------------------------------------------------------------


def test_local_folder_incremental_runs_and_artifacts(tmp_path: Path) -> None:
    src, out = tmp_path / "src", str(tmp_path / "out")
    first = images(5)
    write_folder(src, first)

    with count_reads() as reads:
        state, summary = run(str(src), out)
    assert state.is_completed()
    assert (summary["images_seen"], summary["labeled"], summary["skipped"], summary["failed"]) == (5, 5, 0, 0)
    assert set(reads) == set(first)
    store = LabelDataset(out)
    assert store.images().num_rows == 5 and set(store.images()["status"].to_pylist()) == {"labeled"}
    assert [c["name"] for c in store.categories()] == ["red", "green", "blue"]
    maps = label_maps_by_sha(store)
    for data in first.values():
        np.testing.assert_array_equal(maps[sha256_hex(data)], expected_label_map(data))
    # batches of 3: two parts, named after the flow run and the batch
    parts = sorted(p.name for p in (tmp_path / "out" / "images").iterdir())
    run_id = flow_run_id(state)
    assert parts == [f"part-{run_id}-b000000.parquet", f"part-{run_id}-b000001.parquet"]
    assert len(summary["thumbnails"]) == 2 and all(Path(t["url"]).is_file() for t in summary["thumbnails"])
    assert Path(summary["reports"]["json"]).is_file() and Path(summary["reports"]["markdown"]).is_file()
    shares = {c["class"]: c["pixel_share"] for c in summary["classes"]}
    assert abs(sum(shares.values()) - 1.0) < 1e-3  # KEEP_ALL ignores nothing
    _assert_artifacts(run_id)

    # unchanged source: nothing read, nothing labeled, nothing written
    with count_reads() as reads:
        state, summary = run(str(src), out)
    assert state.is_completed() and summary["labeled"] == 0 and summary["skipped"] == 5
    assert summary["skipped_unchanged"] == 5 and not reads
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == parts

    # two new images: exactly those are read and labeled
    added = images(2, seed=1)
    write_folder(src, added)
    with count_reads() as reads:
        state, summary = run(str(src), out)
    assert (summary["images_seen"], summary["labeled"], summary["skipped"]) == (7, 2, 5)
    assert set(reads) == set(added)

    # a file touched (new mtime) with the same bytes is read, recognised by SHA-256 and not relabeled
    touched = src / sorted(first)[0]
    os.utime(touched, (1_000_000_000, 1_000_000_000))
    with count_reads() as reads:
        state, summary = run(str(src), out)
    assert summary["labeled"] == 0 and summary["skipped_known_content"] == 1 and set(reads) == {touched.name}

    # --force relabels everything; readers still see one current labeling per image
    state, summary = run(str(src), out, force=True)
    assert summary["labeled"] == 7
    assert LabelDataset(out).images().num_rows == 7
    anns = LabelDataset(out).annotations()
    assert len(set(anns["id"].to_pylist())) == anns.num_rows


def _assert_artifacts(run_id: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(run_id)]))
        )
    by_key = {a.key: a for a in artifacts}
    assert {"label-dataset-progress", "label-dataset-summary", "label-dataset-report"} <= set(by_key)
    assert by_key["label-dataset-progress"].data == 100.0
    table = by_key["label-dataset-summary"].data
    table = json.loads(table) if isinstance(table, str) else table
    items = {row["item"]: row for row in table}
    assert items["labeled"]["images"] == 5 and "class: red" in items
    assert "](data:image/jpeg;base64," in by_key["label-dataset-report"].data  # inline: shows in any browser


def test_bad_input_corpus_is_recorded_and_exif_labels_follow_display(tmp_path: Path) -> None:
    src, out = tmp_path / "bad", str(tmp_path / "out")
    expected = write_bad_input_corpus(src)
    state, summary = run(str(src), out, options=FAST.model_copy(update={"batch_size": 4}))
    assert state.is_completed()  # bad files are records, not failures
    rows = {Path(r["uri"]).name: r for r in LabelDataset(out).images().to_pylist()}
    assert set(rows) == set(expected)
    for name, outcome in expected.items():
        if outcome == "labeled":
            assert rows[name]["status"] == "labeled", (name, rows[name]["reason"])
        else:
            assert (rows[name]["status"], rows[name]["reason"].split(":")[0]) == ("rejected", outcome), name
    assert "CMYK" in rows["cmyk.jpg"]["notes"] and "16-bit" in rows["sixteen_bit.png"]["notes"]
    assert "palette" in rows["palette.png"]["notes"] and "alpha" in rows["rgba.png"]["notes"]
    rejected = Counter(v for v in expected.values() if v != "labeled")
    assert summary["rejected_by_reason"] == dict(rejected)
    assert summary["labeled"] == sum(v == "labeled" for v in expected.values())

    exif = rows["exif_rotated.jpg"]
    assert (exif["height"], exif["width"]) == (64, 48) and "EXIF orientation 6" in exif["notes"]
    maps = label_maps_by_sha(LabelDataset(out))
    data = (src / "exif_rotated.jpg").read_bytes()
    np.testing.assert_array_equal(maps[exif["sha256"]], expected_label_map(data))


def test_memory_source_with_glob_and_rejection_threshold(tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"memory://src-{uuid.uuid4().hex[:8]}"
    for name, data in images(3).items():
        fs.pipe_file(f"{root}/keep/{name}", data)
    fs.pipe_file(f"{root}/skip/other.png", next(iter(images(1, seed=9).values())))
    strict = FilterConfig(min_confidence=0.99, min_labeled_fraction=0.5)
    options = FAST.model_copy(update={"glob": "keep/*.png"})
    state, summary = run(root, str(tmp_path / "out"), filters=strict, options=options)
    assert summary["images_seen"] == 3
    assert summary["rejected_by_reason"] == {"low_labeled_fraction": 3}
    rows = LabelDataset(str(tmp_path / "out")).images().to_pylist()
    assert all(r["uri"].startswith("memory://") and r["width"] == 56 for r in rows)
    fs.rm(root, recursive=True)


# --- S3 ------------------------------------------------------------------------------------------------------


def test_s3_source_and_output_on_moto(s3_server) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_server.storage_options)
    bucket = s3_server.make_bucket("photos")
    files = images(4, seed=3)
    for name, data in files.items():
        fs.pipe_file(f"{bucket}/incoming/{name}", data)
    fs.pipe_file(f"{bucket}/incoming/notes.txt", b"not an image")  # filtered out by extension
    options = FAST.model_copy(
        update={
            "source_storage_options": s3_server.storage_options,
            "dataset_storage_options": s3_server.storage_options,
        }
    )
    out = f"s3://{bucket}/labels"
    state, summary = run(f"s3://{bucket}/incoming/", out, options=options)
    assert state.is_completed() and (summary["images_seen"], summary["labeled"]) == (4, 4)
    store = LabelDataset(out, s3_server.storage_options)
    assert {r["uri"] for r in store.images().to_pylist()} == {f"s3://{bucket}/incoming/{n}" for n in files}
    assert all(r["source_version"].startswith("etag:") for r in store.images().to_pylist())
    assert fs.ls(f"{bucket}/labels/thumbnails", refresh=True)
    state, summary = run(f"s3://{bucket}/incoming/", out, options=options)
    assert summary["labeled"] == 0 and summary["skipped_unchanged"] == 4


def test_real_s3_server_seaweedfs_with_aws_environment(seaweedfs, monkeypatch: pytest.MonkeyPatch) -> None:
    import s3fs

    for key in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in seaweedfs.environment.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **seaweedfs.storage_options)
        prefix = f"{seaweedfs.bucket}/run-{uuid.uuid4().hex[:6]}"
        files = images(4, seed=4)
        for name, data in files.items():
            fs.pipe_file(f"{prefix}/images/{name}", data)
        # no storage options: endpoint and keys come from the AWS_* variables, as in production
        out = f"s3://{prefix}/dataset"
        state, summary = run(f"s3://{prefix}/images", out)
        assert state.is_completed() and summary["labeled"] == 4
        store = LabelDataset(out)
        assert store.images().num_rows == 4 and store.annotations().num_rows > 0
        state, summary = run(f"s3://{prefix}/images", out)
        assert summary["labeled"] == 0 and summary["skipped_unchanged"] == 4
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


# --- faults ----------------------------------------------------------------------------------------------------


def test_killed_run_resumes_without_duplicates_or_gaps(tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    src, out = tmp_path / "src", tmp_path / "out"
    files = images(7, seed=5)
    write_folder(src, files)
    options = FAST.model_copy(update={"batch_size": 2, "concurrency": 1, "max_in_flight": 1})
    params = {
        "labeler": TINY_SPEC.model_dump(mode="json"),
        "filters": KEEP_ALL.model_dump(mode="json"),
        "options": options.model_dump(mode="json"),
    }
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_LOGGING_LEVEL": "WARNING"}
    script = Path(__file__).parents[1] / "support" / "flow_kill_script.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(src), str(out), json.dumps(params), "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 75, proc.stdout[-2000:] + proc.stderr[-3000:]
    # batch 0 committed; batch 1 wrote its annotations part and died before its images part
    assert len(raw_rows(out, "images")) == 2
    committed = {r["labeling_id"] for r in raw_rows(out, "images")}
    orphans = {a["labeling_id"] for a in raw_rows(out, "annotations")} - committed
    assert orphans, "the killed batch should have left an uncommitted annotations part"
    assert LabelDataset(str(out)).images().num_rows == 2

    state, summary = run(str(src), str(out), options=options)
    assert state.is_completed()
    assert (summary["labeled"], summary["skipped"]) == (5, 2)

    store = LabelDataset(str(out))
    images_rows = raw_rows(out, "images")
    assert Counter(r["uri"] for r in images_rows) == Counter({str(src / n): 1 for n in files})  # each once
    current = store.images()
    assert current.num_rows == 7 and set(current["status"].to_pylist()) == {"labeled"}
    anns = store.annotations()
    assert len(set(anns["id"].to_pylist())) == anns.num_rows  # no duplicate
    assert not set(anns["labeling_id"].to_pylist()) & orphans  # orphans stay invisible
    maps = label_maps_by_sha(store)
    for data in files.values():  # no missing annotation
        np.testing.assert_array_equal(maps[sha256_hex(data)], expected_label_map(data))


def test_storage_error_outliving_retries_fails_its_batch_and_the_next_run_recovers(tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"memory://flaky-{uuid.uuid4().hex[:8]}"
    files = images(7, seed=6)
    for name, data in files.items():
        fs.pipe_file(f"{root}/{name}", data)
    names = sorted(files)
    broken = names[4]  # in batch 1 (batches of 3)
    attempts = Counter()
    real = pipeline_module.read_bytes

    def flaky(uri: str, storage_options=None) -> bytes:
        if uri.endswith(broken):
            attempts[broken] += 1
            raise ConnectionError(f"simulated S3 503 SlowDown reading {uri}")
        return real(uri, storage_options)

    out = str(tmp_path / "out")
    options = FAST.model_copy(update={"retries": 2})
    pipeline_module.read_bytes = flaky
    try:
        state, summary = run(root, out, options=options)
    finally:
        pipeline_module.read_bytes = real
    assert state.is_failed()
    assert attempts[broken] == 3  # the first try and two retries
    assert summary["failed_batch_count"] == 1 and summary["failed"] == 3
    assert summary["failed_by_reason"] == {"batch_failed": 3}
    [failure] = summary["failed_batches"]
    assert failure["index"] == 1 and "503 SlowDown" in failure["error"]
    assert summary["labeled"] == 4  # the other batches finished
    assert "503 SlowDown" in str(state.message) or "batches failed" in str(state.message)
    task_runs = run_and_chunk_task_runs(flow_run_id(state))
    batch_states = {t.name: t.state.type.value for t in task_runs if t.name.startswith("label-batch")}
    assert batch_states == {"label-batch-0": "COMPLETED", "label-batch-1": "FAILED", "label-batch-2": "COMPLETED"}
    labeled = {Path(r["uri"]).name for r in LabelDataset(out).images().to_pylist()}
    assert labeled == set(names) - set(names[3:6])

    state, summary = run(root, out, options=options)
    assert state.is_completed() and summary["labeled"] == 3 and summary["skipped"] == 4
    assert {Path(r["uri"]).name for r in LabelDataset(out).images().to_pylist()} == set(names)
    fs.rm(root, recursive=True)


def test_listing_restarts_with_backoff_after_a_storage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.label_dataset as flow_module
    from maskclip_core.storage.fs import SourceFile

    listing = [SourceFile(f"s3://b/{i}.jpg", 1, f"etag:{i}") for i in range(5)]
    failures = iter([3, 4])  # the 1st attempt dies after 3 files, the 2nd after 4, the 3rd completes

    def flaky_listing(url, **kwargs):
        stop = next(failures, None)
        for i, f in enumerate(listing):
            if i == stop:
                raise ConnectionError("listing interrupted")
            yield f

    monkeypatch.setattr(flow_module, "iter_source_files", flaky_listing)
    sleeps: list[float] = []
    options = LabelingRunParameters(retries=2, retry_delay_seconds=0.5)
    assert list(flow_module.iter_listing("s3://b", options, sleep=sleeps.append)) == listing
    assert sleeps == [0.5, 1.0]
    failures = iter([1, 1, 1])
    with pytest.raises(ConnectionError):
        list(flow_module.iter_listing("s3://b", options, sleep=sleeps.append))


def test_asking_for_a_missing_student_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "maskclip_core.student", None)
    write_folder(tmp_path / "src", images(1))
    spec = LabelerParameters.student(str(tmp_path / "student.safetensors"))
    state = label_dataset(str(tmp_path / "src"), str(tmp_path / "out"), labeler=spec, return_state=True)
    assert state.is_failed()
    with pytest.raises(StudentUnavailableError, match="maskclip_core.student.StudentLabeler"):
        state.result()


def test_student_labeler_rows_carry_source_and_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The student path through the flow, with a stand-in ``maskclip_core.student`` module."""
    import types

    from maskclip_core.types import SegmentationResult

    class FakeStudent:
        class_names = ("red", "green", "blue")

        def __init__(self, url: str) -> None:
            self.url = url

        @classmethod
        def from_checkpoint(cls, url: str, device=None, storage_options=None) -> FakeStudent:
            return cls(url)

        def label(self, batch):
            out = []
            for im in batch:
                labels = im.astype(np.int64).argmax(axis=2)
                conf = np.full(labels.shape, 0.9, np.float32)
                out.append(
                    SegmentationResult(labels, conf, np.full(3, 0.9, np.float32), np.zeros(3, bool), self.class_names)
                )
            return out

        def config(self) -> dict:
            return {"labeler": "maskclip-student", "checkpoint": self.url, "round": 3}

    monkeypatch.setitem(sys.modules, "maskclip_core.student", types.SimpleNamespace(StudentLabeler=FakeStudent))
    write_folder(tmp_path / "src", images(3, seed=11))
    spec = LabelerParameters.student(f"file://{tmp_path}/checkpoints/{uuid.uuid4().hex}")
    state, summary = run(str(tmp_path / "src"), str(tmp_path / "out"), labeler=spec)
    assert state.is_completed() and summary["labeled"] == 3 and summary["labeler"] == "student"
    store = LabelDataset(str(tmp_path / "out"))
    assert {(r["labeler"], r["round"]) for r in store.images().to_pylist()} == {("student", 3)}
    anns = store.annotations()
    assert anns.num_rows > 0
    assert set(anns["labeler"].to_pylist()) == {"student"} and set(anns["round"].to_pylist()) == {3}


# --- CLI and COCO ------------------------------------------------------------------------------------------------


def test_cli_label_then_export_coco_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pycocotools.coco import COCO

    from cli.main import main

    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "WARNING")  # what the CLI sets; restored afterwards

    src, out, coco_path = tmp_path / "src", str(tmp_path / "out"), tmp_path / "annotations.json"
    write_folder(src, images(4, seed=7))
    write_bad_input_corpus(src / "bad")
    args = ["label", "--source", str(src), "--output", out, "--classes", "red, green, blue"]
    args += ["--model", "maskclip-tiny-ViT", "--pretrained", "none", "--device", "cpu"]
    args += ["--short-side", "64", "--crop", "64", "--stride", "32", "--batch-size", "5", "--retries", "0"]
    args += ["--min-confidence", "0.3", "--min-region-area", "4", "--min-labeled-fraction", "0.05", "--json"]
    assert main(args) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out[captured.out.index("{") :])
    assert summary["images_seen"] == 4 + 14 and summary["ok"]
    assert "images seen" in captured.err and "pixel share" in captured.err  # the rich summary tables

    assert main(["export", "coco", "--from", out, "--to", str(coco_path)]) == 0
    coco = COCO(str(coco_path))
    store = LabelDataset(out)
    index = {c["id"]: i for i, c in enumerate(store.categories())}
    compared = 0
    for row, label_map in store.iter_label_maps():
        info = coco.imgs[row["image_id"]]
        assert (info["height"], info["width"]) == label_map.shape
        painted = np.full(label_map.shape, 255, np.uint8)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[row["image_id"]])):
            mask = coco.annToMask(ann).astype(bool)
            assert not (painted[mask] != 255).any()  # one class per pixel
            painted[mask] = index[ann["category_id"]]
        np.testing.assert_array_equal(painted, label_map)
        compared += 1
    assert compared == summary["labeled"] == len(coco.imgs) > 0


# --- Dask ------------------------------------------------------------------------------------------------------


def test_task_runner_choice() -> None:
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.label_dataset import make_task_runner

    runner = make_task_runner(LabelingRunParameters(concurrency=3))
    assert isinstance(runner, ThreadPoolTaskRunner) and LabelingRunParameters(concurrency=3).in_flight_limit() == 6
    local = make_task_runner(LabelingRunParameters(workers=4))
    assert isinstance(local, DaskTaskRunner) and local.cluster_kwargs["n_workers"] == 4
    assert local.cluster_kwargs["processes"] and local.cluster_kwargs["threads_per_worker"] == 1
    remote = make_task_runner(LabelingRunParameters(dask_address="tcp://127.0.0.1:8786"))
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://127.0.0.1:8786"
    with pytest.raises(ValueError, match="not both"):
        LabelingRunParameters(workers=2, dask_address="tcp://127.0.0.1:8786")


def test_dask_local_cluster_gives_the_thread_pool_labels(tmp_path: Path) -> None:
    pytest.importorskip("prefect_dask")
    from distributed import LocalCluster

    src = tmp_path / "src"
    write_folder(src, images(6, seed=8))
    threads_out, dask_out = str(tmp_path / "threads"), str(tmp_path / "dask")
    state, summary = run(str(src), threads_out)
    assert state.is_completed() and summary["labeled"] == 6
    with LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        options = FAST.model_copy(update={"dask_address": cluster.scheduler_address, "batch_size": 2})
        state, summary = run(str(src), dask_out, options=options)
    assert state.is_completed() and summary["labeled"] == 6
    assert summary["worker_pids"] and os.getpid() not in summary["worker_pids"]  # batches ran in the workers

    def masks(output: str) -> dict[tuple[str, str], np.ndarray]:
        store = LabelDataset(output)
        names = {c["id"]: c["name"] for c in store.categories()}
        sha = {r["image_id"]: r["sha256"] for r in store.images().to_pylist()}
        out = {}
        for ann in store.annotations().to_pylist():
            h, w = ann["segmentation"]["size"]
            key = (sha[ann["image_id"]], names[ann["category_id"]])
            out[key] = segmentation_to_mask(ann["segmentation"], h, w)
        return out

    a, b = masks(threads_out), masks(dask_out)
    assert a.keys() == b.keys() and len(a) > 6
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))


def test_a_dataset_keeps_the_precision_its_labelings_record_when_the_default_changes(tmp_path, monkeypatch):
    """A dataset labeled in fp32 (before the fast default: its record names no precision, as old records do) is
    never relabeled because the default became bf16: the run keeps fp32 and its config hash. A new dataset
    gets the default; a precision the user names wins."""
    from support.tiny_labeler import TINY

    from maskclip_core.dataset.labelings import read_labeling_records
    from maskclip_core.labeling.config_hash import labeling_config_hash
    from maskclip_core.teacher import fast_paths

    # Classes no other test uses: the per-process labeler cache must not hand back another test's resolution.
    auto = LabelerParameters.maskclip(TINY.model_copy(update={"classes": "red, green, blue, grey"}), device="cpu")
    src, old, new = tmp_path / "src", tmp_path / "old", tmp_path / "new"
    write_folder(src, images(4))
    _, first = run(str(src), str(old), labeler=auto.with_precision("fp32"))
    assert first["labeled"] == 4
    [record] = read_labeling_records(str(old))
    assert "precision" not in record["labeler_config"]["inference"]  # what records from before the option hold

    monkeypatch.setattr(fast_paths, "fast_bf16_cpu", lambda: True)  # the default is bf16 from here on
    assert labeling_config_hash(load_labeler(auto).config(), KEEP_ALL) != first["config_hash"]
    write_folder(src, images(2, seed=1))
    _, second = run(str(src), str(old), labeler=auto)
    assert second["config_hash"] == first["config_hash"]
    assert (second["labeled"], second["skipped_unchanged"]) == (2, 4)  # only the new files, in fp32

    _, fresh = run(str(src), str(new), labeler=auto)
    [record] = read_labeling_records(str(new))
    assert fresh["labeled"] == 6 and record["labeler_config"]["inference"]["precision"] == "bf16"
    _, named = run(str(src), str(old), labeler=auto.with_precision("bf16"))
    assert named["config_hash"] == fresh["config_hash"] and named["labeled"] == 6
