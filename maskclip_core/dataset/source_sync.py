"""The dataset follows its source: files that a complete listing no longer shows are marked ``gone``.

A labeling run lists its source; every uri the dataset shows as current under that source (and the run's
extension / glob filters) but the listing did not yield left the source (deleted or renamed away). Each gets a
``gone`` row per config, newer than its last labeling, so exports stop showing it while the history keeps
every earlier row. A file that comes back is read and labeled (or its labeling reused) again.

A complete listing that misses most of what the dataset holds from the source is more likely a vanished source
(an unmounted folder still present and empty, a wrong prefix, an expired mount) than a mass deletion: past
``max_gone_fraction`` nothing is marked and :class:`SourceVanished` says so, until the user says it was meant.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow.compute as pc

from maskclip_core.dataset.digests import DIGEST_BYTES, DigestSet, DigestSetBuilder
from maskclip_core.dataset.label_dataset import LabelDataset, utc_now
from maskclip_core.dataset.lease import check_holder
from maskclip_core.dataset.schema import GONE
from maskclip_core.storage.fs import resolve, to_uri


def uri_digest(uri: str) -> bytes:
    """The listing's record of one uri (16 bytes, so a million listed files cost 16 MB)."""
    return hashlib.sha256(uri.encode("utf-8")).digest()[:DIGEST_BYTES]


class SourceVanished(ValueError):
    """The listing misses more of the dataset's files than the run allows to mark gone: nothing was marked."""


class ListedUris:
    """Collects the uris a run listed, as compact digests."""

    def __init__(self) -> None:
        self._builder = DigestSetBuilder()

    def add(self, uri: str) -> None:
        self._builder.add(uri_digest(uri))

    def build(self) -> DigestSet:
        return self._builder.build()


def mark_gone(
    dataset: LabelDataset,
    source: str,
    listed: DigestSet,
    *,
    run_id: str,
    extensions: Iterable[str] | None = None,
    glob: str | None = None,
    source_storage_options: Mapping[str, Any] | None = None,
    max_gone_fraction: float = 1.0,
) -> list[str]:
    """Write ``gone`` rows for the current uris under ``source`` that the run's complete listing missed.

    Only call it after the listing finished without error. Returns the uris marked gone (sorted). Raises
    :class:`SourceVanished`, writing nothing, when more than ``max_gone_fraction`` of the dataset's current
    files under the source (and the run's filters) would be marked gone.
    """
    fs, root = resolve(source, source_storage_options)
    root_uri = to_uri(fs, root.rstrip("/") or root)
    exts = None if extensions is None else tuple("." + e.lower().lstrip(".") for e in extensions)
    pattern = re.compile(_glob_regex(glob)) if glob else None
    current = dataset.images()
    current = current.filter(pc.not_equal(current["status"], GONE))
    # Decide on the uri column alone; only the rows that left become Python dicts (a million-image dataset
    # as dicts would take gigabytes).
    uris = current["uri"].to_pylist()
    in_scope, missing = 0, []
    for i, uri in enumerate(uris):
        if _ours(uri, root_uri, exts, pattern):
            in_scope += 1
            if uri_digest(uri) not in listed:
                missing.append(i)
    if missing and len(missing) > max_gone_fraction * in_scope:  # rows per config: a share of files alike
        held = len({uri for uri in uris if _ours(uri, root_uri, exts, pattern)})
        left = current["uri"].take(missing).unique()
        raise SourceVanished(
            f"the listing of {source} misses {len(left)} of the {held} files the dataset holds from it "
            f"(more than max_gone_fraction={max_gone_fraction:g}): nothing was marked gone. An unmounted folder or a "
            "wrong prefix looks like this; if the files were deleted, run again with --max-gone-fraction 1"
        )
    rows = []
    for row in current.take(missing).to_pylist() if missing else []:
        uri = row["uri"]
        gone = dict(row)
        gone.update(
            status=GONE,
            reason=f"gone: not in the listing of {source} by run {run_id}",
            labeling_id=hashlib.sha256(f"gone\x1f{run_id}\x1f{uri}\x1f{row['config_hash']}".encode()).hexdigest()[:32],
            flow_run_id=run_id,
            created_at=utc_now(),
        )
        rows.append(gone)
    if rows:
        check_holder(dataset.url, dataset.storage_options, run_id)  # a run displaced by --force-lease writes nothing
        dataset.write_batch(rows, [], part_name=f"gone-{run_id}")
    return sorted({r["uri"] for r in rows})


def _ours(uri: str, root_uri: str, exts: tuple[str, ...] | None, pattern: re.Pattern[str] | None) -> bool:
    """Whether ``uri`` is a file of this source (root, extensions, glob): one the listing must show if present."""
    root = root_uri.rstrip("/")
    if uri == root_uri:
        rel = uri.rsplit("/", 1)[-1]
    elif uri.startswith(root + "/"):
        rel = uri[len(root) + 1 :]
    else:
        return False  # another source's file: not ours to judge
    if exts is not None and not rel.lower().endswith(exts):
        return False
    return pattern is None or pattern.match(rel) is not None


def _glob_regex(glob: str) -> str:
    from fsspec.utils import glob_translate

    return glob_translate(glob.strip("/"))
