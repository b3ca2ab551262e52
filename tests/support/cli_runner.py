"""The ``maskclip`` command run in this process, as a test reads it: exit code, stdout and stderr."""

from __future__ import annotations

import pytest


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``maskclip ARGV`` through ``cli.main.main``; what was printed before the call is dropped."""
    from cli.main import main

    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err
