"""Dense prediction with a student: resize, batch, upsample logits to the original size, softmax."""

from __future__ import annotations

import copy
import weakref
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maskclip_core.student.model import StudentNet
from maskclip_core.student.preprocess import image_to_tensor, network_size, normalize, resize_image
from maskclip_core.types import SegmentationResult, label_dtype


def _batches(sizes: list[tuple[int, int]], batch_size: int) -> Iterator[list[int]]:
    # Only images of the same network input size share a batch: no padding, so no image sees another's
    # padding (batch size alone can still change convolution rounding, at the 1e-6 level).
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, size in enumerate(sizes):
        groups[size].append(i)
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            yield members[start : start + batch_size]


StudentPrecision = Literal["fp32", "bf16"]
STUDENT_PRECISIONS: tuple[str, ...] = ("fp32", "bf16")

_LOW_PRECISION: weakref.WeakKeyDictionary[StudentNet, tuple[tuple, nn.Module]] = weakref.WeakKeyDictionary()


def _fingerprint(model: StudentNet) -> tuple:
    """Changes whenever a parameter or buffer of the backbone or head is replaced or updated in place
    (training, a loaded state); the classifier's buffers (the vocabulary) are not part of the copy."""
    tensors = [t for part in (model.backbone, model.head) for t in (*part.parameters(), *part.buffers())]
    return tuple((t.data_ptr(), None if t.is_inference() else t._version) for t in tensors)


def low_precision_embedder(model: StudentNet, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """A copy of the student's backbone and head (``model.embed``) in ``dtype`` and channels_last, for CPU
    inference; the frozen text classifier is not copied (the model's own is applied to fp32 features, so a
    vocabulary swap needs no new copy). Cached per model and rebuilt when its weights change."""
    key = _fingerprint(model)
    hit = _LOW_PRECISION.get(model)
    if hit is None or hit[0] != key or next(hit[1].parameters()).dtype != dtype:
        with torch.no_grad():
            body = nn.Sequential(copy.deepcopy(model.backbone), copy.deepcopy(model.head))
            body = body.eval().requires_grad_(False).to(dtype=dtype, memory_format=torch.channels_last)
        hit = _LOW_PRECISION[model] = (key, body)
    return hit[1]


def _logits(model: StudentNet, pixels: torch.Tensor, precision: str, device: torch.device, autocast: bool):
    """Class logits at the network's output stride; ``pixels`` ImageNet-normalised [B, 3, H, W]."""
    if precision == "bf16" and device.type == "cpu":
        body = low_precision_embedder(model)
        features = body(pixels.to(dtype=torch.bfloat16, memory_format=torch.channels_last))
        return model.classifier(features.float())
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype, enabled=autocast or precision == "bf16"):
        return model(pixels, upsample=False)


def _result(logits: torch.Tensor, size: tuple[int, int], class_names: tuple[str, ...]) -> SegmentationResult:
    up = F.interpolate(logits[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    probs = up.softmax(dim=0)
    confidence, labels = probs.max(dim=0)
    return SegmentationResult(
        # Narrowed on the device: 8x fewer bytes to copy back and to hold than int64.
        labels=labels.to(getattr(torch, label_dtype(len(class_names)).name)).cpu().numpy(),
        confidence=confidence.cpu().numpy().astype(np.float32),
        class_scores=probs.amax(dim=(1, 2)).cpu().numpy().astype(np.float32),
        dropped=np.zeros(len(class_names), dtype=bool),
        class_names=class_names,
    )


def predict(
    model: StudentNet,
    images: Sequence[np.ndarray],
    short_side: int | None = 448,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    *,
    size_multiple: int | None = 32,
    half_precision: bool = False,
    precision: StudentPrecision = "fp32",
) -> list[SegmentationResult]:
    """Label RGB uint8 images at their original size (the model is put in eval mode and left there).

    The network sees each image at :func:`network_size` (``short_side``, sides rounded to ``size_multiple``);
    ``half_precision``: fp16 autocast on CUDA (ignored elsewhere). Off by default: on an H200 it made
    MobileNetV3 17x slower on unseen input shapes (cuDNN's fp16 setup) and ResNet-50 slower when warm.
    ``precision="bf16"``: on the CPU the backbone and head run from a bf16 channels_last copy
    (:func:`low_precision_embedder`; ~2x fp32 on an AVX512-BF16 CPU, see benchmarks/bench_student_cpu.py),
    the text classifier and the upsampled softmax in fp32; elsewhere bf16 autocast.
    """
    if precision not in STUDENT_PRECISIONS:
        raise ValueError(f"student precision {precision!r}: choose one of {STUDENT_PRECISIONS}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    sizes = [network_size(im.shape[0], im.shape[1], short_side, size_multiple) for im in images]
    results: list[SegmentationResult | None] = [None] * len(images)
    autocast = device.type == "cuda" and half_precision
    with torch.inference_mode():
        for batch in _batches(sizes, batch_size):
            # Ship uint8 (4x fewer bytes than float) and convert on the device.
            pixels = torch.stack([resize_image(image_to_tensor(images[i], device), sizes[i]) for i in batch])
            logits = _logits(model, normalize(pixels), precision, device, autocast)
            for row, i in enumerate(batch):
                results[i] = _result(logits[row], images[i].shape[:2], model.class_names)
    return results  # type: ignore[return-value]
