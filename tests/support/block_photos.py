"""A folder of small PNG photos the tiny labeler labels (``tiny_labeler.block_image``), for flow tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from support.tiny_labeler import block_image


def write_block_photos(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` PNGs named ``img_<seed>_<i>.png`` in ``folder`` (created if absent); a seed gives other pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(block_image(rng)).save(buf, "PNG")
        (folder / f"img_{seed}_{i:03d}.png").write_bytes(buf.getvalue())
