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


@dataclass
class SegmentationResult:
    """Dense prediction for one image, at the image's original size."""

    labels: np.ndarray  # [H, W] int64, index into class_names
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
