"""Label Studio: tasks JSON with pre-annotations, the matching labeling config, and import of reviews.

Each task's ``data`` carries our ``image_id`` (as a string: 63-bit ids overflow JavaScript numbers) and
``sha256``, so a task exported back from Label Studio links to our image without guessing from URLs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import fsspec
import numpy as np

from maskclip_core.colors import category_colors
from maskclip_core.dataset.records import (
    ExportImage,
    ReviewedImage,
    category_lookup,
    category_masks,
    check_categories,
    image_score,
)
from maskclip_core.dataset.rle import label_map_from_masks
from maskclip_core.interchange.label_studio_rle import decode_mask, encode_mask
from maskclip_core.interchange.polygons import mask_to_polygons, polygons_to_mask
from maskclip_core.storage.fs import atomic_output, atomic_write_bytes, read_json

FROM_NAME = "tag"
TO_NAME = "image"
LOCAL_FILES_PREFIX = "/data/local-files/?d="
MODES = ("brush", "polygon")
# Largest image a review may declare without the dataset's sizes to check it against: labeling.decode's
# DEFAULT_MAX_PIXELS, the bound on decoding an image (a 551-byte task must not allocate a gigabyte).
MAX_REVIEW_PIXELS = 80_000_000


def image_url(uri: str, document_root: str | None = None) -> str:
    """URL Label Studio loads the image from.

    Remote URIs (s3://, gs://, https://, ...) pass through for Label Studio's cloud storage / the browser.
    Local paths become local-files URLs relative to ``document_root``, which must equal Label Studio's
    LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT.
    """
    protocol, path = fsspec.core.split_protocol(uri)
    if protocol not in (None, "file", "local"):
        return uri
    if document_root is None:
        raise ValueError(
            f"{uri} is a local file: pass document_root (Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)"
        )
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(document_root))
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise ValueError(f"{uri} is outside the local-files document root {document_root}")
    return LOCAL_FILES_PREFIX + quote(rel.replace(os.sep, "/"), safe="/")


def labeling_config(
    categories: Sequence[Mapping[str, Any]], mode: str = "brush", *, extra_labels: Sequence[str] = ()
) -> str:
    """Labeling config XML whose label values and colours match the exported regions; ``extra_labels`` (ones
    someone added in Label Studio) follow the categories."""
    _check_mode(mode)
    check_categories(categories)
    tag = "BrushLabels" if mode == "brush" else "PolygonLabels"
    colors = category_colors(categories)
    labels = "\n".join(
        [
            *(
                f"    <Label value={quoteattr(str(c['name']))} background={quoteattr(_hex(colors[int(c['id'])]))}/>"
                for c in categories
            ),
            *(f"    <Label value={quoteattr(str(label))}/>" for label in extra_labels),
        ]
    )
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="$image" zoom="true"/>\n'
        f'  <{tag} name="{FROM_NAME}" toName="{TO_NAME}">\n'
        f"{labels}\n"
        f"  </{tag}>\n"
        "</View>\n"
    )


def label_studio_task(
    image: ExportImage,
    categories: Sequence[Mapping[str, Any]],
    *,
    mode: str = "brush",
    document_root: str | None = None,
    model_version: str = "maskclip",
    polygon_tolerance: float = 0.0,
) -> dict[str, Any]:
    """One task: image URL plus our ids in ``data``, and one prediction with one region per class."""
    _check_mode(mode)
    names = {int(c["id"]): str(c["name"]) for c in categories}
    unknown = {int(a["category_id"]) for a in image.annotations} - names.keys()
    if unknown:
        raise ValueError(f"image {image.image_id}: annotations use unknown category ids {sorted(unknown)}")
    scores = _class_scores(image)
    results = []
    for cid, mask in category_masks(image, list(names)).items():
        base = {
            "from_name": FROM_NAME,
            "to_name": TO_NAME,
            "original_width": image.width,
            "original_height": image.height,
            "image_rotation": 0,
        }
        if scores.get(cid) is not None:
            base["score"] = scores[cid]
        if mode == "brush":
            value = {"format": "rle", "rle": encode_mask(mask), "brushlabels": [names[cid]]}
            results.append({"id": _region_id(image.image_id, cid), "type": "brushlabels", **base, "value": value})
            continue
        # Label Studio polygons are single rings in percent of the image size: one region per component.
        for k, ring in enumerate(mask_to_polygons(mask, polygon_tolerance)):
            xy = np.asarray(ring, dtype=float).reshape(-1, 2) * (100.0 / image.width, 100.0 / image.height)
            value = {"points": xy.tolist(), "closed": True, "polygonlabels": [names[cid]]}
            rid = _region_id(image.image_id, cid, k)
            results.append({"id": rid, "type": "polygonlabels", **base, "value": value})
    prediction: dict[str, Any] = {"model_version": model_version, "result": results}
    score = image_score(image)
    if score is not None:
        prediction["score"] = score
    data = {
        "image": image_url(image.uri, document_root),
        "image_id": str(image.image_id),
        "sha256": image.sha256,
        "file_name": image.file_name,
        "width": image.width,
        "height": image.height,
        "status": image.status,
    }
    return {"data": data, "predictions": [prediction]}


def label_studio_tasks(
    images: Iterable[ExportImage], categories: Sequence[Mapping[str, Any]], **options: Any
) -> list[dict[str, Any]]:
    """Tasks for many images; ``options`` as for ``label_studio_task``."""
    check_categories(categories)
    return [label_studio_task(img, categories, **options) for img in images]


def export_label_studio(
    images: Iterable[ExportImage],
    categories: Sequence[Mapping[str, Any]],
    dest: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> dict[str, str]:
    """Write ``tasks.json`` and ``config.xml`` under the ``dest`` folder URL; returns their URLs.

    ``options`` as for ``label_studio_task``; ``storage_options`` go to fsspec. Tasks are written one at a
    time, so ``images`` may be a stream from a large dataset.
    """
    check_categories(categories)
    mode = options.get("mode", "brush")
    base = dest.rstrip("/")

    tasks_url, config_url = f"{base}/tasks.json", f"{base}/config.xml"
    with atomic_output(tasks_url, storage_options) as f:
        f.write(b"[")
        for i, image in enumerate(images):
            f.write(b"," if i else b"")
            f.write(json.dumps(label_studio_task(image, categories, **options)).encode())
        f.write(b"]")
    atomic_write_bytes(config_url, labeling_config(categories, mode).encode(), storage_options)
    return {"tasks": tasks_url, "config": config_url}


# ---------------------------------------------------------------------------------------------- import


def import_label_studio(
    tasks: Iterable[Mapping[str, Any]] | Mapping[str, Any] | str,
    categories: Sequence[Mapping[str, Any]],
    **options: Any,
) -> list[ReviewedImage]:
    """Every reviewed label map of ``iter_label_studio_reviews`` (``options`` as there), as a list."""
    return list(iter_label_studio_reviews(tasks, categories, **options))


def iter_label_studio_reviews(
    tasks: Iterable[Mapping[str, Any]] | Mapping[str, Any] | str,
    categories: Sequence[Mapping[str, Any]],
    *,
    storage_options: Mapping[str, Any] | None = None,
    images: Mapping[int, ExportImage] | None = None,
    strict: bool = True,
    skipped: list[tuple[int | None, str]] | None = None,
) -> Iterator[ReviewedImage]:
    """Reviewed label maps from a Label Studio export in its JSON or JSON-MIN format (parsed, or the URL), one
    task at a time (one label map in memory at once).

    Per task the chosen annotation is the ground-truth one if any, else the latest (updated_at /
    created_at, then list order); cancelled annotations and tasks without annotations are skipped.
    Brush and polygon regions are painted in result order (later regions win where they overlap); other
    result types (choices, text) carry no mask and are ignored. A file that is neither format raises.
    ``images`` (the dataset's, by id) bounds the work: tasks are matched to them before any mask is decoded,
    and a task's declared size must be its image's; without them a task may declare at most
    ``MAX_REVIEW_PIXELS``. A task of an image not in ``images``, without an ``image_id`` (e.g. one created by
    a storage's Sync) or using a label that is not a category raises, or with ``strict=False`` is left out
    and described in ``skipped`` as (image id or None, the problem).
    """
    if isinstance(tasks, str):
        tasks = read_json(tasks, storage_options)
    tasks = [tasks] if isinstance(tasks, Mapping) else list(tasks)  # a one-task export is a bare object
    if export_format(tasks) == "json-min":
        tasks = tasks_from_json_min(tasks)
    lookup = category_lookup(categories)
    skipped = [] if skipped is None else skipped
    for task in tasks:
        # A wrong JSON type anywhere in a task (a list image_id, a string rle, ...) is one short line naming it.
        with blame(f"task {short_repr(task.get('id'))}"):
            review = _task_review(task, lookup, images, strict, skipped)
        if review is not None:
            yield review


def _task_review(
    task: Mapping[str, Any],
    lookup: Mapping[str, int],
    images: Mapping[int, ExportImage] | None,
    strict: bool,
    skipped: list[tuple[int | None, str]],
) -> ReviewedImage | None:
    """One task's reviewed label map; everything is checked before a mask is allocated."""
    name = f"task {short_repr(task.get('id'))}"
    annotation = chosen_annotation(task.get("annotations") or [])
    if annotation is None:
        return None
    data = task.get("data") or {}
    if "image_id" not in data:
        why = "data has no image_id, so it cannot be linked to our images (a task a storage Sync created?)"
        return _unknown(None, f"{name}: {why}", strict, skipped)
    image_id = int(data["image_id"])
    height, width = _task_size(task, annotation)
    if images is not None:
        image = images.get(image_id)
        if image is None:
            return _unknown(image_id, f"{name}: reviewed image {image_id} is not in the dataset", strict, skipped)
        if (height, width) != (image.height, image.width):
            raise ValueError(f"{name} declares {height}x{width}, image {image_id} is {image.height}x{image.width}")
    elif height * width > MAX_REVIEW_PIXELS or min(height, width) < 1:
        raise ValueError(f"{name} declares {height}x{width}, not 1 to {MAX_REVIEW_PIXELS} pixels")
    results = annotation.get("result") or []
    unknown = [label for r in results for label in _region_labels(r, name) if label not in lookup]
    if unknown:
        return _unknown(
            image_id, f"{name}: label {short_repr(unknown[0])} is not one of our categories", strict, skipped
        )
    masks = (_result_mask(r, lookup, height, width, task.get("id")) for r in results)
    label_map = label_map_from_masks((m for m in masks if m is not None), height, width)
    completed_by = annotation.get("completed_by")
    if isinstance(completed_by, Mapping):
        completed_by = completed_by.get("email") or completed_by.get("id")
    return ReviewedImage(
        image_id=image_id,
        label_map=label_map,
        sha256=str(data.get("sha256") or ""),
        tool="label-studio",
        reviewer="" if completed_by is None else str(completed_by),
        reviewed_at=str(annotation.get("updated_at") or annotation.get("created_at") or ""),
    )


def _unknown(image_id: int | None, problem: str, strict: bool, skipped: list[tuple[int | None, str]]) -> None:
    """A task that is not ours to read: an error, or (``strict=False``) its (image id, problem) in ``skipped``."""
    if strict:
        raise ValueError(f"{problem} (--skip-unknown skips such tasks)")
    skipped.append((image_id, problem))


def _region_labels(result: Mapping[str, Any], name: str) -> list[Any]:
    """The one label of a brush / polygon region (none for other result types)."""
    kind = str(result.get("type", "")).lower()
    if kind not in ("brushlabels", "polygonlabels"):
        return []
    labels = (result.get("value") or {}).get(kind) or []
    if len(labels) != 1:
        raise ValueError(
            f"{name}: region {short_repr(result.get('id'))} has labels {short_repr(labels)}, expected exactly one"
        )
    return list(labels)


# What Label Studio's JSON-MIN export puts beside a task's data fields (label_studio_sdk's
# Converter.convert_to_json_min): one record per annotation, its regions under the control tag's name.
JSON_MIN_KEYS = ("id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time", "agreement")


def export_format(tasks: Sequence[Any]) -> str:
    """``"json"`` (tasks with ``data``) or ``"json-min"`` (flat records with ``annotation_id``); raises otherwise."""
    for i, task in enumerate(tasks):
        if not isinstance(task, Mapping):
            raise ValueError(f"not a Label Studio export: item {i} is a {type(task).__name__}, not a task object")
    for i, task in enumerate(tasks):
        if "data" in task or "annotations" in task:
            return "json"
        if "annotation_id" in task or "annotator" in task:
            return "json-min"
        raise ValueError(
            f"not a Label Studio JSON or JSON-MIN export: item {i} has neither `data` nor `annotation_id` "
            f"(keys: {', '.join(sorted(map(str, task))[:8])}); export the project as JSON"
        )
    return "json"


def tasks_from_json_min(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """JSON-MIN records as JSON tasks: the data fields back under ``data``, one annotation per record.

    JSON-MIN keeps each region's value (``rle`` or ``points``, and ``brushlabels`` / ``polygonlabels``, which
    name its type) and the image size, in a list under the control's name, but no region ids and no
    ``ground_truth`` flag: of several annotations of a task the latest is chosen. Records of tasks without an
    annotation (``annotation_id`` null) are skipped.
    """
    tasks: dict[Any, dict[str, Any]] = {}
    for record in records:
        with blame(f"task {short_repr(record.get('id'))}"):
            _add_json_min_record(tasks, record)
    return list(tasks.values())


def _add_json_min_record(tasks: dict[Any, dict[str, Any]], record: Mapping[str, Any]) -> None:
    """Add one JSON-MIN record to ``tasks`` (by task id): its data, and its annotation if it has one."""
    controls = {k: v for k, v in record.items() if k not in JSON_MIN_KEYS and _is_regions(v)}
    data = {k: v for k, v in record.items() if k not in JSON_MIN_KEYS and k not in controls}
    task = tasks.setdefault(record.get("id"), {"id": record.get("id"), "data": data, "annotations": []})
    if record.get("annotation_id") is None:
        return
    results = []
    for control, regions in controls.items():
        for region in regions:
            value = dict(region)
            result: dict[str, Any] = {"id": f"{record['annotation_id']}-{len(results)}", "from_name": control}
            result["type"] = _region_kind(value)
            for key in ("original_width", "original_height"):
                if key in value:
                    result[key] = value.pop(key)
            results.append({**result, "to_name": TO_NAME, "value": value})
    task["annotations"].append(
        {
            "id": record["annotation_id"],
            "result": results,
            "completed_by": record.get("annotator"),
            "created_at": record.get("created_at"),
            "updated_at": record.get("updated_at"),
        }
    )


def _region_kind(value: Mapping[str, Any]) -> str | None:
    """The result type of a JSON-MIN region value, which lost its ``type``: its ``...labels`` key."""
    kinds = [k for k, v in value.items() if str(k).endswith("labels") and isinstance(v, list)]
    return str(kinds[0]).lower() if len(kinds) == 1 else None


def _is_regions(value: Any) -> bool:
    """A JSON-MIN control's regions: a list of value objects such as ``{"format", "rle", "brushlabels"}``."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(r, Mapping) and _region_kind(r) is not None for r in value)
    )


def chosen_annotation(annotations: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The annotation that counts: not cancelled; the ground-truth one, else the latest, else the last listed.
    Choosing from [the choice so far, *more] gives the choice over all of them."""
    live = [(i, a) for i, a in enumerate(annotations) if not a.get("was_cancelled")]
    if not live:
        return None

    def key(item: tuple[int, Mapping[str, Any]]) -> tuple[bool, str, int]:
        i, a = item
        return bool(a.get("ground_truth")), str(a.get("updated_at") or a.get("created_at") or ""), i

    return max(live, key=key)[1]


def _task_size(task: Mapping[str, Any], annotation: Mapping[str, Any]) -> tuple[int, int]:
    """(height, width) from the regions, checked against the size we put in ``data``."""
    data = task.get("data") or {}
    sizes = {
        (int(r["original_height"]), int(r["original_width"]))
        for r in annotation.get("result") or []
        if "original_height" in r and "original_width" in r
    }
    if "height" in data and "width" in data:
        sizes.add((int(data["height"]), int(data["width"])))
    if len(sizes) != 1:
        raise ValueError(f"task {short_repr(task.get('id'))}: image size unknown or inconsistent: {sorted(sizes)}")
    return sizes.pop()


def _result_mask(
    result: Mapping[str, Any], lookup: Mapping[str, int], height: int, width: int, task_id: Any
) -> tuple[int, np.ndarray] | None:
    labels = _region_labels(result, f"task {short_repr(task_id)}")
    if not labels:
        return None
    if labels[0] not in lookup:
        raise ValueError(f"task {short_repr(task_id)}: label {short_repr(labels[0])} is not one of our categories")
    value = result.get("value") or {}
    if str(result.get("type", "")).lower() == "brushlabels":
        if "rle" not in value:
            raise ValueError(f"task {short_repr(task_id)}: brush region {short_repr(result.get('id'))} has no rle")
        mask = decode_mask(value["rle"], height, width)
    else:
        try:
            xy = np.asarray(value.get("points") or [], dtype=float).reshape(-1, 2)
        except (TypeError, ValueError):
            raise ValueError(
                f"task {short_repr(task_id)}: polygon region {short_repr(result.get('id'))} has points that are not "
                "[x, y] number pairs"
            ) from None
        if not np.isfinite(xy).all():  # NaN / inf would paint nothing: a silent "nothing annotated" review
            raise ValueError(
                f"task {short_repr(task_id)}: polygon region {short_repr(result.get('id'))} has points that are not "
                "finite numbers"
            )
        mask = polygons_to_mask([(xy * (width / 100.0, height / 100.0)).ravel().tolist()], height, width)
    return lookup[labels[0]], mask


# -------------------------------------------------------------------------------------------- helpers


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr`` of a value from a review file, cut to ``limit`` characters: error lines stay one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


MAX_ERROR_CHARS = 300


@contextmanager
def blame(what: str) -> Iterator[None]:
    """Errors reading one part of a review file (``what``: "task 12", "annotation 5") as one ``ValueError`` line
    that names it, cut to ``MAX_ERROR_CHARS``: wrong JSON types (a list where a number belongs, a string where an
    object does) raise TypeError / AttributeError / KeyError deep down, and a 10 MB name must not make a 10 MB
    line."""
    try:
        yield
    except (TypeError, AttributeError, KeyError, IndexError, ValueError, OverflowError) as e:
        if isinstance(e, KeyError):
            message = f"missing field {short_repr(e.args[0] if e.args else None)}"
        elif isinstance(e, ValueError):
            message = str(e)
        else:
            message = f"wrong JSON type ({type(e).__name__}: {e})"
        if not message.startswith(what):
            message = f"{what}: {message}"
        message = " ".join(message.split())  # one line
        if len(message) > MAX_ERROR_CHARS:
            message = message[: MAX_ERROR_CHARS - 3] + "..."
        raise ValueError(message) from None


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _region_id(image_id: int, category_id: int, part: int | None = None) -> str:
    """Deterministic region id, so re-exports are identical."""
    return f"{image_id & 0xFFFFFFFF:08x}-{category_id}" + ("" if part is None else f"-{part}")


def _class_scores(image: ExportImage) -> dict[int, float | None]:
    """Area-weighted score per class (a class may span several annotation records)."""
    sums: dict[int, list[float]] = {}
    for ann in image.annotations:
        if ann.get("score") is None:
            continue
        area = float(ann.get("area") or 0.0) or 1.0
        acc = sums.setdefault(int(ann["category_id"]), [0.0, 0.0])
        acc[0] += area * float(ann["score"])
        acc[1] += area
    return {cid: s / a for cid, (s, a) in sums.items()}
