"""MaskCLIP+ student: a DeepLab network classifying pixels against frozen CLIP text embeddings,
trained on teacher pseudo-labels and then by self-training.

Modules:
- ``backbones``: the registry of dilated backbones and their weights
- ``classifier``: the frozen text-embedding head (cosine logits)
- ``model``: the DeepLab network (``StudentConfig``, ``StudentNet``)
- ``preprocess``: images <-> network tensors
- ``augment``: training augmentation
- ``data``: training samples and deterministic batches
- ``train``: ``fit_student``: pseudo-label phase and self-training rounds
- ``checkpoint``: safetensors checkpoints at an fsspec URL
- ``inference``: dense prediction (resize, batch, upsample, softmax)
- ``labeler``: a trained student as a ``Labeler``
"""

from maskclip_core.student.augment import AugmentConfig, augment
from maskclip_core.student.backbones import BACKBONES, BackboneWeightsUnavailable, build_backbone
from maskclip_core.student.checkpoint import StudentCheckpoint, load_checkpoint, read_latest, save_weights
from maskclip_core.student.classifier import ClassVocabulary, FrozenTextHead
from maskclip_core.student.data import ConcatSource, LabeledPool, Sample, SampleSource, make_batch
from maskclip_core.student.inference import predict
from maskclip_core.student.labeler import StudentLabeler
from maskclip_core.student.model import StudentConfig, StudentNet, build_student
from maskclip_core.student.train import (
    RoundEnd,
    TrainConfig,
    TrainResult,
    evaluate_student,
    fit_student,
    phase_ends,
    poly_lr,
    relabel,
)

__all__ = [
    "BACKBONES",
    "AugmentConfig",
    "BackboneWeightsUnavailable",
    "ClassVocabulary",
    "ConcatSource",
    "FrozenTextHead",
    "LabeledPool",
    "RoundEnd",
    "Sample",
    "SampleSource",
    "StudentCheckpoint",
    "StudentConfig",
    "StudentLabeler",
    "StudentNet",
    "TrainConfig",
    "TrainResult",
    "augment",
    "build_backbone",
    "build_student",
    "evaluate_student",
    "fit_student",
    "load_checkpoint",
    "make_batch",
    "phase_ends",
    "poly_lr",
    "predict",
    "read_latest",
    "relabel",
    "save_weights",
]
