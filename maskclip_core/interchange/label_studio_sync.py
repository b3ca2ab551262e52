"""A dataset's pseudo-labels into a live Label Studio project, and its reviews back: ``maskclip review push|pull``.

Push creates (or updates) the project with the labeling config of the dataset's categories, gives it the
storage Label Studio needs to show the images (Local Files storage for local images, S3 storage with
presigned URLs for ``s3://`` ones) and imports one task per image with our prediction (the same tasks and
brush RLE as ``maskclip export label-studio``). Tasks are matched to images by the ``image_id`` in their
data, so pushing again adds only new images and replaces only predictions that changed: no duplicates.
Storages are never synced: a sync would create a second task per file.

Pull reads the project's annotations (Label Studio's JSON export) into the dataset's ``reviewed`` table
through the same import as ``maskclip import label-studio``; pulling unchanged annotations again rewrites
the same part.

Label Studio's SDK (``label-studio-sdk`` 2.x) authenticates with a legacy token or a personal access token,
whichever the key is. Network and authentication failures become one-line ``LabelStudioError``s.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import fsspec

from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.reader import select_images
from maskclip_core.interchange.label_studio import import_label_studio, label_studio_task, labeling_config
from maskclip_core.interchange.review_import import store_reviews

DOCUMENT_ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
TITLE_MAX = 50  # Label Studio's project title column
IMPORT_CHUNK = 100  # tasks per import request: small requests, and a failed push resumes where it stopped
STORAGE_TITLE = "maskclip images"


class LabelStudioError(ValueError):
    """A problem the user fixes (server unreachable, key refused, images Label Studio cannot serve)."""


@dataclass(frozen=True)
class LabelStudioTarget:
    """Where to push / pull: the server, the key, and the project (title or id; default from the dataset)."""

    url: str
    api_key: str
    project: str | None = None


# ------------------------------------------------------------------------------------------ connection


@contextmanager
def server_errors(url: str) -> Iterator[None]:
    """Network and HTTP failures of the SDK as one-line ``LabelStudioError``s naming the server."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    try:
        yield
    except httpx.TimeoutException as exc:
        raise LabelStudioError(f"Label Studio at {url} did not answer in time ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise LabelStudioError(f"cannot reach Label Studio at {url}: {exc or type(exc).__name__}") from None
    except ApiError as exc:
        detail = _detail(exc.body)
        if exc.status_code == 401:
            raise LabelStudioError(
                f"Label Studio at {url} refused the API key (HTTP {exc.status_code}: {detail}); use the access token "
                "or legacy token from its Account & Settings page (--api-key or LABEL_STUDIO_API_KEY)"
            ) from None
        raise LabelStudioError(f"Label Studio at {url} answered HTTP {exc.status_code}: {detail}") from None


def connect(url: str, api_key: str, *, timeout: float = 60.0) -> Any:
    """A ``label_studio_sdk.LabelStudio`` client whose key the server accepted (checked with one request)."""
    if not api_key:
        raise LabelStudioError("no Label Studio API key: pass --api-key or set LABEL_STUDIO_API_KEY")
    try:
        from label_studio_sdk import LabelStudio
    except ImportError:  # an optional dependency of the review commands
        raise LabelStudioError("label-studio-sdk is not installed: pip install 'label-studio-sdk>=2,<3'") from None
    base = url.rstrip("/")
    with server_errors(base):
        client = LabelStudio(base_url=base, api_key=api_key, timeout=timeout)
        client.users.whoami()
    return client


# ----------------------------------------------------------------------------------------------- push


def push(
    target: LabelStudioTarget,
    dataset: str,
    *,
    selection: Mapping[str, Any] | None = None,
    mode: str = "brush",
    document_root: str | None = None,
    model_version: str = "maskclip",
    polygon_tolerance: float = 0.0,
    storage_options: Mapping[str, Any] | None = None,
    client: Any = None,
) -> dict[str, Any]:
    """Create or update the project of ``dataset`` and import its selected images as tasks with predictions.

    ``selection``: keyword arguments of ``dataset.reader.select_images`` (config_hash, classes, min_score,
    max_score, statuses, rounds, labelers, image_ids, lowest). ``document_root``: the server's
    LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (default: that variable here), needed for local images, which must
    lie in folders strictly below it. ``storage_options``: the dataset's fsspec options; for ``s3://`` images
    their key, secret and endpoint (else the AWS environment's) go to the project's S3 storage so Label
    Studio can presign the image URLs. Returns a JSON-able summary.
    """
    store = LabelDataset(dataset, storage_options)
    categories = store.categories()
    if not categories:
        raise ValueError(f"{dataset} holds no categories: nothing was labeled there")
    selection = dict(selection or {})
    # Regions stay compressed RLE until their task is built, one import chunk at a time.
    images = list(select_images(store, categories=categories, **selection))
    root = document_root or os.environ.get(DOCUMENT_ROOT_ENV) or None
    # Checked before anything is sent: an image Label Studio could not show stops the push early.
    local_folders, buckets = _image_locations([image.uri for image in images], root)
    options = {"mode": mode, "document_root": root, "model_version": model_version}
    options["polygon_tolerance"] = polygon_tolerance
    client = client or connect(target.url, target.api_key)
    base = target.url.rstrip("/")
    created_tasks = updated = 0
    with server_errors(base):
        config = labeling_config(categories, mode)
        project, created = _project(client, target.project, dataset, label_config=config)
        if not created and _normalized_xml(project.label_config) != _normalized_xml(config):
            client.projects.update(project.id, label_config=config)
        storages = [
            *_local_storages(client, project.id, local_folders),
            *_s3_storages(client, project.id, buckets, storage_options),
        ]
        existing = _tasks_by_image(client, project.id, model_version)
        pending: list[dict[str, Any]] = []
        for i, image in enumerate(images):
            task = label_studio_task(image, categories, **options)
            if image.image_id in existing:
                updated += _update_task(client, existing[image.image_id], task, model_version)
            else:
                pending.append(task)
            if pending and (len(pending) == IMPORT_CHUNK or i == len(images) - 1):
                client.projects.import_tasks(project.id, request=pending)
                created_tasks += len(pending)
                pending = []
    return {
        "project": project.id,
        "title": project.title,
        "url": f"{base}/projects/{project.id}",
        "project_created": created,
        "storages": storages,
        "images": len(images),
        "tasks_created": created_tasks,
        "tasks_updated": updated,
        "tasks_unchanged": len(images) - created_tasks - updated,
    }


def default_project_title(dataset: str) -> str:
    """``maskclip <last folders of the dataset URL>``, cut to Label Studio's 50 characters."""
    path = fsspec.core.split_protocol(dataset.rstrip("/"))[1].rstrip("/")
    tail = "/".join(path.split("/")[-2:]) or path
    title = f"maskclip {tail}"
    return title if len(title) <= TITLE_MAX else "maskclip …" + title[-(TITLE_MAX - len("maskclip …")) :]


def _description(dataset: str) -> str:
    return f"maskclip-labeler dataset {dataset}"


def _project(client: Any, name: str | None, dataset: str, *, label_config: str | None = None) -> tuple[Any, bool]:
    """(project, created): by id when ``name`` is a number, else by exact title (default from the dataset);
    created with ``label_config`` when there is none (pull passes none: it never creates).

    A project found by title must name this dataset in its description (push writes it), so two datasets
    with the same folder name never share a project.
    """
    if name is not None and name.strip().isdigit():
        return client.projects.get(int(name)), False
    title = name or default_project_title(dataset)
    if len(title) > TITLE_MAX:
        raise LabelStudioError(f"project title {title!r} is longer than Label Studio's {TITLE_MAX} characters")
    found = [p for p in client.projects.list(title=title) if p.title == title]
    if len(found) > 1:
        ids = ", ".join(str(p.id) for p in found)
        raise LabelStudioError(f"several Label Studio projects are titled {title!r} (ids {ids}): pass --project ID")
    if found:
        project = found[0]
        described = (project.description or "").strip()
        if described.startswith(_description("")) and described != _description(dataset):
            raise LabelStudioError(
                f"Label Studio project {title!r} (id {project.id}) holds another dataset "
                f"({described[len(_description('')) :]}): pass --project with another title"
            )
        return client.projects.get(project.id), False
    if label_config is None:
        raise LabelStudioError(f"no Label Studio project titled {title!r}: push the dataset first, or pass --project")
    return client.projects.create(title=title, description=_description(dataset), label_config=label_config), True


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


def _tasks_by_image(client: Any, project_id: int, model_version: str) -> dict[int, _ServerTask]:
    """The project's tasks by our image id (the first task of an image, if it was imported twice by hand)."""
    out: dict[int, _ServerTask] = {}
    # resolve_uri=False: the data as imported (s3:// URIs), not the URLs the labeling UI loads
    for task in client.tasks.list(project=project_id, fields="all", page_size=500, resolve_uri=False):
        image_id = (task.data or {}).get("image_id")
        if image_id is None or not str(image_id).isdigit() or int(image_id) in out:
            continue
        ours = tuple(
            (int(_field(p, "id")), _digest(_field(p, "result")), _field(p, "score"))
            for p in task.predictions or []
            if _field(p, "model_version") == model_version
        )
        out[int(image_id)] = _ServerTask(id=int(task.id), data=dict(task.data), predictions=ours)
    return out


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


# ----------------------------------------------------------------------------------------------- pull


def pull(
    target: LabelStudioTarget,
    dataset: str,
    *,
    strict: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    client: Any = None,
) -> dict[str, Any]:
    """Read the project's annotations into ``dataset``'s reviewed table; returns what was written.

    Per task the chosen annotation is the one ``import_label_studio`` chooses (ground truth, else latest).
    Annotated tasks of images the dataset does not hold raise, or with ``strict=False`` are skipped.
    """
    store = LabelDataset(dataset, storage_options)
    categories = store.categories()
    if not categories:
        raise ValueError(f"{dataset} holds no categories: nothing was labeled there")
    client = client or connect(target.url, target.api_key)
    base = target.url.rstrip("/")
    with server_errors(base):
        project, _ = _project(client, target.project, dataset)
        exported = client.projects.exports.as_json(project.id)
    annotated = [_review_fields(task) for task in exported if task.get("annotations")]
    # The import id hashes what the reviews say, not the export's volatile fields: an unchanged pull
    # rewrites the same part.
    digest = hashlib.sha256(b"label-studio\x1f" + _canonical(annotated).encode()).hexdigest()[:32]
    reviewed = import_label_studio(annotated, categories)
    source = f"{base}/projects/{project.id}"
    written = store_reviews(
        dataset,
        reviewed,
        tool="label-studio",
        import_id=digest,
        source_uri=source,
        strict=strict,
        storage_options=storage_options,
    )
    return {
        "project": project.id,
        "title": project.title,
        "source": source,
        "annotated_tasks": len(annotated),
        **written,
    }


def _review_fields(task: Mapping[str, Any]) -> dict[str, Any]:
    """What ``import_label_studio`` reads of an exported task."""
    keep = ("id", "result", "was_cancelled", "ground_truth", "created_at", "updated_at", "completed_by")
    annotations = [{k: a.get(k) for k in keep} for a in task.get("annotations") or []]
    return {"id": task.get("id"), "data": task.get("data") or {}, "annotations": annotations}


# -------------------------------------------------------------------------------------------- helpers


def _within(folder: str, storage_path: str) -> bool:
    folder, storage_path = os.path.normpath(folder), os.path.normpath(storage_path)
    return folder == storage_path or folder.startswith(storage_path.rstrip(os.sep) + os.sep)


def _field(record: Any, name: str) -> Any:
    """A field of an SDK model or of a plain dict (task listings return predictions as either)."""
    return record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _digest(value: Any) -> str:
    return hashlib.sha256(_canonical(value).encode()).hexdigest()


def _normalized_xml(xml: str | None) -> str:
    return "".join(line.strip() for line in (xml or "").splitlines())


def _detail(body: Any) -> str:
    """The server's reason in one line: its ``detail`` plus any field errors (e.g. a storage path it refused)."""
    if not isinstance(body, Mapping):
        return " ".join(str(body).split())[:500] if body else "no details"
    parts = [str(body["detail"])] if body.get("detail") else []
    errors = body.get("validation_errors")
    if isinstance(errors, Mapping):
        parts += [f"{field}: {' '.join(map(str, v)) if isinstance(v, list) else v}" for field, v in errors.items()]
    elif errors:
        parts.append(str(errors))
    text = "; ".join(parts) if parts else _canonical(dict(body))
    return " ".join(text.split())[:500]
