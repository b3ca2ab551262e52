"""``maskclip train``: train a MaskCLIP+ student on an output dataset (the train-student flow, run in-process).

``register(subparsers)`` adds the subcommand to the ``maskclip`` parser (``flows.cli``); heavy imports happen
when it runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any

from flows import cli_choices
from flows.cli_args import (
    HelpFormatter,
    Store,
    add_aliases,
    add_filter_options,
    add_storage_options,
    filter_fields,
    given,
    json_object,
    readable_validation_errors,
    requires,
)

BACKBONES = cli_choices.BACKBONES  # StudentParameters.backbone derives from the same registry


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
    dataset = p.add_argument(
        "--dataset", action=Store, default=None, metavar="URL", help="the Parquet dataset of a labeling run"
    )
    add_aliases(p, dataset, "--from")
    requires(p, dataset)
    add_storage_options(p, "the dataset and its checkpoints")

    g = p.add_argument_group("data")
    g.add_argument("--config-hash", help="teacher labeling to train on (needed when the dataset holds several)")
    g.add_argument("--no-reviewed", action="store_true", help="ignore human-reviewed labels (default: use them)")
    g.add_argument("--pool-rejected", action="store_true", help="self-training also relabels rejected images")
    g.add_argument("--image-cache-mb", type=int, default=512, help="decoded images kept in memory (0: re-read)")
    source_options = g.add_argument(
        "--source-storage-options",
        type=json_object,
        default=None,
        metavar="JSON",
        help="fsspec options for the images (default: the AWS environment / profile)",
    )
    add_aliases(g, source_options, "--image-storage-options")

    g = p.add_argument_group("text embeddings (default: the teacher's CLIP, from the labeling record)")
    g.add_argument("--clip-model", help="open_clip model name, e.g. ViT-B-16")
    g.add_argument("--clip-pretrained", help="open_clip tag, a local checkpoint path, or 'none' (with --clip-model)")
    g.add_argument("--clip-seed", type=int, default=None, help="seed of random CLIP weights (with --clip-model)")
    g.add_argument(
        "--templates", choices=cli_choices.TEMPLATE_SETS, default=None, help="prompt templates (with --clip-model)"
    )

    g = p.add_argument_group("student")
    g.add_argument("--backbone", choices=BACKBONES, default="resnet101", help="MaskCLIP+ uses resnet101")
    g.add_argument("--backbone-weights", default="imagenet", help="imagenet, none, or a state dict path / URL")
    g.add_argument("--output-stride", type=int, choices=[8, 16], default=8, help="feature stride of the backbone")
    g.add_argument("--head", choices=cli_choices.HEADS, default="deeplabv3", help="DeepLab head (ASPP)")
    g.add_argument("--head-channels", type=int, default=256, help="channels of the head")
    g.add_argument("--temperature", type=float, default=50.0, help="logit scale of the cosine")

    g = p.add_argument_group("schedule")
    g.add_argument("--iterations", type=int, default=8000, help="all rounds together")
    g.add_argument("--rounds", type=int, default=2, help="self-training rounds after the pseudo-labels")
    g.add_argument("--pseudo-fraction", type=float, default=0.1, help="share of iterations on pseudo-labels")
    g.add_argument("--batch-size", type=int, default=4, help="images per iteration")
    g.add_argument("--lr", type=float, default=0.01, help="initial learning rate (SGD, poly decay)")
    g.add_argument("--crop-size", type=int, default=512, help="training crop in pixels")
    g.add_argument(
        "--scale-range", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN", "MAX"), help="random rescaling"
    )
    g.add_argument(
        "--base-short-side", type=_int_or_none, default=512, help="scales relative to this short side; none: as stored"
    )
    g.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    g.add_argument("--no-photometric", action="store_true", help="no photometric distortion")
    g.add_argument(
        "--relabel-short-side", type=_int_or_none, default=512, help="short side when relabeling the pool; none"
    )
    g.add_argument("--eval-short-side", type=_int_or_none, default=512, help="short side when evaluating; none")
    g.add_argument("--seed", type=int, default=0, help="training seed")

    add_filter_options(p, "confidence filter of the self-training rounds (default: the labeling's)", inherit=True)

    g = p.add_argument_group("ground truth (scores the teacher and every round)")
    g.add_argument("--ground-truth", metavar="URL", help="COCO instances JSON, or a folder of PNG masks")
    g.add_argument("--gt-class-map", metavar="URL", help="masks: JSON / TSV from mask values to class names")
    g.add_argument("--gt-root", metavar="URL", help="image URIs relative to this are the COCO file_name / mask path")
    g.add_argument("--gt-match", choices=["auto", "image_id", "file_name"], default="auto", help="COCO image matching")
    g.add_argument("--gt-alias", action="append", default=[], metavar="GT=CLASS", help="ground-truth name -> class")
    g.add_argument("--gt-storage-options", type=json_object, default=None, metavar="JSON", help="fsspec options")

    g = p.add_argument_group("run")
    g.add_argument("--run-name", help="checkpoint folder name (default: derived from the settings and the data)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    g.add_argument("--stop-after-round", type=int, default=None, help="stop once this round is checkpointed")
    g.add_argument("--retries", type=int, default=0, help="retries of a failed training (each resumes)")
    g.add_argument("--json", action="store_true", help="print the run's summary as JSON at the end")
    g.add_argument("--verbose", action="store_true", help="show Prefect's logs (default: warnings only)")
    p.set_defaults(func=_cmd_train)


def train_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The train-student flow's parameters from ``maskclip train`` arguments."""
    from maskclip_core.evaluation.ground_truth import GroundTruthParameters
    from maskclip_core.labeling.filter import FilterConfig
    from maskclip_core.training.parameters import (
        ClipParameters,
        DataParameters,
        ScheduleParameters,
        StudentParameters,
        TrainingRunParameters,
    )

    clip = None
    if args.clip_model:
        clip = ClipParameters(
            **given(args, {"clip_model": "model", "clip_pretrained": "pretrained", "clip_seed": "seed"}),
            **given(args, {"templates": "templates"}),
        )
    elif args.clip_pretrained is not None or args.clip_seed is not None or args.templates is not None:
        raise ValueError("--clip-pretrained, --clip-seed and --templates need --clip-model")
    student = StudentParameters(
        **given(
            args,
            {
                "backbone": "backbone",
                "backbone_weights": "backbone_weights",
                "output_stride": "output_stride",
                "head": "head",
                "head_channels": "head_channels",
                "temperature": "temperature",
            },
        )
    )
    schedule = given(
        args,
        {
            "iterations": "iterations",
            "rounds": "rounds",
            "pseudo_fraction": "pseudo_fraction",
            "batch_size": "batch_size",
            "lr": "lr",
            "crop_size": "crop_size",
            "seed": "seed",
        },
    )
    if args.scale_range is not None:
        schedule["scale_range"] = tuple(args.scale_range)
    for name in ("base_short_side", "relabel_short_side", "eval_short_side"):
        value = getattr(args, name)
        if value is not None:
            schedule[name] = None if value == "none" else value
    if args.no_flip:
        schedule["flip"] = False
    if args.no_photometric:
        schedule["photometric"] = False
    filter_overrides = filter_fields(args)
    data = given(args, {"config_hash": "config_hash", "image_cache_mb": "image_cache_mb"})
    data.update(use_reviewed=not args.no_reviewed, pool_rejected=args.pool_rejected)
    if args.source_storage_options is not None:
        data["image_storage_options"] = args.source_storage_options
    ground_truth = None
    if args.ground_truth:
        aliases = {}
        for item in args.gt_alias:
            gt_name, sep, class_name = item.partition("=")
            if not sep or not gt_name.strip() or not class_name.strip():
                raise ValueError(f"--gt-alias {item!r}: expected GT_NAME=CLASS")
            aliases[gt_name.strip()] = class_name.strip()
        ground_truth = GroundTruthParameters(
            url=args.ground_truth,
            class_map=args.gt_class_map,
            root=args.gt_root,
            match=args.gt_match,
            class_aliases=aliases,
            storage_options=args.gt_storage_options or {},
        )
    elif args.gt_class_map or args.gt_root or args.gt_alias:
        raise ValueError("--gt-class-map, --gt-root and --gt-alias need --ground-truth")
    options = given(
        args, {"run_name": "run_name", "device": "device", "stop_after_round": "stop_after_round", "retries": "retries"}
    )
    if args.storage_options is not None:
        options["storage_options"] = args.storage_options
    return {
        "dataset": args.dataset,
        "ground_truth": ground_truth,
        "clip": clip,
        "student": student,
        "schedule": ScheduleParameters(**schedule),
        "filters": FilterConfig(**filter_overrides) if filter_overrides else None,
        "data": DataParameters(**data),
        "options": TrainingRunParameters(**options),
    }


def _cmd_train(args: argparse.Namespace) -> int:
    if not args.verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    with readable_validation_errors():
        params = train_parameters(args)

    from rich.console import Console

    from flows.cli_server import owned_prefect_api
    from flows.train_student import train_student

    with owned_prefect_api():
        result = train_student(**params)  # offline weights errors name their fix; flows.cli.main prints them
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


# -------------------------------------------------------------------------------------------- helpers


def _int_or_none(text: str) -> int | str:
    if text.strip().lower() == "none":
        return "none"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from None


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
