"""MaskCLIP dense pseudo-labels and the plain-PyTorch label logic around them (no Prefect here).

Stage packages, lowest first (the order ``tests/test_import_contracts.py`` enforces; each package's docstring
lists its modules): ``types``, ``device``, ``colors``, ``process_cache``, ``segmentation_metrics`` and ``storage``
(leaves); ``teacher``, ``student`` and ``dataset``; ``labeling`` and ``interchange``; ``evaluation``;
``training``; ``benchmark``.

The names below are imported lazily so that light modules (storage, dataset) load without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "dense_features": "teacher.dense",
    "image_embedding": "teacher.dense",
    "load_clip": "teacher.clip_loader",
    "ClipBundle": "teacher.clip_loader",
    "WeightsUnavailableError": "teacher.clip_loader",
    "Vocabulary": "teacher.vocabulary",
    "TextClassifier": "teacher.text_classifier",
    "build_text_classifier": "teacher.text_classifier",
    "InferenceConfig": "teacher.window_predictor",
    "DensePredictor": "teacher.window_predictor",
    "LabelerConfig": "teacher.labeler",
    "MaskCLIPLabeler": "teacher.labeler",
    "SegmentationResult": "types",
    "IGNORE_INDEX": "types",
    "key_smoothing": "teacher.refine",
    "prompt_denoising_keep": "teacher.refine",
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
    from maskclip_core.teacher.clip_loader import ClipBundle, WeightsUnavailableError, load_clip
    from maskclip_core.teacher.dense import dense_features, image_embedding
    from maskclip_core.teacher.labeler import LabelerConfig, MaskCLIPLabeler
    from maskclip_core.teacher.refine import key_smoothing, prompt_denoising_keep
    from maskclip_core.teacher.text_classifier import TextClassifier, build_text_classifier
    from maskclip_core.teacher.vocabulary import Vocabulary
    from maskclip_core.teacher.window_predictor import DensePredictor, InferenceConfig
    from maskclip_core.types import IGNORE_INDEX, SegmentationResult


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'maskclip_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
