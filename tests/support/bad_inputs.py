"""A corpus of awkward image files and the outcome the pipeline must give each.

Importable from any test (``from bad_inputs import write_bad_input_corpus``): pytest puts ``tests/`` on
``sys.path`` because the directory has no ``__init__.py``.

Outcomes are ``"labeled"`` (decodes to RGB and goes through the labeler) or the rejection reason code of
``maskclip_core.labeling.decode.ImageRejected``.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# Small but not tiny: big enough for a labeler's sliding window and a visible EXIF rotation.
_H, _W = 48, 64


def _pattern(h: int = _H, w: int = _W) -> np.ndarray:
    """Asymmetric RGB content: red top-left, green top-right, blue bottom band, noise elsewhere."""
    rng = np.random.default_rng(1234)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[: h // 3, : w // 2] = (220, 20, 20)
    img[: h // 3, w // 2 :] = (20, 200, 20)
    img[-h // 4 :, :] = (20, 20, 220)
    return img


def _encode(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int = 10_000, height: int = 10_000) -> bytes:
    """A valid 1-bit PNG of a huge blank image: ~12 KB on disk, ``width * height`` pixels once decoded.

    Written by hand so that making it never allocates the image either.
    """
    row = b"\x00" + bytes((width + 7) // 8)  # filter byte + one row of zero bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    """A JPEG whose stored pixels are ``_pattern()`` and whose EXIF says to rotate them for display."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(Image.fromarray(_pattern()), "JPEG", quality=95, exif=exif.tobytes())


def corpus_bytes() -> dict[str, tuple[bytes, str]]:
    """File name -> (content, expected outcome)."""
    rgb = _pattern()
    jpeg = _encode(Image.fromarray(rgb), "JPEG", quality=90)
    png = _encode(Image.fromarray(rgb), "PNG")
    gray16 = (np.linspace(0, 65535, _H * _W).reshape(_H, _W)).astype(np.uint16)
    rgba = np.dstack([rgb, np.tile(np.linspace(0, 255, _W).astype(np.uint8), (_H, 1))])
    palette = Image.fromarray(rgb).quantize(colors=16)
    palette.info["transparency"] = 0  # palette entry 0 fully transparent
    corrupt = bytearray(png)
    corrupt[30] ^= 0xFF  # inside the IHDR checksum: the header no longer verifies
    return {
        "ok.jpg": (jpeg, "labeled"),
        "zero.jpg": (b"", "empty_file"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "text.jpg": (b"This is a text file, not a JPEG.\n" * 10, "not_an_image"),
        "corrupt.png": (bytes(corrupt), "corrupt"),
        "bomb.png": (png_bomb(), "too_many_pixels"),
        "sixteen_bit.png": (_encode(Image.fromarray(gray16), "PNG"), "labeled"),
        "cmyk.jpg": (_encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=90), "labeled"),
        "gray.png": (_encode(Image.fromarray(rgb).convert("L"), "PNG"), "labeled"),
        "gray_alpha.png": (_encode(Image.fromarray(rgba).convert("LA"), "PNG"), "labeled"),
        "bilevel.png": (_encode(Image.fromarray(rgb).convert("1"), "PNG"), "labeled"),
        "rgba.png": (_encode(Image.fromarray(rgba, mode="RGBA"), "PNG"), "labeled"),
        "palette.png": (_encode(palette, "PNG", transparency=0), "labeled"),
        "exif_rotated.jpg": (exif_rotated_jpeg(6), "labeled"),
    }


def write_bad_input_corpus(directory: str | Path) -> dict[str, str]:
    """Write every case into ``directory`` (created if needed); return file name -> expected outcome."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, (data, outcome) in corpus_bytes().items():
        (out / name).write_bytes(data)
        expected[name] = outcome
    return expected
