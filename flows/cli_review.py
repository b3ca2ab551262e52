"""``maskclip export`` / ``import`` / ``evaluate``: the round trip through labeling tools on the command line.

``register(subparsers)`` adds the three subcommands to the ``maskclip`` parser (``flows.cli``); heavy imports
happen when a subcommand runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from flows.cli_args import (
    HelpFormatter,
    Store,
    add_aliases,
    add_storage_options,
    comma_ints,
    comma_strings,
    given,
    readable_validation_errors,
    requires,
)

EXPORT_FORMATS = ("coco", "label-studio", "cvat-coco", "cvat-mask")
IMPORT_FORMATS = ("label-studio", "coco")
API_KEY_ENV = "LABEL_STUDIO_API_KEY"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export``, ``import``, ``evaluate`` and ``review`` to the ``maskclip`` subcommands."""
    p = subparsers.add_parser(
        "export",
        help="export pseudo-labels for review (COCO, Label Studio, CVAT)",
        description="Export the labels of a dataset. coco: a JSON file; label-studio: a folder with "
        "tasks.json and config.xml; cvat-coco / cvat-mask: a zip to import into a CVAT task.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("format", choices=EXPORT_FORMATS, help="what to write")
    requires(p, _add_dataset_option(p, "the Parquet dataset to export", "--from"))
    out = p.add_argument(
        "--out", dest="destination", action=Store, default=None, metavar="URL", help="file (coco, cvat-*) or folder"
    )
    add_aliases(p, out, "--to")
    requires(p, out)
    add_storage_options(p, "the dataset, --out and the images")
    _add_selection_options(p)
    g = p.add_argument_group("format options")
    g.add_argument("--polygons", action="store_true", help="polygons instead of masks (label-studio, cvat-coco)")
    g.add_argument("--polygon-tolerance", type=float, default=0.0, help="simplify polygons by this many pixels")
    g.add_argument("--document-root", help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (local images)")
    g.add_argument("--model-version", help="Label Studio prediction model_version (default: maskclip)")
    g.add_argument("--include-images", action="store_true", help="put the image files into the zip (cvat-*)")
    g.add_argument(
        "--file-name-root", help="image file names relative to this URL prefix (default: the images' common folder)"
    )
    p.set_defaults(func=_cmd_export)

    p = subparsers.add_parser(
        "import",
        help="import reviewed labels (Label Studio JSON export, COCO file) into a dataset",
        description="Store human-corrected labels in the dataset's reviewed table, tied to its image ids. "
        "A newer import of an image supersedes older ones.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("format", choices=IMPORT_FORMATS, help="what FILE holds")
    p.add_argument("file", metavar="FILE", help="Label Studio JSON export or COCO instances JSON (path or URL)")
    requires(p, _add_dataset_option(p, "the Parquet dataset the reviews belong to", "--into"))
    p.add_argument("--skip-unknown", action="store_true", help="skip unknown images / categories instead of failing")
    add_storage_options(p, "the dataset and FILE")
    p.set_defaults(func=_cmd_import)

    p = subparsers.add_parser(
        "evaluate",
        help="score the pseudo-labels against the reviewed labels (mIoU, per-class IoU, pixel accuracy)",
        formatter_class=HelpFormatter,
    )
    requires(p, _add_dataset_option(p, "the Parquet dataset with imported reviews", "--reviewed"))
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

    p = subparsers.add_parser(
        "review",
        help="push pseudo-labels to a Label Studio server for review, pull the reviews back",
        description="Review on a live Label Studio server. push: create or update the dataset's project (labeling "
        "config from its categories, image storage, one task per image with the pseudo-labels as prediction); "
        "pushing again adds new images and replaces changed predictions, never duplicates a task. pull: read "
        "the project's annotations into the dataset's reviewed table (then `maskclip evaluate`).",
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
    g.add_argument("--polygons", action="store_true", help="polygons instead of brush masks")
    g.add_argument("--polygon-tolerance", type=float, default=0.0, help="simplify polygons by this many pixels")
    g.add_argument(
        "--document-root",
        help="the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, for local images "
        "(default: that variable in this environment)",
    )
    g.add_argument("--model-version", default="maskclip", help="model_version of the predictions")
    push.set_defaults(func=_cmd_review_push)

    pull = actions.add_parser(
        "pull",
        help="read the project's annotations into the dataset's reviewed table",
        description="The chosen annotation of each task is its ground-truth one, else the latest; "
        "pulling unchanged annotations again changes nothing.",
        formatter_class=HelpFormatter,
    )
    _add_server_options(pull, "the Parquet dataset the reviews belong to")
    pull.add_argument("--skip-unknown", action="store_true", help="skip tasks of images the dataset does not hold")
    pull.set_defaults(func=_cmd_review_pull)


def _cmd_export(args: argparse.Namespace) -> int:
    from maskclip_core.interchange.export import ExportParameters, export_dataset

    # Every option is named after its ExportParameters field; unset ones keep the model's defaults.
    fields = given(args, {name: name for name in ExportParameters.model_fields})
    with readable_validation_errors():
        params = ExportParameters(**fields)
    summary = export_dataset(params, args.storage_options)
    print(json.dumps(summary, indent=2))
    if summary["images"] == 0:
        print("maskclip: warning: no image matched the selection; the export is empty", file=sys.stderr)
    return 0


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
    from maskclip_core.interchange.label_studio_sync import LabelStudioTarget

    api_key = args.api_key or os.environ.get(API_KEY_ENV, "")
    return LabelStudioTarget(url=args.label_studio, api_key=api_key, project=args.project)


def _cmd_review_push(args: argparse.Namespace) -> int:
    from maskclip_core.interchange.label_studio_sync import push

    selection = {
        name: getattr(args, name)
        for name in ("config_hash", "classes", "min_score", "max_score", "statuses", "rounds", "labelers")
        if getattr(args, name) is not None
    }
    selection.update({k: getattr(args, k) for k in ("image_ids", "lowest") if getattr(args, k) is not None})
    summary = push(
        _label_studio_target(args),
        args.dataset,
        selection=selection,
        mode="polygon" if args.polygons else "brush",
        document_root=args.document_root,
        model_version=args.model_version,
        polygon_tolerance=args.polygon_tolerance,
        storage_options=args.storage_options,
    )
    print(json.dumps(summary, indent=2))
    if summary["images"] == 0:
        print("maskclip: warning: no image matched the selection; nothing was pushed", file=sys.stderr)
    return 0


def _cmd_review_pull(args: argparse.Namespace) -> int:
    from maskclip_core.interchange.label_studio_sync import pull

    summary = pull(
        _label_studio_target(args), args.dataset, strict=not args.skip_unknown, storage_options=args.storage_options
    )
    print(json.dumps(summary, indent=2))
    return 0


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
    requires(p, p.add_argument("--label-studio", action=Store, default=None, metavar="URL", help="the server"))
    p.add_argument(
        "--api-key",
        default=None,
        help=f"access token or legacy token from Label Studio's Account & Settings (default: ${API_KEY_ENV})",
    )
    requires(p, p.add_argument("--dataset", action=Store, default=None, metavar="URL", help=dataset_help))
    p.add_argument(
        "--project",
        metavar="TITLE|ID",
        help='project title or id (default: "maskclip <last two folders of the dataset URL>")',
    )
    add_storage_options(p, "the dataset (and, for s3:// images, the credentials Label Studio presigns with)")


def _add_selection_options(p: argparse.ArgumentParser) -> None:
    """The image filters of ``export`` and ``review push`` (ExportParameters' selection fields)."""
    g = p.add_argument_group("selection")
    g.add_argument("--config-hash", help="labeler config to export (needed when the dataset holds several)")
    g.add_argument("--classes", type=comma_strings, action="extend", help='names or ids, comma-separated: "cat, 3"')
    g.add_argument("--min-score", type=float, help="only annotations scoring at least this")
    g.add_argument("--max-score", type=float, help="only annotations scoring at most this")
    g.add_argument(
        "--status",
        dest="statuses",
        type=comma_strings,
        action="extend",
        help="image statuses, comma-separated: labeled, rejected (default: labeled)",
    )
    g.add_argument("--round", dest="rounds", type=comma_ints, action="extend", help="only these self-training rounds")
    labeled_by = g.add_argument(
        "--labeled-by",
        dest="labelers",
        type=comma_strings,
        action="extend",
        metavar="LABELER",
        help="only labels from these labelers (maskclip, student...), comma-separated",
    )
    # --source names the images everywhere else; as a filter it now reads --labeled-by.
    g.add_argument(
        "--source",
        dest=labeled_by.dest,
        type=comma_strings,
        action=DeprecatedExtend,
        replacement="--labeled-by",
        help=argparse.SUPPRESS,
    )
    g.add_argument("--image-ids", type=comma_ints, action="extend", help="only these image ids, comma-separated")
    g.add_argument("--lowest", type=int, metavar="N", help="only the N lowest-scored images (review these first)")


def _add_dataset_option(p: argparse.ArgumentParser, help_text: str, old: str) -> argparse.Action:
    dataset = p.add_argument("--dataset", action=Store, default=None, metavar="URL", help=help_text)
    add_aliases(p, dataset, old)
    return dataset


class DeprecatedExtend(argparse.Action):
    """An old spelling of an ``extend`` option: hidden, one warning line, then the values added."""

    def __init__(self, option_strings, dest, replacement: str = "", **kwargs) -> None:  # noqa: ANN001
        super().__init__(option_strings, dest, **kwargs)
        self.replacement = replacement

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001 - argparse's API
        print(f"maskclip: warning: {option_string} is deprecated; use {self.replacement}", file=sys.stderr)
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), *values])


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
