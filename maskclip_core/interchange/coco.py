"""COCO instances JSON: export of the dataset, import of any COCO file as per-image label maps."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pycocotools.coco import COCO

from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.reader import iter_export_images, relative_file_name
from maskclip_core.dataset.rle import annotations_to_label_map
from maskclip_core.storage.fs import atomic_write_bytes, read_bytes

COCO_CONTRIBUTOR = "maskclip-labeler"  # info.contributor of our exports: an imported file came from us
StoreTables = tuple[pa.Table, pa.Table, Sequence[Mapping[str, Any]]]  # images, annotations, categories


def build_coco_dict(
    source: LabelDataset | StoreTables,
    *,
    config_hash: str | None = None,
    image_ids: Collection[int] | None = None,
    file_name_root: str | None = None,
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A COCO instances dict of the current labeled images and their annotations.

    ``source`` is a dataset (its current ``labeled`` rows are read) or current tables
    ``(images, annotations, categories)``, of which the ``labeled`` rows are used. ``file_name`` is the
    uri relative to ``file_name_root`` when it lies below it, else the uri's base name; ``coco_url`` is
    the full uri. One image labeled under several configs would appear twice: pass ``config_hash`` then.
    """
    if isinstance(source, LabelDataset):  # the exports' reader, as `maskclip export coco`: twins get alias ids
        exported = sorted(iter_export_images(source, config_hash=config_hash, image_ids=image_ids), key=lambda i: i.uri)
        return coco_dict(
            [
                coco_image(i.image_id, i.uri, relative_file_name(i.uri, file_name_root), i.width, i.height)
                for i in exported
            ],
            [coco_annotation(a) for i in exported for a in i.annotations],
            source.categories(),
            info,
        )
    else:
        images, annotations, categories = source
        images = images.filter(pc.equal(images["status"], "labeled"))
        if config_hash is not None:
            images = images.filter(pc.equal(images["config_hash"], config_hash))
        if image_ids is not None:
            images = images.filter(pc.is_in(images["image_id"], value_set=pa.array(list(image_ids), pa.int64())))
        annotations = annotations.filter(pc.is_in(annotations["labeling_id"], value_set=images["labeling_id"]))

    ids = images["image_id"].to_pylist()
    if len(set(ids)) != len(ids):
        raise ValueError("an image has several current labelings (one per config): pass config_hash")
    return coco_dict(
        [
            coco_image(
                row["image_id"], row["uri"], relative_file_name(row["uri"], file_name_root), row["width"], row["height"]
            )
            for row in images.select(["image_id", "uri", "width", "height"]).to_pylist()
        ],
        [coco_annotation(a) for a in annotations.to_pylist()],
        categories,
        info,
    )


def coco_dict(
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    categories: Sequence[Mapping[str, Any]],
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The COCO instances dict around :func:`coco_image` and :func:`coco_annotation` entries."""
    now = dt.datetime.now(dt.UTC)
    return {
        "info": {
            "description": "MaskCLIP pseudo-labels",
            "version": "1.0",
            "year": now.year,
            "contributor": COCO_CONTRIBUTOR,
            "date_created": now.isoformat(timespec="seconds"),
            **dict(info or {}),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c["id"], "name": c["name"], "supercategory": ""} for c in categories],
    }


def coco_image(image_id: int, uri: str, file_name: str, width: int, height: int) -> dict[str, Any]:
    """A COCO image entry; ``coco_url`` is the full uri."""
    return {"id": image_id, "file_name": file_name, "width": width, "height": height, "coco_url": uri}


def write_coco(
    coco: Mapping[str, Any], destination_url: str, storage_options: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Write a COCO dict as compact JSON (atomically); return its counts."""
    data = json.dumps(coco, separators=(",", ":")).encode("utf-8")
    atomic_write_bytes(destination_url, data, storage_options)
    return {
        "url": destination_url,
        "images": len(coco["images"]),
        "annotations": len(coco["annotations"]),
        "categories": len(coco["categories"]),
    }


def export_coco(
    dataset: LabelDataset,
    destination_url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    config_hash: str | None = None,
    image_ids: Collection[int] | None = None,
    file_name_root: str | None = None,
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``build_coco_dict(dataset, ...)`` as JSON to ``destination_url`` (atomically); return counts.

    ``storage_options`` default to the dataset's.
    """
    coco = build_coco_dict(
        dataset,
        config_hash=config_hash,
        image_ids=image_ids,
        file_name_root=file_name_root,
        info=info,
    )
    return write_coco(coco, destination_url, dataset.storage_options if storage_options is None else storage_options)


@dataclass
class CocoLabelMaps:
    """Per-image label maps of a COCO file, painted on demand (a whole dataset would not fit in memory)."""

    images: list[dict[str, Any]]  # the file's image entries, by id
    categories: list[dict[str, Any]]  # by id
    category_to_index: dict[int, int]  # label value per category id; other categories stay ignore
    annotations_by_image: dict[int, list[dict[str, Any]]] = field(repr=False)
    overlap: Literal["error", "ignore"] = "error"

    def __post_init__(self) -> None:
        self._images_by_id = {image["id"]: image for image in self.images}

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
        """(image entry, uint8 label map) for every image, by image id."""
        for image in self.images:
            yield image, self.label_map(image["id"])

    def label_map(self, image_id: int) -> np.ndarray:
        """uint8 [H, W]: ``category_to_index`` values, 255 where no (mapped) annotation."""
        image = self._images_by_id[image_id]
        anns = [
            a
            for a in self.annotations_by_image.get(image_id, [])
            if a.get("segmentation") and int(a["category_id"]) in self.category_to_index
        ]
        return annotations_to_label_map(
            anns, int(image["height"]), int(image["width"]), self.category_to_index, overlap=self.overlap
        )


def load_coco_annotations(
    path_or_url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    category_to_index: Mapping[int, int] | None = None,
    overlap: Literal["error", "ignore"] = "error",
) -> CocoLabelMaps:
    """Read a COCO instances JSON (RLE or polygon segmentations) for label maps per image.

    ``category_to_index`` defaults to the categories' positions in id order. Parsing and indexing go
    through ``pycocotools.coco.COCO`` so files it accepts are accepted here.
    """
    dataset = json.loads(read_bytes(path_or_url, storage_options))
    coco = COCO()
    with contextlib.redirect_stdout(io.StringIO()):  # COCO prints progress lines
        coco.dataset = dataset
        coco.createIndex()
    categories = sorted(coco.dataset.get("categories", []), key=lambda c: c["id"])
    if category_to_index is None:
        category_to_index = {c["id"]: i for i, c in enumerate(categories)}
    images = sorted(coco.dataset.get("images", []), key=lambda im: im["id"])
    by_image = {image["id"]: list(coco.imgToAnns.get(image["id"], [])) for image in images}
    return CocoLabelMaps(
        images=images,
        categories=categories,
        category_to_index=dict(category_to_index),
        annotations_by_image=by_image,
        overlap=overlap,
    )


def coco_annotation(row: Mapping[str, Any]) -> dict[str, Any]:
    """A COCO annotation entry from an annotations row (compressed RLE)."""
    seg = row["segmentation"]
    return {
        "id": row["id"],
        "image_id": row["image_id"],
        "category_id": row["category_id"],
        "segmentation": {"size": [int(v) for v in seg["size"]], "counts": seg["counts"]},
        "area": row["area"],
        "bbox": list(row["bbox"]),
        "iscrowd": 0,
        "score": row["score"],
    }
