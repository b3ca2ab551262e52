"""argparse machinery shared by the ``maskclip`` subcommands: the help format, actions that record what the user
typed, deprecated spellings, options required after parsing, argument types, and validation errors as one line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

GIVEN = "given_options"  # namespace attribute: {dest: the flag the user typed}, filled by the actions below
REQUIRED = "required_options"  # parser default: (parser, options checked by ``check_required``)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, except None / False, which only mean "not given" (the help
    then says what happens without it). An option that fills a pydantic field (``cli.fields.FieldOption``) shows
    the field's default, read from the model when help is shown."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if not hasattr(action, "shown_default"):
            if action.default is None or action.default is False:
                return action.help
            return super()._get_help_string(action)
        text = _escape(action.help)  # a field's description is plain text, not a %-format
        if action.default not in (None, False):  # a command's own default (demo's classes)
            return f"{text} (default: %(default)s)"
        shown = action.shown_default
        return text if shown is None else f"{text} (default: {_escape(shown)})"


def _escape(text: object) -> str:
    return ("" if text is None else str(text)).replace("%", "%%")


def given_options(args: argparse.Namespace) -> dict[str, str]:
    """``{dest: flag}`` of the options recorded as typed by the user (``Store`` / ``Flag`` / aliases)."""
    return dict(getattr(args, GIVEN, {}))


def record_given(parser: argparse.ArgumentParser, namespace: argparse.Namespace, dest: str, flag: str | None) -> None:
    """Note that ``flag`` filled ``dest``; two spellings of one option on one command line are refused."""
    seen = dict(getattr(namespace, GIVEN, {}))
    if flag and seen.get(dest, flag) != flag:
        parser.error(f"{seen[dest]} and {flag} name the same thing; give one")
    seen[dest] = flag or dest
    setattr(namespace, GIVEN, seen)


class Store(argparse.Action):
    """``store`` that records that the user gave the option."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001 - argparse's API
        record_given(parser, namespace, self.dest, option_string)
        setattr(namespace, self.dest, values)


class Flag(argparse.Action):
    """``store_true`` that records that the user gave the flag."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("default", False)
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001 - argparse's API
        record_given(parser, namespace, self.dest, option_string)
        setattr(namespace, self.dest, True)


def warn_deprecated(option_string: str | None, replacement: str) -> None:
    print(f"maskclip: warning: {option_string} is deprecated; use {replacement}", file=sys.stderr)


class DeprecatedAlias(Store):
    """An old spelling: hidden from help, one warning line on stderr, then the new option's value."""

    def __init__(self, option_strings: Sequence[str], dest: str, replacement: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.replacement = replacement

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001 - argparse's API
        warn_deprecated(option_string, self.replacement)
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


def given(args: argparse.Namespace, mapping: dict[str, str]) -> dict[str, Any]:
    """``{field: value}`` for the options the user gave (``dest -> field``): unset ones keep model defaults."""
    return {field: getattr(args, dest) for dest, field in mapping.items() if getattr(args, dest) is not None}


# --- argument types ----------------------------------------------------------------------------------------


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


def int_or_none(text: str) -> int | None:
    """An integer, or ``none`` (the field's null)."""
    if text.strip().lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from None


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
