"""Argument types shared by the ``maskclip`` subcommands."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def json_object(text: str) -> dict[str, Any]:
    """A JSON object given on the command line (storage options, per-class overrides)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def comma_strings(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def comma_ints(text: str) -> list[int]:
    try:
        return [int(s) for s in comma_strings(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def given(args: argparse.Namespace, mapping: dict[str, str]) -> dict[str, Any]:
    """``{field: value}`` for the options the user gave (``dest -> field``): unset ones keep model defaults."""
    return {field: getattr(args, dest) for dest, field in mapping.items() if getattr(args, dest) is not None}


FILTER_OPTIONS = {
    "min_confidence": "min_confidence",
    "min_region_area": "min_region_area",
    "min_region_confidence": "min_region_confidence",
    "min_labeled_fraction": "min_labeled_fraction",
    "per_class": "per_class",
}


def add_filter_options(parser: argparse.ArgumentParser, title: str = "confidence filter") -> None:
    """The FilterConfig thresholds as options (defaults: FilterConfig's own)."""
    g = parser.add_argument_group(title)
    g.add_argument("--min-confidence", type=float, default=None, help="pixels below become ignore (default 0.5)")
    g.add_argument("--min-region-area", type=int, default=None, help="smaller regions become ignore (default 64)")
    g.add_argument("--min-region-confidence", type=float, default=None, help="weaker classes are dropped (0.6)")
    g.add_argument("--min-labeled-fraction", type=float, default=None, help="images below are rejected (0.05)")
    g.add_argument(
        "--per-class", type=json_object, default=None, help='overrides, JSON: \'{"cat": {"min_confidence": 0.7}}\''
    )


def filter_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The FilterConfig fields given on the command line."""
    return given(args, FILTER_OPTIONS)


@contextmanager
def readable_validation_errors() -> Iterator[None]:
    """pydantic's ValidationError as a ValueError with one short clause per problem (no input dump), which
    ``maskclip`` prints as a one-line error."""
    from pydantic import ValidationError

    try:
        yield
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors())
        raise ValueError(problems.replace("Value error, ", "")) from None
