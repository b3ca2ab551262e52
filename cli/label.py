"""``maskclip segment`` / ``label`` / ``demo``: label image files, or a whole source into a Parquet dataset."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cli.actions import HelpFormatter, comma_strings, given, readable_validation_errors, requires
from cli.fields import field_flag, field_flags, field_option, field_values
from cli.options import (
    FILTER,
    INFERENCE,
    LABELER,
    LABELER_CONFIG,
    LABELER_KINDS,
    LABELING_RUN,
    TEACHER_MODELS,
    add_dataset_option,
    add_device_option,
    add_filter_options,
    add_source_storage_options,
    add_storage_options,
    add_teacher_options,
    add_verbose_option,
    warn_if_random,
)

DEMO_IMAGES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")  # scikit-image's bundled photos
DEMO_CLASSES = "person; astronaut, cat, cup; coffee cup, rocket, sky, tree, building, table, flag, wall"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``segment``, ``label`` and ``demo`` to the ``maskclip`` subcommands."""
    p = subparsers.add_parser(
        "segment",
        help="label image files and write label / overlay / confidence PNGs",
        formatter_class=HelpFormatter,
    )
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs and segment.json")
    requires(p, add_teacher_options(p))
    add_device_option(p)
    p.set_defaults(func=_cmd_segment)

    p = subparsers.add_parser(
        "label",
        help="label every new image under a URL into a Parquet dataset (the label-dataset flow, run in-process)",
        description="Runs the label-dataset Prefect flow here (a local Prefect server unless PREFECT_API_URL is "
        "set). Images already labeled under the same configuration are skipped unless --force.",
        formatter_class=HelpFormatter,
    )
    _add_label_options(p)
    add_teacher_options(p)  # a student brings its own classes: --classes is checked in labeler_spec
    add_device_option(p)
    p.set_defaults(func=_cmd_label)

    p = subparsers.add_parser(
        "demo",
        help="label scikit-image's sample photos (default: ViT-B/16 OpenAI weights)",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--out", default="demo-out", metavar="DIR", help="folder for the PNGs and segment.json")
    add_teacher_options(p, classes_default=DEMO_CLASSES)
    add_device_option(p)
    p.set_defaults(func=_cmd_demo)


def _add_label_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--source", required=True, metavar="URL", help="images: a folder, s3://bucket/prefix, any fsspec URL"
    )
    add_dataset_option(p, "the Parquet dataset to write (created if new)", "--output", group=g)
    field_option(g, "--glob", LABELING_RUN, "glob")
    field_option(g, "--extensions", LABELING_RUN, "extensions", type=comma_strings, help="comma-separated extensions")
    g.add_argument("--force", action="store_true", help="relabel images already labeled under this configuration")
    add_source_storage_options(g, "--source")
    add_storage_options(g, "the dataset", "--output-storage-options")
    g = p.add_argument_group("labeler choice")
    field_option(
        g,
        "--labeler",
        LABELER,
        "labeler",
        choices=LABELER_KINDS,
        help="maskclip: the teacher (its options below); student: a MaskCLIP+ checkpoint",
    )
    field_option(g, "--checkpoint", LABELER, "checkpoint")
    add_filter_options(p)
    g = p.add_argument_group("execution")
    field_option(g, "--batch-size", LABELING_RUN, "batch_size", type=int)
    field_option(g, "--concurrency", LABELING_RUN, "concurrency", type=int)
    field_option(g, "--workers", LABELING_RUN, "workers", type=int)
    field_option(g, "--dask-address", LABELING_RUN, "dask_address")
    field_option(g, "--max-in-flight", LABELING_RUN, "max_in_flight", type=int)
    field_option(g, "--retries", LABELING_RUN, "retries", type=int)
    field_option(g, "--retry-delay", LABELING_RUN, "retry_delay_seconds", type=float)
    field_option(g, "--thumbnails", LABELING_RUN, "thumbnails", type=int)
    field_option(g, "--max-pixels", LABELING_RUN, "max_pixels", type=int)
    field_option(g, "--memory-budget-mb", LABELING_RUN, "memory_budget_mb", type=int)
    field_option(g, "--lease-wait", LABELING_RUN, "lease_wait_s", type=float)
    field_flag(g, "--force-lease", LABELING_RUN, "force_lease")
    field_option(g, "--max-gone-fraction", LABELING_RUN, "max_gone_fraction", type=float)
    field_option(g, "--max-failed-fraction", LABELING_RUN, "max_failed_fraction", type=float)
    g.add_argument("--json", action="store_true", help="print the run summary as JSON at the end")
    add_verbose_option(g)


def labeler_config_from_args(args: argparse.Namespace) -> Any:
    """The LabelerConfig of the teacher options typed (``--classes`` may be a command's own default)."""
    from maskclip_core.teacher.labeler import LabelerConfig
    from maskclip_core.teacher.window_predictor import InferenceConfig

    with readable_validation_errors():
        inference = InferenceConfig(**field_values(args, INFERENCE))
        return LabelerConfig(**{**field_values(args, LABELER_CONFIG), "classes": args.classes, "inference": inference})


def labeler_spec(args: argparse.Namespace) -> Any:
    """The LabelerParameters of ``maskclip label``; options of the other labeler are refused, not ignored."""
    from maskclip_core.labeling.registry import LabelerParameters

    fields = {**field_values(args, LABELER), "device": args.device}
    if fields.get("labeler", LABELER.default("labeler")) == "student":
        teacher_flags = field_flags(args, *TEACHER_MODELS)
        if teacher_flags:
            raise ValueError(
                f"{', '.join(teacher_flags)}: MaskCLIP teacher options, but --labeler student labels with its "
                "checkpoint's own classes and settings; drop them (or use --labeler maskclip)"
            )
        if not args.checkpoint:
            raise ValueError("--labeler student needs --checkpoint (a weights file or checkpoint folder URL)")
        return LabelerParameters(**fields)
    if args.checkpoint:
        raise ValueError("--checkpoint is the student's; give --labeler student with it")
    if not args.classes:
        raise ValueError("--classes is required with --labeler maskclip")
    return LabelerParameters(**fields, config=labeler_config_from_args(args))


def label_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The label-dataset flow's parameters from ``maskclip label`` arguments."""
    from maskclip_core.labeling.filter import FilterConfig
    from tasks.labeling_parameters import LabelingRunParameters

    with readable_validation_errors():
        spec = labeler_spec(args)
        filters = FilterConfig(**field_values(args, FILTER))
    options = field_values(args, LABELING_RUN)
    options.update(
        given(args, {"source_storage_options": "source_storage_options", "storage_options": "dataset_storage_options"})
    )
    with readable_validation_errors():
        run_options = LabelingRunParameters(**options)
    return {
        "source": args.source,
        "dataset": args.dataset,
        "labeler": spec,
        "filters": filters,
        "options": run_options,
        "force": args.force,
    }


def _cmd_segment(args: argparse.Namespace) -> int:
    from maskclip_core.labeling.segment_files import segment_files

    config = labeler_config_from_args(args)
    warn_if_random(config.pretrained)
    summary = segment_files([Path(p) for p in args.images], config, Path(args.out), device=args.device)
    print(json.dumps(summary, indent=2))
    return 0 if all(item.get("status") == "labeled" for item in summary["images"]) else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    import skimage

    data_dir = Path(skimage.data_dir)
    args.images = [str(data_dir / name) for name in DEMO_IMAGES]
    return _cmd_segment(args)  # with the user's --classes when given


def _cmd_label(args: argparse.Namespace) -> int:
    if not args.verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    params = label_parameters(args)
    from maskclip_core.storage.fs import require_source

    require_source(args.source, params["options"].source_storage_options)  # before a Prefect server starts
    if params["labeler"].config is not None:
        warn_if_random(params["labeler"].config.pretrained)

    from rich.console import Console

    from cli.server import owned_prefect_api
    from flows.label_dataset import LabelingIncomplete, label_dataset, progress_listener

    console = Console(stderr=True)
    progress, on_event, final = _progress_bar(console)
    with owned_prefect_api(), progress, progress_listener(on_event), run_errors_off_console(args.verbose):
        state = label_dataset(**params, return_state=True)
    if state.is_completed():
        result = state.result()
    else:
        error = state.result(raise_on_failure=False)
        if not isinstance(error, LabelingIncomplete):
            if final.get("summary") is not None:  # what the run did before it failed; the error follows
                print_summary(final["summary"], console)
            if isinstance(error, BaseException):
                raise error
            raise RuntimeError(f"the label-dataset flow ended {state.type.value}: {state.message}")
        result = error.summary
        console.print(f"[red]maskclip: {error}[/red]")
    if final.get("summary") is not None:
        print_summary(final["summary"], console)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0 if state.is_completed() else 1


class _NoRunErrors(logging.Filter):
    """Drops Prefect's error records (the engine's traceback of the exception) and the tracebacks of its warnings:
    the command ends with that exception as one line, and the Prefect API (UI), whose handler ran first, keeps
    the records whole."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("prefect"):
            return True
        if record.levelno >= logging.ERROR:
            return False
        record.exc_info, record.exc_text = None, None  # the warning's line stays
        return True


@contextlib.contextmanager
def run_errors_off_console(verbose: bool) -> Iterator[None]:
    """Without ``--verbose``, the console handlers (on the root logger) skip Prefect's error records."""
    handlers = [] if verbose else list(logging.getLogger().handlers)
    quiet = _NoRunErrors()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def _progress_bar(console: Any) -> tuple[Any, Any, dict[str, Any]]:
    """The labeling progress bar, the flow's event listener that moves it, and where the last summary lands."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    final: dict[str, Any] = {}
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

    def on_event(event: str, summary: Any) -> None:
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

    return progress, on_event, final


def print_summary(summary: Any, console: Any) -> None:
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
