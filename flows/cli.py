"""The ``maskclip`` command line. Heavy imports (torch, Prefect) happen inside the subcommands."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from flows import cli_choices
from flows.cli_args import (
    Flag,
    HelpFormatter,
    Store,
    add_aliases,
    add_filter_options,
    add_storage_options,
    check_required,
    filter_fields,
    given,
    given_options,
    json_object,
    readable_validation_errors,
    requires,
)

DISTRIBUTION = "maskclip-labeler"

DEMO_IMAGES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")  # scikit-image's bundled photos
DEMO_CLASSES = "person; astronaut, cat, cup; coffee cup, rocket, sky, tree, building, table, flag, wall"

RANDOM_WEIGHTS_BANNER = """
##########################################################################
#  RANDOM WEIGHTS (--pretrained none): the labels below are MEANINGLESS.  #
#  This run only checks that the pipeline works end to end.              #
##########################################################################
"""


def _add_labeler_options(p: argparse.ArgumentParser, classes_default: str | None = None) -> argparse.Action:
    """The MaskCLIP teacher's options (defaults: LabelerConfig's and InferenceConfig's, kept equal by a test);
    returns ``--classes``."""
    g = p.add_argument_group("MaskCLIP teacher")
    classes = g.add_argument(
        "--classes",
        action=Store,
        default=classes_default,
        help='comma-separated classes, synonyms after ";": "cat, grass; lawn"',
    )
    g.add_argument("--background", action=Store, default=None, help="comma-separated background queries (optional)")
    g.add_argument("--model", action=Store, default="ViT-B-16", help="open_clip model name (ViT-B-16, ViT-L-14, RN50)")
    g.add_argument(
        "--pretrained",
        action=Store,
        default="openai",
        help="open_clip tag, a local checkpoint PATH, or 'none' (random weights)",
    )
    g.add_argument("--seed", action=Store, type=int, default=0, help="seed of random weights (--pretrained none)")
    g.add_argument(
        "--attention", action=Store, choices=cli_choices.ATTENTION_MODES, default="maskclip", help="last-block variant"
    )
    g.add_argument(
        "--proxy",
        action=Store,
        default=None,
        help="ProxyCLIP: proxy encoder whose attention replaces CLIP's last block: dino_vitb8, dinov2_vitb14_reg, "
        "or a timm name with its tag (vit_base_patch8_224.dino)",
    )
    g.add_argument(
        "--proxy-weights", action=Store, default="pretrained", help="'pretrained' (timm hub), a local FILE, or 'none'"
    )
    g.add_argument("--pamr", action=Flag, help="refine each window's probabilities along colour edges (PAMR)")
    g.add_argument("--pamr-iterations", action=Store, type=int, default=10, help="PAMR iterations")
    g.add_argument(
        "--pamr-dilations", action=Store, type=int, nargs="+", default=[8, 16], metavar="PX", help="PAMR dilations"
    )
    g.add_argument("--mode", action=Store, choices=["slide", "whole"], default="slide", help="sliding windows or whole")
    g.add_argument("--short-side", action=Store, type=int, default=448, help="resize the short side to this")
    g.add_argument("--crop", action=Store, type=int, default=448, help="sliding-window size in pixels")
    g.add_argument("--stride", action=Store, type=int, default=224, help="sliding-window step in pixels")
    g.add_argument("--no-key-smoothing", action=Flag, help="skip key smoothing")
    g.add_argument("--no-prompt-denoising", action=Flag, help="skip prompt denoising")
    g.add_argument(
        "--ks-threshold", action=Store, type=float, default=1.0, help="key smoothing: patches whose max prob is below"
    )
    g.add_argument(
        "--pd-threshold",
        action=Store,
        type=float,
        default=0.5,
        help="prompt denoising: drop classes whose max prob is below",
    )
    g.add_argument(
        "--templates", action=Store, choices=cli_choices.TEMPLATE_SETS, default="maskclip", help="prompt template set"
    )
    g.add_argument(
        "--precision",
        action=Store,
        choices=cli_choices.PRECISIONS,
        default="fp32",
        help="encoder arithmetic: fp32 (exact; fp16 autocast on CUDA), bf16 autocast (CPUs with AVX512-BF16/AMX, "
        "CUDA), fp16 autocast, int8 dynamic quantisation of the ViT's MLPs (CPU). Faster, but labels differ "
        "slightly (README: CPU speed paths); a value other than fp32 is part of the configuration hash",
    )
    g.add_argument(
        "--compile",
        action=Flag,
        help="torch.compile the encoder: faster after a slow first batch per window shape (not hashed)",
    )
    return classes


def _add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")


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
        proxy=args.proxy,
        proxy_weights=args.proxy_weights,
        inference=InferenceConfig(
            attention=args.attention,
            pamr=args.pamr,
            pamr_iterations=args.pamr_iterations,
            pamr_dilations=tuple(args.pamr_dilations),
            mode=args.mode,
            short_side=args.short_side,
            crop=args.crop,
            stride=args.stride,
            key_smoothing=not args.no_key_smoothing,
            key_smoothing_threshold=args.ks_threshold,
            prompt_denoising=not args.no_prompt_denoising,
            prompt_denoising_threshold=args.pd_threshold,
            precision=args.precision,
            compile=args.compile,
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
    args.images = [str(data_dir / name) for name in DEMO_IMAGES]
    return _cmd_segment(args)  # with the user's --classes when given


def _add_label_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--source", required=True, metavar="URL", help="images: a folder, s3://bucket/prefix, any fsspec URL"
    )
    dataset = g.add_argument(
        "--dataset", action=Store, default=None, metavar="URL", help="the Parquet dataset to write (created if new)"
    )
    add_aliases(g, dataset, "--output")
    g.add_argument("--glob", default=None, help="only paths (relative to --source) matching this, e.g. '**/*.jpg'")
    g.add_argument("--extensions", default=None, help="comma-separated extensions (default: the common image types)")
    g.add_argument("--force", action="store_true", help="relabel images already labeled under this configuration")
    g.add_argument(
        "--source-storage-options",
        type=json_object,
        default=None,
        metavar="JSON",
        help="fsspec options for --source (default: the AWS environment / profile)",
    )
    options = add_storage_options(g)
    add_aliases(g, options, "--output-storage-options")
    requires(p, dataset)
    g = p.add_argument_group("labeler choice")
    g.add_argument(
        "--labeler",
        choices=["maskclip", "student"],
        default="maskclip",
        help="maskclip: the teacher (its options below); student: a MaskCLIP+ checkpoint",
    )
    g.add_argument(
        "--checkpoint", action=Store, default=None, help="student weights file or checkpoint folder URL (student)"
    )
    add_filter_options(p)
    g = p.add_argument_group("execution")
    g.add_argument("--batch-size", type=int, default=16, help="images per batch task")
    g.add_argument("--concurrency", type=int, default=2, help="batches at once in the thread pool")
    g.add_argument("--workers", type=int, default=None, help="run batches on a local Dask cluster of N processes")
    g.add_argument("--dask-address", default=None, help="run batches on an existing Dask scheduler (tcp://host:8786)")
    g.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="batches submitted and unfinished (default: twice the parallelism)",
    )
    g.add_argument("--retries", type=int, default=3, help="retries of a failed batch / storage call")
    g.add_argument("--retry-delay", type=float, default=2.0, help="first retry delay in seconds, doubling")
    g.add_argument("--thumbnails", type=int, default=6, help="overlay thumbnails to write")
    g.add_argument("--max-pixels", type=int, default=80_000_000, help="reject images with more pixels (bombs)")
    g.add_argument(
        "--memory-budget-mb",
        type=int,
        default=4096,
        help="decoded images a worker process holds at once; larger ones wait, any that can never fit fails",
    )
    g.add_argument(
        "--lease-wait", type=float, default=0.0, help="seconds to wait for another run's lease on the dataset"
    )
    g.add_argument("--force-lease", action="store_true", help="take the dataset over even from a live run")
    g.add_argument("--json", action="store_true", help="print the run summary as JSON at the end")
    g.add_argument("--verbose", action="store_true", help="show Prefect's logs (default: warnings only)")


TEACHER_ONLY = (
    "classes",
    "background",
    "model",
    "pretrained",
    "seed",
    "attention",
    "proxy",
    "proxy_weights",
    "pamr",
    "pamr_iterations",
    "pamr_dilations",
    "mode",
    "short_side",
    "crop",
    "stride",
    "no_key_smoothing",
    "no_prompt_denoising",
    "ks_threshold",
    "pd_threshold",
    "templates",
    "precision",
    "compile",
)


def labeler_spec(args: argparse.Namespace):
    """The LabelerParameters of ``maskclip label``; options of the other labeler are refused, not ignored."""
    from maskclip_core.labeling.registry import LabelerParameters

    typed = given_options(args)
    if args.labeler == "student":
        teacher_flags = [typed[dest] for dest in TEACHER_ONLY if dest in typed]
        if teacher_flags:
            raise ValueError(
                f"{', '.join(teacher_flags)}: MaskCLIP teacher options, but --labeler student labels with its "
                "checkpoint's own classes and settings; drop them (or use --labeler maskclip)"
            )
        if not args.checkpoint:
            raise ValueError("--labeler student needs --checkpoint (a weights file or checkpoint folder URL)")
        return LabelerParameters(labeler="student", checkpoint=args.checkpoint, device=args.device)
    if args.checkpoint:
        raise ValueError("--checkpoint is the student's; give --labeler student with it")
    if not args.classes:
        raise ValueError("--classes is required with --labeler maskclip")
    return LabelerParameters(labeler="maskclip", config=labeler_config_from_args(args), device=args.device)


def label_parameters(args: argparse.Namespace) -> dict:
    """The label-dataset flow's parameters from ``maskclip label`` arguments."""
    from flows.label_dataset import LabelingRunParameters
    from maskclip_core.labeling.filter import FilterConfig

    with readable_validation_errors():
        spec = labeler_spec(args)
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
            "lease_wait": "lease_wait_s",
            "memory_budget_mb": "memory_budget_mb",
            "source_storage_options": "source_storage_options",
            "storage_options": "dataset_storage_options",
        },
    )
    if args.force_lease:
        options["force_lease"] = True
    if args.extensions is not None:
        options["extensions"] = [e.strip() for e in args.extensions.split(",") if e.strip()]
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


def _cmd_label(args: argparse.Namespace) -> int:
    if not args.verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    params = label_parameters(args)
    if args.labeler == "maskclip":
        _warn_if_random(args.pretrained)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flows.cli_server import owned_prefect_api
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

    with owned_prefect_api(), progress, progress_listener(on_event):
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
    parser = argparse.ArgumentParser(
        prog="maskclip", description="Annotation-free segmentation labels from CLIP", formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "segment",
        help="label image files and write label / overlay / confidence PNGs",
        formatter_class=HelpFormatter,
    )
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs and segment.json")
    requires(p, _add_labeler_options(p))
    _add_device_option(p)
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser(
        "label",
        help="label every new image under a URL into a Parquet dataset (the label-dataset flow, run in-process)",
        description="Runs the label-dataset Prefect flow here (a local Prefect server unless PREFECT_API_URL is "
        "set). Images already labeled under the same configuration are skipped unless --force.",
        formatter_class=HelpFormatter,
    )
    _add_label_options(p)
    _add_labeler_options(p)  # a student brings its own classes: --classes is checked in labeler_spec
    _add_device_option(p)
    p.set_defaults(func=_cmd_label)

    from flows.cli_review import register

    register(sub)  # export / import / evaluate
    from flows.cli_train import register as register_train

    register_train(sub)  # train
    from flows.cli_benchmark import register as register_benchmark

    register_benchmark(sub)  # benchmark
    from flows.cli_dataset import register as register_dataset

    register_dataset(sub)  # dataset check [--repair] / history

    p = sub.add_parser(
        "demo",
        help="label scikit-image's sample photos (default: ViT-B/16 OpenAI weights)",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--out", default="demo-out", metavar="DIR", help="folder for the PNGs and segment.json")
    _add_labeler_options(p, classes_default=DEMO_CLASSES)
    _add_device_option(p)
    p.set_defaults(func=_cmd_demo)
    return parser


def package_version() -> str:
    """The installed maskclip-labeler's version (a source checkout that was never installed has none)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    check_required(args)
    previous = signal.signal(signal.SIGINT, _interrupt) if _in_main_thread() else None
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if _interrupted:
            # Not a normal return: interpreter exit would wait for the batches still running in worker threads.
            _exit_now()
        return INTERRUPTED
    except Exception as exc:  # a clear message, not a traceback, for the errors users can fix
        from flows.cli_server import PrefectServerUnavailable
        from maskclip_core.labeling.registry import StudentUnavailableError
        from maskclip_core.student import BackboneWeightsUnavailable
        from maskclip_core.teacher.clip_loader import WeightsUnavailableError

        user_errors = WeightsUnavailableError | BackboneWeightsUnavailable | StudentUnavailableError
        if isinstance(exc, user_errors | PrefectServerUnavailable | ValueError | FileNotFoundError):
            print(f"maskclip: error: {exc}", file=sys.stderr)
            return 2
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


# Ctrl-C: say so once, let the flow record its end for up to INTERRUPT_GRACE_S, then exit whatever is still
# running (batches in worker threads cannot be interrupted; their writes are atomic, the next run redoes them).
INTERRUPTED = 130  # 128 + SIGINT, as shells report it
INTERRUPT_GRACE_S = 3.0


_interrupted = False  # set by the SIGINT handler


def _interrupt(signum: int, frame: object) -> None:
    import logging
    import threading

    global _interrupted
    _interrupted = True

    signal.signal(signal.SIGINT, lambda *_: _exit_now())  # a second Ctrl-C: at once
    print("\nmaskclip: interrupted; run again to resume", file=sys.stderr, flush=True)
    logging.disable(logging.CRITICAL)  # no traceback of the unwinding on the user's terminal
    timer = threading.Timer(INTERRUPT_GRACE_S, _exit_now)
    timer.daemon = True
    timer.start()
    raise KeyboardInterrupt


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(INTERRUPTED)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    raise SystemExit(main())
