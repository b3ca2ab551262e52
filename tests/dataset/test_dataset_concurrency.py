"""Two real processes racing on one dataset: category registration (local disk, S3 on SeaweedFS and moto)."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import pytest
from support.race_workers import register_categories

from maskclip_core.dataset.label_dataset import LabelDataset
from maskclip_core.storage.exclusive import create_exclusive

TRIALS = 20
NAMES_A = ["cat", "dog", "shared"]
NAMES_B = ["red", "shared", "blue"]


def race_categories(urls: list[str], storage_options: dict[str, Any]) -> list[tuple[str, dict[str, int]]]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=register_categories, args=(barrier, results, urls, names, storage_options))
        for names in (NAMES_A, NAMES_B)
    ]
    for p in procs:
        p.start()
    out = [results.get(timeout=300) for _ in range(2 * len(urls))]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return out


def check_race(urls: list[str], storage_options: dict[str, Any]) -> None:
    for url, ids in race_categories(urls, storage_options):
        stored = {c["name"]: c["id"] for c in LabelDataset(url, storage_options).categories()}
        assert set(NAMES_A) | set(NAMES_B) <= set(stored) <= set(NAMES_A) | set(NAMES_B) | {"sky"}, url
        assert len(set(stored.values())) == len(stored), f"{url}: two names share an id: {stored}"
        assert sorted(stored.values()) == list(range(1, len(stored) + 1))  # dense
        # What each process was told is what the dataset says (annotations would name the right class).
        assert ids == {name: stored[name] for name in ids}


def test_category_ids_never_collide_between_two_processes_on_local_disk(tmp_path: Path) -> None:
    urls = [str(tmp_path / f"trial{i}") for i in range(TRIALS)]
    LabelDataset(urls[0]).ensure_categories(["sky"])  # one trial starts from an existing vocabulary
    check_race(urls, {})
    assert LabelDataset(urls[0]).ensure_categories(["sky"]) == {"sky": 1}


def test_category_ids_never_collide_on_seaweedfs(seaweedfs: Any) -> None:
    base = f"s3://{seaweedfs.bucket}/categories-race"
    check_race([f"{base}/trial{i}" for i in range(6)], seaweedfs.storage_options)


def test_category_ids_never_collide_on_moto(s3_server: Any) -> None:
    bucket = s3_server.make_bucket("race")
    check_race([f"s3://{bucket}/trial{i}" for i in range(2)], s3_server.storage_options)


@pytest.mark.parametrize("backend", ["local", "s3", "memory"])
def test_create_exclusive_creates_once(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    options: dict[str, Any] = {}
    if backend == "local":
        url = str(tmp_path / "sub" / "claim")
    elif backend == "s3":
        server = request.getfixturevalue("s3_server")
        url, options = server.fresh_url("claim"), server.storage_options
    else:
        url = f"memory://exclusive-{tmp_path.name}/claim"
    assert create_exclusive(url, b"first", options)
    assert not create_exclusive(url, b"second", options)
    from maskclip_core.storage.fs import read_bytes

    assert read_bytes(url, options) == b"first"
    if backend == "local":
        assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["claim"]  # no temporary left behind
