"""CVAT zips: "COCO 1.0" (masks as iscrowd=1 RLE, or polygons) and "Segmentation mask 1.1" (VOC-style PNGs).

Both mirror what CVAT itself exports (through datumaro), since CVAT imports them back through datumaro:
- COCO 1.0: ``annotations/instances_default.json``; masks as uncompressed RLE (``counts`` a list) with
  iscrowd=1; images under ``images/default/``. Categories are renumbered 1..K in the given order because
  datumaro (so CVAT) reads category id 0 as "no class"; CVAT matches labels by name anyway.
- Segmentation mask 1.1: ``labelmap.txt`` (``name:r,g,b::``, ``background:0,0,0::`` first),
  ``ImageSets/Segmentation/default.txt``, colour PNGs in ``SegmentationClass/`` and ``SegmentationObject/``
  (instance k painted with VOC palette colour k). Unannotated pixels are background, black in both PNGs.

Zips are written whole to a temporary file and then moved (local) or uploaded in one request (object store).
"""

from __future__ import annotations

import io
import json
import posixpath
import unicodedata
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO, Any

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

from maskclip_core.colors import category_colors, voc_colormap
from maskclip_core.dataset.records import ExportImage, check_categories
from maskclip_core.dataset.rle import annotation_mask
from maskclip_core.interchange.polygons import mask_to_polygons, polygons_to_mask
from maskclip_core.storage.fs import atomic_output, read_bytes

COCO_JSON = "annotations/instances_default.json"
COCO_IMAGES_DIR = "images/default/"
BACKGROUND = "background"


# ----------------------------------------------------------------------------------------------- COCO


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE (column-major run lengths, starting with a run of zeros), as CVAT writes it."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    bounds = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]))
    runs = np.diff(bounds)
    if flat.size and flat[0]:
        runs = np.concatenate(([0], runs))
    return {"counts": runs.tolist(), "size": [int(mask.shape[0]), int(mask.shape[1])]}


def cvat_coco_json(
    images: Iterable[ExportImage],
    categories: Sequence[Mapping[str, Any]],
    *,
    mode: str = "mask",
    polygon_tolerance: float = 0.0,
) -> dict[str, Any]:
    """COCO instances dict in CVAT's layout: one COCO annotation per annotation record."""
    if mode not in ("mask", "polygon"):
        raise ValueError(f"mode must be 'mask' or 'polygon', got {mode!r}")
    check_categories(categories)
    coco_id = {int(c["id"]): i + 1 for i, c in enumerate(categories)}
    out: dict[str, Any] = {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {
            "contributor": "",
            "date_created": "",
            "description": "",
            "url": "",
            "version": "",
            "year": "",
        },
        "categories": [{"id": coco_id[int(c["id"])], "name": str(c["name"]), "supercategory": ""} for c in categories],
        "images": [],
        "annotations": [],
    }
    for image in _unique_names(images):
        out["images"].append(
            {
                "id": image.image_id,
                "width": image.width,
                "height": image.height,
                "file_name": image.file_name,
                "license": 0,
                "flickr_url": "",
                "coco_url": "",
                "date_captured": 0,
            }
        )
        for ann in image.annotations:
            cid = int(ann["category_id"])
            if cid not in coco_id:
                raise ValueError(f"image {image.image_id}: unknown category id {cid}")
            mask = annotation_mask(ann)
            if not mask.any():
                continue  # nothing to review; an empty polygon list is not valid COCO either
            if mode == "mask":
                segmentation: Any = uncompressed_rle(mask)
            else:
                segmentation = mask_to_polygons(mask, polygon_tolerance)
                mask = polygons_to_mask(segmentation, image.height, image.width)
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            out["annotations"].append(
                {
                    "id": int(ann["id"]),
                    "image_id": image.image_id,
                    "category_id": coco_id[cid],
                    "segmentation": segmentation,
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": int(mode == "mask"),
                    "attributes": {"occluded": False},
                    **({"score": float(ann["score"])} if ann.get("score") is not None else {}),
                }
            )
    return out


def export_cvat_coco(
    images: Iterable[ExportImage],
    categories: Sequence[Mapping[str, Any]],
    dest: str,
    *,
    mode: str = "mask",
    include_images: bool = False,
    polygon_tolerance: float = 0.0,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write a CVAT "COCO 1.0" zip to ``dest`` (any fsspec URL); returns ``dest``.

    ``storage_options`` go to fsspec for ``dest`` and, with ``include_images``, the image URIs.
    """
    images = list(images)
    doc = cvat_coco_json(images, categories, mode=mode, polygon_tolerance=polygon_tolerance)

    def entries() -> Iterator[tuple[str, bytes | None]]:
        yield COCO_JSON, json.dumps(doc).encode()
        # datumaro, which CVAT imports with, refuses a COCO tree without an images/ folder
        yield COCO_IMAGES_DIR, None
        if include_images:
            for image in images:
                yield COCO_IMAGES_DIR + _safe_name(image.file_name), read_bytes(image.uri, storage_options)

    return _write_zip_atomically(dest, entries(), storage_options)


# ----------------------------------------------------------------------------------- segmentation mask


def cvat_labelmap(categories: Sequence[Mapping[str, Any]]) -> str:
    """``labelmap.txt`` in CVAT's format, background (unannotated) first in black."""
    check_categories(categories)
    colors = category_colors(categories)
    lines = ["# label:color_rgb:parts:actions", f"{BACKGROUND}:0,0,0::"]
    for c in categories:
        name = str(c["name"])
        if name == BACKGROUND:
            raise ValueError("a category named 'background' would merge with unannotated pixels in CVAT masks")
        if ":" in name or "\n" in name or name != name.strip() or not name:
            raise ValueError(f"category name {name!r} cannot be written to a CVAT labelmap")
        lines.append(f"{name}:{','.join(str(v) for v in colors[int(c['id'])])}::")
    return "\n".join(lines) + "\n"


def segmentation_pngs(image: ExportImage, categories: Sequence[Mapping[str, Any]]) -> tuple[bytes, bytes]:
    """(SegmentationClass, SegmentationObject) RGB PNG bytes; annotations painted in order, later wins."""
    index = {int(c["id"]): i + 1 for i, c in enumerate(categories)}
    if len(image.annotations) > 255:
        raise ValueError(f"image {image.image_id}: {len(image.annotations)} regions exceed 255 VOC instances")
    cls = np.zeros((image.height, image.width), dtype=np.uint8)
    inst = np.zeros_like(cls)
    for k, ann in enumerate(image.annotations, start=1):
        cid = int(ann["category_id"])
        if cid not in index:
            raise ValueError(f"image {image.image_id}: unknown category id {cid}")
        m = annotation_mask(ann)
        cls[m] = index[cid]
        inst[m] = k
    colors = category_colors(categories)
    class_colors = np.zeros((len(categories) + 1, 3), dtype=np.uint8)
    class_colors[1:] = [colors[int(c["id"])] for c in categories]
    return _png(class_colors[cls]), _png(voc_colormap(256)[inst])


def export_cvat_mask(
    images: Iterable[ExportImage],
    categories: Sequence[Mapping[str, Any]],
    dest: str,
    *,
    include_images: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write a CVAT "Segmentation mask 1.1" zip to ``dest`` (any fsspec URL); returns ``dest``.

    ``storage_options`` go to fsspec for ``dest`` and, with ``include_images``, the image URIs.
    """
    labelmap = cvat_labelmap(categories)
    images = list(_unique_names(images, strip_extension=True))
    for image in images:
        _check_listable(image)

    def entries() -> Iterator[tuple[str, bytes | None]]:
        yield "labelmap.txt", labelmap.encode()
        yield "ImageSets/Segmentation/default.txt", "".join(f"{_item_id(i)}\n" for i in images).encode()
        for image in images:
            item = _item_id(image)
            class_png, object_png = segmentation_pngs(image, categories)
            yield f"SegmentationClass/{item}.png", class_png
            yield f"SegmentationObject/{item}.png", object_png
            if include_images:
                yield "JPEGImages/" + _safe_name(image.file_name), read_bytes(image.uri, storage_options)

    return _write_zip_atomically(dest, entries(), storage_options)


# -------------------------------------------------------------------------------------------- helpers


def _write_zip(f: IO[bytes], entries: Iterable[tuple[str, bytes | None]]) -> None:
    """Entries with ``None`` data are folders; PNG / JPEG data is stored, not deflated again."""
    with zipfile.ZipFile(f, "w") as zf:
        for name, data in entries:
            if data is None:
                zf.writestr(zipfile.ZipInfo(name), b"")
                continue
            packed = name.lower().endswith((".json", ".txt", ".xml"))
            zf.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED if packed else zipfile.ZIP_STORED)


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _item_id(image: ExportImage) -> str:
    """VOC item id: the file name without its extension (CVAT matches masks to frames by it)."""
    return posixpath.splitext(_safe_name(image.file_name))[0]


def _check_listable(image: ExportImage) -> None:
    """Raise unless the image's item id survives ``default.txt``, the VOC item list, as one line.

    datumaro (which CVAT imports with) reads that list line by line (newline, carriage return or both
    end a line), strips each line and skips ``#`` lines: a newline in a name made two empty items and lost the
    image's masks without a word. Control characters and Unicode line separators (which ``str.splitlines``
    splits on) are refused too. The whole export is refused, not the image skipped: a skipped image would go
    unreviewed unnoticed, and ``cvat-coco`` (JSON) carries any name, so the user has a way out either way.
    """
    item = _item_id(image)
    bad = (
        item != item.strip()
        or item.startswith("#")
        or any(unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") for ch in item)  # Cs: not UTF-8
    )
    if bad:
        raise ValueError(
            f"image {image.image_id}: file name {image.file_name[:200]!r} cannot be an item of CVAT's "
            "line-based default.txt (line break, control character, '#' first or space at an end); "
            "rename the file or export as cvat-coco"
        )


def _safe_name(file_name: str) -> str:
    name = file_name.replace("\\", "/")
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts) or name != name.strip():
        raise ValueError(f"file name {file_name!r} cannot be a path inside the zip")
    return name


def _unique_names(images: Iterable[ExportImage], strip_extension: bool = False) -> Iterator[ExportImage]:
    """Pass images through, raising on a repeated name: CVAT would put both images' masks on one frame."""
    seen: dict[str, int] = {}
    for image in images:
        key = _item_id(image) if strip_extension else _safe_name(image.file_name)
        if key in seen:
            raise ValueError(f"images {seen[key]} and {image.image_id} share the name {key!r}")
        seen[key] = image.image_id
        yield image


def _write_zip_atomically(
    dest: str, entries: Iterable[tuple[str, bytes | None]], storage_options: Mapping[str, Any] | None
) -> str:
    with atomic_output(dest, storage_options) as f:
        _write_zip(f, entries)
    return dest
