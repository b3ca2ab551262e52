"""Decode image bytes to RGB uint8, or reject them with a machine-readable reason.

Every input of a labeling run comes from user storage, so anything can show up: empty files, text with a
``.jpg`` name, truncated uploads, decompression bombs, scanner output in CMYK or 16 bits. Rejections carry
a short ``reason`` code that the flows record per image instead of failing the run.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 80_000_000

# EXIF orientation tag; values 2..8 mean the stored pixels must be flipped / rotated for display.
_ORIENTATION_TAG = 0x0112

# Signatures of formats Pillow reads: bytes that start like an image but cannot be identified are damaged
# images ("corrupt"), not arbitrary files ("not_an_image").
_IMAGE_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF little endian
    b"MM\x00*",  # TIFF big endian
    b"RIFF",  # WebP
)


class ImageRejected(Exception):
    """The bytes are not a usable image; ``reason`` is a short code, ``detail`` a human explanation.

    Reason codes: ``empty_file``, ``not_an_image``, ``truncated``, ``too_many_pixels``, ``corrupt``,
    ``unsupported_mode``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class DecodedImage:
    """RGB pixels in displayed orientation, plus a note on any conversion that was needed."""

    rgb: np.ndarray  # [H, W, 3] uint8, C-contiguous
    note: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode ``data`` to RGB uint8 in displayed (EXIF-applied) orientation.

    The pixel count is checked from the header before any pixel data is decoded, so a decompression bomb
    is rejected without allocating its pixels. Pillow's own hard limit (``2 * Image.MAX_IMAGE_PIXELS``)
    also applies, whatever ``max_pixels`` says.

    Raises:
        ImageRejected: with a reason code when the bytes are not a usable image.
    """
    if not data:
        raise ImageRejected("empty_file", "the file has zero bytes")
    # Our own max_pixels check below is the authority; Pillow's warning for images above its soft limit
    # would only add noise (its hard-limit error is still caught).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = _open(data)
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageRejected("corrupt", f"header declares an empty image ({width}x{height})")
    if width * height > max_pixels:
        raise ImageRejected("too_many_pixels", f"{width}x{height} = {width * height} pixels > limit {max_pixels}")
    _load(im)
    notes: list[str] = []
    im = _apply_orientation(im, notes)
    rgb = _to_rgb(im, notes)
    return DecodedImage(rgb=np.ascontiguousarray(rgb, dtype=np.uint8), note="; ".join(notes) or None)


def header_pixels(data: bytes) -> int | None:
    """Width x height from the header alone (no pixel decoded); None when the bytes are no readable image
    (:func:`decode_image` then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            width, height = _open(data).size
    except ImageRejected:
        return None
    return max(0, width) * max(0, height)


def _open(data: bytes) -> Image.Image:
    """Image.open reads only the header (lazy), so this is cheap even for a bomb."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageRejected("too_many_pixels", str(e)) from e
    except UnidentifiedImageError as e:
        if data.startswith(_IMAGE_MAGIC):
            raise ImageRejected("corrupt", "starts like an image but its header cannot be read") from e
        raise ImageRejected("not_an_image", "not a format Pillow can identify") from e
    except (OSError, EOFError) as e:
        if "truncated" in str(e).lower() or isinstance(e, EOFError):
            raise ImageRejected("truncated", str(e)) from e
        raise ImageRejected("corrupt", str(e)) from e
    except (SyntaxError, ValueError, TypeError, IndexError, KeyError) as e:
        # Pillow's plugins signal malformed headers with a variety of exception types.
        raise ImageRejected("corrupt", f"{type(e).__name__}: {e}") from e


def _load(im: Image.Image) -> None:
    """Decode the pixel data now, so damage surfaces here with a reason rather than later."""
    try:
        im.load()
    except (OSError, EOFError) as e:
        if "truncated" in str(e).lower() or isinstance(e, EOFError):
            raise ImageRejected("truncated", str(e)) from e
        raise ImageRejected("corrupt", str(e)) from e
    except (SyntaxError, ValueError, TypeError, IndexError, KeyError, MemoryError) as e:
        raise ImageRejected("corrupt", f"{type(e).__name__}: {e}") from e


def _apply_orientation(im: Image.Image, notes: list[str]) -> Image.Image:
    """Labels must follow what a person sees, so apply the EXIF orientation to the pixels."""
    try:
        orientation = im.getexif().get(_ORIENTATION_TAG)
    except Exception:  # a damaged EXIF block must not cost the image; keep stored orientation
        notes.append("unreadable EXIF ignored")
        return im
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return im
    try:
        out = ImageOps.exif_transpose(im)
    except Exception as e:
        raise ImageRejected("corrupt", f"cannot apply EXIF orientation {orientation}: {e}") from e
    notes.append(f"EXIF orientation {orientation} applied")
    return out


def _to_rgb(im: Image.Image, notes: list[str]) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.array(im)
    if mode.startswith("I;16") or mode == "I":
        notes.append(f"{'16' if mode != 'I' else '32'}-bit scaled to 8-bit")
        return _gray_to_rgb(_scale_int_to_uint8(np.array(im)))
    if mode == "F":
        notes.append("float scaled to 8-bit")
        return _gray_to_rgb(_scale_float_to_uint8(np.array(im)))
    if mode == "P":
        notes.append("palette converted")
        has_alpha = "transparency" in im.info or im.palette is not None and im.palette.mode == "RGBA"
        return _composite(im.convert("RGBA"), notes) if has_alpha else np.array(im.convert("RGB"))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        if mode == "PA":
            notes.append("palette converted")
        return _composite(im.convert("RGBA"), notes)
    if mode in ("L", "1"):
        notes.append(f"{'grayscale' if mode == 'L' else '1-bit'} converted to RGB")
        return np.array(im.convert("RGB"))
    if mode == "CMYK":
        # Pillow's JPEG reader already undoes Adobe's inverted CMYK; the conversion itself is naive
        # (no ICC profile), which is good enough for labeling.
        notes.append("CMYK converted to RGB")
        return np.array(im.convert("RGB"))
    try:
        rgb = np.array(im.convert("RGB"))
    except (ValueError, OSError) as e:
        raise ImageRejected("unsupported_mode", f"cannot convert mode {mode} to RGB: {e}") from e
    notes.append(f"{mode} converted to RGB")
    return rgb


def _composite(rgba_im: Image.Image, notes: list[str]) -> np.ndarray:
    """Transparent pixels are shown on white by most viewers; label what they show."""
    rgba = np.array(rgba_im)
    alpha = rgba[..., 3:4].astype(np.uint16)
    if bool((alpha == 255).all()):
        notes.append("opaque alpha dropped")
        return np.ascontiguousarray(rgba[..., :3])
    notes.append("alpha composited on white")
    rgb = rgba[..., :3].astype(np.uint16)
    out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


def _scale_int_to_uint8(values: np.ndarray) -> np.ndarray:
    """16-bit samples map linearly onto 8 bits (v / 257, rounded), like every image viewer does.

    Mode ``I`` (32-bit) holding values inside [0, 65535] is 16-bit data widened by Pillow; anything else is
    stretched from its own min..max so it is at least visible.
    """
    v = values.astype(np.int64)
    lo, hi = (int(v.min()), int(v.max())) if v.size else (0, 0)
    if lo >= 0 and hi <= 65535:
        return ((v + 128) // 257).astype(np.uint8)
    return _stretch(v.astype(np.float64), lo, hi)


def _scale_float_to_uint8(values: np.ndarray) -> np.ndarray:
    v = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0:
        return np.rint(v * 255.0).astype(np.uint8)
    return _stretch(v, lo, hi)


def _stretch(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(v.shape, dtype=np.uint8)
    return np.rint((v - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)
