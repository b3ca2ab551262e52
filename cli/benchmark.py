"""``maskclip benchmark``: a labeler on the standard training-free segmentation suites, under a method's protocol.

``register(subparsers)`` adds the subcommand to the ``maskclip`` parser; heavy imports happen when it runs.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from cli.actions import HelpFormatter, json_object, readable_validation_errors
from cli.fields import field_flag, field_option, field_values, literal
from cli.options import (
    ATTENTION_MODES,
    BENCHMARK,
    INFERENCE,
    LABELER_CONFIG,
    METHODS,
    SUITES,
    TEMPLATE_SETS,
    add_device_option,
    warn_if_random,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``benchmark`` to the ``maskclip`` subcommands."""
    p = subparsers.add_parser(
        "benchmark",
        formatter_class=HelpFormatter,
        help="mIoU on the standard segmentation benchmarks (VOC, Context, COCO, Cityscapes, ADE20K)",
        description="Scores a labeler on the validation splits of the eight training-free segmentation "
        "benchmarks, stored as mmsegmentation prepares them, under the protocol of the chosen method's paper "
        "(image size, sliding windows, temperature, background threshold, class names). Prints a table (stderr) "
        "and the JSON report (stdout): mIoU per suite, the eight-suite average, images/s. Every suite's layout and "
        "image count (the official val split's) are checked before the first image; failed or missing images "
        "fail the run (exit 1, no average) unless --allow-incomplete.",
        epilog="Example: maskclip benchmark --suite all --root data/ --method naclip  "
        "(data/ holds VOCdevkit/VOC2012, VOCdevkit/VOC2010, coco_stuff164k, cityscapes, ade/ADEChallengeData2016). "
        "A smoke run without weights: --model maskclip-tiny-ViT --pretrained none --limit 2 (tiny random-weight "
        "test models: maskclip-tiny-ViT, maskclip-tiny-RN).",
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
    g = p.add_argument_group("run")
    field_option(g, "--limit", BENCHMARK, "limit", type=int)
    g.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="also write the JSON report here (atomically), rewritten after each suite: finished suites survive",
    )
    field_flag(g, "--allow-incomplete", BENCHMARK, "allow_incomplete")
    field_option(g, "--save-predictions", BENCHMARK, "save_predictions", metavar="DIR")
    g.add_argument("--quiet", action="store_true", help="no progress bar or status lines")

    g = p.add_argument_group("labeler and protocol")
    field_option(g, "--method", BENCHMARK, "method", choices=METHODS, help="whose protocol and attention")
    field_option(
        g,
        "--model",
        BENCHMARK,
        "model",
        help="open_clip model name (ViT-B-16, RN50, ...); maskclip-tiny-ViT and maskclip-tiny-RN are tiny "
        "test architectures for smoke runs with --pretrained none",
    )
    field_option(g, "--pretrained", BENCHMARK, "pretrained")
    field_option(g, "--seed", BENCHMARK, "seed", type=int)
    field_option(g, "--templates", BENCHMARK, "templates", choices=TEMPLATE_SETS)
    field_option(g, "--checkpoint", BENCHMARK, "checkpoint")
    field_option(g, "--proxy", LABELER_CONFIG, "proxy", show_default=False)
    field_option(g, "--proxy-weights", LABELER_CONFIG, "proxy_weights")
    field_option(g, "--sam-weights", LABELER_CONFIG, "sam_weights")
    add_device_option(g)

    g = p.add_argument_group("overrides of the method's protocol (every suite)")
    over = {"show_default": False}  # unset, the method's protocol decides
    field_option(g, "--attention", INFERENCE, "attention", choices=ATTENTION_MODES, help="last-block variant", **over)
    field_option(g, "--short-side", INFERENCE, "short_side", type=int, **over)
    field_option(g, "--crop", INFERENCE, "crop", type=int, **over)
    field_option(g, "--stride", INFERENCE, "stride", type=int, **over)
    g.add_argument("--whole", action="store_true", help="the whole image in one forward, no sliding windows")
    field_option(g, "--prob-threshold", BENCHMARK, "prob_threshold", type=float)
    field_option(g, "--names", BENCHMARK, "names", choices=literal(BENCHMARK, "names"))
    field_option(g, "--inference", BENCHMARK, "inference", type=json_object, metavar="JSON")
    field_option(g, "--labeler-options", BENCHMARK, "labeler_options", type=json_object, metavar="JSON")
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
    from maskclip_core.benchmark.scoring import BenchmarkParameters
    from maskclip_core.benchmark.suites import parse_suites

    suites = parse_suites(args.suite)
    data_root, suite_roots = parse_roots(args.root, suites)
    fields = field_values(args, BENCHMARK)
    inference = {**fields.pop("inference", {}), **field_values(args, INFERENCE)}
    proxy = field_values(args, LABELER_CONFIG)  # --proxy, --proxy-weights: as `segment` takes them
    if proxy:
        fields["labeler_options"] = {**fields.get("labeler_options", {}), **proxy}
    if args.whole:
        inference["mode"] = "whole"
    elif args.crop is not None or args.stride is not None:
        inference["mode"] = "slide"
    with readable_validation_errors():
        return BenchmarkParameters(
            **fields,
            suites=suites,
            data_root=data_root,
            suite_roots=suite_roots,
            device=args.device,
            inference=inference,
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
    rows = report.table_rows()
    for i, row in enumerate(rows):
        miou = "n/a" if row["mIoU"] is None else f"{row['mIoU']:.2f}"
        if i == len(rows) - 1 and report.failed:
            miou = "failed"
        speed = "n/a" if row["images/s"] is None else f"{row['images/s']:.2f}"
        table.add_row(row["suite"], miou, str(row["images"]), str(row["failed"]), speed)
    console.print(table)
    for result in report.results:
        for failure in result.failures[:3]:
            console.print(f"[red]{result.suite}: {failure}[/red]", markup=False, style="red")
    if report.failed:
        bad = sum(r.failed + int(r.split.get("missing", 0)) for r in report.results)
        console.print(
            f"run failed: {bad} images failed or missing, no average (--allow-incomplete scores the rest)",
            style="red",
        )


def run(args: argparse.Namespace) -> int:
    request = request_from_args(args)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from maskclip_core.benchmark.scoring import report_of, run_benchmark
    from maskclip_core.storage.fs import atomic_write_bytes

    console = Console(stderr=True)
    warn_if_random(request.pretrained)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=args.quiet,
    )
    bars: dict[str, Any] = {}
    latest = [report_of(request, [])]  # the report so far: what is printed and kept if a later suite fails

    def on_progress(suite: str, done: int, total: int) -> None:
        if suite not in bars:
            bars[suite] = progress.add_task(suite, total=total)
        progress.update(bars[suite], completed=done)

    def notify(line: str) -> None:
        if not args.quiet:
            progress.console.print(line, markup=False, highlight=False)

    def write(report: Any) -> str:
        text = json.dumps(report.to_dict(), indent=2)
        if args.out:
            atomic_write_bytes(args.out, (text + "\n").encode())
        return text

    def on_suite(report: Any) -> None:
        latest[0] = report
        write(report)

    try:
        with progress:
            report = run_benchmark(request, progress=on_progress, notify=notify, on_suite=on_suite)
    except BaseException:  # an error or Ctrl-C: finished suites are printed (and kept in --out) first
        if latest[0].results:
            print(json.dumps(latest[0].to_dict(), indent=2))
        raise
    print_table(report, console)
    print(write(report))
    return 1 if report.failed else 0
