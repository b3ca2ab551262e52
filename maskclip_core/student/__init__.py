"""MaskCLIP+ student: a DeepLab network classifying pixels against frozen CLIP text embeddings,
trained on teacher pseudo-labels and then by self-training."""

from .augment import AugmentConfig, augment
from .backbones import BACKBONES, BackboneWeightsUnavailable, build_backbone
from .checkpoint import StudentCheckpoint, load_checkpoint, read_latest, save_weights
from .classifier import ClassVocabulary, TextClassifier
from .data import ConcatSource, LabeledPool, Sample, SampleSource, make_batch
from .inference import predict
from .labeler import StudentLabeler
from .model import StudentConfig, StudentNet, build_student
from .train import (
    RoundEnd,
    TrainConfig,
    TrainResult,
    evaluate_student,
    phase_ends,
    poly_lr,
    relabel,
    train_student,
)

__all__ = [
    "BACKBONES",
    "AugmentConfig",
    "BackboneWeightsUnavailable",
    "ClassVocabulary",
    "ConcatSource",
    "LabeledPool",
    "RoundEnd",
    "Sample",
    "SampleSource",
    "StudentCheckpoint",
    "StudentConfig",
    "StudentLabeler",
    "StudentNet",
    "TextClassifier",
    "TrainConfig",
    "TrainResult",
    "augment",
    "build_backbone",
    "build_student",
    "evaluate_student",
    "load_checkpoint",
    "make_batch",
    "phase_ends",
    "poly_lr",
    "predict",
    "read_latest",
    "relabel",
    "save_weights",
    "train_student",
]
