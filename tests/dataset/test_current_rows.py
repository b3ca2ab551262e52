"""The current-row rule (``dataset.current_rows``): its Arrow and streaming strategies pick the same rows.

Random images tables with fixed seeds: many uris, several rows per uri under several configs, times often
equal (so ``labeling_id`` decides), ids that share long prefixes (so the streaming tiebreak's digits matter),
``gone`` and ``failed`` rows, batches written twice. Each strategy, and a plain Python reading of the rule,
must pick exactly the same rows; then the same through ``LabelDataset`` on disk, where the known-image index
(streaming) must agree with ``images()`` (Arrow).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from maskclip_core.dataset import known_index
from maskclip_core.dataset.current_rows import current_rows, newest_mask
from maskclip_core.dataset.digests import sha256_digest, source_digest
from maskclip_core.dataset.ids import image_id_from_sha256
from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.dataset.schema import DONE_STATUSES, IMAGES_SCHEMA, ROW_STATUSES

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
# Steps between row times: mostly equal, then a microsecond up to a day apart.
STEPS = [dt.timedelta(0)] * 3 + [dt.timedelta(microseconds=1), dt.timedelta(milliseconds=1), dt.timedelta(days=1)]
KEY_COLUMNS = ["uri", "config_hash", "created_at", "labeling_id", "status"]
SCHEMA = pa.schema([IMAGES_SCHEMA.field(name) for name in KEY_COLUMNS])
CASES = 300


def hex_id(rng: random.Random, prefix: str = "") -> str:
    """A labeling id as the project writes them (32 lowercase hex digits), starting with ``prefix``."""
    return prefix + "".join(rng.choice("0123456789abcdef") for _ in range(32 - len(prefix)))


def random_rows(rng: random.Random) -> list[dict]:
    """Rows of a random images table, shuffled (parts are listed in any order)."""
    configs = [f"cfg{i}" for i in range(rng.randint(1, 3))]
    rows: list[dict] = []
    for u in range(rng.randint(1, 40)):
        uri = f"s3://bucket/{rng.choice('ab')}/{u}.jpg"
        base = hex_id(rng)
        heads: set[str] = set()  # the streaming tiebreak reads 15 digits: the ids of one uri differ in them
        created_at = T0 + rng.choice(STEPS)
        for _ in range(rng.randint(1, 6)):
            labeling_id = hex_id(rng, base[: rng.choice([0, 0, 8, 14])])  # long shared prefixes too
            if labeling_id[:15] in heads:
                continue
            heads.add(labeling_id[:15])
            created_at += rng.choice(STEPS)
            row = {
                "uri": uri,
                "config_hash": rng.choice(configs),
                "created_at": created_at if rng.random() < 0.7 else T0 + rng.choice(STEPS),
                "labeling_id": labeling_id,
                "status": rng.choice(ROW_STATUSES),
            }
            rows.append(row)
            if rng.random() < 0.1:
                rows.append(dict(row))  # one batch written under two part names
    rng.shuffle(rows)
    return rows


def key(row: dict) -> tuple:
    return tuple(row[name] for name in KEY_COLUMNS)


def by_rule(rows: list[dict]) -> list[tuple]:
    """The rule read plainly: per (uri, config), the greatest (created_at, labeling_id)."""
    best: dict[tuple[str, str], dict] = {}
    for row in rows:
        group = (row["uri"], row["config_hash"])
        if group not in best or (row["created_at"], row["labeling_id"]) > (
            best[group]["created_at"],
            best[group]["labeling_id"],
        ):
            best[group] = row
    return sorted(key(r) for r in best.values())


def by_arrow(rows: list[dict]) -> list[tuple]:
    return sorted(key(r) for r in current_rows(pa.Table.from_pylist(rows, schema=SCHEMA)).to_pylist())


def random_batches(rng: random.Random, rows: list[dict]) -> Iterator[pa.RecordBatch]:
    """``rows`` as record batches of random sizes (parts of any size, an empty one among them)."""
    start = 0
    while start < len(rows):
        size = rng.choice([0, 1, 2, 5, 17, len(rows)])
        yield pa.RecordBatch.from_pylist(rows[start : start + size], schema=SCHEMA)
        start += size


def by_streaming(rng: random.Random, rows: list[dict]) -> list[tuple]:
    """The streaming strategy, one config at a time (as the known-image index scans)."""
    picked = []
    for config in sorted({r["config_hash"] for r in rows}):
        of_config = [r for r in rows if r["config_hash"] == config]
        mask = newest_mask(random_batches(rng, of_config))
        assert mask.shape == (len(of_config),)
        picked += [key(r) for r, current in zip(of_config, mask, strict=True) if current]
    return sorted(picked)


def tie_decided(rows: list[dict]) -> int:
    """Groups whose newest time is shared by rows of different labelings: there the tiebreak decides."""
    newest: dict[tuple[str, str], tuple] = {}
    ids: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        group = (row["uri"], row["config_hash"])
        if group not in newest or row["created_at"] > newest[group]:
            newest[group], ids[group] = row["created_at"], set()
        if row["created_at"] == newest[group]:
            ids[group].add(row["labeling_id"])
    return sum(len(v) > 1 for v in ids.values())


def test_the_two_strategies_pick_the_same_rows() -> None:
    decided_by_tiebreak = 0
    for seed in range(CASES):
        rng = random.Random(seed)
        rows = random_rows(rng)
        arrow, streamed = by_arrow(rows), by_streaming(rng, rows)
        assert streamed == arrow, f"seed {seed}: the two strategies pick different rows"
        assert arrow == by_rule(rows), f"seed {seed}: both strategies depart from the rule"
        decided_by_tiebreak += tie_decided(rows)
    assert decided_by_tiebreak > 500  # the cases exercise the tiebreak, not only the times


def test_no_rows_no_current_rows() -> None:
    assert current_rows(SCHEMA.empty_table()).num_rows == 0
    assert newest_mask([]).shape == (0,)
    assert newest_mask([pa.RecordBatch.from_pylist([], schema=SCHEMA)]).shape == (0,)


def dataset_row(row: dict, bits: int) -> dict:
    """An images row the dataset accepts for ``row`` (its content and source version derived from it)."""
    content = hashlib.sha256(f"{row['uri']}|{row['labeling_id'][:4]}".encode()).hexdigest()
    return {
        **row,
        "image_id": image_id_from_sha256(content, bits),
        "sha256": content,
        "width": 4,
        "height": 4,
        "labeler": "maskclip",
        "round": 0,
        "source_version": f"v-{row['labeling_id'][:6]}",
    }


@pytest.mark.parametrize("seed", range(6))
def test_known_index_agrees_with_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Through the dataset: the known-image index (streaming) shows exactly the done rows ``images()`` (Arrow)
    shows, whether parts are read whole or streamed."""
    rng = random.Random(1000 + seed)
    if seed % 2:
        monkeypatch.setattr(known_index, "SMALL_PART_BYTES", 0)  # every part streamed
    store = LabelDataset(str(tmp_path / "out"))
    rows = [dataset_row(r, store.id_bits) for r in random_rows(rng)]
    cut = sorted(rng.sample(range(1, len(rows)), min(4, len(rows) - 1))) if len(rows) > 1 else []
    for i, (start, end) in enumerate(zip([0, *cut], [*cut, len(rows)], strict=True)):
        store.write_batch(rows[start:end], [], part_name=f"p{i}")
    for config in sorted({r["config_hash"] for r in rows}):
        shown = store.images(config, statuses=DONE_STATUSES).to_pylist()
        assert store.known_sha256(config) == {r["sha256"] for r in shown}
        digests = store.known_sha256_digests(config)
        assert len(digests) == len({r["sha256"] for r in shown})
        assert all(sha256_digest(r["sha256"]) in digests for r in shown)
        sources = store.known_sources(config)
        assert len(sources) == len({(r["uri"], r["source_version"]) for r in shown})
        assert all(source_digest(r["uri"], r["source_version"]) in sources for r in shown)
