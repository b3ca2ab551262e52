"""Records shared by the teacher, the student, the filter and the writers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

# Label maps are uint8 with 255 meaning "ignore / not annotated" (the mmseg / torchvision convention),
# which caps a vocabulary at 255 classes.
IGNORE_INDEX = 255
MAX_CLASSES = 255


def label_dtype(num_classes: int) -> np.dtype:
    """The smallest unsigned type for class indices 0..num_classes-1: uint8 up to MAX_CLASSES classes (so no
    class index is 255, the ignore value), uint16 up to 65,535, else int64. A 640 x 480 label map is 0.3 MB
    as uint8 instead of 2.5 MB as int64, and a labeling batch holds up to 32 Mpx of them."""
    if num_classes <= MAX_CLASSES:
        return np.dtype(np.uint8)
    if num_classes <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    return np.dtype(np.int64)


@dataclass
class SegmentationResult:
    """Dense prediction for one image, at the image's original size."""

    labels: np.ndarray  # [H, W] index into class_names, of label_dtype(len(class_names)): uint8 up to 255 classes
    confidence: np.ndarray  # [H, W] float32, probability of the chosen class
    class_scores: np.ndarray  # [K] float32, max probability of each class over the image
    dropped: np.ndarray  # [K] bool, classes removed by prompt denoising
    class_names: tuple[str, ...]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.labels.shape[0]), int(self.labels.shape[1])


class Labeler(Protocol):
    """Anything that turns RGB images into SegmentationResults: the MaskCLIP teacher or a student."""

    class_names: tuple[str, ...]

    def label(self, images: Sequence[np.ndarray]) -> list[SegmentationResult]:
        """Label RGB uint8 images of shape [H, W, 3]."""
        ...

    def config(self) -> dict[str, Any]:
        """JSON-able description that identifies the labels this labeler produces (hashed for caching)."""
        ...
