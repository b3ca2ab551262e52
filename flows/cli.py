"""The ``maskclip`` command line. Heavy imports (torch, Prefect) happen inside the subcommands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

DEMO_IMAGES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")  # scikit-image's bundled photos
DEMO_CLASSES = "person; astronaut, cat, cup; coffee cup, rocket, sky, tree, building, table, flag, wall"

RANDOM_WEIGHTS_BANNER = """
##########################################################################
#  RANDOM WEIGHTS (--pretrained none): the labels below are MEANINGLESS.  #
#  This run only checks that the pipeline works end to end.              #
##########################################################################
"""


def _add_labeler_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("labeler")
    g.add_argument("--classes", required=True, help='comma-separated classes, synonyms after ";": "cat, grass; lawn"')
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
    from maskclip_core.inference import InferenceConfig
    from maskclip_core.labeler import LabelerConfig

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
    from maskclip_core.clip_loader import is_random

    if is_random(pretrained):
        print(RANDOM_WEIGHTS_BANNER, file=sys.stderr)


def _cmd_segment(args: argparse.Namespace) -> int:
    from maskclip_core.segment_files import segment_files

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskclip", description="Annotation-free segmentation labels from CLIP")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="label image files and write label / overlay / confidence PNGs")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output directory")
    _add_labeler_options(p)
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("demo", help="label scikit-image's sample photos (default: ViT-B/16 OpenAI weights)")
    p.add_argument("--out", default="demo-out")
    _add_labeler_options(p)
    p.set_defaults(func=_cmd_demo)
    for action in p._actions:  # the demo brings its own vocabulary
        if action.dest == "classes":
            action.required = False
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as exc:  # a clear message, not a traceback, for the errors users can fix
        from maskclip_core.clip_loader import WeightsUnavailableError

        if isinstance(exc, WeightsUnavailableError | ValueError | FileNotFoundError):
            print(f"maskclip: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
