"""A dataset's pseudo-labels into a live Label Studio project: ``maskclip review push`` (``review pull`` is
``label_studio_pull``; both are importable from here).

Push finds or creates the dataset's project (``label_studio_project``), gives it the storage Label Studio needs
to show the images (Local Files storage for local images, S3 storage with presigned URLs for ``s3://`` ones),
checks that the server really serves a local image, and imports one task per image with our prediction (the
same tasks and brush RLE as ``maskclip export label-studio``). Tasks are matched to images by the ``image_id``
in their data, so pushing again adds only new images and replaces only predictions that changed. Label Studio
has no unique key, so two pushes at the same moment may both import an image: every push ends by reconciling
the project, keeping one task per image (an annotated one if any) and deleting the unannotated copies; copies
that are both annotated are kept and reported. Storages are never synced by push (a Sync creates tasks without
our ``image_id``; pull skips those with ``--skip-unknown``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow.compute as pc

from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.reader import select_images
from maskclip_core.dataset.records import ExportImage
from maskclip_core.dataset.reviews import read_reviewed
from maskclip_core.interchange.label_studio import image_url, label_studio_task
from maskclip_core.interchange.label_studio_client import (
    LabelStudioError,
    LabelStudioTarget,
    canonical_json,
    connect,
    is_missing,
    sdk_field,
    served_status,
    server_errors,
)
from maskclip_core.interchange.label_studio_project import (
    default_project_title,
    delete_new_project,
    find_project,
    project_config,
    same_config,
)
from maskclip_core.interchange.label_studio_pull import pull

__all__ = ["LabelStudioError", "LabelStudioTarget", "connect", "default_project_title", "pull", "push"]

DOCUMENT_ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
IMPORT_CHUNK = 100  # tasks per import request: small requests, and a failed push resumes where it stopped
STORAGE_TITLE = "maskclip images"


# ----------------------------------------------------------------------------------------------- push


def push(
    target: LabelStudioTarget,
    dataset: str,
    *,
    selection: Mapping[str, Any] | None = None,
    unreviewed: bool = False,
    mode: str = "brush",
    document_root: str | None = None,
    model_version: str = "maskclip",
    polygon_tolerance: float = 0.0,
    storage_options: Mapping[str, Any] | None = None,
    client: Any = None,
) -> dict[str, Any]:
    """Create or update the project of ``dataset`` and import its selected images as tasks with predictions.

    ``selection``: keyword arguments of ``dataset.reader.select_images`` (config_hash, classes, min_score,
    max_score, statuses, rounds, labelers, image_ids, lowest); ``unreviewed``: leave out images the reviewed
    table holds (before ``lowest`` ranks). An empty selection touches nothing on the server. ``document_root``:
    the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (default: that variable here), needed for local images,
    which must lie in folders strictly below it. ``storage_options``: the dataset's fsspec options; for
    ``s3://`` images their key, secret and endpoint (else the AWS environment's) go to the project's S3 storage
    so Label Studio can presign the image URLs. A first push that fails deletes the project it created.
    Returns a JSON-able summary.
    """
    store = LabelDataset(dataset, storage_options)
    categories = store.categories()
    if not categories:
        raise ValueError(f"{dataset} holds no categories: nothing was labeled there")
    selection = dict(selection or {})
    if unreviewed:
        selection["image_ids"] = _unreviewed_ids(store, selection.get("image_ids"))
    # Regions stay compressed RLE until their task is built, one import chunk at a time.
    images = list(select_images(store, categories=categories, **selection))
    if not images:
        return _empty_push_summary()
    root = document_root or os.environ.get(DOCUMENT_ROOT_ENV) or None
    # Checked before anything is sent: an image Label Studio could not show stops the push early.
    locations = _image_locations([image.uri for image in images], root)
    options = {"mode": mode, "document_root": root, "model_version": model_version}
    options["polygon_tolerance"] = polygon_tolerance
    client = client or connect(target.url, target.api_key)
    base = target.url.rstrip("/")
    with server_errors(base):
        config, _ = project_config(None, categories, mode)
        project, created, others = find_project(client, target.project, dataset, label_config=config)
        try:
            summary = _fill_project(client, project, created, images, categories, options, locations, storage_options)
        except Exception:
            if created:  # a failed first push leaves no empty project behind
                delete_new_project(client, project.id)
            raise
        removed, kept = _reconcile(client, project.id)
    return {
        "project": project.id,
        "title": project.title,
        "url": f"{base}/projects/{project.id}",
        "project_created": created,
        **summary,
        "images": len(images),
        "duplicates_removed": summary["duplicates_removed"] + removed,
        "duplicates_annotated": kept,
        "other_projects": others,
    }


def _fill_project(
    client: Any,
    project: Any,
    created: bool,
    images: Sequence[ExportImage],
    categories: Sequence[Mapping[str, Any]],
    options: Mapping[str, Any],
    locations: tuple[list[str], list[str]],
    storage_options: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Label config, storages and tasks of one push; returns their part of the summary."""
    config, kept_labels = project_config(project.label_config, categories, options["mode"])
    if not created and not same_config(project.label_config, config):
        client.projects.update(project.id, label_config=config)
    local_folders, buckets = locations
    storages = _local_storages(client, project.id, local_folders)
    _check_served(
        client, images, local_folders, options["document_root"]
    )  # before any task: a root the server does not use stops
    storages += _s3_storages(client, project.id, buckets, storage_options)
    existing, removed = _tasks_by_image(client, project.id, options["model_version"])
    created_tasks = updated = 0
    pending: list[dict[str, Any]] = []
    for i, image in enumerate(images):
        task = label_studio_task(image, categories, **options)
        if image.image_id in existing:
            updated += _update_task(client, existing[image.image_id], task, options["model_version"])
        else:
            pending.append(task)
        if pending and (len(pending) == IMPORT_CHUNK or i == len(images) - 1):
            client.projects.import_tasks(project.id, request=pending)
            created_tasks += len(pending)
            pending = []
    return {
        "labels_kept": kept_labels,
        "storages": storages,
        "tasks_created": created_tasks,
        "tasks_updated": updated,
        "tasks_unchanged": len(images) - created_tasks - updated,
        "duplicates_removed": removed,
    }


def _empty_push_summary() -> dict[str, Any]:
    """An empty selection: nothing created on the server (the CLI warns, as ``export`` does)."""
    return {
        "project": None,
        "title": None,
        "url": None,
        "project_created": False,
        "storages": [],
        "images": 0,
        "tasks_created": 0,
        "tasks_updated": 0,
        "tasks_unchanged": 0,
    }


def _unreviewed_ids(store: LabelDataset, image_ids: Iterable[int] | None) -> list[int]:
    """The dataset's image ids (or ``image_ids``) that no current review covers."""
    reviewed = set(read_reviewed(store.url, store.storage_options)["image_id"].to_pylist())
    ids = image_ids if image_ids is not None else pc.unique(store.images()["image_id"].drop_null()).to_pylist()
    return sorted(int(i) for i in ids if int(i) not in reviewed)


def _check_served(client: Any, images: Sequence[ExportImage], folders: Sequence[str], root: str | None) -> None:
    """GET one image per Local Files storage folder as the labeling UI would; a 404 (the server's document root
    is not ``root``, e.g. an ancestor of it, or the server restarted with another) stops the push in one line."""
    for folder in folders:
        image = next(im for im in images if _within(os.path.dirname(os.path.abspath(_local_path(im.uri))), folder))
        url = image_url(image.uri, root)
        status = served_status(client, url)
        if status != 200:
            raise LabelStudioError(
                f"Label Studio does not serve {image.uri} (HTTP {status} for {url}): its {DOCUMENT_ROOT_ENV} is "
                f"not --document-root {root}; pass the server's own root (the images must lie below it)"
            )


def _local_path(uri: str) -> str:
    return fsspec.core.split_protocol(uri)[1]


def _image_locations(uris: Iterable[str], document_root: str | None) -> tuple[list[str], list[str]]:
    """(local folders to serve, S3 buckets) of the images; raises for images Label Studio could not show.

    Local Files storage serves a folder strictly below the document root; one storage per top-level folder
    below it, at the folder holding all of its images (the narrowest grant).
    """
    groups: dict[str, list[str]] = {}
    buckets: set[str] = set()
    for uri in uris:
        protocol, path = fsspec.core.split_protocol(uri)
        if protocol in ("s3", "s3a"):
            buckets.add(path.split("/", 1)[0])
            continue
        if protocol in ("http", "https"):
            continue  # the browser loads them itself
        if protocol not in (None, "file", "local"):
            raise LabelStudioError(
                f"{uri}: push serves local and s3:// images only; for {protocol}:// images connect the bucket to "
                "the project in Label Studio and use `maskclip export label-studio`"
            )
        if document_root is None:
            raise LabelStudioError(
                f"{uri} is a local file: pass --document-root, the server's {DOCUMENT_ROOT_ENV} "
                "(Label Studio serves local images only from folders strictly below it)"
            )
        root = os.path.abspath(document_root)
        folder = os.path.dirname(os.path.abspath(path))
        rel = os.path.relpath(folder, root)
        if rel == os.curdir:
            raise LabelStudioError(
                f"{uri} lies directly in the document root {root}: Label Studio serves only folders strictly "
                f"below it; move the images into a subfolder (e.g. {os.path.join(root, 'images')})"
            )
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            raise LabelStudioError(f"{uri} is outside the document root {root} ({DOCUMENT_ROOT_ENV})")
        groups.setdefault(rel.split(os.sep, 1)[0], []).append(folder)
    return [os.path.commonpath(folders) for _, folders in sorted(groups.items())], sorted(buckets)


def _local_storages(client: Any, project_id: int, folders: Sequence[str]) -> list[dict[str, Any]]:
    """A Local Files storage per folder, unless one of the project's covers it already."""
    have = [s.path for s in client.import_storage.local.list(project=project_id)]
    out = []
    for folder in folders:
        covering = next((p for p in have if p and _within(folder, p)), None)
        if covering is None:
            storage = client.import_storage.local.create(
                project=project_id, path=folder, use_blob_urls=True, title=STORAGE_TITLE
            )
            covering, created = storage.path, True
            have.append(covering)
        else:
            created = False
        out.append({"type": "local-files", "path": covering, "created": created})
    return out


def _s3_storages(
    client: Any, project_id: int, buckets: Sequence[str], storage_options: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """An S3 storage with presigned URLs per bucket, unless the project has one for that bucket."""
    if not buckets:
        return []
    have = {s.bucket for s in client.import_storage.s3.list(project=project_id)}
    credentials = _s3_credentials(storage_options)
    out = []
    for bucket in buckets:
        created = bucket not in have
        if created:
            client.import_storage.s3.create(
                project=project_id,
                bucket=bucket,
                presign=True,
                use_blob_urls=True,
                title=STORAGE_TITLE,
                **credentials,
            )
        out.append({"type": "s3", "bucket": bucket, "created": created})
    return out


def _s3_credentials(storage_options: Mapping[str, Any] | None) -> dict[str, str]:
    """The dataset's S3 key, secret, token, endpoint and region (fsspec options, else the AWS environment)."""
    options = dict(storage_options or {})
    client_kwargs = dict(options.get("client_kwargs") or {})
    values = {
        "aws_access_key_id": options.get("key") or os.environ.get("AWS_ACCESS_KEY_ID"),
        "aws_secret_access_key": options.get("secret") or os.environ.get("AWS_SECRET_ACCESS_KEY"),
        "aws_session_token": options.get("token") or os.environ.get("AWS_SESSION_TOKEN"),
        "s3endpoint": options.get("endpoint_url")
        or client_kwargs.get("endpoint_url")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL"),
        "region_name": client_kwargs.get("region_name") or os.environ.get("AWS_DEFAULT_REGION"),
    }
    return {k: str(v) for k, v in values.items() if v}


@dataclass(frozen=True)
class _ServerTask:
    """What push compares of a task already on the server (small: a project may hold many)."""

    id: int
    data: dict[str, Any]
    predictions: tuple[tuple[int, str, float | None], ...]  # ours: (id, digest of the result, score)


def _tasks_by_image(client: Any, project_id: int, model_version: str) -> tuple[dict[int, _ServerTask], int]:
    """The project's tasks by our image id, and how many duplicate tasks were deleted on the way (duplicates
    left by earlier pushes go before predictions are compared: ``_remove_duplicates``, one listing for both)."""
    tasks: dict[int, _ServerTask] = {}
    groups: dict[str, list[tuple[int, bool]]] = {}
    # resolve_uri=False: the data as imported (s3:// URIs), not the URLs the labeling UI loads
    for task in client.tasks.list(project=project_id, fields="all", page_size=500, resolve_uri=False):
        image_id = (task.data or {}).get("image_id")
        if image_id is None or not str(image_id).isdigit():
            continue
        groups.setdefault(str(image_id), []).append((int(task.id), bool(task.total_annotations)))
        ours = tuple(
            (int(sdk_field(p, "id")), _digest(sdk_field(p, "result")), sdk_field(p, "score"))
            for p in task.predictions or []
            if sdk_field(p, "model_version") == model_version
        )
        tasks[int(task.id)] = _ServerTask(id=int(task.id), data=dict(task.data), predictions=ours)
    removed, kept, _ = _remove_duplicates(client, groups)
    return {int(image_id): tasks[task_id] for image_id, task_id in kept.items()}, removed


def _update_task(client: Any, task: _ServerTask, wanted: Mapping[str, Any], model_version: str) -> int:
    """Bring one existing task to ``wanted`` (data, our prediction); 1 when something changed."""
    changed = 0
    if task.data != wanted["data"]:
        client.tasks.update(str(task.id), data=wanted["data"])
        changed = 1
    prediction = wanted["predictions"][0]
    if [p[1:] for p in task.predictions] == [(_digest(prediction["result"]), prediction.get("score"))]:
        return changed
    for prediction_id, _, _ in task.predictions:
        client.predictions.delete(prediction_id)
    client.predictions.create(
        task=task.id, result=prediction["result"], score=prediction.get("score"), model_version=model_version
    )
    return 1


def _reconcile(client: Any, project_id: int) -> tuple[int, dict[str, list[int]]]:
    """``_remove_duplicates`` over a light listing of the project (ids, data, annotation counts): what every
    push does last, since another push may have imported the same images meanwhile."""
    groups: dict[str, list[tuple[int, bool]]] = {}
    listing = client.tasks.list(project=project_id, include="id,data,total_annotations", page_size=1000)
    for task in listing:
        image_id = (task.data or {}).get("image_id")
        if image_id is not None:
            groups.setdefault(str(image_id), []).append((int(task.id), bool(task.total_annotations)))
    removed, _, annotated_twice = _remove_duplicates(client, groups)
    return removed, annotated_twice


def _remove_duplicates(
    client: Any, groups: Mapping[str, Sequence[tuple[int, bool]]]
) -> tuple[int, dict[str, int], dict[str, list[int]]]:
    """One task per image: of several tasks of an image (two pushes at the same moment, a retried import), keep
    the annotated ones, else the oldest, and delete the other unannotated copies; every push decides the same
    way, so two pushes doing this at once agree. ``groups``: image id -> [(task id, annotated)]. Returns (tasks
    deleted, image id -> the task kept (the oldest kept), image id -> task ids of images annotated in several
    tasks, left for people to merge)."""
    removed = 0
    kept: dict[str, int] = {}
    annotated_twice: dict[str, list[int]] = {}
    for image_id, tasks in sorted(groups.items()):
        annotated = sorted(t for t, has in tasks if has)
        keep = set(annotated) or {min(t for t, _ in tasks)}
        for task_id, _ in tasks:
            if task_id not in keep:
                removed += _delete_task(client, task_id)
        kept[image_id] = min(keep)
        if len(annotated) > 1:
            annotated_twice[image_id] = annotated
    return removed, kept, annotated_twice


def _delete_task(client: Any, task_id: int) -> int:
    """1 when deleted, 0 when another push deleted it first."""
    try:
        client.tasks.delete(str(task_id))
    except Exception as exc:  # noqa: BLE001 - the SDK's ApiError; only "already gone" is expected
        if is_missing(exc):
            return 0
        raise
    return 1


# -------------------------------------------------------------------------------------------- helpers


def _within(folder: str, storage_path: str) -> bool:
    folder, storage_path = os.path.normpath(folder), os.path.normpath(storage_path)
    return folder == storage_path or folder.startswith(storage_path.rstrip(os.sep) + os.sep)


def _digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()
