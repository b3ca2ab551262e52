"""``maskclip benchmark``: a labeler on the standard training-free segmentation suites, under a method's protocol.

``register(subparsers)`` adds the subcommand to the ``maskclip`` parser; heavy imports happen when it runs.
``main`` is a ``maskclip`` with only this subcommand (``python -m flows.cli_benchmark``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from flows import cli_choices
from flows.cli_args import HelpFormatter, json_object, readable_validation_errors
from maskclip_core.benchmark.protocols import METHOD_NAMES as METHODS  # torch-free: the parser stays light
from maskclip_core.benchmark.suites import SUITE_NAMES as SUITES


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``benchmark`` to the ``maskclip`` subcommands."""
    p = subparsers.add_parser(
        "benchmark",
        formatter_class=HelpFormatter,
        help="mIoU on the standard segmentation benchmarks (VOC, Context, COCO, Cityscapes, ADE20K)",
        description="Scores a labeler on the validation splits of the eight training-free segmentation "
        "benchmarks, stored as mmsegmentation prepares them, under the protocol of the chosen method's paper "
        "(image size, sliding windows, temperature, background threshold, class names). Prints a table (stderr) "
        "and the JSON report (stdout): mIoU per suite, the eight-suite average, images/s.",
        epilog="Example: maskclip benchmark --suite all --root data/ --method naclip  "
        "(data/ holds VOCdevkit/VOC2012, VOCdevkit/VOC2010, coco_stuff164k, cityscapes, ade/ADEChallengeData2016)",
    )
    p.add_argument(
        "--suite",
        action="append",
        required=True,
        metavar="SUITE",
        help=f"one or more of {', '.join(SUITES)} (comma separated or repeated), or 'all'",
    )
    p.add_argument(
        "--root",
        action="append",
        required=True,
        metavar="[SUITE=]DIR",
        help="an mmseg data root holding each dataset's folder (data/), or SUITE=DIR for one suite's dataset "
        "folder (voc21=/data/VOCdevkit/VOC2012); repeat for several",
    )
    p.add_argument("--limit", type=int, default=None, help="at most N images per suite (a quick look)")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the JSON report here (atomically)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    g = p.add_argument_group("labeler and protocol")
    g.add_argument("--method", choices=METHODS, default="maskclip", help="whose protocol and attention")
    g.add_argument("--model", default="ViT-B-16", help="open_clip model name (the papers use ViT-B-16)")
    g.add_argument("--pretrained", default="openai", help="open_clip tag, a local checkpoint PATH, or 'none'")
    g.add_argument("--seed", type=int, default=0, help="seed of random weights")
    g.add_argument("--templates", choices=cli_choices.TEMPLATE_SETS, default="maskclip", help="prompt template set")
    g.add_argument("--checkpoint", default=None, help="student weights / checkpoint directory URL (--method student)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")

    g = p.add_argument_group("overrides of the method's protocol (every suite)")
    g.add_argument("--attention", default=None, help="last-block attention mode (see InferenceConfig.attention)")
    g.add_argument("--short-side", type=int, default=None, help="resize the short side to this")
    g.add_argument("--crop", type=int, default=None, help="sliding-window size")
    g.add_argument("--stride", type=int, default=None, help="sliding-window step")
    g.add_argument("--whole", action="store_true", help="the whole image in one forward, no sliding windows")
    g.add_argument("--prob-threshold", type=float, default=None, help="background below this probability")
    g.add_argument("--names", choices=["sclip", "proxyclip"], default=None, help="class-name table")
    g.add_argument("--inference", type=json_object, default=None, metavar="JSON", help="InferenceConfig fields")
    g.add_argument("--labeler-options", type=json_object, default=None, metavar="JSON", help="LabelerConfig fields")
    p.set_defaults(func=run)


def parse_roots(values: list[str], suites: list[str]) -> tuple[str | None, dict[str, str]]:
    """``["data/", "voc21=/x/VOC2012"]`` -> (data root, per-suite roots); a plain DIR with one suite is that
    suite's folder or a data root, whichever it holds (decided when the suite is read)."""
    data_root: str | None = None
    per_suite: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if sep and name in SUITES:
            per_suite[name] = path
        elif data_root is not None:
            raise ValueError(f"two data roots ({data_root}, {value}); name the suite of one: SUITE=DIR")
        else:
            data_root = value
    unknown = sorted(set(per_suite) - set(suites))
    if unknown:
        raise ValueError(f"--root for suites not asked for: {', '.join(unknown)}")
    return data_root, per_suite


def request_from_args(args: argparse.Namespace) -> Any:
    from maskclip_core.benchmark.run import BenchmarkParameters
    from maskclip_core.benchmark.suites import parse_suites

    suites = parse_suites(args.suite)
    data_root, suite_roots = parse_roots(args.root, suites)
    inference = dict(args.inference or {})
    for field, value in (
        ("attention", args.attention),
        ("short_side", args.short_side),
        ("crop", args.crop),
        ("stride", args.stride),
    ):
        if value is not None:
            inference[field] = value
    if args.whole:
        inference["mode"] = "whole"
    elif args.crop is not None or args.stride is not None:
        inference["mode"] = "slide"
    with readable_validation_errors():
        return BenchmarkParameters(
            suites=suites,
            data_root=data_root,
            suite_roots=suite_roots,
            method=args.method,
            model=args.model,
            pretrained=args.pretrained,
            seed=args.seed,
            templates=args.templates,
            checkpoint=args.checkpoint,
            device=args.device,
            limit=args.limit,
            inference=inference,
            labeler_options=dict(args.labeler_options or {}),
            names=args.names,
            prob_threshold=args.prob_threshold,
        )


def print_table(report: Any, console: Any) -> None:
    from rich.table import Table

    title = f"{report.method} ({report.model}, {report.pretrained})" + (
        f", first {report.limit} images per suite" if report.limit else ""
    )
    table = Table(title=title)
    for column, justify in (("suite", "left"), ("mIoU", "right"), ("images", "right"), ("failed", "right")):
        table.add_column(column, justify=justify)
    table.add_column("images/s", justify="right")
    for row in report.table_rows():
        miou = "n/a" if row["mIoU"] is None else f"{row['mIoU']:.2f}"
        speed = "n/a" if row["images/s"] is None else f"{row['images/s']:.2f}"
        table.add_row(row["suite"], miou, str(row["images"]), str(row["failed"]), speed)
    console.print(table)
    for result in report.results:
        for failure in result.failures[:3]:
            console.print(f"[red]{result.suite}: {failure}[/red]")


def run(args: argparse.Namespace) -> int:
    request = request_from_args(args)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from maskclip_core.benchmark.run import run_benchmark
    from maskclip_core.storage.fs import atomic_write_bytes
    from maskclip_core.teacher.clip_loader import is_random

    console = Console(stderr=True)
    if is_random(request.pretrained):
        from flows.cli import RANDOM_WEIGHTS_BANNER

        print(RANDOM_WEIGHTS_BANNER, file=sys.stderr)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=args.quiet,
    )
    bars: dict[str, Any] = {}

    def on_progress(suite: str, done: int, total: int) -> None:
        if suite not in bars:
            bars[suite] = progress.add_task(suite, total=total)
        progress.update(bars[suite], completed=done)

    with progress:
        report = run_benchmark(request, progress=on_progress)
    print_table(report, console)
    text = json.dumps(report.to_dict(), indent=2)
    if args.out:
        atomic_write_bytes(args.out, (text + "\n").encode())
    print(text)
    return 0 if all(r.images > 0 for r in report.results) else 1


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    parser = argparse.ArgumentParser(prog="maskclip")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["benchmark", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"maskclip: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
