"""Export a dataset to a review tool's format: one entry point for the CLI and the Prefect flow.

Every format streams the same selection (``select_images``) once; ``coco`` writes it with the entries of
``maskclip_core.interchange.coco``, as the labeling flow's own COCO export does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.reader import select_images
from maskclip_core.dataset.records import ExportImage
from maskclip_core.dataset.schema import LABELERS, STATUSES
from maskclip_core.interchange.coco import coco_annotation, coco_dict, coco_image, write_coco
from maskclip_core.interchange.cvat import export_cvat_coco, export_cvat_mask
from maskclip_core.interchange.label_studio import export_label_studio

Format = Literal["coco", "label-studio", "cvat-coco", "cvat-mask"]
FORMATS = get_args(Format)
Status = Literal[STATUSES]  # type: ignore[valid-type]  # the images table's statuses

# Format-specific options and the formats that read them; anything else is a mistake worth an error.
_OPTION_FORMATS = {
    "polygons": ("label-studio", "cvat-coco"),
    "polygon_tolerance": ("label-studio", "cvat-coco"),
    "document_root": ("label-studio",),
    "model_version": ("label-studio",),
    "include_images": ("cvat-coco", "cvat-mask"),
}


class ExportParameters(BaseModel):
    """What to export, from which dataset, to where (a flow parameter: the deployment UI renders it as a form)."""

    model_config = ConfigDict(extra="forbid")

    format: Format = Field(
        description="coco: instances JSON file; label-studio: folder with tasks.json and config.xml; "
        "cvat-coco: CVAT 'COCO 1.0' zip; cvat-mask: CVAT 'Segmentation mask 1.1' zip."
    )
    dataset: str = Field(description="URL of the dataset a labeling run wrote, e.g. s3://bucket/out.")
    destination: str = Field(description="Where to write: a .json file (coco), a folder (label-studio), a .zip.")
    config_hash: str | None = Field(
        default=None, description="Labeler config to export; needed when the dataset holds several."
    )
    classes: list[str] | None = Field(default=None, description="Only these classes (names, synonyms or ids).")
    min_score: float | None = Field(default=None, ge=0.0, le=1.0, description="Only annotations scoring >= this.")
    max_score: float | None = Field(default=None, ge=0.0, le=1.0, description="Only annotations scoring <= this.")
    statuses: list[Status] = Field(
        default=["labeled"], description="Image statuses to export (rejected images carry no annotations)."
    )
    rounds: list[int] | None = Field(default=None, description="Only annotations of these self-training rounds.")
    labelers: list[str] | None = Field(
        default=None, description=f"Only annotations of these labelers ({', '.join(LABELERS)})."
    )
    image_ids: list[int] | None = Field(default=None, description="Only these images (our 63-bit image ids).")
    lowest: int | None = Field(default=None, ge=1, description="Only the N lowest-scored images, to review first.")
    polygons: bool = Field(default=False, description="Polygons instead of masks (label-studio, cvat-coco).")
    polygon_tolerance: float = Field(
        default=0.0, ge=0.0, description="Polygon simplification in pixels; 0 = exact (label-studio, cvat-coco)."
    )
    document_root: str | None = Field(
        default=None, description="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, for local images."
    )
    model_version: str | None = Field(default=None, description="Label Studio prediction model_version.")
    include_images: bool = Field(default=False, description="Put the image files into the zip (cvat-*).")
    file_name_root: str | None = Field(
        default=None,
        description="Image file names are relative to this URL prefix; default: the folder holding every image "
        "of the dataset (names then never collide and stay the same for any selection).",
    )

    @model_validator(mode="after")
    def _options_fit_format(self) -> ExportParameters:
        defaults = {name: type(self).model_fields[name].default for name in _OPTION_FORMATS}
        for name, formats in _OPTION_FORMATS.items():
            if getattr(self, name) != defaults[name] and self.format not in formats:
                raise ValueError(f"{name} applies to {', '.join(formats)}, not {self.format}")
        if self.min_score is not None and self.max_score is not None and self.min_score > self.max_score:
            raise ValueError(f"min_score {self.min_score} is above max_score {self.max_score}")
        if self.format == "coco" and set(self.statuses) != {"labeled"}:
            raise ValueError("coco exports labeled images only")
        return self

    def filters(self) -> dict[str, Any]:
        """The selection fields that were set (for summaries)."""
        names = ("config_hash", "classes", "min_score", "max_score", "rounds", "labelers", "image_ids", "lowest")
        out = {n: getattr(self, n) for n in names if getattr(self, n) is not None}
        if self.statuses != ["labeled"]:
            out["statuses"] = self.statuses
        return out


class _Tally:
    """Counts what streams through to an exporter (the exporters return only where they wrote)."""

    def __init__(self) -> None:
        self.images = 0
        self.per_category: Counter[int] = Counter()

    def watch(self, images: Iterable[ExportImage]) -> Iterator[ExportImage]:
        for image in images:
            self.images += 1
            self.per_category.update(int(ann["category_id"]) for ann in image.annotations)
            yield image


def export_dataset(params: ExportParameters, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run one export; returns a JSON-able summary (files written, counts per class, filters).

    ``storage_options`` (fsspec) serve the dataset, the destination and, with ``include_images``, the images.
    """
    dataset = LabelDataset(params.dataset, storage_options)
    categories = dataset.categories()
    if not categories:
        raise ValueError(f"{params.dataset} holds no categories: nothing was labeled there")
    options = storage_options
    tally = _Tally()
    images = tally.watch(
        select_images(
            dataset,
            config_hash=params.config_hash,
            classes=params.classes,
            min_score=params.min_score,
            max_score=params.max_score,
            statuses=params.statuses,
            rounds=params.rounds,
            labelers=params.labelers,
            image_ids=params.image_ids,
            lowest=params.lowest,
            categories=categories,
            file_name_root=params.file_name_root,  # default: the folder of every image in the dataset
        )
    )
    files = _WRITERS[params.format](params, images, categories, options)
    names = {int(c["id"]): str(c["name"]) for c in categories}
    return {
        "format": params.format,
        "dataset": params.dataset,
        "destination": params.destination,
        "files": files,
        "images": tally.images,
        "annotations": sum(tally.per_category.values()),
        "annotations_per_class": {names[cid]: n for cid, n in sorted(tally.per_category.items())},
        "filters": params.filters(),
    }


# --- one writer per format: (parameters, streamed images, categories, fsspec options) -> files written


def _write_coco(
    params: ExportParameters, images: Iterable[ExportImage], categories: Sequence[Mapping[str, Any]], options: Any
) -> list[str]:
    entries: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image in images:
        entries.append(coco_image(image.image_id, image.uri, image.file_name, image.width, image.height))
        annotations.extend(coco_annotation(ann) for ann in image.annotations)
    write_coco(coco_dict(entries, annotations, categories), params.destination, options)
    return [params.destination]


def _write_label_studio(
    params: ExportParameters, images: Iterable[ExportImage], categories: Sequence[Mapping[str, Any]], options: Any
) -> list[str]:
    written = export_label_studio(
        images,
        categories,
        params.destination,
        storage_options=options,
        mode="polygon" if params.polygons else "brush",
        document_root=params.document_root,
        model_version=params.model_version or "maskclip",
        polygon_tolerance=params.polygon_tolerance,
    )
    return [written["tasks"], written["config"]]


def _write_cvat_coco(
    params: ExportParameters, images: Iterable[ExportImage], categories: Sequence[Mapping[str, Any]], options: Any
) -> list[str]:
    export_cvat_coco(
        images,
        categories,
        params.destination,
        mode="polygon" if params.polygons else "mask",
        include_images=params.include_images,
        polygon_tolerance=params.polygon_tolerance,
        storage_options=options,
    )
    return [params.destination]


def _write_cvat_mask(
    params: ExportParameters, images: Iterable[ExportImage], categories: Sequence[Mapping[str, Any]], options: Any
) -> list[str]:
    export_cvat_mask(
        images, categories, params.destination, include_images=params.include_images, storage_options=options
    )
    return [params.destination]


_WRITERS: dict[str, Callable[..., list[str]]] = {
    "coco": _write_coco,
    "label-studio": _write_label_studio,
    "cvat-coco": _write_cvat_coco,
    "cvat-mask": _write_cvat_mask,
}
assert set(_WRITERS) == set(FORMATS)
