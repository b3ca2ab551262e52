"""Refusing a damaged dataset with one clear line: part schemas checked before any row is read.

A part file under ``images/``, ``annotations/`` or ``categories/`` that is not Parquet (zero bytes, truncated,
garbage) or whose schema is not the table's (a foreign file dropped there) would otherwise read as rows of
nulls or crash a reader deep inside an export. Readers call :func:`check_part_schema` per part and raise
:class:`DatasetDamaged`, whose message names the part and the command that repairs the dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pyarrow as pa

REPAIR_COMMAND = "maskclip dataset check --dataset {url} --repair"

T = TypeVar("T")


class DatasetDamaged(ValueError):
    """A part of the dataset cannot be read as its table; the message says which and how to repair."""

    def __init__(self, dataset_url: str, part: str, problem: str) -> None:
        self.dataset_url = dataset_url
        self.part = part
        self.problem = problem
        super().__init__(
            f"dataset {dataset_url} is damaged: {part}: {problem}; run `{REPAIR_COMMAND.format(url=dataset_url)}`"
        )


def schema_problem(file_schema: pa.Schema, table_schema: pa.Schema) -> str | None:
    """Why a part with ``file_schema`` cannot be read as ``table_schema`` (None when it can).

    Required columns must be present; every column the table knows must have the table's type. Columns the
    table does not know are ignored, and optional ones may be missing (parts written before they existed).
    """
    missing = [f.name for f in table_schema if not f.nullable and f.name not in file_schema.names]
    if missing:
        return f"not a part of this table (missing columns {', '.join(missing)})"
    for field in table_schema:
        index = file_schema.get_field_index(field.name)
        if index >= 0 and not file_schema.field(index).type.equals(field.type):
            return f"column {field.name} has type {file_schema.field(index).type}, expected {field.type}"
    return None


def check_part_schema(dataset_url: str, part: str, file_schema: pa.Schema, table_schema: pa.Schema) -> None:
    problem = schema_problem(file_schema, table_schema)
    if problem is not None:
        raise DatasetDamaged(dataset_url, part, problem)


@contextmanager
def reading_part(dataset_url: str, part: str) -> Iterator[None]:
    """Turn pyarrow's errors while reading ``part`` into :class:`DatasetDamaged` (storage errors pass)."""
    try:
        yield
    except DatasetDamaged:
        raise
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, pa.ArrowKeyError) as e:
        raise DatasetDamaged(dataset_url, part, f"unreadable Parquet ({_first_line(e)})") from e


def guarded(dataset_url: str, part: str, read: Callable[[], T]) -> T:
    with reading_part(dataset_url, part):
        return read()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
