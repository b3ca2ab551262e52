"""A trained student as a ``Labeler`` (same contract as the MaskCLIP teacher)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from maskclip_core.device import resolve_device
from maskclip_core.student.checkpoint import StudentCheckpoint, load_checkpoint
from maskclip_core.student.classifier import ClassVocabulary
from maskclip_core.student.inference import STUDENT_PRECISIONS, StudentPrecision, predict
from maskclip_core.student.model import StudentNet
from maskclip_core.types import SegmentationResult


class StudentLabeler:
    """Labels images with a student network.

    Images are resized so their short side is ``short_side`` (448, as the teacher) and each side a multiple
    of ``size_multiple`` (see :func:`~maskclip_core.student.preprocess.network_size`), ImageNet-normalised,
    labeled in batches of same-size images (fp16 autocast on CUDA only if ``half_precision``;
    ``precision="bf16"``: a bf16 channels_last copy of the network on the CPU) and the logits upsampled to
    the original size. ``confidence`` is the softmax max, ``class_scores`` the per-class max
    probability; the student drops no classes.
    """

    def __init__(
        self,
        model: StudentNet,
        short_side: int | None = 448,
        batch_size: int = 8,
        device: torch.device | str | None = None,
        checkpoint: StudentCheckpoint | None = None,
        *,
        size_multiple: int | None = 32,
        half_precision: bool = False,
        precision: StudentPrecision = "fp32",
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.short_side = short_side
        self.batch_size = batch_size
        self.size_multiple = size_multiple
        self.half_precision = half_precision
        if precision not in STUDENT_PRECISIONS:
            raise ValueError(f"student precision {precision!r}: choose one of {STUDENT_PRECISIONS}")
        self.precision = precision
        self._checkpoint = checkpoint

    @classmethod
    def from_checkpoint(
        cls,
        url: str,
        device: torch.device | str | None = None,
        storage_options: dict | None = None,
        short_side: int | None = 448,
        batch_size: int = 8,
        **options: Any,
    ) -> StudentLabeler:
        """Load a weights file URL or a checkpoint directory URL (its newest round); ``options``:
        ``size_multiple``, ``half_precision``, ``precision``."""
        checkpoint = load_checkpoint(url, storage_options)
        return cls(checkpoint.build(), short_side, batch_size, device, checkpoint, **options)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.model.class_names

    def set_vocabulary(self, embeddings: torch.Tensor, vocabulary: ClassVocabulary) -> None:
        """Label with other (renamed, reordered, added) classes; no retraining needed."""
        self.model.set_vocabulary(embeddings.to(self.device), vocabulary)

    def label(self, images: Sequence[np.ndarray]) -> list[SegmentationResult]:
        return predict(
            self.model,
            images,
            self.short_side,
            self.batch_size,
            self.device,
            size_multiple=self.size_multiple,
            half_precision=self.half_precision,
            precision=self.precision,
        )

    def config(self) -> dict[str, Any]:
        embeddings = self.model.classifier.embeddings.detach().cpu().contiguous().numpy()
        ck = self._checkpoint
        config = {
            "labeler": "maskclip-student",
            "checkpoint": None if ck is None else ck.url,
            "checkpoint_sha256": None if ck is None else ck.sha256,
            "round": None if ck is None else ck.round,
            "iteration": None if ck is None else ck.iteration,
            "model": self.model.config.to_dict(),
            "vocabulary": self.model.vocabulary.to_dict(),
            # The classifier can be swapped after loading, so it is identified by its own content.
            "text_embeddings_sha256": hashlib.sha256(embeddings.tobytes()).hexdigest(),
            "short_side": self.short_side,
            "size_multiple": self.size_multiple,
        }
        if self.precision != "fp32":
            config["precision"] = self.precision  # the default stays out: existing hashes stay valid
        return config
