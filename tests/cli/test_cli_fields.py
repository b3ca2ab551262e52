"""Options generated from the pydantic models: every one names a real field, and the parser stays light."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from cli.fields import FieldChoices, FieldFlag, FieldOption, RegistryChoices
from cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from parsers(sub)


def test_every_field_option_names_a_field_of_its_model() -> None:
    options = [a for p in parsers(build_parser()) for a in p._actions if isinstance(a, FieldOption)]
    assert len(options) > 80
    for action in options:
        info = action.model.field(action.field)  # KeyError names the model and the missing field
        assert action.help, action.option_strings
        assert action.default in (None, False) or action.dest == "classes", action.option_strings  # no restated default
        shows = action.show_default and not isinstance(action, FieldFlag)
        if shows and isinstance(info.default, int | float | str) and not isinstance(info.default, bool):
            assert action.shown_default == info.default, action.option_strings  # help shows the model's own
        if isinstance(action.choices, FieldChoices):
            assert len(action.choices) > 0, action.option_strings  # a Literal field


def test_every_choice_list_is_read_from_its_registry() -> None:
    for parser in parsers(build_parser()):
        for action in parser._actions:
            if action.choices is None or isinstance(action, argparse._SubParsersAction):
                continue
            assert isinstance(action.choices, RegistryChoices), (parser.prog, action.option_strings)
            assert len(action.choices) > 0


def test_building_the_parser_imports_neither_torch_nor_prefect_nor_pydantic() -> None:
    code = (
        "import sys; from cli.main import build_parser; build_parser(); "
        "print(sorted({'torch', 'prefect', 'pydantic', 'pyarrow'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
