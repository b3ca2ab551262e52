"""Argument types, actions and the help format shared by the ``maskclip`` subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

GIVEN = "given_options"  # namespace attribute: {dest: the flag the user typed}, filled by the actions below


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, except None / False, which only mean "not given" (the help
    then says what happens without it)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def given_options(args: argparse.Namespace) -> dict[str, str]:
    """``{dest: flag}`` of the options recorded as typed by the user (``Store`` / ``Flag`` / aliases)."""
    return dict(getattr(args, GIVEN, {}))


def _record(parser: argparse.ArgumentParser, namespace: argparse.Namespace, dest: str, flag: str | None) -> None:
    seen = dict(getattr(namespace, GIVEN, {}))
    if flag and seen.get(dest, flag) != flag:
        parser.error(f"{seen[dest]} and {flag} name the same thing; give one")
    seen[dest] = flag or dest
    setattr(namespace, GIVEN, seen)


class Store(argparse.Action):
    """``store`` that records that the user gave the option."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001 - argparse's API
        _record(parser, namespace, self.dest, option_string)
        setattr(namespace, self.dest, values)


class Flag(argparse.Action):
    """``store_true`` that records that the user gave the flag."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("default", False)
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001 - argparse's API
        _record(parser, namespace, self.dest, option_string)
        setattr(namespace, self.dest, True)


class DeprecatedAlias(Store):
    """An old spelling: hidden from help, one warning line on stderr, then the new option's value."""

    def __init__(self, option_strings: Sequence[str], dest: str, replacement: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.replacement = replacement

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001 - argparse's API
        print(f"maskclip: warning: {option_string} is deprecated; use {self.replacement}", file=sys.stderr)
        super().__call__(parser, namespace, values, option_string)


def add_aliases(parser: argparse.ArgumentParser | Any, option: argparse.Action, *old: str) -> None:
    """Keep ``old`` spellings of ``option`` working, hidden, each with a deprecation warning."""
    for flag in old:
        parser.add_argument(
            flag,
            dest=option.dest,
            type=option.type,
            metavar=option.metavar,
            action=DeprecatedAlias,
            replacement=option.option_strings[0],
            default=argparse.SUPPRESS,  # the new option holds the default
            help=argparse.SUPPRESS,
        )


REQUIRED = "required_options"


def requires(parser: argparse.ArgumentParser, *options: argparse.Action) -> None:
    """argparse's ``required`` for options that old spellings may also fill (``--dataset`` or ``--from``):
    checked after parsing by ``check_required``."""
    _, before = parser.get_default(REQUIRED) or (parser, ())
    parser.set_defaults(**{REQUIRED: (parser, (*before, *options))})


def check_required(args: argparse.Namespace) -> None:
    parser, options = getattr(args, REQUIRED, (None, ()))
    missing = [option.option_strings[0] for option in options if getattr(args, option.dest) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")


def json_object(text: str) -> dict[str, Any]:
    """A JSON object given on the command line (storage options, per-class overrides)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def add_storage_options(parser: argparse.ArgumentParser | Any, what: str = "the dataset") -> argparse.Action:
    """``--storage-options``: fsspec options for the dataset (and the other URLs of commands that say so)."""
    return parser.add_argument(
        "--storage-options",
        type=json_object,
        default=None,
        metavar="JSON",
        help=f'fsspec options for {what}, e.g. \'{{"client_kwargs": {{"endpoint_url": "http://minio:9000"}}}}\' '
        "(default: the AWS environment / profile)",
    )


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


# FilterConfig's defaults, shown in help (tests/flows/test_cli_options.py keeps them equal to the model's).
FILTER_DEFAULTS = {
    "min_confidence": 0.5,
    "min_region_area": 64,
    "min_region_confidence": 0.6,
    "min_labeled_fraction": 0.05,
}


def add_filter_options(
    parser: argparse.ArgumentParser, title: str = "confidence filter", inherit: bool = False
) -> None:
    """The FilterConfig thresholds as options: FilterConfig's defaults, or none with ``inherit`` (the title then
    says where unset thresholds come from)."""
    default = dict.fromkeys(FILTER_DEFAULTS) if inherit else FILTER_DEFAULTS
    g = parser.add_argument_group(title)
    g.add_argument(
        "--min-confidence", type=float, default=default["min_confidence"], help="pixels below become ignore (255)"
    )
    g.add_argument(
        "--min-region-area", type=int, default=default["min_region_area"], help="smaller regions become ignore"
    )
    g.add_argument(
        "--min-region-confidence",
        type=float,
        default=default["min_region_confidence"],
        help="a class whose pixels' mean confidence ends below is dropped",
    )
    g.add_argument(
        "--min-labeled-fraction",
        type=float,
        default=default["min_labeled_fraction"],
        help="images whose labeled fraction ends below are rejected",
    )
    g.add_argument(
        "--per-class",
        type=json_object,
        default=None,
        metavar="JSON",
        help='per-class overrides: \'{"cat": {"min_confidence": 0.7}}\'',
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
