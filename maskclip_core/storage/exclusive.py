"""Create-if-absent writes: the one primitive that lets concurrent writers agree (category ids, the lease).

Local disk: the content goes to a temporary file first, then ``os.link`` gives it its name, which fails if the
name exists (atomic on POSIX filesystems, NFS included), so a reader sees the whole file or none. S3: a PUT
with ``If-None-Match: *`` (AWS since 2024, SeaweedFS, MinIO, moto), answered 412 when the key exists. Any other
fsspec filesystem (``memory://`` in tests) is guarded by a lock inside this process only.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from maskclip_core.storage.fs import TEMP_PREFIX, resolve

_PROCESS_LOCK = threading.Lock()
_CONFLICT_RETRIES = 5  # S3 answers 409 to conditional writes racing on one key: the caller may retry


def create_exclusive(url: str, data: bytes, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Write ``data`` at ``url`` only if nothing is there; True if this call created it, False if it existed."""
    fs, path = resolve(url, storage_options)
    if isinstance(fs, LocalFileSystem):
        return _create_local(path, data)
    if _is_s3(fs):
        return _create_s3(fs, path, data)
    with _PROCESS_LOCK:
        if fs.exists(path):
            return False
        fs.pipe_file(path, data)
        return True


def _create_local(path: str, data: bytes) -> bool:
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}-{name}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _is_s3(fs: Any) -> bool:
    try:
        from s3fs import S3FileSystem
    except ImportError:  # pragma: no cover - s3fs is a dependency
        return False
    return isinstance(fs, S3FileSystem)


def _create_s3(fs: Any, path: str, data: bytes) -> bool:
    bucket, key, _ = fs.split_path(path)
    for attempt in range(_CONFLICT_RETRIES + 1):
        try:
            fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except FileExistsError:  # s3fs's translation of 412 Precondition Failed
            return False
        except OSError as e:
            if _precondition_failed(e):  # some servers (SeaweedFS) answer with a status s3fs does not map
                return False
            # 409 ConditionalRequestConflict: another conditional write on this key is in flight; once it
            # lands, the retry answers 412 (or succeeds if that write failed).
            if "conflict" not in str(e).lower() or attempt == _CONFLICT_RETRIES:
                raise
            time.sleep(0.05 * 2**attempt)
        else:
            fs.invalidate_cache(path)
            return True
    return False  # pragma: no cover - the loop returns or raises


def _precondition_failed(error: OSError) -> bool:
    cause = error.__cause__
    code = getattr(cause, "response", {}).get("Error", {}).get("Code") if cause is not None else None
    return code == "PreconditionFailed" or "pre-condition" in str(error).lower()
