"""The ``maskclip`` command line. Heavy imports (torch, Prefect) happen inside the subcommands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from flows.cli_args import add_filter_options, filter_fields, given, json_object, readable_validation_errors

DEMO_IMAGES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")  # scikit-image's bundled photos
DEMO_CLASSES = "person; astronaut, cat, cup; coffee cup, rocket, sky, tree, building, table, flag, wall"

RANDOM_WEIGHTS_BANNER = """
##########################################################################
#  RANDOM WEIGHTS (--pretrained none): the labels below are MEANINGLESS.  #
#  This run only checks that the pipeline works end to end.              #
##########################################################################
"""


def _add_labeler_options(p: argparse.ArgumentParser, classes_required: bool = True) -> None:
    g = p.add_argument_group("labeler")
    g.add_argument(
        "--classes", required=classes_required, help='comma-separated classes, synonyms after ";": "cat, grass; lawn"'
    )
    g.add_argument("--background", default=None, help="comma-separated background queries (optional)")
    g.add_argument("--model", default="ViT-B-16", help="open_clip model name (ViT-B-16, ViT-L-14, RN50, ...)")
    g.add_argument(
        "--pretrained", default="openai", help="open_clip tag, a local checkpoint PATH, or 'none' (random weights)"
    )
    g.add_argument("--seed", type=int, default=0, help="seed of random weights")
    g.add_argument("--attention", choices=["maskclip", "clearclip", "sclip"], default="maskclip")
    g.add_argument("--mode", choices=["slide", "whole"], default="slide")
    g.add_argument("--short-side", type=int, default=448)
    g.add_argument("--crop", type=int, default=448)
    g.add_argument("--stride", type=int, default=224)
    g.add_argument("--no-key-smoothing", action="store_true")
    g.add_argument("--no-prompt-denoising", action="store_true")
    g.add_argument("--ks-threshold", type=float, default=1.0)
    g.add_argument("--pd-threshold", type=float, default=0.5)
    g.add_argument("--templates", choices=["maskclip", "single"], default="maskclip")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")


def labeler_config_from_args(args: argparse.Namespace):
    from maskclip_core.teacher.labeler import LabelerConfig
    from maskclip_core.teacher.window_predictor import InferenceConfig

    return LabelerConfig(
        model=args.model,
        pretrained=args.pretrained,
        seed=args.seed,
        classes=args.classes,
        background=args.background,
        templates=args.templates,
        inference=InferenceConfig(
            attention=args.attention,
            mode=args.mode,
            short_side=args.short_side,
            crop=args.crop,
            stride=args.stride,
            key_smoothing=not args.no_key_smoothing,
            key_smoothing_threshold=args.ks_threshold,
            prompt_denoising=not args.no_prompt_denoising,
            prompt_denoising_threshold=args.pd_threshold,
        ),
    )


def _warn_if_random(pretrained: str) -> None:
    from maskclip_core.teacher.clip_loader import is_random

    if is_random(pretrained):
        print(RANDOM_WEIGHTS_BANNER, file=sys.stderr)


def _cmd_segment(args: argparse.Namespace) -> int:
    from maskclip_core.labeling.segment_files import segment_files

    _warn_if_random(args.pretrained)
    summary = segment_files(
        [Path(p) for p in args.images], labeler_config_from_args(args), Path(args.out), device=args.device
    )
    print(json.dumps(summary, indent=2))
    return 0 if all(item.get("status") == "labeled" for item in summary["images"]) else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    import skimage

    data_dir = Path(skimage.data_dir)
    images = [str(data_dir / name) for name in DEMO_IMAGES]
    args.images = images
    args.classes = DEMO_CLASSES
    return _cmd_segment(args)


def _add_label_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--source", required=True, help="images: a folder, s3://bucket/prefix, any fsspec URL")
    g.add_argument("--output", required=True, help="Parquet dataset URL (images/, annotations/, categories/)")
    g.add_argument("--glob", default=None, help="only paths (relative to --source) matching this, e.g. '**/*.jpg'")
    g.add_argument("--extensions", default=None, help="comma-separated extensions (default: common image types)")
    g.add_argument("--force", action="store_true", help="relabel images already labeled under this configuration")
    g.add_argument("--source-storage-options", type=json_object, default=None, help="fsspec options (JSON)")
    g.add_argument("--output-storage-options", type=json_object, default=None, help="fsspec options (JSON)")
    g = p.add_argument_group("labeler choice")
    g.add_argument("--labeler", choices=["maskclip", "student"], default="maskclip")
    g.add_argument("--checkpoint", default=None, help="student weights / checkpoint directory URL (--labeler student)")
    add_filter_options(p)
    g = p.add_argument_group("execution")
    g.add_argument("--batch-size", type=int, default=None, help="images per batch task (default 16)")
    g.add_argument("--concurrency", type=int, default=None, help="batches at once in the thread pool (default 2)")
    g.add_argument("--workers", type=int, default=None, help="use a local Dask cluster of N worker processes")
    g.add_argument("--dask-address", default=None, help="use an existing Dask scheduler (tcp://host:8786)")
    g.add_argument("--max-in-flight", type=int, default=None, help="batches submitted and unfinished at most")
    g.add_argument("--retries", type=int, default=None, help="retries of a failed batch / storage call (default 3)")
    g.add_argument("--retry-delay", type=float, default=None, help="first retry delay in s, doubling (default 2)")
    g.add_argument("--thumbnails", type=int, default=None, help="overlay thumbnails to write (default 6)")
    g.add_argument("--max-pixels", type=int, default=None, help="reject larger images (default 80 Mpx)")
    g.add_argument("--json", action="store_true", help="print the run summary as JSON at the end")
    g.add_argument("--verbose", action="store_true", help="show Prefect's logs (default: warnings only)")


def label_parameters(args: argparse.Namespace) -> dict:
    """The label-dataset flow's parameters from ``maskclip label`` arguments."""
    from flows.label_dataset import RunOptions
    from maskclip_core.labeling.filter import FilterConfig
    from maskclip_core.labeling.registry import LabelerSpec

    if args.labeler == "maskclip":
        if not args.classes:
            raise ValueError("--classes is required with --labeler maskclip")
        spec = LabelerSpec(labeler="maskclip", config=labeler_config_from_args(args), device=args.device)
    else:
        spec = LabelerSpec(labeler="student", checkpoint=args.checkpoint, device=args.device)
    with readable_validation_errors():
        filters = FilterConfig(**filter_fields(args))
    options = given(
        args,
        {
            "glob": "glob",
            "batch_size": "batch_size",
            "concurrency": "concurrency",
            "workers": "workers",
            "dask_address": "dask_address",
            "max_in_flight": "max_in_flight",
            "retries": "retries",
            "retry_delay": "retry_delay_seconds",
            "thumbnails": "thumbnails",
            "max_pixels": "max_pixels",
            "source_storage_options": "source_storage_options",
            "output_storage_options": "output_storage_options",
        },
    )
    if args.extensions is not None:
        options["extensions"] = [e.strip() for e in args.extensions.split(",") if e.strip()]
    with readable_validation_errors():
        run_options = RunOptions(**options)
    return {
        "source": args.source,
        "output": args.output,
        "labeler": spec,
        "filters": filters,
        "options": run_options,
        "force": args.force,
    }


def _cmd_label(args: argparse.Namespace) -> int:
    if not args.verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    params = label_parameters(args)
    if args.labeler == "maskclip":
        _warn_if_random(args.pretrained)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flows.label_dataset import LabelingIncomplete, label_dataset, progress_listener

    console = Console(stderr=True)
    final: dict = {}
    progress = Progress(
        TextColumn("[bold]labeling"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=False,
    )
    bar = progress.add_task("listing...", total=None)

    def on_event(event: str, summary) -> None:
        final["summary"] = summary
        listing = "" if summary.listing_complete else " (listing...)"
        progress.update(
            bar,
            total=summary.submitted_images if summary.listing_complete else None,
            completed=summary.processed_images,
            description=f"seen {summary.listed}, labeled {summary.labeled}, skipped {summary.skipped}, "
            f"rejected {summary.rejected}, failed {summary.failed}{listing}",
        )
        if summary.listing_complete and summary.submitted_images == 0:
            progress.update(bar, total=1, completed=1)

    with progress, progress_listener(on_event):
        state = label_dataset(**params, return_state=True)
    summary = final.get("summary")
    if state.is_completed():
        result = state.result()
    else:
        error = state.result(raise_on_failure=False)
        if not isinstance(error, LabelingIncomplete):
            if isinstance(error, BaseException):
                raise error
            raise RuntimeError(f"the label-dataset flow ended {state.type.value}: {state.message}")
        result = error.summary
        console.print(f"[red]maskclip: {error}[/red]")
    if summary is not None:
        print_summary(summary, console)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0 if state.is_completed() else 1


def print_summary(summary, console) -> None:
    """The run summary as rich tables (the same figures as the flow's table artifact)."""
    from rich.table import Table

    counts = Table(title="images", show_header=True)
    counts.add_column("outcome")
    counts.add_column("images", justify="right")
    for row in summary.table_rows():
        if row["images"] is not None:
            counts.add_row(row["item"], str(row["images"]))
    classes = Table(title="classes (labeled images)", show_header=True)
    classes.add_column("class")
    classes.add_column("pixel share", justify="right")
    classes.add_column("mean confidence", justify="right")
    for c in summary.per_class():
        conf = "" if c["mean_confidence"] is None else f"{c['mean_confidence']:.3f}"
        classes.add_row(c["class"], f"{c['pixel_share']:.2%}", conf)
    console.print(counts)
    console.print(classes)
    for b in summary.failed_batches:
        console.print(f"[red]failed batch {b.index} ({b.images} images): {b.error}[/red]")
    if summary.report_urls:
        console.print(f"report: {summary.report_urls.get('markdown')}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskclip", description="Annotation-free segmentation labels from CLIP")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="label image files and write label / overlay / confidence PNGs")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output directory")
    _add_labeler_options(p)
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser(
        "label",
        help="label every new image under a URL into a Parquet dataset (the label-dataset flow, run in-process)",
        description="Runs the label-dataset Prefect flow here (ephemeral Prefect unless PREFECT_API_URL is set). "
        "Images already labeled under the same configuration are skipped unless --force.",
    )
    _add_label_options(p)
    _add_labeler_options(p, classes_required=False)  # a student brings its own classes
    p.set_defaults(func=_cmd_label)

    from flows.cli_review import register

    register(sub)  # export / import / evaluate
    from flows.cli_train import register as register_train

    register_train(sub)  # train

    p = sub.add_parser("demo", help="label scikit-image's sample photos (default: ViT-B/16 OpenAI weights)")
    p.add_argument("--out", default="demo-out")
    _add_labeler_options(p, classes_required=False)  # the demo brings its own vocabulary
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as exc:  # a clear message, not a traceback, for the errors users can fix
        from maskclip_core.labeling.registry import StudentUnavailableError
        from maskclip_core.student import BackboneWeightsUnavailable
        from maskclip_core.teacher.clip_loader import WeightsUnavailableError

        user_errors = WeightsUnavailableError | BackboneWeightsUnavailable | StudentUnavailableError
        if isinstance(exc, user_errors | ValueError | FileNotFoundError):
            print(f"maskclip: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
