"""JPEG bytes decoded on a CUDA device in one batched nvJPEG call (torchvision), for GPU labeling.

Only plain baseline colour JPEGs in display orientation go to the GPU: the header is read with Pillow
(no pixel decoding) and anything else (PNG, CMYK or greyscale JPEGs, EXIF-rotated photos, damaged or huge
files) comes back as None, for :func:`maskclip_core.labeling.decode.decode_image` to decode on the CPU
or reject with its reason code. The GPU and CPU decoders differ by a grey level or two on some pixels
(different IDCTs), which moves probabilities far less than the tolerances of ``tests/gpu``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch
from PIL import Image

from maskclip_core.labeling.decode import _ORIENTATION_TAG, DEFAULT_MAX_PIXELS


def gpu_decodable(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> bool:
    """A complete colour JPEG (YCbCr, 8 bit) of at most ``max_pixels`` that needs no EXIF rotation."""
    # A truncated upload has no end-of-image marker; the CPU decoder rejects it as "truncated", nvJPEG might not.
    if not data.startswith(b"\xff\xd8\xff") or not data.rstrip(b"\x00\r\n").endswith(b"\xff\xd9"):
        return False
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            if im.format != "JPEG" or im.mode != "RGB" or im.width * im.height > max_pixels:
                return False
            return im.getexif().get(_ORIENTATION_TAG, 1) == 1
    except Exception:  # noqa: BLE001 - any unreadable header: the CPU decoder gives the reason
        return False


def decode_jpegs_on_device(
    datas: Sequence[bytes], device: torch.device | str, max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[torch.Tensor | None]:
    """uint8 [3, H, W] tensors on ``device`` (a CUDA device), one batched decode; None where the bytes are
    not for the GPU (see :func:`gpu_decodable`) or nvJPEG refused them."""
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"decoding on {device}: nvJPEG needs a CUDA device; use decode_image on the CPU")
    picks = [i for i, d in enumerate(datas) if gpu_decodable(d, max_pixels)]
    out: list[torch.Tensor | None] = [None] * len(datas)
    if not picks:
        return out
    encoded = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in picks]
    try:
        decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        # One bad file fails the whole batch call: retry one by one, so only it falls back to the CPU.
        decoded = []
        for data in encoded:
            try:
                decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
    for i, image in zip(picks, decoded, strict=True):
        out[i] = image
    return out
