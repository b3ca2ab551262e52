"""The ``maskclip`` command: the parser of every command group, and the one error handler.

Heavy imports (torch, Prefect) happen inside the subcommands; building the parser imports neither.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
from collections.abc import Sequence

from cli import benchmark, dataset, label, review, train
from cli.actions import HelpFormatter, check_required

DISTRIBUTION = "maskclip-labeler"
GROUPS = (label, review, train, benchmark, dataset)  # each adds its subcommands with register(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskclip", description="Annotation-free segmentation labels from CLIP", formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
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
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:  # read-only or full disk, no permission
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"maskclip: error: cannot write: {where}{exc.strerror or exc}", file=sys.stderr)
            return 2
        if isinstance(exc, user_errors()):
            print(f"maskclip: error: {exc}", file=sys.stderr)
            return 2
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


# Storage that refuses writes (a read-only folder or filesystem, a full disk or quota, no permission): the user's
# to fix, said in one line naming the file.
STORAGE_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM})


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors a user can fix, printed as one line: bad values (pydantic's, ``DatasetDamaged`` and the other
    ValueErrors), missing files, weights that cannot be had offline, no Prefect server."""
    from cli.server import PrefectServerUnavailable
    from maskclip_core.labeling.registry import StudentUnavailableError
    from maskclip_core.student import BackboneWeightsUnavailable
    from maskclip_core.teacher.clip_loader import WeightsUnavailableError

    return (
        ValueError,
        FileNotFoundError,
        WeightsUnavailableError,
        BackboneWeightsUnavailable,
        StudentUnavailableError,
        PrefectServerUnavailable,
    )


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
