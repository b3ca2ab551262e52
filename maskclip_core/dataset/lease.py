"""A lease on a dataset: one writing run at a time, and a killed run never locks it for good.

The lease is a sequence of generation files ``_lease/<generation>.json`` (hidden from every reader). The
holder is the writer of the highest generation while that file is neither released nor expired. Taking the
lease means creating the next generation with :func:`create_exclusive` (a local hard link, or an S3 PUT with
``If-None-Match: *``), so of two runs that find the lease free at once exactly one gets it. The holder renews
its expiry from a background thread every ``ttl / 3``; a run killed with SIGKILL stops renewing and its lease
expires after ``ttl`` (at once for a run on this machine whose process is gone). ``force`` takes the lease
even from a live holder, which stops writing at its next write: every batch checks that the newest lease
generation is still its run's (:func:`check_holder`, the fencing token) before it labels and before it writes.

A refused run writes nothing: the dataset's format is read before the lease file is created (a dataset newer
than this package is refused with nothing added), and a lease taken on a dataset that held nothing is removed
with the folders it created when the run releases it without having written anything (a run that failed on a
missing source or checkpoint leaves no empty ``_lease/`` behind).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from maskclip_core.dataset.manifest import dataset_format
from maskclip_core.storage.exclusive import create_exclusive
from maskclip_core.storage.fs import atomic_write_bytes, join_url, resolve

LEASE_DIR = "_lease"
DEFAULT_TTL_S = 120.0
_KEEP_GENERATIONS = 8  # older generation files are deleted; a few stay as a trail for debugging

log = logging.getLogger(__name__)


class LeaseHeld(ValueError):
    """Another live run holds the dataset's lease (a ValueError: the CLI prints it as one line)."""


class LeaseLost(RuntimeError):
    """Another run took this run's lease (``--force-lease``): this run must not write into the dataset any more."""


class DatasetLocationError(ValueError):
    """The dataset URL cannot hold a dataset (e.g. a folder under a regular file)."""


class Lease:
    """A held lease; :meth:`release` it (or use it as a context manager). Renews itself until released."""

    def __init__(
        self,
        url: str,
        storage_options: Mapping[str, Any] | None,
        generation: int,
        record: dict,
        created: list[str] | None = None,
    ) -> None:
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.generation = generation
        self.record = record
        self.created = created  # the dataset held nothing: local folders the lease created (innermost first)
        self.lost = False  # a newer generation exists: another run forced the lease away
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name="maskclip-lease", daemon=True)
        self._thread.start()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def renew(self) -> None:
        if _generations(self.url, self.storage_options)[-1:] != [self.generation]:
            self.lost = True
            return
        self.record["expires_at"] = _expiry(self.record["ttl_s"])
        _write(self.url, self.generation, self.record, self.storage_options)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self.lost or _generations(self.url, self.storage_options)[-1:] != [self.generation]:
            return
        if self.created is not None and _remove_if_unused(
            self.url, self.generation, self.created, self.storage_options
        ):
            return
        self.record["released"] = True
        _write(self.url, self.generation, self.record, self.storage_options)

    def _renew_loop(self) -> None:
        interval = max(0.05, float(self.record["ttl_s"]) / 3)
        while not self._stop.wait(interval):
            try:
                self.renew()
            except Exception as e:  # noqa: BLE001 - a storage hiccup: the next renewal tries again
                log.warning("lease renewal of %s failed: %s", self.url, e)
            if self.lost:
                log.error("the lease on %s was taken by another run (--force-lease)", self.url)
                return


def acquire_lease(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    owner: str,
    ttl_s: float = DEFAULT_TTL_S,
    wait_s: float = 0.0,
    force: bool = False,
    poll_s: float = 1.0,
) -> Lease:
    """Take the lease on the dataset at ``url`` for ``owner`` (a run id), waiting up to ``wait_s`` seconds.

    Raises :class:`LeaseHeld` (one line: who holds it, until when, what to do) when it stays held,
    :class:`DatasetLocationError` when ``url`` cannot be a dataset folder, and ``DatasetFormatError`` for a
    dataset of a format this package cannot write, before creating anything.
    """
    try:
        dataset_format(url, storage_options)  # refuses a newer (or mixed) format before a lease file is written
    except NotADirectoryError as e:
        raise DatasetLocationError(f"{url}: cannot hold a dataset ({e.strerror or e})") from e
    new_folders = _new_dataset_folders(url, storage_options)
    deadline = time.monotonic() + wait_s
    while True:
        generations = _generations(url, storage_options)
        current = generations[-1] if generations else 0
        holder = _read(url, current, storage_options) if current else None
        if holder is None or force or _free(holder):
            record = {
                "owner": owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "token": uuid.uuid4().hex,
                "ttl_s": float(ttl_s),
                "acquired_at": dt.datetime.now(dt.UTC).isoformat(),
                "expires_at": _expiry(ttl_s),
                "released": False,
            }
            data = json.dumps(record).encode()
            try:
                created = create_exclusive(_generation_url(url, current + 1), data, storage_options)
            except (NotADirectoryError, FileExistsError) as e:
                raise DatasetLocationError(f"{url}: cannot hold a dataset ({e.strerror or e})") from e
            if created:
                _prune(url, generations, storage_options)
                return Lease(url, storage_options, current + 1, record, new_folders)
            continue  # another run took this generation first: look again
        if time.monotonic() >= deadline:
            raise LeaseHeld(
                f"dataset {url} is in use by run {holder.get('owner')} on {holder.get('host')} "
                f"(pid {holder.get('pid')}) until {holder.get('expires_at')}; wait for it (--lease-wait SECONDS) "
                "or take it over with --force-lease"
            )
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())) or poll_s)


def check_holder(url: str, storage_options: Mapping[str, Any] | None, owner: str) -> None:
    """Raise :class:`LeaseLost` when the dataset's newest lease generation is another run's: a run displaced by
    ``--force-lease`` stops at its next write. One listing of ``_lease/`` and one small read.

    A dataset without lease files is written by no labeling run (the API, tests): nothing to check.
    """
    generations = _generations(url, storage_options)
    if not generations:
        return
    record = _read(url, generations[-1], storage_options)
    if record is not None and record.get("owner") != owner:
        raise LeaseLost(
            f"run {owner} lost the lease on {url} to run {record.get('owner')} on {record.get('host')} "
            "(--force-lease): it stops writing"
        )


def _new_dataset_folders(url: str, storage_options: Mapping[str, Any] | None) -> list[str] | None:
    """None when the dataset holds something; else the local folders a write would create, innermost first
    (none on object stores), so a run that writes nothing can take them away again."""
    fs, root = resolve(url, storage_options)
    try:
        if fs.ls(root, detail=False):
            return None
    except (FileNotFoundError, NotADirectoryError):
        pass
    if not isinstance(fs, LocalFileSystem):
        return []  # object stores have no folders
    created = []
    current = os.path.abspath(root)
    while not os.path.exists(current):
        created.append(current)
        current = os.path.dirname(current)
    return created


def _remove_if_unused(url: str, generation: int, created: list[str], storage_options: Mapping[str, Any] | None) -> bool:
    """Delete this run's lease file and the folders it created when the dataset holds nothing else; whether it
    did. Only what is provably this run's goes: another run's newer lease file keeps ``_lease/`` in place."""
    fs, root = resolve(url, storage_options)
    fs.invalidate_cache(root)
    try:
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    except (FileNotFoundError, NotADirectoryError):
        return False
    if names != [LEASE_DIR]:
        return False  # the run wrote something: the lease stays as a record, released
    fs.rm_file(resolve(_generation_url(url, generation), storage_options)[1])
    if not isinstance(fs, LocalFileSystem):
        return True
    for folder in [os.path.join(os.path.abspath(root), LEASE_DIR), *created]:
        try:
            os.rmdir(folder)
        except OSError:  # not empty (another run's lease, someone's file) or gone: leave it and all above it
            break
    return True


def _free(record: dict) -> bool:
    if record.get("released"):
        return True
    if record.get("host") == socket.gethostname() and not _alive(record.get("pid")):
        return True  # its process on this machine is dead (killed): no need to wait for the expiry
    try:
        return dt.datetime.fromisoformat(record["expires_at"]) <= dt.datetime.now(dt.UTC)
    except (KeyError, TypeError, ValueError):
        return True  # unreadable: nobody can be shown to hold it


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # cannot tell: trust the expiry
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _expiry(ttl_s: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=float(ttl_s))).isoformat()


def _generation_url(url: str, generation: int) -> str:
    return join_url(url, LEASE_DIR, f"{generation:012d}.json")


def _generations(url: str, storage_options: Mapping[str, Any] | None) -> list[int]:
    fs, root = resolve(join_url(url, LEASE_DIR), storage_options)
    fs.invalidate_cache(root)
    try:
        names = [p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())


def _read(url: str, generation: int, storage_options: Mapping[str, Any] | None) -> dict | None:
    fs, path = resolve(_generation_url(url, generation), storage_options)
    try:
        return json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return None


def _write(url: str, generation: int, record: dict, storage_options: Mapping[str, Any] | None) -> None:
    atomic_write_bytes(_generation_url(url, generation), json.dumps(record).encode(), storage_options)


def _prune(url: str, generations: list[int], storage_options: Mapping[str, Any] | None) -> None:
    old = generations[:-_KEEP_GENERATIONS]
    if not old:
        return
    fs, _ = resolve(url, storage_options)
    for generation in old:
        try:
            fs.rm(resolve(_generation_url(url, generation), storage_options)[1])
        except OSError:
            pass  # another run pruned it
