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
by the first write to a dataset, before any part file: a dataset with part files and no manifest is
therefore one written before this format existed (version 1).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from maskclip_core.storage.fs import atomic_write_bytes, join_url, resolve

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
    """The format version of the dataset at ``dataset_url`` for a reader (no manifest: version 1)."""
    manifest = read_manifest(dataset_url, storage_options)
    if manifest is None:
        return LEGACY_VERSION
    return check_format(manifest.get("format_version"), dataset_url)


def ensure_manifest(dataset_url: str, storage_options: Mapping[str, Any] | None = None) -> int:
    """The format version for a writer: the manifest's; without one, written now (before any part file).

    A dataset that already holds tables but no manifest was written before manifests existed: it keeps
    version 1 (its layout), recorded now. An empty or new one gets :data:`FORMAT_VERSION`; one of a version in
    :data:`UPGRADED_IN_PLACE` is upgraded. Concurrent first writers write the same version (each file whole),
    so the race is harmless.
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
    version = LEGACY_VERSION if _holds_tables(dataset_url, storage_options) else FORMAT_VERSION
    manifest = {
        "format": FORMAT,
        "format_version": version,
        "writer": {"package": PACKAGE, "version": package_version()},
        "created_at": _now(),
    }
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
