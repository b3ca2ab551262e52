"""``maskclip dataset check`` / ``history``: look after the Parquet dataset itself (check / repair, history)."""

from __future__ import annotations

import argparse
import json
import sys

from cli.actions import HelpFormatter, Store, requires
from cli.options import add_dataset_option, add_storage_options


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``dataset check`` and ``dataset history`` to the ``maskclip`` subcommands."""
    p = sub.add_parser("dataset", help="check / repair a dataset, or write its history", formatter_class=HelpFormatter)
    commands = p.add_subparsers(dest="dataset_command", required=True, metavar="COMMAND")

    c = commands.add_parser(
        "check",
        help="verify every part (footer, schema, rows, committed annotations)",
        description="Verifies every part under images/, annotations/ and categories/, and lists what killed runs "
        "left (stale _tmp-* files, annotations parts no images row commits): residue, which readers skip. With "
        "--repair, moves bad parts to quarantine/ with a report, marks the images that lost their labels, so the "
        "next `maskclip label` relabels exactly them, and deletes the residue. Exit 1 when problems remain "
        "(residue alone is not one).",
        formatter_class=HelpFormatter,
    )
    add_dataset_option(c, "the Parquet dataset to check")
    c.add_argument(
        "--repair", action="store_true", help="quarantine bad parts, mark their images for relabeling, delete residue"
    )
    add_storage_options(c)
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=_cmd_check)

    h = commands.add_parser(
        "history",
        help="every images row ever written (edits, renames, deletions), with a `current` column",
        formatter_class=HelpFormatter,
    )
    add_dataset_option(h, "the Parquet dataset whose history to write")
    out = h.add_argument(
        "--out", action=Store, default=None, metavar="FILE", help="where to write it: a .parquet, .csv or .jsonl file"
    )
    requires(h, out)
    h.add_argument("--uri", default=None, help="only the rows of this source uri")
    add_storage_options(h, "the dataset and --out")
    h.set_defaults(func=_cmd_history)


def _cmd_check(args: argparse.Namespace) -> int:
    from maskclip_core.dataset.check import check_dataset
    from maskclip_core.dataset.integrity import REPAIR_COMMAND
    from maskclip_core.dataset.lease import acquire_lease

    options = args.storage_options or {}
    if args.repair:  # no labeling run may write while parts move
        with acquire_lease(args.dataset, options, owner="maskclip dataset check --repair"):
            report = check_dataset(args.dataset, options, repair=True)
    else:
        report = check_dataset(args.dataset, options)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print("\n".join(report.lines()))
    if report.problems and not args.repair:
        print(f"maskclip: repair with `{REPAIR_COMMAND.format(url=args.dataset)}`", file=sys.stderr)
        return 1
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    from maskclip_core.dataset.label_dataset import LabelDataset
    from maskclip_core.dataset.parquet import parquet_bytes
    from maskclip_core.storage.fs import atomic_write_bytes

    options = args.storage_options or {}
    table = LabelDataset(args.dataset, options).history()
    if args.uri is not None:
        table = table.filter(pc.equal(table["uri"], args.uri))
    out = args.out.lower()
    if out.endswith(".parquet"):
        data = parquet_bytes(table)
    elif out.endswith(".csv"):
        import io

        buf = io.BytesIO()
        pacsv.write_csv(table, buf)
        data = buf.getvalue()
    elif out.endswith(".jsonl"):
        data = "".join(json.dumps(r, default=str) + "\n" for r in table.to_pylist()).encode()
    else:
        raise ValueError(f"--out {args.out}: use a .parquet, .csv or .jsonl name")
    atomic_write_bytes(args.out, data, options)
    print(f"{table.num_rows} rows ({int(pc.sum(table['current']).as_py() or 0)} current) -> {args.out}")
    return 0
