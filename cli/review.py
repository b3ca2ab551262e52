"""``maskclip export`` / ``import`` / ``evaluate`` / ``review push|pull``: the round trip through labeling tools.

``register(subparsers)`` adds the subcommands to the ``maskclip`` parser; heavy imports happen when one runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from cli.actions import (
    HelpFormatter,
    Store,
    add_aliases,
    comma_ints,
    comma_strings,
    readable_validation_errors,
    requires,
)
from cli.fields import field_flag, field_option, field_values
from cli.options import EXPORT, EXPORT_FORMATS, IMPORT_FORMATS, add_dataset_option, add_storage_options

API_KEY_ENV = "LABEL_STUDIO_API_KEY"
URL_ENV = "LABEL_STUDIO_URL"  # the server, as label-studio-sdk's examples name it


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export``, ``import``, ``evaluate`` and ``review`` to the ``maskclip`` subcommands."""
    _register_export(subparsers)
    _register_import(subparsers)
    _register_evaluate(subparsers)
    _register_review(subparsers)


def _register_export(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export pseudo-labels for review (COCO, Label Studio, CVAT)",
        description="Export the labels of a dataset. coco: a JSON file; label-studio: a folder with "
        "tasks.json and config.xml; cvat-coco / cvat-mask: a zip to import into a CVAT task.",
        formatter_class=HelpFormatter,
    )
    # On the positionals group, not the parser: argparse lists a parser-level argument's choices as it is added,
    # which would import the registry (and pyarrow) to build the parser.
    field_option(p._positionals, "format", EXPORT, "format", choices=EXPORT_FORMATS, help="what to write")
    add_dataset_option(p, "the Parquet dataset to export", "--from")
    out = p.add_argument(
        "--out", dest="destination", action=Store, default=None, metavar="URL", help="file (coco, cvat-*) or folder"
    )
    add_aliases(p, out, "--to")
    requires(p, out)
    add_storage_options(p, "the dataset, --out and the images")
    _add_selection_options(p)
    g = p.add_argument_group("format options")
    field_flag(g, "--polygons", EXPORT, "polygons")
    field_option(g, "--polygon-tolerance", EXPORT, "polygon_tolerance", type=float)
    field_option(g, "--document-root", EXPORT, "document_root")
    field_option(g, "--model-version", EXPORT, "model_version")
    field_flag(g, "--include-images", EXPORT, "include_images")
    field_option(g, "--file-name-root", EXPORT, "file_name_root")
    p.set_defaults(func=_cmd_export)


def _register_import(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import",
        help="import reviewed labels (Label Studio JSON export, COCO file) into a dataset",
        description="Store human-corrected labels in the dataset's reviewed table, tied to its image ids. "
        "A newer import of an image supersedes older ones.",
        formatter_class=HelpFormatter,
    )
    p._positionals.add_argument("format", choices=IMPORT_FORMATS, help="what FILE holds")
    p.add_argument("file", metavar="FILE", help="Label Studio JSON export or COCO instances JSON (path or URL)")
    add_dataset_option(p, "the Parquet dataset the reviews belong to", "--into")
    p.add_argument("--skip-unknown", action="store_true", help="skip unknown images / categories instead of failing")
    add_storage_options(p, "the dataset and FILE")
    p.set_defaults(func=_cmd_import)


def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score the pseudo-labels against the reviewed labels (mIoU, per-class IoU, pixel accuracy)",
        formatter_class=HelpFormatter,
    )
    add_dataset_option(p, "the Parquet dataset with imported reviews", "--reviewed")
    p.add_argument("--config-hash", help="labeler config to score (needed when the dataset holds several)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--fully-annotated",
        action="store_true",
        help="score every pixel of a reviewed image: one the reviewer left without a class counts as 'no class' "
        "(a pseudo-label there is a false positive), so an emptied mask lowers its class's IoU; default: "
        "unannotated pixels are not scored",
    )
    add_storage_options(p)
    p.set_defaults(func=_cmd_evaluate)


def _register_review(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "review",
        help="push pseudo-labels to a Label Studio server for review, pull the reviews back",
        description="Review on a live Label Studio server. push: create or update the dataset's project (labeling "
        "config from its categories, image storage, one task per image with the pseudo-labels as prediction); "
        "pushing again adds new images and replaces changed predictions, and every push removes duplicate "
        "unannotated tasks (two pushes at once). pull: read the project's annotations, a page at a time, into the "
        "dataset's reviewed table (then `maskclip evaluate`); deleted annotations are retracted.",
        formatter_class=HelpFormatter,
    )
    actions = p.add_subparsers(dest="review_action", metavar="ACTION", required=True)
    push = actions.add_parser(
        "push",
        help="create or update the Label Studio project and import the tasks with predictions",
        description="Local images need a Local Files storage: they must lie in folders strictly below the "
        "server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (--document-root), and the server needs "
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true. s3:// images get an S3 storage with presigned URLs, "
        "holding the dataset's S3 credentials (--storage-options, else the AWS environment).",
        formatter_class=HelpFormatter,
    )
    _add_server_options(push, "the Parquet dataset to push")
    _add_selection_options(push)
    g = push.add_argument_group("tasks")
    field_flag(g, "--polygons", EXPORT, "polygons", help="polygons instead of brush masks")
    field_option(g, "--polygon-tolerance", EXPORT, "polygon_tolerance", type=float)
    g.add_argument(
        "--document-root",
        help="the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, for local images "
        "(default: that variable in this environment)",
    )
    g.add_argument("--model-version", default="maskclip", help="model_version of the predictions")
    push.add_argument(
        "--unreviewed",
        action="store_true",
        help="leave out images the reviewed table holds (pull first), so --lowest N picks N not yet reviewed",
    )
    push.set_defaults(func=_cmd_review_push)

    pull = actions.add_parser(
        "pull",
        help="read the project's annotations into the dataset's reviewed table",
        description="The chosen annotation of each image is its ground-truth one, else the latest, over all of "
        "the image's tasks; images whose annotations were deleted are retracted; pulling unchanged annotations "
        "again changes nothing.",
        formatter_class=HelpFormatter,
    )
    _add_server_options(pull, "the Parquet dataset the reviews belong to")
    pull.add_argument(
        "--skip-unknown",
        action="store_true",
        help="skip (and count) tasks pull cannot read: images the dataset does not hold, labels that are not "
        "categories, tasks without our image_id (e.g. made by a storage Sync)",
    )
    pull.set_defaults(func=_cmd_review_pull)


def _cmd_export(args: argparse.Namespace) -> int:
    from maskclip_core.interchange.export import ExportParameters, export_dataset

    fields = {**field_values(args, EXPORT), "dataset": args.dataset, "destination": args.destination}
    with readable_validation_errors():
        params = ExportParameters(**fields)  # unset options keep the model's defaults
    return _report_selection(export_dataset(params, args.storage_options), "the export is empty")


def _cmd_import(args: argparse.Namespace) -> int:
    from maskclip_core.interchange.review_import import import_reviews

    summary = import_reviews(
        args.dataset,
        args.file,
        args.format,
        storage_options=args.storage_options,
        review_storage_options=args.storage_options,
        strict=not args.skip_unknown,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from maskclip_core.evaluation.reviewed import evaluate_reviewed

    report = evaluate_reviewed(
        args.dataset,
        config_hash=args.config_hash,
        storage_options=args.storage_options,
        fully_annotated=args.fully_annotated,
    )
    print(json.dumps(_json_safe(report), indent=2) if args.json else format_report(report))
    return 0


def _label_studio_target(args: argparse.Namespace) -> Any:
    from maskclip_core.interchange.label_studio_client import LabelStudioTarget

    api_key = args.api_key or os.environ.get(API_KEY_ENV, "")
    url = args.label_studio or os.environ.get(URL_ENV, "")
    if not url:
        raise ValueError(f"no Label Studio server: pass --label-studio URL or set {URL_ENV}")
    return LabelStudioTarget(url=url, api_key=api_key, project=args.project)


def _cmd_review_push(args: argparse.Namespace) -> int:
    from maskclip_core.interchange.label_studio_sync import push

    selection = field_values(args, EXPORT)  # the selection options, and the two polygon ones popped here
    polygons = selection.pop("polygons", False)
    tolerance = selection.pop("polygon_tolerance", EXPORT.default("polygon_tolerance"))
    summary = push(
        _label_studio_target(args),
        args.dataset,
        selection=selection,
        unreviewed=args.unreviewed,
        mode="polygon" if polygons else "brush",
        document_root=args.document_root,
        model_version=args.model_version,
        polygon_tolerance=tolerance,
        storage_options=args.storage_options,
    )
    code = _report_selection(summary, "nothing was pushed")
    for image_id, task_ids in summary.get("duplicates_annotated", {}).items():
        _warn(f"image {image_id} is annotated in several tasks {task_ids}; pull takes the latest annotation of them")
    _warn_other_projects(summary)
    return code


def _report_selection(summary: dict[str, Any], empty: str) -> int:
    """Print a command's JSON summary; an empty selection is a warning, not an error (exit 0)."""
    print(json.dumps(summary, indent=2))
    if summary["images"] == 0:
        print(f"maskclip: warning: no image matched the selection; {empty}", file=sys.stderr)
    return 0


def _cmd_review_pull(args: argparse.Namespace) -> int:
    from maskclip_core.interchange.label_studio_pull import pull

    summary = pull(
        _label_studio_target(args), args.dataset, strict=not args.skip_unknown, storage_options=args.storage_options
    )
    print(json.dumps(summary, indent=2))
    if summary["skipped_tasks"]:
        _warn(f"skipped {summary['skipped_tasks']} task(s), e.g. {summary['skipped_reasons'][0]}")
    for image_id, task_ids in summary["images_in_several_tasks"].items():
        _warn(f"image {image_id} is annotated in tasks {task_ids}: the latest annotation of them counts")
    if summary.get("retracted"):
        _warn(f"{len(summary['retracted'])} image(s) lost their annotations in Label Studio: reviews retracted")
    _warn_other_projects(summary)
    return 0


def _warn(message: str) -> None:
    print(f"maskclip: warning: {message}", file=sys.stderr)


def _warn_other_projects(summary: dict[str, Any]) -> None:
    if summary.get("other_projects"):
        _warn(
            f"Label Studio projects {summary['other_projects']} have the same title and dataset as project "
            f"{summary['project']}, which is the one used; delete them, or pass --project ID"
        )


def format_report(report: dict[str, Any]) -> str:
    """The evaluation as a plain-text table (IoU "-" for a class absent from both sides)."""
    per_class = report["per_class_iou"]
    width = max([len("class"), *(len(name) for name in per_class)])
    lines = [f"{'class':<{width}}  IoU", f"{'-' * width}  -----"]
    lines += [f"{name:<{width}}  {'-' if iou is None else f'{iou:.3f}'}" for name, iou in per_class.items()]
    lines.append(
        f"mIoU {_num(report['miou'])}   pixel accuracy {_num(report['pixel_accuracy'])}   "
        f"images {report['images']} of {report['reviewed_images']} reviewed ({len(report['missing'])} missing)"
        + ("; unannotated pixels scored as 'no class'" if report.get("fully_annotated") else "")
    )
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- helpers


def _add_server_options(p: argparse.ArgumentParser, dataset_help: str) -> None:
    """The Label Studio server, its key and project, and the dataset (``review push`` / ``pull``)."""
    p.add_argument("--label-studio", metavar="URL", help=f"the server (default: ${URL_ENV})")
    p.add_argument(
        "--api-key",
        default=None,
        help=f"access token or legacy token from Label Studio's Account & Settings (default: ${API_KEY_ENV})",
    )
    add_dataset_option(p, dataset_help)
    p.add_argument(
        "--project",
        metavar="TITLE|ID",
        help='project title or id (default: "maskclip <last two folders of the dataset URL>")',
    )
    add_storage_options(p, "the dataset (and, for s3:// images, the credentials Label Studio presigns with)")


def _add_selection_options(p: argparse.ArgumentParser) -> None:
    """The image filters of ``export`` and ``review push`` (ExportParameters' selection fields)."""
    g = p.add_argument_group("selection")
    field_option(g, "--config-hash", EXPORT, "config_hash")
    field_option(
        g,
        "--classes",
        EXPORT,
        "classes",
        type=comma_strings,
        extend=True,
        help='names or ids, comma-separated: "cat, 3"',
    )
    field_option(g, "--min-score", EXPORT, "min_score", type=float)
    field_option(g, "--max-score", EXPORT, "max_score", type=float)
    field_option(
        g,
        "--status",
        EXPORT,
        "statuses",
        dest="statuses",
        type=comma_strings,
        extend=True,
        help="image statuses, comma-separated",
    )
    field_option(g, "--round", EXPORT, "rounds", dest="rounds", type=comma_ints, extend=True)
    labeled_by = field_option(
        g, "--labeled-by", EXPORT, "labelers", dest="labelers", type=comma_strings, extend=True, metavar="LABELER"
    )
    # --source names the images everywhere else; as a filter it now reads --labeled-by.
    field_option(
        g,
        "--source",
        EXPORT,
        "labelers",
        dest=labeled_by.dest,
        type=comma_strings,
        extend=True,
        replacement="--labeled-by",
        help=argparse.SUPPRESS,
    )
    field_option(g, "--image-ids", EXPORT, "image_ids", type=comma_ints, extend=True)
    field_option(g, "--lowest", EXPORT, "lowest", type=int, metavar="N")


def _num(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def _json_safe(value: Any) -> Any:
    """NaN (no class scored) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
