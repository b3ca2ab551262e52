"""storage: streaming listings, reads and atomic writes on local disk, memory:// and S3 (moto)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from maskclip_core.storage import fs as storage
from maskclip_core.storage.fs import (
    SourceFile,
    atomic_output,
    atomic_write_bytes,
    iter_source_files,
    join_url,
    local_version,
    read_bytes,
    resolve,
    sha256_hex,
)

TREE = {
    "a.png": b"a",
    "b.JPG": b"bb",
    "c.txt": b"ccc",
    "_tmp-123-d.jpg": b"partial",
    ".hidden.jpg": b"dot",
    "sub/x.jpeg": b"xxxx",
    "sub/deeper/w.webp": b"wwwww",
    "sub/deeper/v.TIFF": b"vv",
    "_skip/y.jpg": b"y",
    ".git/z.jpg": b"z",
    "zz/late.gif": b"g",
}
VISIBLE_IMAGES = ["a.png", "b.JPG", "sub/x.jpeg", "sub/deeper/v.TIFF", "sub/deeper/w.webp", "zz/late.gif"]


def _make_local_tree(root: Path) -> None:
    for rel, data in TREE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def _rel(files: list[SourceFile], root: str) -> list[str]:
    return [f.uri[len(root) :].lstrip("/") for f in files]


# --- URLs ------------------------------------------------------------------------------------------------


def test_join_url() -> None:
    assert join_url("s3://bucket", "images", "part-1.parquet") == "s3://bucket/images/part-1.parquet"
    assert join_url("s3://bucket/out/", "/images/") == "s3://bucket/out/images"
    assert join_url("/tmp/x", "a/b", "", "c") == "/tmp/x/a/b/c"
    assert join_url("memory://", "root") == "memory://root"
    assert join_url("/tmp/x") == "/tmp/x"


def test_resolve_local_and_memory(tmp_path: Path) -> None:
    fs, path = resolve(str(tmp_path))
    assert isinstance(fs, LocalFileSystem) and path == str(tmp_path)
    fs, path = resolve(f"file://{tmp_path}/x")
    assert isinstance(fs, LocalFileSystem) and path == f"{tmp_path}/x"
    fs, path = resolve("memory://bucket/key")
    assert isinstance(fs, MemoryFileSystem) and path.endswith("bucket/key")


def test_sha256_hex() -> None:
    assert sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# --- listing ---------------------------------------------------------------------------------------------


def test_local_listing_order_filter_and_hidden(tmp_path: Path) -> None:
    _make_local_tree(tmp_path)
    files = list(iter_source_files(str(tmp_path)))
    assert _rel(files, str(tmp_path)) == VISIBLE_IMAGES
    assert all(os.path.isabs(f.uri) and Path(f.uri).is_file() for f in files)
    assert [f.size for f in files] == [len(TREE[r]) for r in VISIBLE_IMAGES]
    assert all(f.version.startswith("stat:") for f in files)


def test_listing_through_file_url_gives_plain_paths(tmp_path: Path) -> None:
    _make_local_tree(tmp_path)
    files = list(iter_source_files(f"file://{tmp_path}"))
    assert [f.uri for f in files] == [str(tmp_path / r) for r in VISIBLE_IMAGES]


def test_extension_filter_is_case_insensitive(tmp_path: Path) -> None:
    _make_local_tree(tmp_path)
    assert _rel(list(iter_source_files(str(tmp_path), extensions=["JPG", ".tiff"])), str(tmp_path)) == [
        "b.JPG",
        "sub/deeper/v.TIFF",
    ]
    everything = _rel(list(iter_source_files(str(tmp_path), extensions=None)), str(tmp_path))
    assert "c.txt" in everything and not any(p.split("/")[-1].startswith(("_", ".")) for p in everything)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*.png", ["a.png"]),
        ("sub/**", ["sub/x.jpeg", "sub/deeper/v.TIFF", "sub/deeper/w.webp"]),
        ("**/*.webp", ["sub/deeper/w.webp"]),
        ("*/x.*", ["sub/x.jpeg"]),
    ],
)
def test_glob_is_relative_to_root(tmp_path: Path, pattern: str, expected: list[str]) -> None:
    _make_local_tree(tmp_path)
    assert _rel(list(iter_source_files(str(tmp_path), glob=pattern)), str(tmp_path)) == expected


def test_single_file_url(tmp_path: Path) -> None:
    _make_local_tree(tmp_path)
    files = list(iter_source_files(str(tmp_path / "sub" / "x.jpeg")))
    assert [f.uri for f in files] == [str(tmp_path / "sub" / "x.jpeg")]


def test_missing_source_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(iter_source_files(str(tmp_path / "nope")))


def test_version_changes_with_content(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"1")
    os.utime(tmp_path / "a.jpg", (1_000_000, 1_000_000))
    (before,) = iter_source_files(str(tmp_path))
    (tmp_path / "a.jpg").write_bytes(b"2")
    os.utime(tmp_path / "a.jpg", (2_000_000, 2_000_000))
    (after,) = iter_source_files(str(tmp_path))
    assert before.version != after.version


def test_version_changes_with_content_whose_mtime_was_put_back(tmp_path: Path) -> None:
    """``cp -p``, ``rsync -t`` and archive extraction restore the mtime of a file whose bytes changed."""
    (tmp_path / "a.jpg").write_bytes(b"old")
    os.utime(tmp_path / "a.jpg", ns=(1_000_000_000_000, 1_000_000_000_000))
    (before,) = iter_source_files(str(tmp_path))
    (tmp_path / "a.jpg").write_bytes(b"new")  # same size
    os.utime(tmp_path / "a.jpg", ns=(1_000_000_000_000, 1_000_000_000_000))
    (after,) = iter_source_files(str(tmp_path))
    assert before.version != after.version
    (again,) = iter_source_files(str(tmp_path))
    assert again.version == after.version  # an untouched file keeps its token: no reread


def test_listing_streams_one_directory_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for d in range(5):
        for i in range(3):
            (tmp_path / f"d{d}").mkdir(exist_ok=True)
            (tmp_path / f"d{d}" / f"{i}.jpg").write_bytes(b"x")
    calls: list[str] = []
    real_ls = LocalFileSystem.ls

    def counting_ls(self: LocalFileSystem, path: str, *args: object, **kwargs: object) -> list:
        calls.append(path)
        return real_ls(self, path, *args, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "ls", counting_ls)
    it = iter_source_files(str(tmp_path))
    first = next(it)
    assert first.uri.endswith("d0/0.jpg")
    assert len(calls) == 2  # the root and d0, not the whole tree
    assert len(list(it)) == 14


# --- reads and atomic writes ------------------------------------------------------------------------------


def test_read_bytes_local(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"\x00\x01payload")
    assert read_bytes(str(tmp_path / "f.bin")) == b"\x00\x01payload"


def test_atomic_write_local_creates_dirs_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "out" / "images" / "part-1.parquet"
    atomic_write_bytes(str(target), b"first")
    atomic_write_bytes(str(target), b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["part-1.parquet"]  # no temporary left behind


def test_atomic_write_local_uses_hidden_temp_in_same_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str, bytes]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        seen.append((src, dst, Path(src).read_bytes()))
        real_replace(src, dst)

    monkeypatch.setattr(storage.os, "replace", spy)
    atomic_write_bytes(str(tmp_path / "x.parquet"), b"data")
    ((src, dst, content),) = seen
    assert Path(src).parent == tmp_path and Path(src).name.startswith("_tmp-")
    assert Path(src).name.endswith("-x.parquet") and dst == str(tmp_path / "x.parquet")
    assert content == b"data"


def test_atomic_write_failure_keeps_old_file_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.parquet"
    target.write_bytes(b"old")

    def crash(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(storage.os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_bytes(str(target), b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.parquet"]


def test_streamed_atomic_output_uses_the_same_temporary_convention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        seen.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(storage.os, "replace", spy)
    target = tmp_path / "sub" / "x.zip"
    with atomic_output(str(target)) as f:
        f.write(b"one ")
        assert not target.exists()  # nothing visible until the block ends
        f.write(b"two")
    assert target.read_bytes() == b"one two"
    assert len(seen) == 1 and seen[0].startswith("_tmp-") and seen[0].endswith("-x.zip")


def test_streamed_atomic_output_failure_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "x.zip"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="exporter bug"):
        with atomic_output(str(target)) as f:
            f.write(b"half")
            raise RuntimeError("exporter bug")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.zip"]


def test_streamed_atomic_output_to_s3(s3_server, tmp_path: Path) -> None:
    url, opts = s3_server.fresh_url("zips/x.zip"), s3_server.storage_options
    with atomic_output(url, opts) as f:
        f.write(b"zip bytes")
    assert read_bytes(url, opts) == b"zip bytes"
    with pytest.raises(RuntimeError):
        with atomic_output(url, opts) as f:
            f.write(b"partial")
            raise RuntimeError("stop")
    assert read_bytes(url, opts) == b"zip bytes"  # the failed upload never happened


def test_memory_filesystem_roundtrip() -> None:
    fs = fsspec.filesystem("memory")
    root = "memory://storage-test"
    try:
        atomic_write_bytes(join_url(root, "a", "one.jpg"), b"1")
        atomic_write_bytes(join_url(root, "_tmp-x-two.jpg"), b"2")
        assert read_bytes(join_url(root, "a", "one.jpg")) == b"1"
        assert [f.uri for f in iter_source_files(root)] == ["memory:///storage-test/a/one.jpg"]
    finally:
        fs.rm("/storage-test", recursive=True)


# --- S3 ------------------------------------------------------------------------------------------------


def test_s3_listing_read_and_write(s3_server) -> None:
    root = s3_server.fresh_url("photos")
    opts = s3_server.storage_options
    for rel, data in TREE.items():
        atomic_write_bytes(join_url(root, rel), data, opts)
    files = list(iter_source_files(root, storage_options=opts))
    assert [f.uri for f in files] == [join_url(root, r) for r in VISIBLE_IMAGES]
    assert [f.size for f in files] == [len(TREE[r]) for r in VISIBLE_IMAGES]
    md5 = hashlib.md5(TREE["a.png"]).hexdigest()  # a single-part upload's ETag is the MD5
    assert files[0].version == f"etag:{md5}"
    assert read_bytes(files[1].uri, opts) == TREE["b.JPG"]
    globbed = list(iter_source_files(root, glob="sub/deeper/*", storage_options=opts))
    assert [f.uri.rsplit("/", 1)[-1] for f in globbed] == ["v.TIFF", "w.webp"]


def test_s3_overwrite_and_listing_sees_new_objects(s3_server) -> None:
    root = s3_server.fresh_url()
    opts = s3_server.storage_options
    atomic_write_bytes(join_url(root, "a.jpg"), b"one", opts)
    (first,) = iter_source_files(root, storage_options=opts)
    atomic_write_bytes(join_url(root, "a.jpg"), b"two!", opts)
    atomic_write_bytes(join_url(root, "b.jpg"), b"b", opts)
    files = list(iter_source_files(root, storage_options=opts))
    assert [f.uri.rsplit("/", 1)[-1] for f in files] == ["a.jpg", "b.jpg"]
    assert files[0].version != first.version and files[0].size == 4
    assert read_bytes(files[0].uri, opts) == b"two!"


def test_s3_listing_pages_through_a_directory_without_the_listing_cache(
    s3_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Page by page (2 keys a page here), directory markers skipped, nothing left in s3fs's dircache, and a
    file another client adds to a subdirectory is seen by the next listing of the same process."""
    import s3fs

    root = s3_server.fresh_url("photos")
    opts = s3_server.storage_options
    for rel, data in TREE.items():
        atomic_write_bytes(join_url(root, rel), data, opts)
    for marker in ("sub/", "empty/"):  # zero-byte "folder" objects some tools create
        atomic_write_bytes(join_url(root, marker) + "/", b"", opts)
    pages: list[str] = []
    real_call = s3fs.S3FileSystem.call_s3

    def small_pages(self, method, *args, **kwargs):
        if method == "list_objects_v2":
            pages.append(kwargs["Prefix"])
            kwargs["MaxKeys"] = 2
        return real_call(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "call_s3", small_pages)
    files = list(iter_source_files(root, storage_options=opts))
    assert [f.uri for f in files] == [join_url(root, r) for r in VISIBLE_IMAGES]
    assert len(pages) > 5 and pages.count(pages[0]) >= 2  # the root took several pages
    fs, path = resolve(root, opts)
    bucket = path.split("/", 1)[0]
    assert not [key for key in fs.dircache if key.split("/", 1)[0] == bucket]
    other = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
    other.pipe_file(resolve(join_url(root, "sub", "deeper", "new.png"), opts)[1], b"new")
    files = list(iter_source_files(root, storage_options=opts))
    assert join_url(root, "sub/deeper/new.png") in [f.uri for f in files]


def test_s3_single_object_and_missing_prefix(s3_server) -> None:
    root = s3_server.fresh_url("photos")
    opts = s3_server.storage_options
    atomic_write_bytes(join_url(root, "a.jpg"), b"abc", opts)
    (single,) = iter_source_files(join_url(root, "a.jpg"), storage_options=opts)
    assert single.uri == join_url(root, "a.jpg") and single.size == 3
    assert single.version == f"etag:{hashlib.md5(b'abc').hexdigest()}"
    with pytest.raises(FileNotFoundError):
        list(iter_source_files(join_url(root, "nope"), storage_options=opts))
    with pytest.raises(FileNotFoundError):
        list(iter_source_files("s3://no-such-bucket-for-maskclip/x", storage_options=opts))


def test_local_listing_links_and_special_files(tmp_path: Path) -> None:
    """A symlinked file is listed with its target's size and version; a symlinked folder is not followed
    (no cycles); FIFOs are not listed (reading one would block)."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.jpg").write_bytes(b"aaa")
    os.utime(real / "a.jpg", (1_000_000, 1_000_000))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "link.jpg").symlink_to(real / "a.jpg")
    (tmp_path / "src" / "loop").symlink_to(tmp_path / "src")
    (tmp_path / "src" / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    os.mkfifo(tmp_path / "src" / "pipe.jpg")
    files = list(iter_source_files(str(tmp_path / "src")))
    assert [f.uri for f in files] == [str(tmp_path / "src" / "link.jpg")]
    assert files[0].size == 3 and files[0].version == local_version(os.stat(real / "a.jpg"))
