"""MaskCLIP dense pseudo-labels and the plain-PyTorch label logic around them (no Prefect here).

The names below are imported lazily so that light modules (storage, store, coco) load without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "dense_features": "dense",
    "image_embedding": "dense",
    "load_clip": "clip_loader",
    "ClipBundle": "clip_loader",
    "WeightsUnavailableError": "clip_loader",
    "Vocabulary": "vocabulary",
    "TextClassifier": "text_classifier",
    "build_text_classifier": "text_classifier",
    "InferenceConfig": "inference",
    "DensePredictor": "inference",
    "LabelerConfig": "labeler",
    "MaskCLIPLabeler": "labeler",
    "SegmentationResult": "types",
    "IGNORE_INDEX": "types",
    "key_smoothing": "refine",
    "prompt_denoising_keep": "refine",
}

__all__ = [
    "ClipBundle",
    "DensePredictor",
    "IGNORE_INDEX",
    "InferenceConfig",
    "LabelerConfig",
    "MaskCLIPLabeler",
    "SegmentationResult",
    "TextClassifier",
    "Vocabulary",
    "WeightsUnavailableError",
    "build_text_classifier",
    "dense_features",
    "image_embedding",
    "key_smoothing",
    "load_clip",
    "prompt_denoising_keep",
]

if TYPE_CHECKING:  # pragma: no cover
    from .clip_loader import ClipBundle, WeightsUnavailableError, load_clip
    from .dense import dense_features, image_embedding
    from .inference import DensePredictor, InferenceConfig
    from .labeler import LabelerConfig, MaskCLIPLabeler
    from .refine import key_smoothing, prompt_denoising_keep
    from .text_classifier import TextClassifier, build_text_classifier
    from .types import IGNORE_INDEX, SegmentationResult
    from .vocabulary import Vocabulary


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'maskclip_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
