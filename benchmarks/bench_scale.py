"""The incremental check at scale: listing, hashing and the known-image index, time and peak memory.

    .venv/bin/python benchmarks/bench_scale.py [--quick] [--data-dir DIR]
        [--local 100000:1000000,10000:100000] [--s3 10000:1000000,1000:100000]
        [--per-dir 1000] [--known-fraction 0.9] [--sha-fraction 0.05] [--noise-fraction 0.05]

What a ``label-dataset`` run does before any image is decoded, measured without Prefect or a model:

(a) ``LabelDataset.known_sources`` and ``LabelDataset.known_sha256_digests``: the two indexes of a config, read
    from Parquet columns of ``OUTPUT/images/`` (the flow reads the first, every batch process the second);
(b) the streaming listing (``iter_source_files``) with the per-file (uri, source_version) lookup, which
    skips unchanged files without reading them (``skipped_by_listing``);
(c) for the files not matched, in batches as the flow submits them: the bytes, their SHA-256 and the
    lookup in the SHA-256 index (``skipped_by_sha``: content known under another uri; ``new``: to label).

A configuration is ``SOURCE:INDEX``: SOURCE tiny distinct PNG files (12x12 random pixels, ~500 bytes, in
folders of ``--per-dir``) and an images table of INDEX rows done under the config (labeled or rejected),
written with pyarrow directly in part files of ``--part-rows`` rows. Of the source, ``--known-fraction``
is already done under its own (uri, source_version) (the version token ``iter_source_files`` yields),
``--sha-fraction`` is known only by SHA-256 (a row with another uri) and the rest is new; the remaining
rows of the index are other images. ``--noise-fraction`` x INDEX more rows (another config, or ``failed``)
must be filtered out. Generated files are cached under ``--data-dir`` (default: a folder in the temp dir).

Local configurations read from disk; S3 ones from a moto server (``ThreadedMotoServer`` on 127.0.0.1 in
this process, source and dataset both in buckets). Each configuration runs in a fresh subprocess, so its
peak RSS (``VmHWM``) is its own; the peak is reset after loading the indexes (``/proc/self/clear_refs``) so
``peak_rss_check_mb`` is the peak of (b) + (c) alone. ``growth`` compares each backend's largest and smallest
configuration: time ratio / size ratio is ~1 when the cost is linear. ``listing_alone`` lists the source once
more in a process that loads nothing else: its ``peak_growth_mb`` is what the listing itself holds. The child
processes import ``maskclip_core.dataset.label_dataset`` / ``fs`` / ``digests`` only (no torch): the flow process adds
the model (and torch, ~0.7-1 GB here) to these figures, independently of the source size.

``--part-rows 16`` writes the index as the flow does (one images part per batch of 16): the index load then
costs per part file, not per row. Prints JSON.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import logging
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG_HASH = "5ca1ab1e" * 4
OTHER_CONFIG_HASH = "0ddba11" + "0" * 25
SEED = 20240601
PNG_SIDE = 12
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
FULL = {"local": "100000:1000000,10000:100000", "s3": "10000:1000000,1000:100000"}
QUICK = {"local": "10000:100000,1000:10000", "s3": "1000:100000,100:10000"}


# --- memory ------------------------------------------------------------------------------------------------


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def rss_mb() -> float:
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --- generated data --------------------------------------------------------------------------------------


def png_bytes(i: int) -> bytes:
    """A valid 12x12 RGB PNG whose pixels derive from ``i`` (distinct files, ~500 bytes)."""
    pixels = hashlib.shake_128(b"px%d" % i).digest(PNG_SIDE * PNG_SIDE * 3)
    row = PNG_SIDE * 3
    raw = b"".join(b"\x00" + pixels[r * row : (r + 1) * row] for r in range(PNG_SIDE))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", PNG_SIDE, PNG_SIDE, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b"")


def file_name(i: int, per_dir: int) -> str:
    return f"d{i // per_dir:05d}/img-{i:08d}.png"


def index_of(name: str) -> int:
    return int(name.rsplit("img-", 1)[1].split(".", 1)[0])


def kind_of(i: int, known_fraction: float, sha_fraction: float) -> str:
    """``listing`` (done under its own uri and version), ``sha`` (content done under another uri) or ``new``."""
    u = ((i * 0x9E3779B97F4A7C15 + SEED) & 0xFFFFFFFFFFFFFFFF) / 2**64
    if u < known_fraction:
        return "listing"
    return "sha" if u < known_fraction + sha_fraction else "new"


def ensure_source(data_dir: Path, n: int, per_dir: int) -> Path:
    """``n`` PNG files under ``data_dir/source-<n>-<per_dir>/`` (generated once)."""
    root = data_dir / f"source-{n}-{per_dir}"
    done = data_dir / f"source-{n}-{per_dir}.done"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for stale in data_dir.glob(f"out-local-{n}-{per_dir}-*"):  # indexes hold this source's mtimes
        shutil.rmtree(stale, ignore_errors=True)
    from PIL import Image

    Image.open(io.BytesIO(png_bytes(0))).load()  # the template decodes
    made: set[str] = set()
    for i in range(n):
        rel = file_name(i, per_dir)
        folder = rel.rsplit("/", 1)[0]
        if folder not in made:
            (root / folder).mkdir(parents=True, exist_ok=True)
            made.add(folder)
        with open(root / rel, "wb") as f:
            f.write(png_bytes(i))
    done.write_text(json.dumps({"n": n, "per_dir": per_dir, "created": time.time()}))
    return root


def _hex(raw: Any, prefix: bytes = b"") -> Any:
    """pyarrow string array of ``prefix`` + the hex of each row of the uint8 matrix ``raw``."""
    import numpy as np
    import pyarrow as pa

    n, k = raw.shape
    width = len(prefix) + 2 * k
    lut = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    out = np.empty((n, width), dtype=np.uint8)
    if prefix:
        out[:, : len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    out[:, len(prefix) :: 2] = lut[raw >> 4]
    out[:, len(prefix) + 1 :: 2] = lut[raw & 15]
    offsets = np.arange(0, n * width + 1, width, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(out.tobytes()))


def synthetic_rows(stream: str, start: int, rows: int) -> Any:
    """Rows ``start .. start + rows`` of a deterministic stream of other images' rows (an IMAGES_SCHEMA table).

    ``filler``: done under the config (97% labeled, 3% rejected). ``noise``: half under another config,
    half ``failed`` under the config; neither may enter an index.
    """
    import numpy as np
    import pyarrow as pa

    from maskclip_core.dataset.schema import IMAGES_SCHEMA

    rng = np.random.default_rng([SEED, 1 if stream == "filler" else 2, start])
    sha = rng.integers(0, 256, size=(rows, 32), dtype=np.uint8)
    image_id = (sha[:, :8].copy().view(">u8").reshape(rows) >> np.uint64(1)).astype(np.int64)
    index = np.arange(start, start + rows)
    if stream == "filler":
        status = np.where(rng.random(rows) < 0.97, "labeled", "rejected")
        config = np.full(rows, CONFIG_HASH)
    else:
        other = index % 2 == 0
        status = np.where(other, "labeled", "failed")
        config = np.where(other, OTHER_CONFIG_HASH, CONFIG_HASH)
    reason = np.where(status == "rejected", "low_labeled_fraction: 0.01 < 0.05", None)
    reason = np.where(status == "failed", "labeler_error: RuntimeError: boom", reason)
    columns = {
        "image_id": pa.array(image_id),
        "uri": pa.array([f"s3://archive/{stream}/b{j // 1000:05d}/img-{j:09d}.jpg" for j in index.tolist()]),
        "sha256": _hex(sha),
        "width": pa.array(np.full(rows, 640, np.int32)),
        "height": pa.array(np.full(rows, 480, np.int32)),
        "status": pa.array(status),
        "reason": pa.array(reason.tolist(), pa.string()),
        "notes": pa.nulls(rows, pa.string()),
        "config_hash": pa.array(config),
        "labeling_id": _hex(rng.integers(0, 256, size=(rows, 16), dtype=np.uint8)),
        "labeler": pa.array(np.full(rows, "maskclip")),
        "round": pa.array(np.zeros(rows, np.int32)),
        "flow_run_id": pa.array(np.full(rows, "bench-run")),
        "created_at": pa.array(np.full(rows, np.datetime64("2024-01-01T00:00:00", "us")), pa.timestamp("us", "UTC")),
        "source_version": _hex(rng.integers(0, 256, size=(rows, 16), dtype=np.uint8), b"etag:"),
    }
    return pa.Table.from_pydict(columns, schema=IMAGES_SCHEMA)


def cached_parts(data_dir: Path, stream: str, total: int, part_rows: int) -> list[Path]:
    """Part files holding rows 0 .. total of ``stream``; full parts are shared between configurations."""
    import pyarrow.parquet as pq

    folder = data_dir / "parts"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, start in enumerate(range(0, total, part_rows)):
        rows = min(part_rows, total - start)
        path = folder / f"part-{stream}-r{part_rows}-{k:04d}-{rows}.parquet"
        if not path.exists():
            tmp = path.with_name("_tmp-" + path.name)
            pq.write_table(synthetic_rows(stream, start, rows), tmp, compression="zstd")
            os.replace(tmp, path)
        paths.append(path)
    return paths


def source_rows(source_url: str, storage_options: dict, args: argparse.Namespace) -> tuple[Any, dict[str, int]]:
    """The rows of the source's known files (their listing's uri and version; or only their SHA-256 under
    another uri), and the expected counts of the check."""
    import pyarrow as pa

    from maskclip_core.dataset.ids import image_id_from_sha256
    from maskclip_core.dataset.schema import IMAGES_SCHEMA
    from maskclip_core.storage.fs import iter_source_files

    rows: dict[str, list] = {name: [] for name in IMAGES_SCHEMA.names}
    expected = {"listed": 0, "skipped_by_listing": 0, "skipped_by_sha": 0, "new": 0}
    created = datetime.datetime.now(datetime.UTC)
    for f in iter_source_files(source_url, storage_options=storage_options):
        expected["listed"] += 1
        i = index_of(f.uri)
        kind = kind_of(i, args.known_fraction, args.sha_fraction)
        if kind == "new":
            expected["new"] += 1
            continue
        sha = hashlib.sha256(png_bytes(i)).hexdigest()
        if kind == "listing":
            expected["skipped_by_listing"] += 1
            uri, version = f.uri, f.version
        else:
            expected["skipped_by_sha"] += 1
            uri, version = f"s3://elsewhere/copies/img-{i:08d}.png", f"etag:{hashlib.md5(uri.encode()).hexdigest()}"
        row = {
            "image_id": image_id_from_sha256(sha),
            "uri": uri,
            "sha256": sha,
            "width": PNG_SIDE,
            "height": PNG_SIDE,
            "status": "labeled",
            "reason": None,
            "notes": None,
            "config_hash": CONFIG_HASH,
            "labeling_id": hashlib.sha256(f"bench-run\x1f{uri}\x1f{sha}".encode()).hexdigest()[:32],
            "labeler": "maskclip",
            "round": 0,
            "flow_run_id": "bench-run",
            "created_at": created,
            "source_version": version,
        }
        for name, value in row.items():
            rows[name].append(value)
    table = pa.Table.from_pydict(rows, schema=IMAGES_SCHEMA)
    return table, expected


def index_plan(n_known_rows: int, m: int, args: argparse.Namespace) -> tuple[int, int]:
    filler = max(0, m - n_known_rows)
    noise = int(round(m * args.noise_fraction))
    return filler, noise


def prepare_local(data_dir: Path, n: int, m: int, args: argparse.Namespace) -> dict[str, Any]:
    """A local source of ``n`` files and a local dataset whose index holds ``m`` done rows."""
    import pyarrow.parquet as pq

    source = ensure_source(data_dir, n, args.per_dir)
    out = data_dir / f"out-local-{n}-{args.per_dir}-{m}-{args.known_fraction}-{args.sha_fraction}-{args.part_rows}"
    meta = out.with_name(out.name + ".json")
    if meta.exists():
        return json.loads(meta.read_text())
    t0 = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    (out / "images").mkdir(parents=True)
    table, expected = source_rows(str(source), {}, args)
    pq.write_table(table, out / "images" / "part-source.parquet", compression="zstd")
    filler, noise = index_plan(table.num_rows, m, args)
    for stream, total in (("filler", filler), ("noise", noise)):
        for path in cached_parts(data_dir, stream, total, args.part_rows):
            os.link(path, out / "images" / path.name)
    info = {
        "source": str(source),
        "output": str(out),
        "storage_options": {},
        "expected": expected,
        "index_rows": table.num_rows + filler,
        "noise_rows": noise,
        "prepare_s": round(time.perf_counter() - t0, 2),
    }
    meta.write_text(json.dumps(info))
    return info


def make_bucket(storage_options: dict, name: str) -> None:
    import boto3

    kwargs = storage_options["client_kwargs"]
    client = boto3.client(
        "s3",
        endpoint_url=kwargs["endpoint_url"],
        region_name=kwargs["region_name"],
        aws_access_key_id=storage_options["key"],
        aws_secret_access_key=storage_options["secret"],
    )
    client.create_bucket(Bucket=name)


def prepare_s3(
    data_dir: Path, fs: Any, storage_options: dict, n: int, m: int, args: argparse.Namespace
) -> dict[str, Any]:
    """The same in buckets: the local source uploaded with s3fs (concurrent puts), the index parts put whole."""
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    local = ensure_source(data_dir, n, args.per_dir)
    bucket = f"bench-src-{n}"
    make_bucket(storage_options, bucket)
    fs.put(str(local) + "/", f"{bucket}/photos", recursive=True, batch_size=64)
    upload_s = time.perf_counter() - t0
    source = f"s3://{bucket}/photos"
    table, expected = source_rows(source, storage_options, args)
    out_bucket = f"bench-out-{n}-{m}"
    make_bucket(storage_options, out_bucket)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    fs.pipe_file(f"{out_bucket}/labels/images/part-source.parquet", buf.getvalue())
    filler, noise = index_plan(table.num_rows, m, args)
    for stream, total in (("filler", filler), ("noise", noise)):
        for path in cached_parts(data_dir, stream, total, args.part_rows):
            fs.put_file(str(path), f"{out_bucket}/labels/images/{path.name}")
    return {
        "source": source,
        "output": f"s3://{out_bucket}/labels",
        "storage_options": storage_options,
        "expected": expected,
        "index_rows": table.num_rows + filler,
        "noise_rows": noise,
        "upload_s": round(upload_s, 2),
        "prepare_s": round(time.perf_counter() - t0, 2),
    }


# --- the measurement (one configuration, in a fresh process) -------------------------------------------------


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from maskclip_core.dataset.digests import sha256_digest, source_digest
    from maskclip_core.dataset.label_dataset import LabelDataset
    from maskclip_core.storage.fs import iter_source_files, read_bytes, sha256_hex

    clock = time.perf_counter
    opts = spec["storage_options"]
    out: dict[str, Any] = {"rss_after_imports_mb": rss_mb()}

    # (a) the two indexes, from Parquet columns
    store = LabelDataset(spec["output"], opts)
    t0 = clock()
    known = store.known_sources(CONFIG_HASH)
    out["load_known_sources_s"] = round(clock() - t0, 3)
    t0 = clock()
    shas = store.known_sha256_digests(CONFIG_HASH)
    out["load_known_sha256_s"] = round(clock() - t0, 3)
    out["known_sources"] = len(known)
    out["known_sha256"] = len(shas)
    out["index_bytes"] = known.nbytes + shas.nbytes
    out["rss_after_index_mb"] = rss_mb()
    out["peak_rss_index_mb"] = peak_rss_mb()

    # pure lookup cost: half hits, half misses, against the SHA-256 index
    rng = np.random.default_rng(SEED)
    probes = [bytes(rng.integers(0, 256, 16, dtype=np.uint8)) for _ in range(spec["probes"] // 2)]
    stored = shas._sorted  # noqa: SLF001 - a benchmark may peek
    probes += [stored[i : i + 1].tobytes() for i in rng.integers(0, len(stored), spec["probes"] // 2)]
    t0 = clock()
    hits = sum(d in shas for d in probes)
    out["lookup_us"] = round(1e6 * (clock() - t0) / max(len(probes), 1), 3)
    out["lookup_probe_hits"] = f"{hits}/{len(probes)}"
    del probes, stored

    # Hand freed memory back (Arrow's pool, the C heap) so the check's own growth shows.
    import ctypes
    import gc

    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    reset_peak()
    rss_before = rss_mb()
    out["rss_before_check_mb"] = rss_before
    counts = {"listed": 0, "skipped_by_listing": 0, "skipped_by_sha": 0, "new": 0}
    seconds = {"listing": 0.0, "listing_lookup": 0.0, "read": 0.0, "sha256": 0.0, "sha_lookup": 0.0}
    bytes_read = 0

    def run_batch(items: list[tuple[str, str]]) -> None:
        nonlocal bytes_read
        for uri, _version in items:  # what label_and_write_batch does before decoding
            t = clock()
            data = read_bytes(uri, opts)
            t1 = clock()
            digest = sha256_digest(sha256_hex(data))
            t2 = clock()
            known_content = digest in shas
            t3 = clock()
            seconds["read"] += t1 - t
            seconds["sha256"] += t2 - t1
            seconds["sha_lookup"] += t3 - t2
            bytes_read += len(data)
            counts["skipped_by_sha" if known_content else "new"] += 1

    t_start = clock()
    pending: list[tuple[str, str]] = []
    t_batches = 0.0
    listing = iter_source_files(spec["source"], storage_options=opts)
    t_mark = clock()
    for f in listing:
        t = clock()
        counts["listed"] += 1
        hit = source_digest(f.uri, f.version) in known
        seconds["listing_lookup"] += clock() - t
        if hit:
            counts["skipped_by_listing"] += 1
            continue
        pending.append((f.uri, f.version))
        if len(pending) >= spec["batch_size"]:
            tb = clock()
            run_batch(pending)
            t_batches += clock() - tb
            pending = []
    if pending:
        tb = clock()
        run_batch(pending)
        t_batches += clock() - tb
    total = clock() - t_start
    seconds["listing"] = total - t_batches - (t_mark - t_start)
    out["counts"] = counts
    out["counts_ok"] = counts == spec["expected"]
    n = max(counts["listed"], 1)
    unmatched = max(counts["skipped_by_sha"] + counts["new"], 1)
    out["listing_s"] = round(seconds["listing"], 3)  # listing + (uri, version) digests + lookups
    out["hash_stage_s"] = round(t_batches, 3)  # reads + SHA-256 + lookups of the unmatched files
    out["check_s"] = round(total, 3)
    out["listing_us_per_file"] = round(1e6 * seconds["listing"] / n, 2)
    out["listing_lookup_us_per_file"] = round(1e6 * seconds["listing_lookup"] / n, 2)
    out["hash_stage_us_per_unmatched_file"] = round(1e6 * t_batches / unmatched, 2)
    out["read_us_per_unmatched_file"] = round(1e6 * seconds["read"] / unmatched, 2)
    out["sha256_us_per_unmatched_file"] = round(1e6 * seconds["sha256"] / unmatched, 2)
    out["sha_lookup_us_per_unmatched_file"] = round(1e6 * seconds["sha_lookup"] / unmatched, 2)
    out["bytes_read"] = bytes_read
    out["rss_growth_during_check_mb"] = round(rss_mb() - rss_before, 1)
    out["peak_rss_check_mb"] = peak_rss_mb()
    out["peak_rss_mb"] = max(out["peak_rss_check_mb"], out["peak_rss_index_mb"])
    return out


def listing_child(spec: dict[str, Any]) -> dict[str, Any]:
    """The listing alone, in a process that holds nothing else: its own peak and what it keeps afterwards."""
    from maskclip_core.storage.fs import iter_source_files

    rss0 = rss_mb()
    t0 = time.perf_counter()
    n = sum(1 for _ in iter_source_files(spec["source"], storage_options=spec["storage_options"]))
    seconds = time.perf_counter() - t0
    return {
        "files": n,
        "s": round(seconds, 3),
        "us_per_file": round(1e6 * seconds / max(n, 1), 2),
        "peak_growth_mb": round(peak_rss_mb() - rss0, 1),
        "retained_mb": round(rss_mb() - rss0, 1),
    }


def measure(spec: dict[str, Any], mode: str = "--child") -> dict[str, Any]:
    cmd = [sys.executable, __file__, mode, json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if mode == "--child":
        result["listing_alone"] = measure(spec, "--listing-child")
    return result


# --- growth -------------------------------------------------------------------------------------------------


def growth(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in rows if "error" not in r["result"]]
    if len(ok) < 2:
        return None
    small = min(ok, key=lambda r: (r["source_files"], r["index_rows"]))
    large = max(ok, key=lambda r: (r["source_files"], r["index_rows"]))
    a, b = small["result"], large["result"]

    def ratio(key: str) -> float | None:
        return round(b[key] / a[key], 2) if a.get(key) else None

    source_ratio = large["source_files"] / small["source_files"]
    index_ratio = large["index_rows"] / small["index_rows"]
    return {
        "from": small["name"],
        "to": large["name"],
        "source_size_ratio": round(source_ratio, 2),
        "index_size_ratio": round(index_ratio, 2),
        "index_load_time_ratio": round(
            (b["load_known_sources_s"] + b["load_known_sha256_s"])
            / (a["load_known_sources_s"] + a["load_known_sha256_s"]),
            2,
        ),
        "listing_time_ratio": ratio("listing_s"),
        "hash_stage_time_ratio": ratio("hash_stage_s"),
        "check_time_ratio": ratio("check_s"),
        "check_time_ratio_over_source_ratio": round(b["check_s"] / a["check_s"] / source_ratio, 2),
        "listing_cost_per_file_ratio": ratio("listing_us_per_file"),
        "lookup_cost_ratio": ratio("lookup_us"),
        "peak_rss_check_ratio": ratio("peak_rss_check_mb"),
        "peak_rss_ratio": ratio("peak_rss_mb"),
    }


# --- main -----------------------------------------------------------------------------------------------------


def parse_sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        n, m = item.split(":")
        out.append((int(n), int(m)))
    return out


def start_moto() -> tuple[Any, dict[str, Any]]:
    from moto.server import ThreadedMotoServer

    os.environ.update(FAKE_AWS_ENV)
    for key in ("NO_PROXY", "no_proxy"):
        os.environ[key] = ",".join(filter(None, [os.environ.get(key), "127.0.0.1", "localhost"]))
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log on stderr
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    return server, options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "maskclip-bench-scale")
    parser.add_argument("--quick", action="store_true", help=f"local {QUICK['local']}, s3 {QUICK['s3']}")
    parser.add_argument("--local", default=None, help=f"SOURCE:INDEX,... on local disk ('' for none; {FULL['local']})")
    parser.add_argument("--s3", default=None, help=f"SOURCE:INDEX,... on the moto server ('' for none; {FULL['s3']})")
    parser.add_argument("--per-dir", type=int, default=1000, help="files per source folder")
    parser.add_argument("--known-fraction", type=float, default=0.9, help="source files done (uri, version)")
    parser.add_argument("--sha-fraction", type=float, default=0.05, help="source files done by SHA-256 only")
    parser.add_argument("--noise-fraction", type=float, default=0.05, help="extra rows to filter out, x INDEX")
    parser.add_argument("--part-rows", type=int, default=100_000, help="rows per generated index part file")
    parser.add_argument("--batch-size", type=int, default=16, help="unmatched files per batch (the flow's)")
    parser.add_argument("--probes", type=int, default=100_000, help="digests looked up for lookup_us")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--listing-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.listing_child:
        print(json.dumps(listing_child(json.loads(args.listing_child))))
        return
    preset = QUICK if args.quick else FULL
    local_sizes = parse_sizes(preset["local"] if args.local is None else args.local)
    s3_sizes = parse_sizes(preset["s3"] if args.s3 is None else args.s3)
    args.data_dir.mkdir(parents=True, exist_ok=True)

    import numpy
    import pyarrow

    result: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "versions": {"pyarrow": pyarrow.__version__, "numpy": numpy.__version__},
        "data_dir": str(args.data_dir),
        "settings": {
            k: getattr(args, k)
            for k in ("per_dir", "known_fraction", "sha_fraction", "noise_fraction", "part_rows", "batch_size")
        },
        "configs": [],
        "growth": {},
    }
    common = {"probes": args.probes, "batch_size": args.batch_size}
    by_backend: dict[str, list[dict[str, Any]]] = {"local": [], "s3": []}
    for n, m in local_sizes:
        info = prepare_local(args.data_dir, n, m, args)
        spec = {**common, **{k: info[k] for k in ("source", "output", "storage_options", "expected")}}
        row = {"name": f"local {n} vs {m}", "backend": "local", "source_files": n, "index_rows": info["index_rows"]}
        row |= {"noise_rows": info["noise_rows"], "prepare_s": info["prepare_s"], "result": measure(spec)}
        by_backend["local"].append(row)
        result["configs"].append(row)
        print(json.dumps(row), file=sys.stderr)
    if s3_sizes:
        import s3fs

        server, options = start_moto()
        try:
            fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
            for n, m in s3_sizes:
                info = prepare_s3(args.data_dir, fs, options, n, m, args)
                spec = {**common, **{k: info[k] for k in ("source", "output", "storage_options", "expected")}}
                row = {"name": f"s3 {n} vs {m}", "backend": "s3", "source_files": n, "index_rows": info["index_rows"]}
                row |= {"noise_rows": info["noise_rows"], "prepare_s": info["prepare_s"], "upload_s": info["upload_s"]}
                row["result"] = measure(spec)
                by_backend["s3"].append(row)
                result["configs"].append(row)
                print(json.dumps(row), file=sys.stderr)
                fs.rm(f"bench-src-{n}", recursive=True)  # moto keeps objects in this process's memory
                fs.rm(f"bench-out-{n}-{m}", recursive=True)
        finally:
            server.stop()
    for backend, rows in by_backend.items():
        g = growth(rows)
        if g is not None:
            result["growth"][backend] = g
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
