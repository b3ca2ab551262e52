"""``maskclip dataset check [--repair]``: verify every part of the dataset, quarantine the bad ones, heal.

Checks, per part of every table (``dataset.schema.TABLES``): the Parquet footer, the schema
(:func:`~maskclip_core.dataset.integrity.schema_problem`), every row decoded, required columns non-null;
then each annotations part's rows against the images rows that commit them (its sibling part of the same
batch name, or any images part once compaction merged the sibling): a part none of whose labelings is
committed, without a sibling images part, is residue of a run killed between its two writes (its sibling
damaged: a problem, quarantined with it); and each categories part's ids against their holders: a part that
holds a claimed id under another name is bad (readers follow the claim file).

Residue (``dataset.residue``: those orphan parts, and the stale ``_tmp-*`` files of killed writers) is not a
problem: readers skip it and the content is right. It is reported apart, and ``repair`` deletes it.

A dataset that holds parts but no manifest (``_maskclip_dataset.json``, deleted by a sync tool that skips
``_*`` files) is a problem too: its version is inferred from its parts (``manifest.infer_format``), and
``repair`` writes the manifest back with it.

``repair`` moves bad parts to ``quarantine/<table>/`` with a JSON report, then marks the images
whose labels were lost (a ``failed`` row with a ``quarantined`` reason, newer than their labeling), so the next
``maskclip label`` relabels exactly them. Run it while no labeling run writes (it holds the dataset lease).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from maskclip_core.dataset.category_claims import resolve_ids
from maskclip_core.dataset.current_rows import current_rows
from maskclip_core.dataset.integrity import schema_problem
from maskclip_core.dataset.label_dataset import LabelDataset, utc_now
from maskclip_core.dataset.manifest import MANIFEST_NAME, ensure_manifest, missing_manifest
from maskclip_core.dataset.residue import ORPHAN, Residue, remove_residue, stale_temp_files
from maskclip_core.dataset.schema import TABLES, stored_schema
from maskclip_core.storage.fs import atomic_write_bytes, join_url

QUARANTINE = "quarantine"


@dataclass
class PartProblem:
    part: str  # relative to the dataset: images/part-x.parquet
    problem: str
    kind: str = "damaged"  # damaged | orphan | manifest (the manifest is missing: repair writes it)


@dataclass
class CheckReport:
    dataset: str
    parts_checked: int = 0
    problems: list[PartProblem] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)  # where the bad parts went
    residue: list[Residue] = field(default_factory=list)  # left by killed runs; not problems
    removed: list[str] = field(default_factory=list)  # residue that repair deleted
    marked_for_relabel: list[str] = field(default_factory=list)  # uris the next label run relabels
    report_url: str | None = None

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}

    def lines(self) -> list[str]:
        out = [f"{self.dataset}: {self.parts_checked} parts checked, {len(self.problems)} problems"]
        out += [f"  {p.kind}: {p.part}: {p.problem}" for p in self.problems]
        if self.residue:
            out.append(
                f"  {len(self.residue)} residue files of killed runs (readers skip them; --repair deletes them):"
            )
            out += [f"  residue ({r.kind}): {r.path}: {r.detail}" for r in self.residue]
        out += [f"  removed: {r}" for r in self.removed]
        out += [f"  quarantined: {q}" for q in self.quarantined]
        if self.marked_for_relabel:
            out.append(f"  {len(self.marked_for_relabel)} images marked: the next `maskclip label` relabels them")
        if self.report_url:
            out.append(f"  report: {self.report_url}")
        return out


def check_dataset(url: str, storage_options: Mapping[str, Any] | None = None, *, repair: bool = False) -> CheckReport:
    """Verify the dataset at ``url``; with ``repair``, quarantine bad parts and mark their images."""
    dataset = LabelDataset(url, storage_options)
    report = CheckReport(dataset=url)
    inferred = missing_manifest(url, storage_options)
    if inferred is not None:
        report.problems.append(
            PartProblem(
                MANIFEST_NAME,
                f"missing; the parts hold format version {inferred} (--repair writes the manifest)",
                "manifest",
            )
        )
    healthy: dict[str, dict[str, pa.Table]] = {name: {} for name in TABLES}
    images_parts: set[str] = set()  # file names of every images part, healthy or not
    for table in TABLES:
        schema = stored_schema(table, dataset.format_version)
        for path, _ in dataset._part_files(table):
            report.parts_checked += 1
            part = dataset.relative(path)
            if table == "images":
                images_parts.add(part.rsplit("/", 1)[-1])
            table_or_problem = _read_part(dataset, path, schema)
            if isinstance(table_or_problem, str):
                report.problems.append(PartProblem(part, table_or_problem))
            else:
                healthy[table][part] = dataset.current_names(table_or_problem, table)
    _check_annotations_committed(healthy, images_parts, report)
    _check_category_ids(healthy, report)
    report.residue += stale_temp_files(dataset.fs, dataset.root)
    if repair and report.residue:
        report.removed = remove_residue(dataset.fs, dataset.root, report.residue)
    if repair and report.problems:
        if inferred is not None:
            ensure_manifest(url, storage_options)
        _quarantine(dataset, report)
        _mark_lost_labelings(dataset, healthy, report)
        stamp = utc_now().strftime("%Y%m%dT%H%M%S%fZ")
        report.report_url = join_url(url, QUARANTINE, f"report-{stamp}.json")
        atomic_write_bytes(report.report_url, json.dumps(report.to_dict(), indent=2).encode(), storage_options)
    return report


def _read_part(dataset: LabelDataset, path: str, schema: pa.Schema) -> pa.Table | str:
    try:
        data = dataset.fs.cat_file(path)
    except FileNotFoundError:
        return "vanished while checking"
    if not data:
        return "zero bytes"
    try:
        # A native buffer: pyarrow's threads decode it without ever calling back into Python, so a read that
        # fails cannot leave one of them waiting on the interpreter while the process exits (issue 21).
        parquet_file = pq.ParquetFile(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as e:
        return f"not a readable Parquet file ({_first_line(e)})"
    problem = schema_problem(parquet_file.schema_arrow, schema)
    if problem is not None:
        return problem
    try:
        table = parquet_file.read(columns=[n for n in schema.names if n in parquet_file.schema_arrow.names])
    except (pa.ArrowException, OSError) as e:
        return f"rows cannot be decoded ({_first_line(e)})"
    table = _with_all_columns(table, schema)
    for f in schema:
        if not f.nullable and table[f.name].null_count:
            return f"{table[f.name].null_count} rows without required {f.name}"
    return table


def _with_all_columns(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` in ``schema``'s columns and order, those a part written before them lacks as nulls (as a
    dataset read of the table shows them)."""
    columns = [table[f.name] if f.name in table.column_names else pa.nulls(table.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(columns, names=schema.names)


def _check_annotations_committed(
    healthy: dict[str, dict[str, pa.Table]], images_parts: set[str], report: CheckReport
) -> None:
    committed: dict[str, int] = {}
    for table in healthy["images"].values():
        labeled = table.filter(pc.equal(table["status"], "labeled"))
        committed.update(zip(labeled["labeling_id"].to_pylist(), labeled["image_id"].to_pylist(), strict=True))
    for part, table in list(healthy["annotations"].items()):
        pairs = set(zip(table["labeling_id"].to_pylist(), table["image_id"].to_pylist(), strict=True))
        known = [lid for lid, _ in pairs if lid in committed]
        if not known:
            uncommitted = f"none of its {table.num_rows} rows is committed"
            if part.rsplit("/", 1)[-1] in images_parts:  # its images part is there but damaged: lost with it
                report.problems.append(PartProblem(part, f"orphan: {uncommitted}", "orphan"))
            else:  # its run was killed before it wrote the images part
                report.residue.append(Residue(part, ORPHAN, f"{uncommitted}: a run was killed between its writes"))
            del healthy["annotations"][part]
        elif any(lid in committed and committed[lid] != image_id for lid, image_id in pairs):
            report.problems.append(PartProblem(part, "rows name other images than their images rows"))
            del healthy["annotations"][part]


def _check_category_ids(healthy: dict[str, dict[str, pa.Table]], report: CheckReport) -> None:
    """A categories part that holds an id under another name than the id's holder (its claim file) is bad:
    readers ignore its row, repair quarantines it (``category_claims.resolve_ids``)."""
    by_part = [(part, table.to_pylist()) for part, table in healthy["categories"].items()]
    _, conflicts = resolve_ids(by_part)
    for part in dict.fromkeys(part for part, _, _ in conflicts):
        ids = sorted({(cid, holder) for p, cid, holder in conflicts if p == part})
        held = ", ".join(f"{cid} (held by {holder})" for cid, holder in ids)
        report.problems.append(PartProblem(part, f"reuses category id {held}"))
        del healthy["categories"][part]


def _quarantine(dataset: LabelDataset, report: CheckReport) -> None:
    stamp = utc_now().strftime("%Y%m%dT%H%M%S")
    for problem in report.problems:
        if problem.kind == "manifest":
            continue
        src = f"{dataset.root}/{problem.part}"
        dest = f"{dataset.root}/{QUARANTINE}/{stamp}/{problem.part}"
        dataset.fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
        dataset.fs.mv(src, dest)
        report.quarantined.append(f"{QUARANTINE}/{stamp}/{problem.part}")


def _mark_lost_labelings(dataset: LabelDataset, healthy: dict[str, dict[str, pa.Table]], report: CheckReport) -> None:
    """Failed rows for the current labeled images whose annotations or categories went to quarantine."""
    lost_parts = {p.part.rsplit("/", 1)[-1] for p in report.problems if p.part.startswith("annotations/")}
    category_ids = {i for t in healthy["categories"].values() for i in t["id"].to_pylist()}
    categories_lost = any(p.part.startswith("categories/") for p in report.problems)
    with_annotations: set[str] = set()
    bad_category: set[str] = set()
    for table in healthy["annotations"].values():
        for lid, cid in zip(table["labeling_id"].to_pylist(), table["category_id"].to_pylist(), strict=True):
            with_annotations.add(lid)
            if categories_lost and cid not in category_ids:
                bad_category.add(lid)
    sibling_lost: set[str] = set()
    for part, table in healthy["images"].items():
        if part.rsplit("/", 1)[-1] in lost_parts:
            sibling_lost.update(table.filter(pc.equal(table["status"], "labeled"))["labeling_id"].to_pylist())
    current = _current_labeled(healthy["images"].values())
    rows = []
    for row in [] if current is None else current.to_pylist():
        lid = row["labeling_id"]
        lost = lid in sibling_lost or lid in bad_category or (lost_parts and lid not in with_annotations)
        if not lost:
            continue
        rows.append(
            {
                **row,
                "status": "failed",
                "reason": "quarantined: its labels went to quarantine; the next run relabels it",
                "labeling_id": hashlib.sha256(f"quarantine\x1f{lid}\x1f{row['uri']}".encode()).hexdigest()[:32],
                "created_at": dt.datetime.now(dt.UTC),
                "flow_run_id": "dataset-check",
            }
        )
    if rows:
        dataset.write_batch(rows, [], part_name="quarantine-" + utc_now().strftime("%Y%m%dT%H%M%S%f"))
    report.marked_for_relabel = sorted({r["uri"] for r in rows})


def _current_labeled(parts: Iterable[pa.Table]) -> pa.Table | None:
    """The current labeled images rows of the healthy images parts (the bad ones are in quarantine now), from
    the tables already read: no second read of the dataset, which on an object store would go through pyarrow's
    fsspec wrapper, whose threads call into Python and, when a read fails, abort the process at exit."""
    tables = list(parts)
    if not tables:
        return None
    current = current_rows(pa.concat_tables(tables))
    return current.filter(pc.equal(current["status"], "labeled"))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
