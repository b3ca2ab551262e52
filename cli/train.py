"""``maskclip train``: train a MaskCLIP+ student on an output dataset (the train-student flow, run in-process).

``register(subparsers)`` adds the subcommand to the ``maskclip`` parser; heavy imports happen when it runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any

from cli.actions import HelpFormatter, int_or_none, json_object, readable_validation_errors
from cli.fields import field_flag, field_option, field_values, literal
from cli.options import (
    BACKBONES,
    CLIP,
    DATA,
    FILTER,
    GROUND_TRUTH,
    HEADS,
    SCHEDULE,
    STUDENT,
    TEMPLATE_SETS,
    TRAINING_RUN,
    add_dataset_option,
    add_device_option,
    add_filter_options,
    add_source_storage_options,
    add_storage_options,
    add_verbose_option,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``maskclip`` subcommands."""
    p = subparsers.add_parser(
        "train",
        help="train a MaskCLIP+ student on the pseudo-labels of a dataset (the train-student flow)",
        description="Runs the train-student Prefect flow here (a local Prefect server unless PREFECT_API_URL is "
        "set): teacher pseudo-labels for the first tenth of the iterations, then self-training rounds. "
        "Checkpoints go to DATASET/checkpoints/<run>/; running the same command again resumes the run. With "
        "--ground-truth the teacher and every round are scored (DATASET/metrics/) and the table is printed.",
        formatter_class=HelpFormatter,
    )
    add_dataset_option(p, "the Parquet dataset of a labeling run", "--from")
    add_storage_options(p, "the dataset and its checkpoints")
    _add_data_options(p)
    _add_clip_options(p)
    _add_student_options(p)
    _add_schedule_options(p)
    add_filter_options(p, "confidence filter of the self-training rounds (default: the labeling's)", inherit=True)
    _add_ground_truth_options(p)
    _add_run_options(p)
    p.set_defaults(func=_cmd_train)


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    field_option(g, "--config-hash", DATA, "config_hash")
    field_flag(g, "--no-reviewed", DATA, "use_reviewed", help="ignore human-reviewed labels (default: use them)")
    field_flag(g, "--pool-rejected", DATA, "pool_rejected")
    field_option(g, "--image-cache-mb", DATA, "image_cache_mb", type=int)
    add_source_storage_options(g, "the images", "--image-storage-options")


def _add_clip_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("text embeddings (default: the teacher's CLIP, from the labeling record)")
    field_option(g, "--clip-model", CLIP, "model", show_default=False)
    field_option(g, "--clip-pretrained", CLIP, "pretrained", show_default=False)
    field_option(
        g,
        "--clip-seed",
        CLIP,
        "seed",
        type=int,
        help="seed of random CLIP weights (with --clip-model)",
        show_default=False,
    )
    field_option(
        g,
        "--templates",
        CLIP,
        "templates",
        choices=TEMPLATE_SETS,
        help="prompt templates (with --clip-model)",
        show_default=False,
    )


def _add_student_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("student")
    field_option(g, "--backbone", STUDENT, "backbone", choices=BACKBONES)
    field_option(g, "--backbone-weights", STUDENT, "backbone_weights")
    field_option(g, "--output-stride", STUDENT, "output_stride", type=int, choices=literal(STUDENT, "output_stride"))
    field_option(g, "--head", STUDENT, "head", choices=HEADS)
    field_option(g, "--head-channels", STUDENT, "head_channels", type=int)
    field_option(g, "--temperature", STUDENT, "temperature", type=float)


def _add_schedule_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("schedule")
    field_option(g, "--iterations", SCHEDULE, "iterations", type=int)
    field_option(g, "--rounds", SCHEDULE, "rounds", type=int)
    field_option(g, "--pseudo-fraction", SCHEDULE, "pseudo_fraction", type=float)
    field_option(g, "--batch-size", SCHEDULE, "batch_size", type=int)
    field_option(g, "--lr", SCHEDULE, "lr", type=float)
    field_option(g, "--crop-size", SCHEDULE, "crop_size", type=int)
    field_option(g, "--scale-range", SCHEDULE, "scale_range", type=float, nargs=2, metavar=("MIN", "MAX"))
    field_option(g, "--base-short-side", SCHEDULE, "base_short_side", type=int_or_none)
    field_flag(g, "--no-flip", SCHEDULE, "flip", help="no random horizontal flips")
    field_flag(g, "--no-photometric", SCHEDULE, "photometric", help="no photometric distortion")
    field_option(g, "--relabel-short-side", SCHEDULE, "relabel_short_side", type=int_or_none)
    field_option(g, "--eval-short-side", SCHEDULE, "eval_short_side", type=int_or_none)
    field_option(g, "--seed", SCHEDULE, "seed", type=int, help="training seed")


def _add_ground_truth_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ground truth (scores the teacher and every round)")
    field_option(g, "--ground-truth", GROUND_TRUTH, "url", metavar="URL")
    field_option(g, "--gt-class-map", GROUND_TRUTH, "class_map", metavar="URL")
    field_option(g, "--gt-root", GROUND_TRUTH, "root", metavar="URL")
    field_option(g, "--gt-match", GROUND_TRUTH, "match", choices=literal(GROUND_TRUTH, "match"))
    g.add_argument("--gt-alias", action="append", default=[], metavar="GT=CLASS", help="ground-truth name -> class")
    field_option(g, "--gt-storage-options", GROUND_TRUTH, "storage_options", type=json_object, metavar="JSON")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    field_option(g, "--run-name", TRAINING_RUN, "run_name")
    add_device_option(g)
    field_option(g, "--stop-after-round", TRAINING_RUN, "stop_after_round", type=int)
    field_option(g, "--retries", TRAINING_RUN, "retries", type=int)
    g.add_argument("--json", action="store_true", help="print the run's summary as JSON at the end")
    add_verbose_option(g)


def train_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The train-student flow's parameters from ``maskclip train`` arguments."""
    from maskclip_core.labeling.filter import FilterConfig
    from maskclip_core.training.parameters import (
        DataParameters,
        ScheduleParameters,
        StudentParameters,
        TrainingRunParameters,
    )

    data = field_values(args, DATA)
    if args.source_storage_options is not None:
        data["image_storage_options"] = args.source_storage_options
    options = field_values(args, TRAINING_RUN)
    if args.device is not None:
        options["device"] = args.device
    if args.storage_options is not None:
        options["storage_options"] = args.storage_options
    filters = field_values(args, FILTER)
    return {
        "dataset": args.dataset,
        "ground_truth": _ground_truth(args),
        "clip": _clip(args),
        "student": StudentParameters(**field_values(args, STUDENT)),
        "schedule": ScheduleParameters(**field_values(args, SCHEDULE)),
        "filters": FilterConfig(**filters) if filters else None,
        "data": DataParameters(**data),
        "options": TrainingRunParameters(**options),
    }


def _clip(args: argparse.Namespace) -> Any:
    """ClipParameters with --clip-model; None (the labeling record's CLIP) without."""
    from maskclip_core.training.parameters import ClipParameters

    fields = field_values(args, CLIP)
    if fields.get("model"):
        return ClipParameters(**fields)
    if set(fields) - {"model"}:
        raise ValueError("--clip-pretrained, --clip-seed and --templates need --clip-model")
    return None


def _ground_truth(args: argparse.Namespace) -> Any:
    """GroundTruthParameters with --ground-truth; None without."""
    from maskclip_core.evaluation.ground_truth import GroundTruthParameters

    fields = field_values(args, GROUND_TRUTH)
    if not fields.get("url"):
        if fields.get("class_map") or fields.get("root") or args.gt_alias:
            raise ValueError("--gt-class-map, --gt-root and --gt-alias need --ground-truth")
        return None
    aliases = {}
    for item in args.gt_alias:
        gt_name, sep, class_name = item.partition("=")
        if not sep or not gt_name.strip() or not class_name.strip():
            raise ValueError(f"--gt-alias {item!r}: expected GT_NAME=CLASS")
        aliases[gt_name.strip()] = class_name.strip()
    return GroundTruthParameters(**fields, class_aliases=aliases)


def _cmd_train(args: argparse.Namespace) -> int:
    if not args.verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    with readable_validation_errors():
        params = train_parameters(args)

    from rich.console import Console

    from cli.label import run_errors_off_console
    from cli.server import owned_prefect_api
    from flows.train_student import train_student

    with owned_prefect_api(), run_errors_off_console(args.verbose):
        result = train_student(**params)  # offline weights errors name their fix; cli.main prints them
    print_result(result, Console(stderr=True))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return 0


def print_result(result: dict[str, Any], console: Any) -> None:
    """The run and its metrics table (one row per model and round, one column per class IoU)."""
    from rich.table import Table

    status = f"round {result['round']} of {result['rounds']}"
    if result["stopped"]:
        status += " (stopped: run the same command again to continue)"
    elif result["resumed_from_round"] is not None:
        status += f" (resumed after round {result['resumed_from_round']})"
    console.print(f"run [bold]{result['run']}[/bold]: {status}")
    console.print(f"checkpoint: {result['checkpoint']}")
    rows = result["metrics_table"]
    if not rows:
        console.print("no metrics (give --ground-truth to score the teacher and every round)")
        return
    table = Table(title=f"mIoU and per-class IoU ({len(result['classes'])} classes)", show_header=True)
    columns = [c for c in rows[0] if c != "run"]
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        table.add_row(*(_cell(row[c]) for c in columns))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
