"""Every table of the dataset: its Arrow schema, the values its coded columns take, and its part-file names.

Layout of a dataset at ``DATASET`` (see docs/ARCHITECTURE.md)::

    DATASET/_maskclip_dataset.json      the manifest: format version (``dataset.manifest``)
    DATASET/images/part-*.parquet       one row per labeled / rejected / failed image, per labeling
    DATASET/annotations/part-*.parquet  one row per (image, class) region
    DATASET/categories/part-*.parquet   id, name, synonyms
    DATASET/reviewed/part-*.parquet     human-reviewed label maps, one row per (image, category)
    DATASET/metrics/part-*.parquet      teacher and student scores against a ground truth
    DATASET/labelings/<hash>.json       what produced the labels of one config hash
    DATASET/thumbnails/, checkpoints/   overlay JPEGs, student checkpoints

Column names can differ between format versions (:data:`RENAMED_COLUMNS`): readers read the names of the
dataset's version and hand out today's; writers write the names of the dataset's version.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

import pyarrow as pa

# Values of the coded columns.
STATUSES = ("labeled", "rejected", "failed")  # images.status of a labeling (what exports select from)
# images.status of a row that says the file left the source (deleted, renamed away): it retires the uri's
# earlier rows (format version 4).
GONE = "gone"
ROW_STATUSES = (*STATUSES, GONE)  # every images.status a row may have
# Images under a config with one of these statuses need no work on a re-run ("failed" is retried).
DONE_STATUSES = ("labeled", "rejected")
LABELERS = ("maskclip", "student")  # images.labeler, annotations.labeler: the kinds of ``labeling.registry``
LabelerKind = Literal[LABELERS]  # type: ignore[valid-type]  # pydantic and argparse read it at runtime
REVIEW_TOOLS = ("label-studio", "coco")  # reviewed.tool
MODELS = ("teacher", "student")  # metrics.model

# Part files are named ``part-<name>.parquet``; names are deterministic so a retried write replaces its file.
PART_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]*")

IMAGES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.int64()),  # null only for failed rows whose bytes could not be read
        pa.field("uri", pa.string(), nullable=False),
        pa.field("sha256", pa.string()),  # null only for failed rows whose bytes could not be read
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("status", pa.string(), nullable=False),  # labeled | rejected | failed | gone
        pa.field("reason", pa.string()),  # rejection / failure reason code and detail
        pa.field("notes", pa.string()),  # e.g. decode conversions ("CMYK converted to RGB")
        pa.field("config_hash", pa.string(), nullable=False),
        pa.field("labeling_id", pa.string(), nullable=False),
        pa.field("labeler", pa.string(), nullable=False),  # maskclip | student
        pa.field("round", pa.int32(), nullable=False),
        pa.field("flow_run_id", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("source_version", pa.string()),  # SourceFile.version when labeled, for change detection
    ]
)

SEGMENTATION_TYPE = pa.struct([pa.field("counts", pa.string()), pa.field("size", pa.list_(pa.int32()))])

ANNOTATIONS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("labeling_id", pa.string(), nullable=False),
        pa.field("category_id", pa.int32(), nullable=False),
        pa.field("segmentation", SEGMENTATION_TYPE, nullable=False),  # compressed COCO RLE
        pa.field("area", pa.int64(), nullable=False),
        pa.field("bbox", pa.list_(pa.float64()), nullable=False),
        pa.field("iscrowd", pa.int8(), nullable=False),
        pa.field("score", pa.float32()),
        pa.field("labeler", pa.string()),  # maskclip | student ("source" before format version 2)
        pa.field("round", pa.int32()),
    ]
)

CATEGORIES_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int32(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("synonyms", pa.list_(pa.string())),
    ]
)

REVIEWED_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("sha256", pa.string()),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("category_id", pa.int32()),  # null: reviewed, nothing annotated
        pa.field("segmentation", SEGMENTATION_TYPE),  # compressed RLE, {"counts": str, "size": [h, w]}
        pa.field("area", pa.int64(), nullable=False),  # -1: the review was withdrawn (reviews.RETRACTED_AREA)
        pa.field("tool", pa.string(), nullable=False),  # label-studio | coco
        pa.field("reviewer", pa.string()),
        pa.field("reviewed_at", pa.string()),  # as the tool wrote it
        pa.field("source_uri", pa.string()),  # the imported file
        pa.field("import_id", pa.string(), nullable=False),
        pa.field("imported_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

METRICS_SCHEMA = pa.schema(
    [
        pa.field("run", pa.string(), nullable=False),  # the training run (its checkpoint folder's name)
        pa.field("round", pa.int32()),  # student: 0 = pseudo-label phase, 1.. self-training; teacher: null
        pa.field("iteration", pa.int32()),  # training iterations done; teacher: null
        pa.field("model", pa.string(), nullable=False),  # teacher | student
        pa.field("miou", pa.float64()),  # over the classes the ground truth names (null: none scored)
        pa.field("pixel_accuracy", pa.float64()),
        pa.field("per_class_iou", pa.map_(pa.string(), pa.float64())),  # null IoU: class absent both sides
        pa.field("images", pa.int32()),  # ground-truth images scored
        pa.field("config_hash", pa.string()),  # the teacher labeling trained on
        pa.field("checkpoint", pa.string()),  # student weights URL of the round
        pa.field("ground_truth", pa.string()),  # URL of the ground truth
        pa.field("flow_run_id", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

# Table folder -> schema, for code that walks every table.
TABLES: Mapping[str, pa.Schema] = {
    "images": IMAGES_SCHEMA,
    "annotations": ANNOTATIONS_SCHEMA,
    "categories": CATEGORIES_SCHEMA,
    "reviewed": REVIEWED_SCHEMA,
    "metrics": METRICS_SCHEMA,
}

# Columns whose name changed: {format version written with the old name: {table: {today's name: old name}}}.
# Format version 1 (datasets written before the manifest existed) called the annotations' labeler "source".
RENAMED_COLUMNS: Mapping[int, Mapping[str, Mapping[str, str]]] = {1: {"annotations": {"labeler": "source"}}}


def stored_names(table: str, version: int) -> dict[str, str]:
    """Today's column name -> the name a dataset of format ``version`` stores it under (only those that differ)."""
    return dict(RENAMED_COLUMNS.get(version, {}).get(table, {}))


def stored_schema(table: str, version: int) -> pa.Schema:
    """The schema of ``table`` as a dataset of format ``version`` stores it."""
    schema = TABLES[table]
    renamed = stored_names(table, version)
    if not renamed:
        return schema
    return pa.schema([field.with_name(renamed.get(field.name, field.name)) for field in schema])


def stored_column(table: str, version: int, name: str) -> str:
    """The stored name of today's column ``name``."""
    return stored_names(table, version).get(name, name)


def to_current_names(data: pa.Table, table: str, version: int) -> pa.Table:
    """A table read from a dataset of format ``version`` with today's column names."""
    renamed = {old: new for new, old in stored_names(table, version).items()}
    if not renamed:
        return data
    return data.rename_columns([renamed.get(name, name) for name in data.column_names])


def to_stored_names(data: pa.Table, table: str, version: int) -> pa.Table:
    """A table with today's column names as a dataset of format ``version`` stores it."""
    renamed = stored_names(table, version)
    if not renamed:
        return data
    return data.rename_columns([renamed.get(name, name) for name in data.column_names])
