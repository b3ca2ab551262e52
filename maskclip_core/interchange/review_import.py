"""Human corrections -> ReviewedImage records, imported into the dataset (:func:`import_reviews`).

Label maps here hold category ids (uint8, 255 = not annotated); ``evaluation.reviewed`` scores pseudo-labels
against them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils

from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.reader import known_images
from maskclip_core.dataset.records import ExportImage, ReviewedImage, category_lookup
from maskclip_core.dataset.reviews import retraction_row, review_rows, write_reviewed
from maskclip_core.dataset.rle import label_map_from_masks
from maskclip_core.dataset.schema import REVIEW_TOOLS
from maskclip_core.interchange.coco import COCO_CONTRIBUTOR
from maskclip_core.interchange.label_studio import blame, import_label_studio, iter_label_studio_reviews, short_repr
from maskclip_core.interchange.polygons import polygons_to_mask
from maskclip_core.storage.fs import read_bytes, read_json

FORMATS = REVIEW_TOOLS  # one importer per review tool the reviewed table records


def import_coco_reviews(
    coco: Mapping[str, Any] | str,
    categories: Sequence[Mapping[str, Any]],
    *,
    images: Iterable[ExportImage] | None = None,
    strict: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> list[ReviewedImage]:
    """Reviewed label maps from a COCO instances JSON (a dict or its URL), e.g. a CVAT "COCO 1.0" export.

    Tools renumber images and categories, so categories are matched by name, and images by ``file_name``
    (then by basename when that is unique) against ``images``; without ``images`` the COCO image ids are
    taken as ours (our own COCO exports keep them). Polygons, uncompressed and compressed RLE are read and
    painted in annotation order (later wins). Images without annotations are not counted as reviewed: COCO
    cannot tell "reviewed, nothing there" from "not reviewed". With ``strict`` unknown images or category
    names raise; otherwise they are skipped.
    """
    if isinstance(coco, str):
        coco = read_json(coco, storage_options)
    lookup = category_lookup(categories)
    ours: dict[int, int | None] = {}  # COCO category id -> our id (None: unknown, skipped)
    # A wrong JSON type (a list id, a string segmentation, ...) is one short line naming the entry.
    with blame("COCO file"):
        entries = {key: list(_entries(coco, key)) for key in ("categories", "annotations", "images")}
    for i, c in enumerate(entries["categories"]):
        with blame(_entry_name("COCO category", c, i)):
            ours[int(c["id"])] = lookup.get(str(c["name"]))
            if ours[int(c["id"])] is None and strict:
                raise ValueError(f"its name {short_repr(c['name'])} is not one of our categories")
    link = _image_linker(images)

    by_image: dict[int, list[Mapping[str, Any]]] = {}
    for i, ann in enumerate(entries["annotations"]):
        with blame(_entry_name("annotation", ann, i)):
            by_image.setdefault(int(ann["image_id"]), []).append(ann)
    reviewed = []
    for i, info in enumerate(entries["images"]):
        with blame(_entry_name("COCO image", info, i)):
            review = _coco_review(info, by_image, ours, link, strict)
        if review is not None:
            reviewed.append(review)
    return reviewed


def _coco_review(
    info: Mapping[str, Any],
    by_image: Mapping[int, list[Mapping[str, Any]]],
    ours: Mapping[int, int | None],
    link: Callable[[Mapping[str, Any]], tuple[int, str] | None],
    strict: bool,
) -> ReviewedImage | None:
    """One COCO image's reviewed label map; None when it has no annotation or (not ``strict``) is not ours."""
    anns = by_image.get(int(info["id"]))
    if not anns:
        return None
    target = link(info)
    if target is None:
        if strict:
            raise ValueError(f"COCO image {short_repr(info.get('file_name'))} matches none of our images")
        return None
    image_id, sha256 = target
    h, w = int(info["height"]), int(info["width"])
    masks = []
    for ann in anns:
        with blame(f"annotation {short_repr(ann.get('id'))}"):
            cid = ours.get(int(ann["category_id"]))
            if cid is None:
                if strict:
                    raise ValueError(
                        f"annotation {short_repr(ann.get('id'))} has unknown category id "
                        f"{short_repr(ann['category_id'])}"
                    )
                continue
            m = _segmentation_mask(ann.get("segmentation"), h, w)
        if m is not None:
            masks.append((cid, m))
    label_map = label_map_from_masks(masks, h, w)
    return ReviewedImage(image_id=image_id, label_map=label_map, sha256=sha256, tool="coco")


def _entries(coco: Mapping[str, Any], key: str) -> list[Any]:
    """``coco[key]``, which must be a list (of objects: each is checked where it is read)."""
    value = coco.get(key, [])
    if not isinstance(value, list):
        raise ValueError(f"{key} is a {type(value).__name__}, not a list")
    return value


def _entry_name(kind: str, entry: Any, index: int) -> str:
    """How an error names a COCO entry: by its id when it has one, else by its position."""
    if isinstance(entry, Mapping) and entry.get("id") is not None:
        return f"{kind} {short_repr(entry.get('id'))}"
    return f"{kind} #{index}"


def read_reviews(
    source: Any,
    categories: Sequence[Mapping[str, Any]],
    fmt: str,
    *,
    images: Iterable[ExportImage] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> list[ReviewedImage]:
    """Dispatch on ``fmt`` ("label-studio" or "coco"); ``source`` is parsed JSON or its URL."""
    if fmt == "label-studio":
        return import_label_studio(source, categories, storage_options=storage_options)
    if fmt == "coco":
        return import_coco_reviews(source, categories, images=images, storage_options=storage_options)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def _image_linker(images: Iterable[ExportImage] | None) -> Callable[[Mapping[str, Any]], tuple[int, str] | None]:
    """COCO image info -> (our image id, sha256) or None."""
    if images is None:
        return lambda info: (int(info["id"]), "")
    by_name: dict[str, ExportImage] = {}
    by_base: dict[str, list[ExportImage]] = {}
    for img in images:
        by_name[img.file_name] = img
        by_base.setdefault(posixpath.basename(img.file_name), []).append(img)

    def link(info: Mapping[str, Any]) -> tuple[int, str] | None:
        name = str(info.get("file_name", "")).replace("\\", "/")
        img = by_name.get(name)
        if img is None and len(by_base.get(posixpath.basename(name), [])) == 1:
            img = by_base[posixpath.basename(name)][0]
        if img is not None and (img.height, img.width) != (int(info["height"]), int(info["width"])):
            raise ValueError(
                f"COCO image {short_repr(name)} is {short_repr(info['height'])}x{short_repr(info['width'])}, "
                f"ours is {img.height}x{img.width}"
            )
        return None if img is None else (img.image_id, img.sha256)

    return link


def _segmentation_mask(seg: Any, height: int, width: int) -> np.ndarray | None:
    """Polygons, uncompressed RLE or compressed RLE -> [H, W] bool; None for a box-only annotation."""
    if not seg:
        return None
    if isinstance(seg, list):
        return polygons_to_mask(seg, height, width)
    if [int(v) for v in seg["size"]] != [height, width]:
        raise ValueError(f"mask size {short_repr(seg['size'])} differs from image size {[height, width]}")
    rle = mask_utils.frPyObjects(seg, height, width) if isinstance(seg["counts"], list) else seg
    return mask_utils.decode(rle).astype(bool)


def import_reviews(
    dataset_url: str,
    review_url: str,
    fmt: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    review_storage_options: Mapping[str, Any] | None = None,
    strict: bool = True,
    imported_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """Import a Label Studio JSON (or JSON-MIN) export or a COCO file of reviewed labels into ``dataset_url``'s
    dataset; a file holding no review is refused.

    Label Studio tasks link back through the ``image_id`` our export put in ``data``. COCO images match by
    our image id when the file came from our COCO export (its ``info.contributor``, or every image id being
    one of ours), else by ``file_name`` (relative to the dataset's source root, as our exports name them).
    Reviews of images the dataset does not hold (or whose sha256 differs) raise; with ``strict=False`` they
    and unknown COCO categories are skipped. Returns what was written.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    dataset = LabelDataset(dataset_url, storage_options)
    categories = dataset.categories()
    if not categories:
        raise ValueError(f"{dataset_url} holds no categories: nothing was labeled there")
    raw = read_bytes(review_url, review_storage_options)
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise ValueError(f"{review_url} nests JSON too deeply to be a review file") from None
    # The importers take a str as the URL of a file to read (their Python API); a file's own content is never
    # one: a review file whose JSON is a string naming a path or an http address must not be followed there.
    expected = (list, dict) if fmt == "label-studio" else (dict,)
    if not isinstance(doc, expected):
        what = "a list of tasks or one task object" if fmt == "label-studio" else "an object (COCO instances)"
        raise ValueError(f"{review_url} is not a {fmt} review file: its JSON is a {type(doc).__name__}, not {what}")
    ours = {image.image_id: image for image in known_images(dataset)}
    skipped_tasks: list[tuple[int | None, str]] = []
    reviewed = _parse_reviews(doc, fmt, categories, ours, strict, skipped_tasks)
    import_id = hashlib.sha256(fmt.encode() + b"\x1f" + raw).hexdigest()[:32]
    written = store_reviews(
        dataset_url,
        reviewed,
        tool=fmt,
        import_id=import_id,
        source_uri=review_url,
        strict=strict,
        imported_at=imported_at,
        storage_options=storage_options,
        known=ours,
        nothing=f"{review_url} holds no {'annotated task' if fmt == 'label-studio' else 'image with annotations'}",
    )
    return {
        "import_id": import_id,
        "format": fmt,
        "source": review_url,
        **{k: v for k, v in written.items() if k != "import_id"},
        **skipped_summary(written["skipped"], skipped_tasks),
    }


def skipped_summary(skipped: list[int], skipped_tasks: Sequence[tuple[int | None, str]]) -> dict[str, Any]:
    """The summary's ``skipped`` image ids (reviews of images not ours, tasks left out), and the tasks left out
    (``skipped_tasks`` count, the first reasons)."""
    ids = sorted({*skipped, *(i for i, _ in skipped_tasks if i is not None)})
    reasons = [reason for _, reason in skipped_tasks[:10]]
    return {"skipped": ids, "skipped_tasks": len(skipped_tasks), "skipped_reasons": reasons}


def store_reviews(
    dataset_url: str,
    reviewed: Iterable[ReviewedImage],
    *,
    tool: str,
    import_id: str,
    source_uri: str,
    strict: bool = True,
    imported_at: dt.datetime | None = None,
    storage_options: Mapping[str, Any] | None = None,
    known: Mapping[int, ExportImage] | None = None,
    retract: Iterable[int] = (),
    nothing: str | None = None,
) -> dict[str, Any]:
    """Write reviewed label maps as one ``reviewed`` part named after ``import_id`` (same id: same part).

    Of several reviews of one image the latest counts; reviews of images the dataset does not hold raise, or
    with ``strict=False`` are skipped and listed. ``known``: the dataset's images by id, when the caller has them.
    ``retract``: images whose review was withdrawn in the tool (``reviews.retraction_row``). ``nothing``: raise
    with this text when there is no review at all. Reviews are kept as compressed rows, not label maps.
    """
    if known is None:
        known = {image.image_id: image for image in known_images(LabelDataset(dataset_url, storage_options))}
    when = imported_at or dt.datetime.now(dt.UTC)
    latest: dict[int, tuple[str, list[dict[str, Any]]]] = {}
    skipped: list[int] = []
    for review in reviewed:
        image = _image_of(review, known, strict, dataset_url, skipped)
        if image is not None and (review.image_id not in latest or review.reviewed_at >= latest[review.image_id][0]):
            latest[review.image_id] = (
                review.reviewed_at,
                review_rows(review, image, tool, import_id, when, source_uri),
            )
    if not latest and nothing is not None:  # e.g. our own tasks.json (predictions only), or no one submitted yet
        raise ValueError(f"{nothing}: nothing to import (export again after the review)")
    rows = [row for _, image_rows in latest.values() for row in image_rows]
    withdrawn = sorted({i for i in retract if i in known and i not in latest})
    rows += [retraction_row(known[i], tool, import_id, when, source_uri) for i in withdrawn]
    url = write_reviewed(dataset_url, rows, storage_options)
    return {
        "import_id": import_id,
        "url": url,
        "images": len(latest),
        "regions": sum(r["category_id"] is not None for r in rows),
        "skipped": skipped,
        **({"retracted": withdrawn} if withdrawn else {}),
    }


def _parse_reviews(
    doc: Any,
    fmt: str,
    categories: Sequence[Mapping[str, Any]],
    ours: Mapping[int, ExportImage],
    strict: bool,
    skipped: list[tuple[int | None, str]],
) -> Iterable[ReviewedImage]:
    if fmt == "label-studio":  # matched to our images (and their sizes) before a mask is decoded
        return iter_label_studio_reviews(doc, categories, images=ours, strict=strict, skipped=skipped)
    ids = set()
    for i, image in enumerate(doc.get("images", []) if isinstance(doc.get("images", []), list) else []):
        with blame(_entry_name("COCO image", image, i)):
            ids.add(int(image["id"]))
    info = doc.get("info")
    contributor = info.get("contributor") if isinstance(info, Mapping) else None
    from_us = contributor == COCO_CONTRIBUTOR or bool(ids and ids <= ours.keys())
    matchable = None if from_us else list(ours.values())
    return import_coco_reviews(doc, categories, images=matchable, strict=strict)


def _image_of(
    review: ReviewedImage, ours: Mapping[int, ExportImage], strict: bool, dataset_url: str, skipped: list[int]
) -> ExportImage | None:
    """The dataset's image a review belongs to; None (listed in ``skipped``) for one not ours with ``strict=False``,
    which raises otherwise."""
    image = ours.get(review.image_id)
    if image is None or (review.sha256 and review.sha256 != image.sha256):
        if strict:
            why = "is not in the dataset" if image is None else "has a different sha256 in the dataset"
            raise ValueError(f"reviewed image {review.image_id} {why} ({dataset_url})")
        skipped.append(review.image_id)
        return None
    if review.label_map.shape != (image.height, image.width):
        size = (image.height, image.width)
        raise ValueError(f"review of image {review.image_id} is {review.label_map.shape}, the image is {size}")
    return image
