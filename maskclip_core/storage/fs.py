"""fsspec helpers: resolve URLs, stream source listings, read bytes, write whole files atomically (the one
atomic writer of the project: every table part, record, export and thumbnail goes through it).

Every path here is a URL (``s3://bucket/key``, ``memory://x``, ``file:///x``) or a bare local path.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import glob_translate

DEFAULT_IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
)  # fmt: skip

# Temporary / marker files (ours and Spark's / Hadoop's) start with these; readers skip them.
HIDDEN_PREFIXES: tuple[str, ...] = ("_", ".")
TEMP_PREFIX = "_tmp-"  # a file being written whole under this name, renamed when done (a killed writer leaves it)


@dataclass(frozen=True)
class SourceFile:
    """One listed file: where it is, how big, and a token that changes when its content does."""

    uri: str  # full URL with protocol (s3://bucket/key), or an absolute path for local files
    size: int
    version: str  # ETag on object stores, stat fields for local files, mtime elsewhere; compare for equality only


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
    """Stream the files under ``url`` in a deterministic order, holding one directory's names at most.

    Files come sorted by name within a directory, then subdirectories in sorted order (depth first).
    ``extensions`` filters case-insensitively (``None``: every file). ``glob`` matches the path relative to
    ``url`` with fsspec glob rules (``*`` within one segment, ``**`` across segments). Names starting with
    ``_`` or ``.`` are skipped, directories included. ``url`` may also name a single file.

    Memory stays flat however many files there are:

    - local folders: one directory's sorted path names at a time (no info dict per file), each file stat'ed
      as it is yielded; only regular files are listed; a symlinked file has its target's size and version, a
      symlinked directory is not followed;
    - S3 (s3fs): one page of ``list_objects_v2`` (1,000 keys) at a time, in the store's key order (sorted on
      S3 and the usual compatible stores), without filling s3fs's listing cache, so a long-lived process
      neither keeps the whole tree nor sees a stale subdirectory on its next run;
    - other filesystems: ``fs.walk``, one directory listing at a time.
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
    if isinstance(fs, LocalFileSystem):
        entries = _local_files(fs, root)
    elif _is_plain_s3(fs):
        entries = _s3_files(fs, root)
    else:
        entries = _walk_files(fs, root)
    for path, size, version in entries:
        rel = root.rsplit("/", 1)[-1] if path == root else path[len(root) :].lstrip("/")
        if wanted(rel):
            yield SourceFile(uri=to_uri(fs, path), size=size, version=version)


def require_source(url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Raise ``FileNotFoundError`` naming ``url`` when it is neither a file nor a folder (prefix) with files, so a
    run checks its source before it writes anything (a listing would find out only after the run started)."""
    fs, root = resolve(url, storage_options)
    fs.invalidate_cache(root)
    if not fs.exists(root.rstrip("/") or root):
        raise FileNotFoundError(f"source {url}: no such file or folder")


# Each lister yields (path without protocol, size, version) for the visible files under ``root``, or for
# ``root`` itself when it is a file.


def _local_files(fs: LocalFileSystem, root: str) -> Iterator[tuple[str, int, str]]:
    st = os.stat(root)  # FileNotFoundError for a missing source
    if not stat.S_ISDIR(st.st_mode):
        yield root, st.st_size, local_version(st)
        return
    yield from _local_directory(fs, root)


def _local_directory(fs: LocalFileSystem, directory: str) -> Iterator[tuple[str, int, str]]:
    paths = sorted(fs.ls(directory, detail=False))  # names only: an info dict per file would cost ~1 KB
    prefix = len(directory.rstrip("/")) + 1
    subdirs = []
    for path in paths:
        if is_hidden(path[prefix:]):
            continue
        try:
            st = os.stat(path)  # follows a symlink: its version is that of the content it points to
        except (FileNotFoundError, NotADirectoryError):
            continue  # deleted since the directory was read, or a dangling link
        except OSError as e:
            # A symlink loop, a name too long, no permission: listed with a token that says so, so the batch
            # records the file as failed with the reason, and the listing goes on to the files after it.
            yield path, 0, f"unreadable:{errno.errorcode.get(e.errno or 0, e.errno)}"
            continue
        if stat.S_ISDIR(st.st_mode):
            if not os.path.islink(path):  # a linked directory could make a cycle
                subdirs.append(path)
        elif stat.S_ISREG(st.st_mode):  # not FIFOs, sockets or devices: reading them could block
            yield path, st.st_size, local_version(st)
    del paths
    for sub in subdirs:
        yield from _local_directory(fs, sub)


def local_version(st: os.stat_result) -> str:
    """A local file's change token from one ``stat``: mtime, ctime, size and inode, never its bytes.

    mtime alone misses an edit whose mtime was put back (``cp -p``, ``rsync -t``, archive extraction, ``touch
    -r``). ctime cannot be set by the user: every content write, and the ``utime`` that restores an mtime,
    moves it; a file replaced by rename (rsync, editors) also gets a new inode. So the token changes whenever
    the content may have; it also changes on chmod / chown / rename, which costs one read and SHA-256 of the
    file (its bytes are known, so its labeling is reused, not redone). Reading every file on every run to
    hash it would cost the whole source's bytes each run.
    """
    return f"stat:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_size}:{st.st_ino}"


def _is_plain_s3(fs: fsspec.AbstractFileSystem) -> bool:
    """An s3fs filesystem listed page by page here (a version-aware one goes through ``walk``)."""
    try:
        from s3fs import S3FileSystem
    except ImportError:  # pragma: no cover - s3fs is a dependency
        return False
    return isinstance(fs, S3FileSystem) and not getattr(fs, "version_aware", False)


def _s3_files(fs: Any, root: str) -> Iterator[tuple[str, int, str]]:
    bucket, key, _ = fs.split_path(root)
    listed = [False]
    yield from _s3_directory(fs, bucket, key.strip("/"), listed)
    if not listed[0]:  # nothing under ``root/``: a single object, or missing (FileNotFoundError)
        info = fs.info(root)
        if info["type"] != "directory":
            yield root, int(info.get("size") or 0), _version(info)


def _s3_directory(fs: Any, bucket: str, key: str, listed: list[bool]) -> Iterator[tuple[str, int, str]]:
    """The objects directly under ``key/`` as they arrive, page by page; then each subdirectory in turn."""
    prefix = f"{key}/" if key else ""
    request = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/", **getattr(fs, "req_kw", {})}
    subdirs: list[str] = []
    while True:
        page = fs.call_s3("list_objects_v2", **request)  # s3fs's retries and error translation
        for common in page.get("CommonPrefixes", []):
            listed[0] = True
            name = common["Prefix"][len(prefix) :].rstrip("/")
            if name and not is_hidden(name):
                subdirs.append(common["Prefix"].rstrip("/"))
        for obj in page.get("Contents", []):
            listed[0] = True
            name = obj["Key"][len(prefix) :]
            if not name or name.endswith("/") or is_hidden(name):  # directory markers, hidden files
                continue
            yield f"{bucket}/{obj['Key']}", int(obj.get("Size") or 0), _version(obj)
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            break
        request["ContinuationToken"] = token
    for sub in sorted(subdirs):
        yield from _s3_directory(fs, bucket, sub, listed)


def _walk_files(fs: fsspec.AbstractFileSystem, root: str) -> Iterator[tuple[str, int, str]]:
    # walk() lists one directory per step and lets a top-down caller prune and reorder ``dirs`` in place.
    for dirpath, dirs, files in fs.walk(root, detail=True, on_error="raise"):
        keep = sorted(d for d in dirs if not is_hidden(d))
        infos = dict(dirs)
        dirs.clear()
        dirs.update((d, infos[d]) for d in keep)
        for name in sorted(files):
            info = files[name]
            if name == "":  # ``root`` is itself a file
                path = root
            elif is_hidden(name):
                continue
            else:
                path = f"{dirpath.rstrip('/')}/{name}"
            yield path, int(info.get("size") or 0), _version(info)


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


def read_json(uri: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """The parsed JSON at ``uri``."""
    return json.loads(read_bytes(uri, storage_options))


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
    with _local_temp(path) as (_, f):
        f.write(data)


@contextmanager
def atomic_output(url: str, storage_options: Mapping[str, Any] | None = None) -> Iterator[IO[bytes]]:
    """A binary file handle whose content appears at ``url`` whole, or not at all (on error).

    For content written piece by piece (exports: zips that may carry the images, Label Studio tasks): on disk,
    never all in memory. Local: the temporary file of :func:`atomic_write_bytes`, renamed over ``url`` at the
    end (its mode follows the umask, as for any file the user writes); when the content fails half-way, the
    folders created for it are removed again. Object stores: a local temporary file sent in one upload, which
    the store publishes whole.
    """
    fs, path = resolve(url, storage_options)
    if isinstance(fs, LocalFileSystem):
        with new_directories(os.path.dirname(path)), _local_temp(path) as (_, f):
            yield f
        return
    fd, tmp = tempfile.mkstemp(prefix="_tmp-maskclip-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        fs.put_file(tmp, path)
    finally:
        os.unlink(tmp)


@contextmanager
def _local_temp(path: str) -> Iterator[tuple[str, IO[bytes]]]:
    """(temporary path, handle) beside ``path``; fsynced and renamed over ``path`` when the block ends."""
    directory, name = os.path.split(path)
    os.makedirs(directory or ".", exist_ok=True)
    tmp = os.path.join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}-{name}")
    try:
        with open(tmp, "wb") as f:
            yield tmp, f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory or ".")


@contextmanager
def new_directories(directory: str) -> Iterator[None]:
    """Create the local ``directory`` (and missing parents) for a write; when the block fails, remove those
    it created that are still empty, so a failed export leaves no empty folder behind.

    For one writer's destination (an export), not for folders that concurrent writers share.
    """
    created = []
    current = os.path.abspath(directory or ".")
    while not os.path.exists(current):
        created.append(current)  # innermost first
        current = os.path.dirname(current)
    os.makedirs(directory or ".", exist_ok=True)
    try:
        yield
    except BaseException:
        for path in created:
            try:
                os.rmdir(path)
            except OSError:  # not empty (someone else's file) or gone: leave it and everything above it
                break
        raise


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
