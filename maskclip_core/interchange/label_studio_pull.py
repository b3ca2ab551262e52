"""A Label Studio project's reviews into a dataset's ``reviewed`` table: ``maskclip review pull``.

Pull pages through the project's annotated tasks (no whole-project export; the SDK retries a transient 5xx)
into the table through the same reading as ``maskclip import label-studio``: several tasks of one image count
as one (ground truth, else the latest annotation), and images reviewed from this project before whose
annotations are gone are retracted. The reviewer is the annotator's email. Pulling unchanged annotations again
rewrites the same part.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow.compute as pc

from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.reader import known_images
from maskclip_core.dataset.reviews import read_reviewed
from maskclip_core.interchange.label_studio import chosen_annotation, iter_label_studio_reviews
from maskclip_core.interchange.label_studio_client import (
    LabelStudioTarget,
    canonical_json,
    connect,
    sdk_field,
    server_errors,
)
from maskclip_core.interchange.label_studio_project import find_project
from maskclip_core.interchange.review_import import skipped_summary, store_reviews

PAGE_SIZE = 100  # tasks per request
# Only tasks with an annotation.
ANNOTATED = json.dumps(
    {
        "filters": {
            "conjunction": "and",
            "items": [
                {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}
            ],
        }
    }
)


def pull(
    target: LabelStudioTarget,
    dataset: str,
    *,
    strict: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    client: Any = None,
) -> dict[str, Any]:
    """Read the project's annotations into ``dataset``'s reviewed table; returns what was written.

    Tasks are read a page at a time, annotated ones only. Per image the chosen annotation is the one
    ``import_label_studio`` chooses (ground truth, else latest) over all of the image's tasks; images annotated
    in several tasks are listed. Tasks of images the dataset does not hold, without an
    ``image_id`` (made by a storage Sync) or using a label that is not a category raise, or with
    ``strict=False`` are skipped and counted. Images reviewed from this project before whose annotations were
    all deleted are retracted (no longer reviewed, no longer scored). The reviewer is the annotator's email.
    """
    store = LabelDataset(dataset, storage_options)
    categories = store.categories()
    if not categories:
        raise ValueError(f"{dataset} holds no categories: nothing was labeled there")
    client = client or connect(target.url, target.api_key)
    base = target.url.rstrip("/")
    with server_errors(base):
        project, _, others = find_project(client, target.project, dataset)
        emails = _emails(client)
        tasks = _annotated_tasks(client, project.id, emails)
    source = f"{base}/projects/{project.id}"
    known = {image.image_id: image for image in known_images(store)}
    previous = read_reviewed(dataset, storage_options, include_retracted=True)
    from_here = pc.and_(pc.equal(previous["tool"], "label-studio"), pc.equal(previous["source_uri"], source))
    present = {int(t["data"]["image_id"]) for t in tasks if str(t["data"].get("image_id", "")).isdigit()}
    retract = sorted(set(previous.filter(from_here)["image_id"].to_pylist()) - present)
    digest = _import_id(tasks, retract)
    skipped_tasks: list[tuple[int | None, str]] = []
    reviews = iter_label_studio_reviews(tasks, categories, images=known, strict=strict, skipped=skipped_tasks)
    written = store_reviews(
        dataset,
        reviews,
        tool="label-studio",
        import_id=digest,
        source_uri=source,
        strict=strict,
        storage_options=storage_options,
        known=known,
        retract=retract,
    )
    several = {k: v for k, v in _task_ids_by_image(tasks).items() if len(v) > 1}
    return {
        "project": project.id,
        "title": project.title,
        "source": source,
        "annotated_tasks": sum(len(t["task_ids"]) for t in tasks),
        **written,
        **skipped_summary(written["skipped"], skipped_tasks),
        "images_in_several_tasks": several,
        "other_projects": others,
    }


def _import_id(tasks: Iterable[Mapping[str, Any]], retract: Iterable[int]) -> str:
    """A hash of what the reviews say (and what they withdraw), not of the server's volatile fields: an unchanged
    pull rewrites the same part. Hashed task by task: one JSON text of a large project would take gigabytes."""
    digest = hashlib.sha256(b"label-studio\x1f")
    for task in tasks:
        digest.update(canonical_json(task).encode())
    digest.update(canonical_json(list(retract)).encode())
    return digest.hexdigest()[:32]


def _emails(client: Any) -> dict[int, str]:
    """Annotator id -> email, for the reviewer column; empty when this key may not list users (ids stay)."""
    from label_studio_sdk.core.api_error import ApiError

    try:
        return {int(user.id): user.email for user in client.users.list() if user.email}
    except ApiError as exc:
        if exc.status_code in (401, 403, 404):
            return {}
        raise


def _annotated_tasks(client: Any, project_id: int, emails: Mapping[int, str]) -> list[dict[str, Any]]:
    """The project's annotated tasks, a page at a time, one per image (``task_ids`` lists the image's tasks)
    holding only its chosen annotation (``chosen_annotation`` over all of the image's tasks, so memory holds
    one annotation per image, brush RLE as bytes), sorted by first task id; each ``completed_by`` becomes
    ``{"id", "email"}``."""
    merged: dict[str, dict[str, Any]] = {}
    # Label Studio's task list has no way to leave the predictions out (``include`` strips the annotations to
    # their ids), so a page carries them too: pages stay small instead.
    pages = client.tasks.list(project=project_id, fields="all", query=ANNOTATED, page_size=PAGE_SIZE, resolve_uri=False)
    for task in pages:
        fields = _review_fields(task, emails)
        image_id = fields["data"].get("image_id")
        key = f"image {image_id}" if image_id is not None else f"task {fields['id']}"
        entry = merged.setdefault(key, {**fields, "annotations": [], "task_ids": []})
        choice = chosen_annotation([*entry["annotations"], *fields["annotations"]])
        entry["annotations"] = [] if choice is None else [choice]
        entry["task_ids"].append(fields["id"])
    return sorted((t for t in merged.values() if t["annotations"]), key=lambda t: min(t["task_ids"]))


def _task_ids_by_image(tasks: Iterable[Mapping[str, Any]]) -> dict[str, list[int]]:
    return {str(t["data"].get("image_id")): list(t["task_ids"]) for t in tasks if "image_id" in t["data"]}


def _review_fields(task: Any, emails: Mapping[int, str]) -> dict[str, Any]:
    """What ``import_label_studio`` reads of a listed task."""
    keep = ("id", "was_cancelled", "ground_truth", "created_at", "updated_at")
    annotations = []
    for annotation in sdk_field(task, "annotations") or []:
        fields = {k: sdk_field(annotation, k) for k in keep}
        fields["result"] = [_compact(region) for region in sdk_field(annotation, "result") or []]
        who = sdk_field(annotation, "completed_by")
        fields["completed_by"] = {"id": who, "email": emails.get(who)} if isinstance(who, int) else who
        annotations.append(fields)
    return {"id": int(sdk_field(task, "id")), "data": dict(sdk_field(task, "data") or {}), "annotations": annotations}


def _compact(region: Any) -> Any:
    """A brush region's RLE as bytes instead of a JSON list of ints (8x smaller held in memory)."""
    value = region.get("value") if isinstance(region, Mapping) else None
    rle = value.get("rle") if isinstance(value, Mapping) else None
    if not isinstance(rle, list):
        return region
    try:
        packed = bytes(rle)
    except (TypeError, ValueError):  # not bytes: left for the import to refuse, naming the task
        return region
    return {**region, "value": {**value, "rle": packed}}
