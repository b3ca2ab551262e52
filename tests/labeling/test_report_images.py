"""Thumbnails in the run report: inline ``data:`` URIs for the Prefect artifact, presigned S3 links, relative links
in the stored report."""

from __future__ import annotations

import base64
import io
import urllib.request

import fsspec
import numpy as np
from PIL import Image

from maskclip_core.labeling.report import RunSummary
from maskclip_core.labeling.report_images import INLINE_MAX_BYTES, inline_jpeg, presigned_url, thumbnail_sources


def _jpeg(width: int, height: int, colour: tuple[int, int, int], quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _decode(uri: str) -> Image.Image:
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :])))


def test_inline_jpeg_is_a_small_decodable_copy() -> None:
    img = _decode(inline_jpeg(_jpeg(640, 320, (200, 30, 40))))
    assert img.format == "JPEG" and img.size == (200, 100)  # aspect kept, long side 200
    assert np.abs(np.asarray(img, dtype=int) - (200, 30, 40)).max() <= 3


def test_inline_jpeg_shrinks_noise_below_the_byte_cap() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=100)
    uri = inline_jpeg(buf.getvalue(), side=1024, quality=100)
    assert len(uri) <= INLINE_MAX_BYTES and max(_decode(uri).size) < 1024


def test_sources_skip_unreadable_thumbnails(tmp_path) -> None:
    (tmp_path / "a.jpg").write_bytes(_jpeg(64, 48, (0, 255, 0)))
    thumbs = [{"url": str(tmp_path / "a.jpg"), "uri": "s3://b/a.jpg"}, {"url": str(tmp_path / "gone.jpg"), "uri": "x"}]
    sources = thumbnail_sources(thumbs)
    assert list(sources) == [str(tmp_path / "a.jpg")] and _decode(sources[str(tmp_path / "a.jpg")]).size == (64, 48)
    assert thumbnail_sources(thumbs, limit=0) == {}


def test_presigned_link_serves_the_stored_jpeg(s3_server) -> None:
    url = s3_server.fresh_url("labels/thumbnails/run/a.jpg")
    data = _jpeg(32, 32, (1, 2, 3))
    with fsspec.open(url, "wb", **s3_server.storage_options) as f:
        f.write(data)
    link = presigned_url(url, s3_server.storage_options)
    assert link.startswith(s3_server.endpoint_url) and "Signature" in link
    with urllib.request.urlopen(link, timeout=10) as r:  # no credentials: the signature alone grants access
        assert r.read() == data
    sources = thumbnail_sources([{"url": url, "uri": "u"}], s3_server.storage_options, mode="presigned")
    assert sources[url].startswith(s3_server.endpoint_url)


def test_report_markdown_embeds_sources_and_links_stored_reports_relatively() -> None:
    summary = RunSummary(run_id="r", source="src", dataset="s3://b/out/", config_hash="c", labeler="maskclip")
    summary.thumbnails = [
        {"url": "s3://b/out/thumbnails/r/1.jpg", "uri": "s3://b/in/cat.jpg"},
        {"url": "s3://b/out/thumbnails/r/2.jpg", "uri": "s3://b/in/dog.jpg"},
    ]
    stored = summary.markdown()
    assert "[![cat.jpg](../thumbnails/r/1.jpg)](../thumbnails/r/1.jpg)" in stored
    artifact = summary.markdown(image_sources={"s3://b/out/thumbnails/r/1.jpg": "data:image/jpeg;base64,AAAA"})
    assert "![cat.jpg](data:image/jpeg;base64,AAAA) `s3://b/in/cat.jpg`" in artifact
    assert "dog.jpg" not in artifact and "s3://b/out/thumbnails" not in artifact  # never a link a browser can't open
