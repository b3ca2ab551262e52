"""The dataset's manifest ``DATASET/_maskclip_dataset.json``: which format version its files follow.

A dataset keeps the format version it was created with: writers write that version's layout
(``dataset.schema.stored_schema``) and readers map it to today's names, so files of two layouts never mix in
one dataset. Readers refuse a version newer than this package knows, with one line naming both.

Versions:

- 1: datasets written before the manifest existed (no manifest file); annotations call the labeler ``source``.
- 2: the manifest; annotations call the labeler ``labeler``, as the images table does.
- 3: image and annotation ids are below 2**53 (53 bits of SHA-256 instead of 63), so JavaScript tools
  (Label Studio, CVAT, browsers) hold them exactly. Tables are laid out as in version 2.
- 4: the dataset follows its source. The current row is the newest per (uri, config), not per content, so a
  file edited in place retires its older content; images rows may have status ``gone`` (the file left the
  source); two uris may share one ``labeling_id`` (identical bytes, or a renamed file: one labeling, its
  annotations shared); categories are claimed one id per part (``categories/part-id-<id>.parquet``). Ids and
  layout as in version 3. Version 3 readers would show an edited file twice: a writer of this package
  upgrades a version 3 dataset to 4 in place before its first write, so older packages refuse it instead.
  Datasets of versions 1 and 2 keep their version (their column names, their 63-bit ids): this package
  follows the source in them too, but packages that read only those versions cannot be told to refuse.

A change that old readers would misread (another column meaning, image ids of another range, new files they
must honour) bumps :data:`FORMAT_VERSION` and says what changed above.

The name starts with ``_`` so that table listings and Spark-style readers skip it. It is written atomically
by the first write to a dataset, before any part file. A dataset with part files and no manifest was either
written before this format existed (version 1) or lost its manifest (sync tools that skip ``_*`` files):
:func:`infer_format` tells them apart from what the parts hold, so a version 4 dataset is never read as
version 1; ``maskclip dataset check`` reports the missing manifest and ``--repair`` writes it back.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from maskclip_core.storage.fs import atomic_write_bytes, is_hidden, join_url, resolve

FORMAT_VERSION = 4  # what this package writes into new datasets
LEGACY_VERSION = 1  # a dataset without a manifest
READABLE_VERSIONS = (1, 2, 3, 4)
_WIDE_ID_VERSIONS = (1, 2)  # image and annotation ids of 63 bits
# Versions a writer upgrades in place: the same files and ids, read the same way, but older readers would
# misread what this package adds (see version 4 above).
UPGRADED_IN_PLACE = {3: 4}
MANIFEST_NAME = "_maskclip_dataset.json"
FORMAT = "maskclip-dataset"
PACKAGE = "maskclip-labeler"
# Folders whose presence means the dataset was written to before (by a version without manifests).
_DATA_FOLDERS = ("images", "annotations", "categories", "reviewed", "metrics", "labelings")
_NARROW_ID_LIMIT = 2**53  # ids of versions 3 and 4 are below it
REPAIR_HINT = "maskclip dataset check --dataset {url} --repair"


class DatasetFormatError(ValueError):
    """The dataset's format version is one this package cannot read or write."""


def id_bits(version: int) -> int:
    """Width of the image and annotation ids in a dataset of format ``version``: every writer to one dataset
    derives ids the same way, so one image keeps one id."""
    return 63 if version in _WIDE_ID_VERSIONS else 53


def package_version() -> str:
    """The installed version of this package (written into manifests, named in errors)."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def manifest_url(dataset_url: str) -> str:
    return join_url(dataset_url, MANIFEST_NAME)


def read_manifest(dataset_url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The manifest of the dataset at ``dataset_url``, or None when it has none."""
    fs, path = resolve(manifest_url(dataset_url), storage_options)
    fs.invalidate_cache(path.rsplit("/", 1)[0])  # s3fs caches listings; another process may have just written it
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        return None
    try:
        manifest = json.loads(data)
    except ValueError as e:
        raise DatasetFormatError(
            f"{manifest_url(dataset_url)} is not JSON ({e}): not a maskclip dataset manifest"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetFormatError(f"{manifest_url(dataset_url)} is not a maskclip dataset manifest")
    return manifest


def check_format(version: Any, dataset_url: str) -> int:
    """``version`` as an int when this package reads it; otherwise one line naming both versions."""
    known = f"maskclip-labeler {package_version()} reads format versions {READABLE_VERSIONS[0]} to {FORMAT_VERSION}"
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise DatasetFormatError(f"dataset {dataset_url} has an unknown format version {version!r}; {known}")
    if version not in READABLE_VERSIONS:
        raise DatasetFormatError(
            f"dataset {dataset_url} has format version {version}, newer than this {known}: upgrade maskclip-labeler"
        )
    return version


def dataset_format(dataset_url: str, storage_options: Mapping[str, Any] | None = None) -> int:
    """The format version of the dataset at ``dataset_url`` for a reader (no manifest: :func:`infer_format`;
    nothing written yet: version 1)."""
    manifest = read_manifest(dataset_url, storage_options)
    if manifest is None:
        inferred = infer_format(dataset_url, storage_options)
        return LEGACY_VERSION if inferred is None else inferred
    return check_format(manifest.get("format_version"), dataset_url)


def missing_manifest(dataset_url: str, storage_options: Mapping[str, Any] | None = None) -> int | None:
    """The version :func:`infer_format` gives a dataset that holds tables but no manifest; None when the
    manifest is there or nothing was written yet (``maskclip dataset check`` reports the first as a problem)."""
    if read_manifest(dataset_url, storage_options) is not None:
        return None
    return infer_format(dataset_url, storage_options)


def infer_format(dataset_url: str, storage_options: Mapping[str, Any] | None = None) -> int | None:
    """The format version of a dataset without a manifest, from what its parts hold; None when it holds no
    tables (a new dataset).

    - annotations parts name the labeler ``source``: version 1 (written before manifests existed, or a version
      1 dataset that lost its manifest); ``labeler``: a later version that lost its manifest, 2 if an image id
      is 2**53 or more (63-bit ids), else 4 (version 3 is read as 4 and upgraded by writers anyway);
    - parts of both layouts: refused (:class:`DatasetFormatError`, one line naming the repair);
    - no annotations parts: an image id of 2**53 or more gives 1 (versions 1 and 2 differ only in annotations),
      ids all below gives 4, no ids: 4 if a category was claimed by ``categories/part-id-<id>.parquet`` (version
      4 writers only), else 1.
    """
    if not _holds_tables(dataset_url, storage_options):
        return None
    fs, root = resolve(dataset_url, storage_options)
    root = root.rstrip("/") or root
    layouts: dict[int, str] = {}
    for path in _visible_parts(fs, root, "annotations"):
        try:
            with fs.open(path, "rb") as f:
                names = pq.ParquetFile(f).schema_arrow.names
        except (OSError, pa.ArrowException):  # a damaged part: `dataset check` reports it
            continue
        if "source" in names:
            layouts.setdefault(1, path)
        elif "labeler" in names:
            layouts.setdefault(2, path)
    if len(layouts) > 1:
        raise DatasetFormatError(
            f"dataset {dataset_url} has no {MANIFEST_NAME} and its annotations parts are of two format versions "
            f"({_relative(root, layouts[1])} names the labeler `source`, {_relative(root, layouts[2])} `labeler`): "
            f"move the parts of the wrong one away, then run `{REPAIR_HINT.format(url=dataset_url)}`"
        )
    if 1 in layouts:
        return LEGACY_VERSION
    wide = _holds_wide_id(fs, root)
    if 2 in layouts:
        return 2 if wide else FORMAT_VERSION
    if wide is not None:
        return LEGACY_VERSION if wide else FORMAT_VERSION
    claimed = any(p.rsplit("/", 1)[-1].startswith("part-id-") for p in _visible_parts(fs, root, "categories"))
    return FORMAT_VERSION if claimed else LEGACY_VERSION


def ensure_manifest(dataset_url: str, storage_options: Mapping[str, Any] | None = None) -> int:
    """The format version for a writer: the manifest's; without one, written now (before any part file).

    A dataset that already holds tables but no manifest (written before manifests existed, or its manifest
    was lost) keeps the version its parts show (:func:`infer_format`), recorded now. An empty or new one gets
    :data:`FORMAT_VERSION`; one of a version in :data:`UPGRADED_IN_PLACE` is upgraded. Concurrent first
    writers write the same version (each file whole), so the race is harmless.
    """
    manifest = read_manifest(dataset_url, storage_options)
    if manifest is not None:
        version = check_format(manifest.get("format_version"), dataset_url)
        if version not in UPGRADED_IN_PLACE:
            return version
        # Same layout, new meanings: recorded before this writer adds anything an older reader would misread.
        upgraded = {
            **manifest,
            "format_version": UPGRADED_IN_PLACE[version],
            "upgraded": {"from": version, "by": package_version(), "at": _now()},
        }
        _write_manifest(dataset_url, upgraded, storage_options)
        return UPGRADED_IN_PLACE[version]
    inferred = infer_format(dataset_url, storage_options)
    version = FORMAT_VERSION if inferred is None else inferred
    manifest = {
        "format": FORMAT,
        "format_version": version,
        "writer": {"package": PACKAGE, "version": package_version()},
        "created_at": _now(),
    }
    if inferred is not None:  # the dataset held parts: its version was read from them
        manifest["inferred_from_parts"] = True
    _write_manifest(dataset_url, manifest, storage_options)
    return version


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _write_manifest(dataset_url: str, manifest: Mapping[str, Any], storage_options: Mapping[str, Any] | None) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
    atomic_write_bytes(manifest_url(dataset_url), text, storage_options)


def _holds_tables(dataset_url: str, storage_options: Mapping[str, Any] | None) -> bool:
    fs, root = resolve(dataset_url, storage_options)
    root = root.rstrip("/") or root
    fs.invalidate_cache(root)
    try:
        names = fs.ls(root, detail=False)  # one listing request on object stores
    except (FileNotFoundError, NotADirectoryError):
        return False
    finally:
        fs.invalidate_cache(root)
    return any(name.rstrip("/").rsplit("/", 1)[-1] in _DATA_FOLDERS for name in names)


def _visible_parts(fs: Any, root: str, table: str) -> list[str]:
    """Paths of the files of ``table`` that readers read (no ``_`` / ``.`` names), sorted."""
    base = f"{root}/{table}"
    fs.invalidate_cache(base)
    try:
        paths = fs.find(base)
    except (FileNotFoundError, NotADirectoryError):
        return []
    finally:
        fs.invalidate_cache(base)
    return sorted(p for p in paths if not any(is_hidden(s) for s in _relative(base, p).split("/")))


def _holds_wide_id(fs: Any, root: str) -> bool | None:
    """Whether an images row holds an id of 2**53 or more (None: no images row has an id)."""
    seen = False
    for path in _visible_parts(fs, root, "images"):
        try:
            with fs.open(path, "rb") as f:
                # On the calling thread: pyarrow threads calling back into a Python file can abort at exit.
                ids = pq.ParquetFile(f).read(columns=["image_id"], use_threads=False)["image_id"]
        except (OSError, pa.ArrowException, KeyError):
            continue
        values = [i for i in ids.to_pylist() if i is not None]
        if any(i >= _NARROW_ID_LIMIT for i in values):
            return True
        seen = seen or bool(values)
    return False if seen else None


def _relative(root: str, path: str) -> str:
    return path[len(root) :].lstrip("/") if path.startswith(root) else path
