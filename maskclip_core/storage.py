"""fsspec helpers: resolve URLs, stream source listings, read bytes, write whole files atomically.

Every path here is a URL (``s3://bucket/key``, ``memory://x``, ``file:///x``) or a bare local path.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import glob_translate

DEFAULT_IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
)  # fmt: skip

# Temporary / marker files (ours and Spark's / Hadoop's) start with these; readers skip them.
HIDDEN_PREFIXES: tuple[str, ...] = ("_", ".")


@dataclass(frozen=True)
class SourceFile:
    """One listed file: where it is, how big, and a token that changes when its content does."""

    uri: str  # full URL with protocol (s3://bucket/key), or an absolute path for local files
    size: int
    version: str  # ETag on object stores, modification time elsewhere; compare for equality only


def resolve(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and protocol-less path for ``url``."""
    return fsspec.core.url_to_fs(url, **dict(storage_options or {}))


def to_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The URL of ``path`` on ``fs``: absolute path for local files, ``protocol://path`` otherwise."""
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def join_url(base: str, *parts: str) -> str:
    """Join URL / path segments with single slashes (``join_url("s3://b/", "images", "x")``)."""
    out = base
    for part in parts:
        part = part.strip("/")
        if part:
            out = out + part if out.endswith("/") else f"{out}/{part}"
    return out


def is_hidden(name: str) -> bool:
    """Names that listings skip: temporary parts, markers, dotfiles."""
    return name.startswith(HIDDEN_PREFIXES)


def iter_source_files(
    url: str,
    *,
    extensions: Iterable[str] | None = DEFAULT_IMAGE_EXTENSIONS,
    glob: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Iterator[SourceFile]:
    """Stream the files under ``url``, one directory listing at a time, in a deterministic order.

    Files come sorted by name within a directory, then subdirectories in sorted order (depth first).
    ``extensions`` filters case-insensitively (``None``: every file). ``glob`` matches the path relative to
    ``url`` with fsspec glob rules (``*`` within one segment, ``**`` across segments). Names starting with
    ``_`` or ``.`` are skipped, directories included. ``url`` may also name a single file.
    """
    fs, root = resolve(url, storage_options)
    root = root.rstrip("/") or root
    exts = None if extensions is None else tuple("." + e.lower().lstrip(".") for e in extensions)
    pattern = re.compile(glob_translate(glob.strip("/"))) if glob else None

    def wanted(rel: str) -> bool:
        if exts is not None and not rel.lower().endswith(exts):
            return False
        return pattern is None or pattern.match(rel) is not None

    fs.invalidate_cache(root)  # a long-lived s3fs instance may hold a stale listing
    # walk() lists one directory per step and lets a top-down caller prune and reorder ``dirs`` in place.
    for dirpath, dirs, files in fs.walk(root, detail=True, on_error="raise"):
        keep = sorted(d for d in dirs if not is_hidden(d))
        infos = dict(dirs)
        dirs.clear()
        dirs.update((d, infos[d]) for d in keep)
        for name in sorted(files):
            info = files[name]
            if name == "":  # ``url`` is itself a file
                rel = root.rsplit("/", 1)[-1]
                path = root
            else:
                if is_hidden(name):
                    continue
                path = f"{dirpath.rstrip('/')}/{name}"
                rel = path[len(root) :].lstrip("/")
            if wanted(rel):
                yield SourceFile(uri=to_uri(fs, path), size=int(info.get("size") or 0), version=_version(info))


def _version(info: Mapping[str, Any]) -> str:
    """A change token from listing metadata, so detecting changes costs no extra request."""
    for key in ("ETag", "etag", "md5Hash", "content_md5"):
        if info.get(key):
            return f"etag:{str(info[key]).strip(chr(34))}"
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        value = info.get(key)
        if value is not None:
            return f"mtime:{value.isoformat() if hasattr(value, 'isoformat') else value}"
    return f"size:{info.get('size')}"


def read_bytes(uri: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    """The whole content of ``uri``."""
    fs, path = resolve(uri, storage_options)
    return fs.cat_file(path)


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (image identity: ``image_id`` derives from it)."""
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(url: str, data: bytes, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write ``data`` so that readers see the old file, or the whole new one, never a partial one.

    Local: a temporary ``_tmp-<uuid>-<name>`` in the same directory (readers skip ``_`` names), fsync,
    then ``os.replace``. Object stores: one PUT (``pipe_file``), which stores make visible whole.
    """
    fs, path = resolve(url, storage_options)
    if not isinstance(fs, LocalFileSystem):
        fs.pipe_file(path, data)
        return
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f"_tmp-{uuid.uuid4().hex}-{name}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Persist the rename itself (POSIX); not possible on every platform, so best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
