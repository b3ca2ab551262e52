"""Pictures of labels for people: palette label PNGs, colour overlays with a legend, confidence maps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from maskclip_core.colors import class_colors
from maskclip_core.types import IGNORE_INDEX


def label_png(labels: np.ndarray) -> Image.Image:
    """Palette-mode PNG whose pixel values are the class indices (255 = ignore, drawn black)."""
    if labels.max(initial=0) > IGNORE_INDEX or labels.min(initial=0) < 0:
        raise ValueError("label values must fit in 0..255")
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    pal = class_colors(256)
    pal[IGNORE_INDEX] = 0
    img.putpalette(pal.reshape(-1).tolist())
    return img


def confidence_png(confidence: np.ndarray) -> Image.Image:
    """16-bit grayscale PNG: value = round(confidence * 65535)."""
    scaled = np.round(np.clip(confidence, 0.0, 1.0) * 65535).astype(np.uint16)
    return Image.fromarray(scaled)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType
        return ImageFont.load_default()


def overlay(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], alpha: float = 0.5) -> Image.Image:
    """Image blended with class colours, with a legend of the classes present (ignore left unpainted)."""
    colours = class_colors(max(len(class_names), 1))
    valid = labels != IGNORE_INDEX
    blended = image.astype(np.float32).copy()
    painted = colours[np.where(valid, labels, 0)].astype(np.float32)
    blended[valid] = (1 - alpha) * blended[valid] + alpha * painted[valid]
    canvas = Image.fromarray(blended.clip(0, 255).astype(np.uint8))

    present = [int(c) for c in np.unique(labels[valid])]
    if not present:
        return canvas
    font_size = max(12, min(image.shape[0], image.shape[1]) // 30)
    font = _font(font_size)
    line = font_size + 6
    width = max(ImageDraw.Draw(canvas).textlength(class_names[c], font=font) for c in present) + line + 16
    legend = Image.new("RGB", (int(width), line * len(present) + 8), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for row, c in enumerate(present):
        y = 4 + row * line
        draw.rectangle([6, y + 2, 6 + font_size, y + 2 + font_size], fill=tuple(int(v) for v in colours[c]))
        draw.text((12 + font_size, y), class_names[c], fill=(0, 0, 0), font=font)
    out = Image.new("RGB", (canvas.width + legend.width, max(canvas.height, legend.height)), (255, 255, 255))
    out.paste(canvas, (0, 0))
    out.paste(legend, (canvas.width, 0))
    return out
