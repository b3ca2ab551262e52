"""`maskclip review push|pull` when a team uses it: concurrent pushes, stray tasks and labels, deleted reviews,
a wrong document root, other spellings of the dataset (issue 20), against the session's real Label Studio
(tests/support/label_studio_server.py). The dataset is review_store's small synthetic one (no model), its
images in a folder of their own below the server's document root.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from support.cli_runner import run_cli
from support.label_studio_server import USER, LabelStudioServer, label_studio_process, label_studio_server  # noqa: F401
from support.review_store import Built, build_store, fails, run

from maskclip_core.dataset.reader import iter_export_images
from maskclip_core.dataset.reviews import read_reviewed
from maskclip_core.interchange.label_studio import label_studio_task
from maskclip_core.interchange.label_studio_project import default_project_title, find_project, project_config
from maskclip_core.interchange.label_studio_rle import encode_mask
from maskclip_core.interchange.label_studio_sync import LabelStudioTarget, push


@pytest.fixture
def team(label_studio_server: LabelStudioServer, tmp_path: Path) -> Built:  # noqa: F811
    """Three labeled images (and a rejected one) below the server's document root, a dataset per test."""
    return build_store(str(tmp_path / "ds"), label_studio_server.document_root / "team" / tmp_path.name)


def push_args(server: LabelStudioServer, dataset: str, *extra: str) -> list[str]:
    base = ["review", "push", "--label-studio", server.url, "--api-key", server.api_key, "--dataset", dataset]
    return [*base, "--document-root", str(server.document_root), *extra]


def pull_args(server: LabelStudioServer, dataset: str, *extra: str) -> list[str]:
    return ["review", "pull", "--label-studio", server.url, "--api-key", server.api_key, "--dataset", dataset, *extra]


def titled(client, title: str) -> list[int]:
    return sorted(p.id for p in client.projects.list(title=title) if p.title == title)


def tasks_of(client, project_id: int) -> list:
    return sorted(client.tasks.list(project=project_id, fields="all"), key=lambda t: t.id)


def annotate(client, task, label: str = "cat", rows: slice = slice(0, 32)) -> None:
    """Submit a one-region brush annotation painting ``rows`` of the 32 x 48 image with ``label``."""
    mask = np.zeros((32, 48), bool)
    mask[rows] = True
    region = {
        "id": f"r{task.id}",
        "from_name": "tag",
        "to_name": "image",
        "type": "brushlabels",
        "original_width": 48,
        "original_height": 32,
        "value": {"format": "rle", "rle": encode_mask(mask), "brushlabels": [label]},
    }
    client.annotations.create(id=task.id, result=[region], was_cancelled=False, ground_truth=False)


def test_two_pushes_at_once_make_one_project_and_one_task_per_image(team, label_studio_server) -> None:  # noqa: F811
    server, dataset = label_studio_server, team.store.url
    target = LabelStudioTarget(server.url, server.api_key)
    barrier = threading.Barrier(2)
    summaries: list[dict] = []
    errors: list[BaseException] = []

    def one_push() -> None:
        barrier.wait()
        try:
            summaries.append(push(target, dataset, document_root=str(server.document_root)))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=one_push) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    client = server.client()
    [project_id] = titled(client, default_project_title(dataset))
    assert {s["project"] for s in summaries} == {project_id}
    image_ids = sorted(int(t.data["image_id"]) for t in tasks_of(client, project_id))
    labeled = sorted(i for i, status in team.status.items() if status == "labeled")
    assert image_ids == labeled  # one task per image, whichever push imported it


def test_a_push_losing_the_create_race_deletes_its_project(team, label_studio_server) -> None:  # noqa: F811
    """The other push creates the project between our look-up and our create: ours is deleted, theirs used."""
    client = label_studio_server.client()
    title = default_project_title(team.store.url)
    config, _ = project_config(None, team.store.categories(), "brush")
    real_create = client.projects.create

    def create_after_the_other_push(**fields):
        real_create(**fields)  # the other push, a moment earlier
        return real_create(**fields)

    client.projects.create = create_after_the_other_push
    project, created, others = find_project(client, None, team.store.url, label_config=config)
    assert (created, others) == (False, [])
    assert titled(client, title) == [project.id]


def test_duplicate_tasks_are_removed_and_annotated_copies_reported_and_merged(team, label_studio_server, capsys):  # noqa: F811
    server, dataset = label_studio_server, team.store.url
    first = run(capsys, *push_args(server, dataset))
    client = server.client()
    images = {i.image_id: i for i in iter_export_images(team.store)}
    categories = team.store.categories()
    # What a second push at the same moment leaves: every task imported again.
    again = [label_studio_task(i, categories, document_root=str(server.document_root)) for i in images.values()]
    client.projects.import_tasks(first["project"], request=again)
    assert len(tasks_of(client, first["project"])) == 6
    a = team.ids["a/img.png"]
    copies = [t for t in tasks_of(client, first["project"]) if int(t.data["image_id"]) == a]
    annotate(client, copies[0], "cat")
    annotate(client, copies[1], "dog")  # the later annotation: it counts

    rc, out, err = run_cli(capsys, *push_args(server, dataset))
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["duplicates_removed"] == 2  # the unannotated copies of the other two images
    assert summary["duplicates_annotated"] == {str(a): [copies[0].id, copies[1].id]}
    assert f"image {a} is annotated in several tasks" in err
    assert len(tasks_of(client, first["project"])) == 4

    rc, out, err = run_cli(capsys, *pull_args(server, dataset))
    assert rc == 0, err
    pulled = json.loads(out)
    assert pulled["images_in_several_tasks"] == {str(a): [copies[0].id, copies[1].id]}
    assert f"image {a} is annotated in tasks" in err
    [row] = read_reviewed(dataset).to_pylist()
    assert row["category_id"] == team.category_ids["dog"] and row["reviewer"] == USER  # the email, not an id


def test_a_document_root_the_server_does_not_use_stops_in_one_line(team, label_studio_server, capsys) -> None:  # noqa: F811
    """An ancestor of the server's root: the storage is accepted, but every image would be a 404."""
    server, dataset = label_studio_server, team.store.url
    args = push_args(server, dataset)
    args[args.index("--document-root") + 1] = str(server.document_root.parent)
    err = fails(capsys, *args)
    assert "does not serve" in err and "HTTP 404" in err and len(err.strip().splitlines()) == 1, err
    assert titled(server.client(), default_project_title(dataset)) == []  # the failed first push left no project


def test_other_spellings_of_the_dataset_find_its_project(team, label_studio_server, capsys, monkeypatch) -> None:  # noqa: F811
    server, dataset = label_studio_server, team.store.url
    first = run(capsys, *push_args(server, dataset))
    monkeypatch.chdir(Path(dataset).parent.parent)
    spellings = [
        f"{Path(dataset).parent.name}/ds",
        dataset + "/",
        "file://" + dataset,
        dataset.replace("/ds", "//ds"),
    ]
    # The first push above used the legacy token; these use a personal access token (the served-image check
    # authenticates with the SDK's refreshed access token).
    token = server.client().tokens.create().token
    for spelling in spellings:
        args = push_args(server, spelling)
        args[args.index("--api-key") + 1] = token
        summary = run(capsys, *args)
        assert (summary["project"], summary["tasks_created"], summary["project_created"]) == (
            first["project"],
            0,
            False,
        ), spelling
    assert run(capsys, *pull_args(server, "file://" + dataset + "/"))["project"] == first["project"]


def test_stray_labels_and_synced_tasks_are_skipped_and_counted(team, label_studio_server, capsys) -> None:  # noqa: F811
    server, dataset = label_studio_server, team.store.url
    first = run(capsys, *push_args(server, dataset))
    client = server.client()
    project = client.projects.get(first["project"])
    # A label added in the UI, used by one annotation; the storage's Sync button, one of its tasks annotated.
    client.projects.update(
        project.id, label_config=project.label_config.replace("</BrushLabels>", '<Label value="zebra"/></BrushLabels>')
    )
    tasks = tasks_of(client, project.id)
    annotate(client, tasks[0], "zebra")
    annotate(client, tasks[1], "cat")
    [storage] = client.import_storage.local.list(project=project.id)
    client.import_storage.local.sync(id=storage.id)
    synced = [t for t in tasks_of(client, project.id) if "image_id" not in t.data]
    assert synced  # Sync made a task per file, without our image_id
    annotate(client, synced[0], "dog")

    err = fails(capsys, *pull_args(server, dataset))
    assert "--skip-unknown" in err and len(err.strip().splitlines()) == 1, err
    rc, out, err = run_cli(capsys, *pull_args(server, dataset, "--skip-unknown"))
    assert rc == 0, err
    summary = json.loads(out)
    assert (summary["images"], summary["skipped_tasks"]) == (1, 2)
    assert "skipped 2 task(s)" in err
    again = run(capsys, *push_args(server, dataset))  # the config follows the categories but keeps zebra
    assert again["labels_kept"] == ["zebra"]
    labels = client.projects.get(project.id).parsed_label_config["tag"]["labels"]
    assert labels == [c["name"] for c in team.store.categories()] + ["zebra"]


def test_deleted_annotations_are_retracted(team, label_studio_server, capsys) -> None:  # noqa: F811
    server, dataset = label_studio_server, team.store.url
    first = run(capsys, *push_args(server, dataset))
    client = server.client()
    tasks = tasks_of(client, first["project"])
    for task in tasks[:2]:
        annotate(client, task, "cat")
    assert run(capsys, *pull_args(server, dataset))["images"] == 2
    assert run(capsys, "evaluate", "--dataset", dataset, "--json")["reviewed_images"] == 2

    gone = client.tasks.get(tasks[0].id).annotations[0]
    client.annotations.delete(gone["id"] if isinstance(gone, dict) else gone.id)
    pulled = run(capsys, *pull_args(server, dataset))
    assert pulled["retracted"] == [int(tasks[0].data["image_id"])]
    report = run(capsys, "evaluate", "--dataset", dataset, "--json")
    assert report["reviewed_images"] == 1 and report["images"] == 1
    assert run(capsys, *pull_args(server, dataset))["import_id"] == pulled["import_id"]  # stable

    # --unreviewed: the next push picks only the image whose review was retracted or never made.
    unreviewed = run(capsys, *push_args(server, dataset, "--unreviewed", "--project", f"next {first['project']}"))
    reviewed_id = int(tasks[1].data["image_id"])
    assert unreviewed["images"] == 2
    new_tasks = {int(t.data["image_id"]) for t in tasks_of(client, unreviewed["project"])}
    assert reviewed_id not in new_tasks


# --- no server needed -------------------------------------------------------------------------------------


def test_an_empty_selection_creates_nothing(tmp_path, capsys) -> None:
    built = build_store(str(tmp_path / "ds"), tmp_path / "root" / "pics")
    rc, out, err = run_cli(
        capsys,
        *["review", "push", "--label-studio", "http://127.0.0.1:9", "--api-key", "k"],
        *["--dataset", built.store.url, "--lowest", "0"],
    )
    assert rc == 0 and "no image matched the selection; nothing was pushed" in err  # the server was never asked
    assert '"project": null' in out


def test_the_server_from_the_environment(tmp_path, capsys, monkeypatch) -> None:
    built = build_store(str(tmp_path / "ds"), tmp_path / "root" / "pics")
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    base = ["review", "pull", "--api-key", "k", "--dataset", built.store.url]
    assert "pass --label-studio URL or set LABEL_STUDIO_URL" in fails(capsys, *base)
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")
    assert "cannot reach Label Studio at http://127.0.0.1:9" in fails(capsys, *base)


def test_pull_pages_retry_a_transient_5xx() -> None:
    """A 503 on a page of annotated tasks is retried; pull reads the page when the server answers again."""
    import httpx

    from maskclip_core.interchange.label_studio_client import connect
    from maskclip_core.interchange.label_studio_pull import _annotated_tasks

    answers = {"tasks": [503]}
    pages: list[str] = []
    annotation = {"id": 9, "result": [], "completed_by": 1, "updated_at": "2025-03-01T10:00:00Z"}
    task = {"id": 5, "data": {"image_id": "42"}, "annotations": [annotation]}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/whoami"):
            return httpx.Response(200, json={"id": 1, "email": USER})
        pages.append(request.url.params.get("page", "1"))
        if answers["tasks"]:
            return httpx.Response(answers["tasks"].pop(), json={"detail": "busy"})
        found = [task] if request.url.params.get("page", "1") == "1" else []
        return httpx.Response(200, json={"tasks": found, "total": 1, "total_annotations": 1, "total_predictions": 0})

    client = connect("http://ls.invalid", "k", httpx_client=httpx.Client(transport=httpx.MockTransport(handler)))
    [merged] = _annotated_tasks(client, 1, {1: USER})
    assert pages[:2] == ["1", "1"]  # the 503, then the same page again
    assert merged["task_ids"] == [5] and merged["annotations"][0]["completed_by"] == {"id": 1, "email": USER}


def test_after_relabeling_push_and_evaluate_name_the_flag_and_the_newest_labeling(tmp_path, capsys) -> None:
    dataset = str(tmp_path / "ds")
    first = build_store(dataset, tmp_path / "root" / "pics")
    later = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
    build_store(dataset, tmp_path / "root" / "pics", config="cfg-b", labeled_at=later)
    err = fails(
        capsys, "review", "push", "--label-studio", "http://127.0.0.1:9", "--api-key", "k", "--dataset", dataset
    )
    assert "pass --config-hash" in err and "the newest labeling is cfg-b" in err and len(err.strip().splitlines()) == 1
    task = {
        "id": 1,
        "data": {"image_id": str(first.ids["a/img.png"]), "height": 32, "width": 48},
        "annotations": [{"id": 1, "result": [], "completed_by": 1, "updated_at": "2025-07-01T00:00:00Z"}],
    }
    (tmp_path / "r.json").write_text(json.dumps([task]))
    run(capsys, "import", "label-studio", str(tmp_path / "r.json"), "--dataset", dataset)
    err = fails(capsys, "evaluate", "--dataset", dataset)
    assert "pass --config-hash" in err and "the newest labeling is cfg-b" in err
