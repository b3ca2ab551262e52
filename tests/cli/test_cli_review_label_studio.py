"""`maskclip review push|pull` against a real Label Studio server (tests/support/label_studio_server.py).

A dataset labeled by the tiny random-weight teacher is pushed; the server's tasks, predictions (decoded with
label-studio-sdk's own brush decoder) and image files are checked; an annotation is submitted through the
API with some pixels moved from one class to another; pull + evaluate must give the IoUs worked out by hand.
The one-line errors that need no server (missing / wrong document root, unreachable server) run without it.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from support.label_studio_server import LabelStudioServer, label_studio_process, label_studio_server  # noqa: F401
from support.review_store import build_store, fails, run
from support.tiny_labeler import KEEP_ALL, TINY_SPEC, block_image

from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.reader import iter_export_images
from maskclip_core.dataset.records import category_masks
from maskclip_core.interchange.label_studio import label_studio_task
from maskclip_core.interchange.label_studio_rle import encode_mask
from maskclip_core.interchange.label_studio_sync import default_project_title
from maskclip_core.labeling.config_hash import labeling_config_hash
from maskclip_core.labeling.registry import labeler_categories, load_labeler
from maskclip_core.labeling.run_records import LabelingPlan, SourceItem
from maskclip_core.labeling.write import label_and_write_batch

# photos/a.png, photos/b.png and photos/more/c.png below the server's document root: one storage, photos/
NAMES = ("photos/a.png", "photos/b.png", "photos/more/c.png")


@pytest.fixture(scope="module")
def labeled(label_studio_process: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory) -> dict:  # noqa: F811
    """Label three block images with the tiny teacher into a dataset (while the server starts)."""
    root = label_studio_process.document_root
    rng = np.random.default_rng(12)
    for name in NAMES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(block_image(rng)).save(root / name)
    dataset = str(tmp_path_factory.mktemp("review") / "dataset")
    store = _label([str(root / n) for n in NAMES], dataset)
    images = {image.image_id: image for image in iter_export_images(store)}
    return {"dataset": dataset, "images": images, "categories": store.categories(), "root": root}


def _label(uris: list[str], dataset: str, storage_options: dict | None = None) -> LabelDataset:
    """The images labeled by the tiny teacher, every pixel kept, into a new dataset."""
    labeler = load_labeler(TINY_SPEC)
    store = LabelDataset(dataset)
    ids = store.ensure_categories(labeler_categories(labeler))
    plan = LabelingPlan(
        run_id="review-test",
        config_hash=labeling_config_hash(labeler.config(), KEEP_ALL),
        class_names=tuple(labeler.class_names),
        category_ids=tuple(ids[name] for name in labeler.class_names),
        filters=KEEP_ALL,
    )
    items = [SourceItem(uri) for uri in uris]
    outcome = label_and_write_batch(0, items, labeler, plan, store, source_storage_options=storage_options)
    assert outcome.stats.labeled == len(uris)
    return store


def _server_tasks(client, project_id: int) -> list:
    return sorted(client.tasks.list(project=project_id, fields="all"), key=lambda t: t.id)


def _predictions(task) -> list[dict]:
    """A task's predictions as plain dicts (the SDK returns models or dicts depending on the endpoint)."""
    return [p if isinstance(p, dict) else p.model_dump() for p in task.predictions or []]


def _decoded(result: list[dict], names: dict[str, int], h: int, w: int) -> dict[int, np.ndarray]:
    """Category id -> mask of brush regions, decoded by label-studio-sdk's converter (not our decoder)."""
    from label_studio_sdk.converter.brush import decode_rle

    out = {}
    for region in result:
        rgba = np.asarray(decode_rle(region["value"]["rle"]), np.uint8).reshape(h, w, 4)
        out[names[region["value"]["brushlabels"][0]]] = rgba[..., 3] > 0
    return out


def _brush(region: dict, mask: np.ndarray, label: str, region_id: str) -> dict:
    out = copy.deepcopy(region)
    out["id"] = region_id
    out.pop("score", None)
    out["value"] = {"format": "rle", "rle": encode_mask(mask), "brushlabels": [label]}
    return out


def test_push_annotate_pull_evaluate_exact(labeled, label_studio_server: LabelStudioServer, capsys) -> None:  # noqa: F811
    server = label_studio_server
    dataset, images, categories = labeled["dataset"], labeled["images"], labeled["categories"]
    names = {c["name"]: int(c["id"]) for c in categories}
    push = ["review", "push", "--label-studio", server.url, "--api-key", server.api_key, "--dataset", dataset]
    push += ["--document-root", str(server.document_root)]

    first = run(capsys, *push)
    assert first["project_created"] and first["title"] == default_project_title(dataset)
    assert (first["images"], first["tasks_created"], first["tasks_updated"]) == (3, 3, 0)
    assert first["storages"] == [{"type": "local-files", "path": str(server.document_root / "photos"), "created": True}]

    client = server.client()
    project = client.projects.get(first["project"])
    assert project.parsed_label_config["tag"]["labels"] == [c["name"] for c in categories]
    tasks = _server_tasks(client, project.id)
    assert sorted(int(t.data["image_id"]) for t in tasks) == sorted(images)
    for task in tasks:
        image = images[int(task.data["image_id"])]
        [prediction] = _predictions(task)
        masks = _decoded(prediction["result"], names, image.height, image.width)
        expected = category_masks(image)
        assert masks.keys() == expected.keys()
        assert all(np.array_equal(masks[cid], expected[cid]) for cid in expected)
        # the image as the labeling UI loads it: through the Local Files storage push created
        served = httpx.get(server.url + task.data["image"], headers={"Authorization": f"Token {server.api_key}"})
        assert served.status_code == 200 and served.content == Path(image.uri).read_bytes()

    again = run(capsys, *push)  # idempotent: nothing new, nothing changed, no second storage
    assert (again["project"], again["project_created"]) == (project.id, False)
    assert (again["tasks_created"], again["tasks_updated"], again["tasks_unchanged"]) == (0, 0, 3)
    assert again["storages"][0]["created"] is False
    assert len(_server_tasks(client, project.id)) == 3

    # A prediction edited on the server is put back by the next push (and only that task is touched).
    victim = tasks[0]
    client.predictions.delete(_predictions(victim)[0]["id"])
    client.predictions.create(task=victim.id, result=[], model_version="maskclip")
    third = run(capsys, *push)
    assert (third["tasks_created"], third["tasks_updated"], third["tasks_unchanged"]) == (0, 1, 2)
    [restored] = _predictions(client.tasks.get(victim.id))
    assert restored["result"] == _predictions(victim)[0]["result"]

    # Review: accept every prediction, but in the first task move the upper half (in raster order) of its
    # first class's pixels to another class.
    edited_task = tasks[0]
    edited = images[int(edited_task.data["image_id"])]
    pseudo = {image_id: category_masks(image) for image_id, image in images.items()}
    c = next(iter(pseudo[edited.image_id]))
    d = next(cid for cid in names.values() if cid != c)
    ys, xs = np.nonzero(pseudo[edited.image_id][c])
    moved = np.zeros((edited.height, edited.width), bool)
    moved[ys[: (len(ys) + 1) // 2], xs[: (len(ys) + 1) // 2]] = True
    by_id = {v: k for k, v in names.items()}
    for task in tasks:
        result = _predictions(task)[0]["result"]
        if task.id == edited_task.id:
            template = result[0]
            new_masks = {cid: m.copy() for cid, m in pseudo[edited.image_id].items()}
            new_masks[c] &= ~moved
            new_masks[d] = new_masks.get(d, np.zeros_like(moved)) | moved
            result = [_brush(template, m, by_id[cid], f"r{cid}") for cid, m in new_masks.items()]
        client.annotations.create(id=task.id, result=result, was_cancelled=False, ground_truth=False)

    # Pull with a personal access token (a JWT the SDK exchanges for access tokens), not the legacy token.
    token = client.tokens.create().token
    pull = ["review", "pull", "--label-studio", server.url, "--api-key", token, "--dataset", dataset]
    pulled = run(capsys, *pull)
    assert (pulled["project"], pulled["annotated_tasks"], pulled["images"], pulled["skipped"]) == (project.id, 3, 3, [])
    assert run(capsys, *pull)["import_id"] == pulled["import_id"]  # unchanged reviews: the same part again

    report = run(capsys, "evaluate", "--dataset", dataset, "--json")
    # By hand: every pixel is labeled on both sides; only `moved` pixels differ (pseudo c, reviewed d).
    area = {cid: sum(int(m[cid].sum()) for m in pseudo.values() if cid in m) for cid in names.values()}
    k = int(moved.sum())
    expected = {}
    for name, cid in names.items():
        if cid == c:
            expected[name] = (area[c] - k) / area[c]
        elif cid == d:
            expected[name] = area[d] / (area[d] + k)
        else:
            expected[name] = 1.0 if area[cid] else None
    assert report["images"] == 3 and report["missing"] == []
    assert report["per_class_iou"].keys() == expected.keys()
    for name, iou in expected.items():
        assert report["per_class_iou"][name] == (None if iou is None else pytest.approx(iou, rel=1e-12)), name
    total = sum(area.values())
    assert report["pixel_accuracy"] == pytest.approx((total - k) / total, rel=1e-12)


def test_project_follows_the_dataset_and_polygons(labeled, label_studio_server, tmp_path, capsys) -> None:  # noqa: F811
    """A category added to the dataset reaches the project's label config on the next push; polygon tasks arrive
    as generated."""
    dataset = str(tmp_path / "dataset")
    shutil.copytree(labeled["dataset"], dataset)
    server = label_studio_server
    push = ["review", "push", "--label-studio", server.url, "--api-key", server.api_key, "--dataset", dataset]
    push += ["--document-root", str(server.document_root), "--project", "maskclip polygons", "--polygons"]
    first = run(capsys, *push)
    client = server.client()
    project = client.projects.get(first["project"])
    assert project.parsed_label_config["tag"]["type"] == "PolygonLabels"
    categories = LabelDataset(dataset).categories()
    expected = {
        str(image.image_id): label_studio_task(
            image, categories, mode="polygon", document_root=str(server.document_root)
        )
        for image in labeled["images"].values()
    }
    for task in _server_tasks(client, project.id):
        [prediction] = _predictions(task)
        assert prediction["result"] == expected[task.data["image_id"]]["predictions"][0]["result"]

    LabelDataset(dataset).ensure_categories(["yellow"])
    again = run(capsys, *push)
    assert (again["project"], again["tasks_created"], again["tasks_updated"]) == (project.id, 0, 0)
    labels = client.projects.get(project.id).parsed_label_config["tag"]["labels"]
    assert labels == [c["name"] for c in labeled["categories"]] + ["yellow"]


def test_bad_key_is_one_line(labeled, label_studio_server: LabelStudioServer, capsys) -> None:  # noqa: F811
    err = fails(
        capsys,
        *["review", "pull", "--label-studio", label_studio_server.url, "--api-key", "not-a-token"],
        *["--dataset", labeled["dataset"]],
    )
    assert "refused the API key (HTTP 401" in err and len(err.strip().splitlines()) == 1


def test_s3_images_are_served_through_presigned_urls(label_studio_server, s3_server, tmp_path, capsys) -> None:  # noqa: F811
    """s3:// images: push adds an S3 storage with presigning; the UI's URL of each image yields its bytes."""
    import fsspec

    bucket = s3_server.make_bucket("review")
    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    rng = np.random.default_rng(5)
    blobs = {}
    for name in ("photos/x.png", "photos/y.png"):
        path = tmp_path / name.replace("/", "-")
        Image.fromarray(block_image(rng)).save(path)
        blobs[f"s3://{bucket}/{name}"] = path.read_bytes()
        fs.pipe(f"{bucket}/{name}", blobs[f"s3://{bucket}/{name}"])
    dataset = str(tmp_path / "dataset")
    _label(sorted(blobs), dataset, s3_server.storage_options)
    push = ["review", "push", "--label-studio", label_studio_server.url, "--api-key", label_studio_server.api_key]
    push += ["--dataset", dataset, "--project", "maskclip s3 review"]
    push += ["--storage-options", json.dumps(s3_server.storage_options)]
    summary = run(capsys, *push)
    assert summary["storages"] == [{"type": "s3", "bucket": bucket, "created": True}]
    assert summary["tasks_created"] == 2
    client = label_studio_server.client()
    auth = {"Authorization": f"Token {label_studio_server.api_key}"}
    stored = {t["id"]: t["data"]["image"] for t in client.projects.exports.as_json(summary["project"])}
    assert sorted(stored.values()) == sorted(blobs)  # tasks keep the s3:// URIs ...
    for task in _server_tasks(client, summary["project"]):  # ... which the labeling UI gets resolved
        resolved = task.data["image"]
        assert not resolved.startswith("s3://")
        url = resolved if resolved.startswith("http") else label_studio_server.url + resolved
        served = httpx.get(url, headers=auth, follow_redirects=True)
        assert served.status_code == 200 and served.content == blobs[stored[task.id]]
    again = run(capsys, *push)
    assert (again["tasks_created"], again["tasks_updated"], again["storages"][0]["created"]) == (0, 0, False)


def test_a_server_with_another_document_root_is_one_line(label_studio_server, small, tmp_path, capsys) -> None:  # noqa: F811
    """Our side sees the images below --document-root, the server's root is elsewhere: its refusal, one line."""
    err = fails(
        capsys,
        *["review", "push", "--label-studio", label_studio_server.url, "--api-key", label_studio_server.api_key],
        *["--dataset", str(tmp_path / "ds"), "--project", "maskclip wrong root"],
        *["--document-root", str(tmp_path / "root")],
    )
    assert "HTTP 400" in err and "LOCAL_FILES_DOCUMENT_ROOT" in err and len(err.strip().splitlines()) == 1, err
    projects = label_studio_server.client().projects.list(title="maskclip wrong root")
    assert [p.id for p in projects if p.title == "maskclip wrong root"] == []  # the failed first push removed it


# --- no server needed -------------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path):
    """review_store's synthetic dataset with its images under tmp_path/root/pics."""
    return build_store(str(tmp_path / "ds"), tmp_path / "root" / "pics")


def test_local_images_need_a_document_root_strictly_above_them(small, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", raising=False)
    base = [
        "review",
        "push",
        "--label-studio",
        "http://127.0.0.1:9",
        "--api-key",
        "k",
        "--dataset",
        str(tmp_path / "ds"),
    ]
    err = fails(capsys, *base)
    assert "pass --document-root" in err and len(err.strip().splitlines()) == 1
    err = fails(capsys, *base, "--document-root", str(tmp_path / "elsewhere"))
    assert "is outside the document root" in err
    # a/img.png lies in pics/a/: with that folder as the root it lies directly in it, which Label Studio refuses
    only_a = ["--image-ids", str(small.ids["a/img.png"])]
    err = fails(capsys, *base, *only_a, "--document-root", str(tmp_path / "root" / "pics" / "a"))
    assert "lies directly in the document root" in err and "subfolder" in err


def test_unreachable_server_is_one_line(small, tmp_path, capsys) -> None:
    err = fails(
        capsys,
        *["review", "push", "--label-studio", "http://127.0.0.1:9", "--api-key", "k"],
        *["--dataset", str(tmp_path / "ds"), "--document-root", str(tmp_path / "root")],
    )
    assert err.startswith("maskclip: error: cannot reach Label Studio at http://127.0.0.1:9")
    assert len(err.strip().splitlines()) == 1


def test_api_key_from_the_environment(small, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    base = ["review", "pull", "--label-studio", "http://127.0.0.1:9", "--dataset", str(tmp_path / "ds")]
    assert "pass --api-key or set LABEL_STUDIO_API_KEY" in fails(capsys, *base)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "from-env")
    assert "cannot reach Label Studio" in fails(capsys, *base)  # got past the key check


def test_default_project_title_fits_label_studio() -> None:
    assert default_project_title("s3://bucket/labels/photos/") == "maskclip labels/photos"
    long = default_project_title("/data/" + "x" * 80 + "/dataset")
    assert len(long) == 50 and long.endswith("/dataset")
