"""``maskclip export`` / ``import`` / ``evaluate``: the round trip through labeling tools on the command line.

``register(subparsers)`` adds the three subcommands to the ``maskclip`` parser; heavy imports happen when a
subcommand runs. ``main`` is a ``maskclip`` with only these three (``python -m flows.cli_review``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from flows.cli_args import comma_ints, comma_strings, given, json_object, readable_validation_errors

EXPORT_FORMATS = ("coco", "label-studio", "cvat-coco", "cvat-mask")
IMPORT_FORMATS = ("label-studio", "coco")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export``, ``import`` and ``evaluate`` to the ``maskclip`` subcommands."""
    p = subparsers.add_parser(
        "export",
        help="export pseudo-labels for review (COCO, Label Studio, CVAT)",
        description="Export the labels of an output dataset. coco: a JSON file; label-studio: a folder with "
        "tasks.json and config.xml; cvat-coco / cvat-mask: a zip to import into a CVAT task.",
    )
    p.add_argument("format", choices=EXPORT_FORMATS)
    p.add_argument("--from", dest="dataset", required=True, metavar="OUTPUT", help="output URL of a labeling run")
    p.add_argument("--to", dest="destination", required=True, metavar="URL", help="file (coco, cvat-*) or folder")
    g = p.add_argument_group("selection")
    g.add_argument("--config-hash", help="labeler config to export (needed when the store holds several)")
    g.add_argument("--classes", type=comma_strings, action="extend", help='names or ids, comma-separated: "cat, 3"')
    g.add_argument("--min-score", type=float, help="only annotations scoring at least this")
    g.add_argument("--max-score", type=float, help="only annotations scoring at most this")
    g.add_argument("--status", dest="statuses", type=comma_strings, action="extend", help="labeled (default), rejected")
    g.add_argument("--round", dest="rounds", type=comma_ints, action="extend", help="only these self-training rounds")
    g.add_argument("--source", dest="labelers", type=comma_strings, action="extend", help="only these labelers' labels")
    g.add_argument("--image-ids", type=comma_ints, action="extend", help="only these image ids, comma-separated")
    g.add_argument("--lowest", type=int, metavar="N", help="only the N lowest-scored images (review these first)")
    g = p.add_argument_group("format options")
    g.add_argument("--polygons", action="store_true", help="polygons instead of masks (label-studio, cvat-coco)")
    g.add_argument("--polygon-tolerance", type=float, default=0.0, help="simplify polygons by this many pixels")
    g.add_argument("--document-root", help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (local images)")
    g.add_argument("--model-version", help="Label Studio prediction model_version (default: maskclip)")
    g.add_argument("--include-images", action="store_true", help="put the image files into the zip (cvat-*)")
    g.add_argument("--file-name-root", help="image file names relative to this URL prefix (default: common folder)")
    _add_storage_options(p)
    p.set_defaults(func=_cmd_export)

    p = subparsers.add_parser(
        "import",
        help="import reviewed labels (Label Studio JSON export, COCO file) into an output dataset",
        description="Store human-corrected labels as OUTPUT/reviewed, tied to the dataset's image ids. "
        "A newer import of an image supersedes older ones.",
    )
    p.add_argument("format", choices=IMPORT_FORMATS)
    p.add_argument("file", metavar="FILE", help="Label Studio JSON export or COCO instances JSON (path or URL)")
    p.add_argument("--into", dest="output", required=True, metavar="OUTPUT", help="output URL of the labeling run")
    p.add_argument("--skip-unknown", action="store_true", help="skip unknown images / categories instead of failing")
    _add_storage_options(p)
    p.set_defaults(func=_cmd_import)

    p = subparsers.add_parser(
        "evaluate",
        help="score the pseudo-labels against the reviewed labels (mIoU, per-class IoU, pixel accuracy)",
    )
    p.add_argument("--reviewed", dest="output", required=True, metavar="OUTPUT", help="output URL with reviews")
    p.add_argument("--config-hash", help="labeler config to score (needed when the store holds several)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_storage_options(p)
    p.set_defaults(func=_cmd_evaluate)


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
        args.output,
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

    report = evaluate_reviewed(args.output, config_hash=args.config_hash, storage_options=args.storage_options)
    print(json.dumps(_json_safe(report), indent=2) if args.json else format_report(report))
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
    )
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- helpers


def _add_storage_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage-options",
        type=json_object,
        default=None,
        metavar="JSON",
        help='fsspec options, e.g. \'{"client_kwargs": {"endpoint_url": "http://minio:9000"}}\'',
    )


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
