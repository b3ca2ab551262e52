"""Exports for review tools (COCO, Label Studio, CVAT) and import of the human corrections they produce.

The records they read and return live in ``dataset.records`` (re-exported here for the exporters' users)."""

from maskclip_core.dataset.records import (
    ExportImage,
    ReviewedImage,
    filter_images,
    label_map_from_annotations,
    lowest_scored,
    resolve_classes,
)
from maskclip_core.interchange.cvat import cvat_coco_json, cvat_labelmap, export_cvat_coco, export_cvat_mask
from maskclip_core.interchange.label_studio import (
    export_label_studio,
    import_label_studio,
    label_studio_tasks,
    labeling_config,
)
from maskclip_core.interchange.polygons import mask_to_polygons, polygons_to_mask
from maskclip_core.interchange.review_import import (
    import_coco_reviews,
    import_reviews,
    read_reviews,
)

__all__ = [
    "ExportImage",
    "ReviewedImage",
    "cvat_coco_json",
    "cvat_labelmap",
    "export_cvat_coco",
    "export_cvat_mask",
    "export_label_studio",
    "filter_images",
    "import_coco_reviews",
    "import_label_studio",
    "import_reviews",
    "label_map_from_annotations",
    "label_studio_tasks",
    "labeling_config",
    "lowest_scored",
    "mask_to_polygons",
    "polygons_to_mask",
    "read_reviews",
    "resolve_classes",
]
