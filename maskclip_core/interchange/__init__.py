"""Exports for review tools (COCO, Label Studio, CVAT) and import of the human corrections they produce.

The records they read and return live in ``dataset.records`` (re-exported here for the exporters' users).

Modules:
- ``export``: one entry point for every export format (``ExportParameters``, ``export_dataset``)
- ``coco``: COCO instances JSON out, any COCO file in as label maps
- ``label_studio``: Label Studio tasks with pre-annotations, its labeling config, and its reviews back
- ``label_studio_rle``: Label Studio's brush RLE codec
- ``label_studio_sync``: push to a live Label Studio server (``maskclip review push``; ``pull`` re-exported)
- ``label_studio_pull``: a Label Studio project's reviews into the reviewed table (``maskclip review pull``)
- ``label_studio_client``: the SDK connection to a Label Studio server, its errors as one line
- ``label_studio_project``: which Label Studio project holds a dataset, and its labeling config
- ``cvat``: CVAT's COCO 1.0 and Segmentation mask 1.1 zips
- ``polygons``: masks <-> polygons in COCO coordinates
- ``review_import``: a review tool's file into the reviewed table
"""

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
