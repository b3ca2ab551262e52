"""Hostile review files through ``maskclip import``: each is refused in one line naming what is wrong, nothing
is written, and nothing the file names is ever fetched (issue 21, item 6 and the wrong-JSON-types bullet); the
work a file can cause is bounded by the dataset's image sizes, and its strings are stored cut (issue 21)."""

from __future__ import annotations

import http.server
import json
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from support.review_store import Built, build_store, fails, run

from maskclip_core.dataset.reviews import MAX_STORED_CHARS, read_reviewed
from maskclip_core.interchange.label_studio import import_label_studio


@pytest.fixture
def built(tmp_path: Path) -> Built:
    return build_store(str(tmp_path / "out"), tmp_path / "src")


def polygon_task(built: Built, points: Any, task_id: int = 41, label: Any = "cat") -> dict[str, Any]:
    """A Label Studio JSON task reviewing a/img.png with one polygon region."""
    region = {
        "id": "r1",
        "type": "polygonlabels",
        "from_name": "tag",
        "to_name": "image",
        "original_width": 48,
        "original_height": 32,
        "value": {"points": points, "closed": True, "polygonlabels": [label]},
    }
    return {
        "id": task_id,
        "data": {"image_id": str(built.ids["a/img.png"]), "height": 32, "width": 48},
        "annotations": [{"id": 1, "result": [region], "completed_by": 7, "updated_at": "2025-03-01T10:00:00Z"}],
    }


def write(path: Path, doc: Any) -> str:
    path.write_text(json.dumps(doc))  # json writes NaN / Infinity tokens, as a careless tool would
    return str(path)


def refused(capsys: Any, built: Built, fmt: str, review: str) -> str:
    err = fails(capsys, "import", fmt, review, "--dataset", built.store.url)
    assert len(err.strip().splitlines()) == 1, err
    assert not (Path(built.store.url) / "reviewed").exists()  # nothing imported
    return err


GOOD_POINTS = [[0, 0], [50, 0], [50, 100], [0, 100]]


def test_a_good_polygon_imports(built, tmp_path, capsys):
    """The control: the same task with finite points is one reviewed image."""
    summary = run(
        capsys,
        "import",
        "label-studio",
        write(tmp_path / "r.json", [polygon_task(built, GOOD_POINTS)]),
        "--dataset",
        built.store.url,
    )
    assert summary["images"] == 1 and summary["regions"] == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), "nan", "Infinity"])
def test_non_finite_polygon_points_are_refused_naming_the_task(built, tmp_path, capsys, bad):
    points = [[0, 0], [50, bad], [50, 100], [0, 100]]
    review = write(tmp_path / "r.json", [polygon_task(built, points)])
    err = refused(capsys, built, "label-studio", review)
    assert "task 41" in err and "finite" in err


def test_non_finite_points_in_json_min_are_refused(built, tmp_path, capsys):
    record = {
        "id": 41,
        "image_id": str(built.ids["a/img.png"]),
        "height": 32,
        "width": 48,
        "annotation_id": 1,
        "annotator": 7,
        "tag": [
            {
                "points": [[0, 0], [50, float("nan")], [50, 100]],
                "polygonlabels": ["cat"],
                "original_width": 48,
                "original_height": 32,
            }
        ],
    }
    err = refused(capsys, built, "label-studio", write(tmp_path / "r.json", [record]))
    assert "task 41" in err and "finite" in err


def test_non_finite_coco_polygon_is_refused(built, tmp_path, capsys):
    image_id = built.ids["a/img.png"]
    doc = {
        "images": [{"id": image_id, "file_name": "a/img.png", "height": 32, "width": 48}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [
            {"id": 5, "image_id": image_id, "category_id": 1, "segmentation": [[0, 0, 10, float("nan"), 10, 10]]}
        ],
    }
    err = refused(capsys, built, "coco", write(tmp_path / "c.json", doc))
    assert "annotation 5" in err and "finite" in err


class _Counting(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []
    body = b"[]"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(type(self).body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("fmt", ["label-studio", "coco"])
def test_a_string_document_is_refused_never_fetched(built, tmp_path, capsys, fmt):
    """A file whose JSON is a string naming a valid review (a local path, an http address) is refused; the
    address is never read."""
    good = [polygon_task(built, GOOD_POINTS)]
    if fmt == "coco":
        image_id = built.ids["a/img.png"]
        good = {
            "images": [{"id": image_id, "file_name": "a/img.png", "height": 32, "width": 48}],
            "categories": [{"id": 1, "name": "cat"}],
            "annotations": [{"id": 5, "image_id": image_id, "category_id": 1, "segmentation": [[0, 0, 9, 0, 9, 9]]}],
        }
    local = write(tmp_path / "good.json", good)
    err = refused(capsys, built, fmt, write(tmp_path / "pointer.json", local))
    assert "str" in err and str(tmp_path / "pointer.json") in err

    _Counting.hits, _Counting.body = [], json.dumps(good).encode()
    server = http.server.HTTPServer(("127.0.0.1", 0), _Counting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/good.json"
        refused(capsys, built, fmt, write(tmp_path / "pointer.json", url))
    finally:
        server.shutdown()
        server.server_close()
    assert _Counting.hits == []


@pytest.mark.parametrize("doc", [None, 3, 2.5, True])
@pytest.mark.parametrize("fmt", ["label-studio", "coco"])
def test_other_top_level_values_are_refused(built, tmp_path, capsys, fmt, doc):
    refused(capsys, built, fmt, write(tmp_path / "r.json", doc))


def test_a_list_is_not_a_coco_file(built, tmp_path, capsys):
    refused(capsys, built, "coco", write(tmp_path / "r.json", [polygon_task(built, GOOD_POINTS)]))


# --- wrong JSON types and huge strings: one bounded line naming the task ---------------------------------

MAX_LINE = 400  # an error line stays short whatever the file holds


def brush_task(built: Built, rle: Any) -> dict[str, Any]:
    task = polygon_task(built, GOOD_POINTS)
    region = task["annotations"][0]["result"][0]
    region["type"] = "brushlabels"
    region["value"] = {"format": "rle", "rle": rle, "brushlabels": ["cat"]}
    return task


def _set(task: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *keys, last = path.split(".")
    target: Any = task
    for key in keys:
        target = target[int(key)] if isinstance(target, list) else target[key]
    target[last] = value
    return task


HOSTILE_TASKS = {
    "list image_id": lambda b: _set(polygon_task(b, GOOD_POINTS), "data.image_id", [1, 2]),
    "dict image_id": lambda b: _set(polygon_task(b, GOOD_POINTS), "data.image_id", {"a": 1}),
    "string rle": lambda b: brush_task(b, "AAAA"),
    "dict rle": lambda b: brush_task(b, {"x": 1}),
    "dict annotations": lambda b: _set(polygon_task(b, GOOD_POINTS), "annotations", {"a": {"result": []}}),
    "string annotation": lambda b: _set(polygon_task(b, GOOD_POINTS), "annotations", ["x"]),
    "string result": lambda b: _set(polygon_task(b, GOOD_POINTS), "annotations.0.result", "x"),
    "string region": lambda b: _set(polygon_task(b, GOOD_POINTS), "annotations.0.result", ["x"]),
    "string value": lambda b: _set(polygon_task(b, GOOD_POINTS), "annotations.0.result.0.value", "x"),
    "string data": lambda b: _set(polygon_task(b, GOOD_POINTS), "data", "x"),
    "list height": lambda b: _set(polygon_task(b, GOOD_POINTS), "data.height", [32]),
    "string points": lambda b: polygon_task(b, "0,0,1,1"),
    "ragged points": lambda b: polygon_task(b, [[0, 0], [1], [2, 2, 2]]),
    "10 MB label": lambda b: polygon_task(b, GOOD_POINTS, label="x" * 10_000_000),
    "list label": lambda b: polygon_task(b, GOOD_POINTS, label=["cat"]),
}


@pytest.mark.parametrize("case", list(HOSTILE_TASKS))
def test_wrong_types_are_one_bounded_line_naming_the_task(built, tmp_path, capsys, case):
    review = write(tmp_path / "r.json", [HOSTILE_TASKS[case](built)])
    err = refused(capsys, built, "label-studio", review)
    assert "task 41" in err and len(err) < MAX_LINE, err[:MAX_LINE]


def test_a_huge_task_id_is_cut_too(built, tmp_path, capsys):
    task = _set(polygon_task(built, GOOD_POINTS, task_id="y" * 10_000_000), "data.image_id", [1])
    err = refused(capsys, built, "label-studio", write(tmp_path / "r.json", [task]))
    assert "task 'yyy" in err and len(err) < MAX_LINE


def test_a_non_object_task_after_a_good_one_is_named(built, tmp_path, capsys):
    err = refused(capsys, built, "label-studio", write(tmp_path / "r.json", [polygon_task(built, GOOD_POINTS), "x"]))
    assert "item 1" in err and len(err) < MAX_LINE


COCO_HOSTILE = {
    "dict annotations": lambda d: {**d, "annotations": {"a": 1}},
    "string image": lambda d: {**d, "images": ["x"]},
    "list image id": lambda d: {**d, "images": [{**d["images"][0], "id": [1]}]},
    "list category id": lambda d: {**d, "categories": [{"id": [1], "name": "cat"}]},
    "string segmentation": lambda d: {**d, "annotations": [{**d["annotations"][0], "segmentation": "x"}]},
    "string counts": lambda d: {
        **d,
        "annotations": [{**d["annotations"][0], "segmentation": {"size": [32, 48], "counts": 5}}],
    },
    "10 MB category name": lambda d: {**d, "categories": [{"id": 1, "name": "x" * 10_000_000}]},
}


@pytest.mark.parametrize("case", list(COCO_HOSTILE))
def test_wrong_types_in_a_coco_file_are_one_bounded_line(built, tmp_path, capsys, case):
    image_id = built.ids["a/img.png"]
    good = {
        "images": [{"id": image_id, "file_name": "a/img.png", "height": 32, "width": 48}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [{"id": 5, "image_id": image_id, "category_id": 1, "segmentation": [[0, 0, 9, 0, 9, 9]]}],
    }
    err = refused(capsys, built, "coco", write(tmp_path / "c.json", COCO_HOSTILE[case](good)))
    assert len(err) < MAX_LINE, err[:MAX_LINE]


def test_deeply_nested_json_is_one_line(built, tmp_path, capsys):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    refused(capsys, built, "label-studio", str(path))


# --- bounded work: tasks are matched and their declared sizes checked before anything is decoded ----------


def peak_mib(work: Any) -> float:
    """Peak Python + numpy memory (MiB) while ``work()`` runs."""
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def huge(task: dict[str, Any], height: int = 30_000, width: int = 30_000) -> dict[str, Any]:
    """The task declaring a huge image (a 0.9 GB label map) in its data and its regions."""
    task["data"].update(height=height, width=width)
    for region in task["annotations"][0]["result"]:
        region.update(original_height=height, original_width=width)
    return task


def test_a_declared_size_that_is_not_the_image_is_refused_before_decoding(built, tmp_path, capsys):
    review = write(tmp_path / "r.json", [huge(polygon_task(built, GOOD_POINTS))])
    errors: list[str] = []
    peak = peak_mib(lambda: errors.append(refused(capsys, built, "label-studio", review)))
    assert "declares 30000x30000" in errors[0] and "is 32x48" in errors[0]
    assert peak < 64, f"{peak:.0f} MiB"


def test_tasks_of_unknown_images_are_skipped_before_decoding(built, tmp_path, capsys):
    strangers = [
        huge(_set(polygon_task(built, GOOD_POINTS, task_id=100 + i), "data.image_id", str(10**9 + i)))
        for i in range(50)
    ]
    review = write(tmp_path / "r.json", [polygon_task(built, GOOD_POINTS), *strangers])
    summaries: list[dict[str, Any]] = []
    peak = peak_mib(
        lambda: summaries.append(
            run(capsys, "import", "label-studio", review, "--dataset", built.store.url, "--skip-unknown")
        )
    )
    assert (summaries[0]["images"], summaries[0]["skipped_tasks"]) == (1, 50)
    assert peak < 64, f"{peak:.0f} MiB"


def test_a_brush_rle_declaring_more_values_than_the_image_is_refused(built, tmp_path, capsys):
    rle = [255, 255, 255, 255, *([0] * 20)]  # 2**32 - 1 values in its header, for a 32 x 48 image
    err = refused(capsys, built, "label-studio", write(tmp_path / "r.json", [brush_task(built, rle)]))
    assert "task 41" in err and "declares 4294967295 values" in err


def test_without_the_dataset_a_task_may_declare_a_bounded_size(built):
    with pytest.raises(ValueError, match="declares 100000x100000, not 1 to 80000000 pixels"):
        import_label_studio([huge(polygon_task(built, GOOD_POINTS), 100_000, 100_000)], [{"id": 1, "name": "cat"}])


def test_huge_reviewer_strings_are_stored_cut(built, tmp_path, capsys):
    task = polygon_task(built, GOOD_POINTS)
    task["annotations"][0].update(completed_by="r" * 10_000_000, updated_at="2025-" + "9" * 10_000_000)
    run(capsys, "import", "label-studio", write(tmp_path / "r.json", [task]), "--dataset", built.store.url)
    [row] = read_reviewed(built.store.url).to_pylist()
    assert row["reviewer"] == "r" * MAX_STORED_CHARS and len(row["reviewed_at"]) == MAX_STORED_CHARS
