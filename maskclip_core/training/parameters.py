"""The parameters of a training run (flow parameters: their bounds and descriptions show in the deployment form).

:class:`ClipParameters` (the teacher's CLIP, whose text embeddings become the student's classifier),
:class:`StudentParameters` (the network), :class:`ScheduleParameters` (iterations, rounds, optimisation),
:class:`DataParameters` (which labels and images) and :class:`TrainingRunParameters` (how the run is carried out).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from maskclip_core.student.augment import AugmentConfig
from maskclip_core.student.backbones import BackboneName
from maskclip_core.student.model import HeadName, StudentConfig
from maskclip_core.student.train import TrainConfig
from maskclip_core.teacher.clip_loader import DEFAULT_MODEL, DEFAULT_PRETRAINED
from maskclip_core.teacher.prompts import TemplateSetName


class ClipParameters(BaseModel):
    """The CLIP model whose text embeddings are the student's frozen classifier (the teacher's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(DEFAULT_MODEL, description="open_clip model name of the teacher, e.g. ViT-B-16")
    pretrained: str = Field(DEFAULT_PRETRAINED, description="open_clip tag, a local checkpoint path, or 'none'")
    seed: int = Field(0, description="Seed of random weights (pretrained='none')")
    templates: TemplateSetName = Field("maskclip", description="Prompt templates of the teacher")

    @classmethod
    def from_labeler_config(cls, config: Mapping[str, Any]) -> ClipParameters:
        """From a ``LabelerConfig`` (object or dict)."""
        data = config.model_dump() if hasattr(config, "model_dump") else dict(config)
        return cls(model=data["model"], pretrained=data["pretrained"], seed=data["seed"], templates=data["templates"])


# The architecture's defaults are StudentConfig's (what checkpoints store); the form adds bounds and descriptions.
_STUDENT = {f.name: f.default for f in dataclasses.fields(StudentConfig)}


class StudentParameters(BaseModel):
    """The student network as a form: ``StudentConfig``'s fields and defaults without the embedding size,
    which is the teacher CLIP's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backbone: BackboneName = Field(
        _STUDENT["backbone"], description="Dilated backbone; resnet101 is MaskCLIP+'s, mobilenet_v3_large the light one"
    )
    output_stride: Literal[8, 16] = Field(_STUDENT["output_stride"], description="Feature stride of the backbone")
    head: HeadName = Field(_STUDENT["head"], description="DeepLab head (ASPP)")
    head_channels: int = Field(_STUDENT["head_channels"], ge=4, le=4096, description="Channels of the head")
    temperature: float = Field(
        _STUDENT["temperature"], gt=0, description="Logits are temperature x cosine(feature, text embedding)"
    )
    backbone_weights: str = Field(
        _STUDENT["backbone_weights"],
        description="'imagenet', 'none' (from scratch) or a path / URL of a torchvision state dict",
    )

    def config(self, embed_dim: int) -> StudentConfig:
        return StudentConfig(embed_dim=embed_dim, **self.model_dump())


class ScheduleParameters(BaseModel):
    """Iterations, rounds and optimisation (``TrainConfig``); the defaults are MaskCLIP+'s."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    iterations: int = Field(8000, ge=1, description="Total iterations, all rounds together")
    rounds: int = Field(2, ge=0, le=100, description="Self-training rounds after the pseudo-label phase")
    pseudo_fraction: float = Field(0.1, gt=0, lt=1, description="Share of the iterations on teacher pseudo-labels")
    batch_size: int = Field(4, ge=2, le=1024, description="Images per iteration")
    lr: float = Field(0.01, gt=0, description="Initial learning rate (SGD, poly decay)")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    poly_power: float = Field(0.9, gt=0)
    min_lr: float = Field(1e-4, ge=0)
    crop_size: int = Field(512, ge=16, le=4096, description="Training crop in pixels")
    scale_range: tuple[float, float] = Field((0.5, 2.0), description="Random rescaling of the base size")
    base_short_side: int | None = Field(512, ge=16, description="Scale relative to this short side; null: as stored")
    cat_max_ratio: float = Field(0.75, gt=0, le=1, description="Re-draw crops where one class covers more")
    flip: bool = True
    photometric: bool = True
    relabel_short_side: int | None = Field(512, ge=16, description="Short side when the student relabels the pool")
    eval_short_side: int | None = Field(512, ge=16, description="Short side when the student is evaluated")
    inference_batch_size: int = Field(8, ge=1, le=1024)
    seed: int = 0
    log_every: int = Field(50, ge=0, description="Log the loss every N iterations (0: never)")

    @model_validator(mode="after")
    def _fits(self) -> ScheduleParameters:
        if self.iterations < self.rounds + 1:
            raise ValueError(
                f"{self.iterations} iterations cannot hold the pseudo-label phase and {self.rounds} rounds"
            )
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range {self.scale_range} must be increasing and positive")
        return self

    def train_config(self) -> TrainConfig:
        augment = AugmentConfig(
            crop_size=self.crop_size,
            scale_range=tuple(self.scale_range),
            base_short_side=self.base_short_side,
            cat_max_ratio=self.cat_max_ratio,
            flip=self.flip,
            photometric=self.photometric,
        )
        fields = self.model_dump(
            exclude={"crop_size", "scale_range", "base_short_side", "cat_max_ratio", "flip", "photometric"}
        )
        return TrainConfig(**fields, augment=augment)


class DataParameters(BaseModel):
    """Which labels and images of the dataset the student learns from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config_hash: str | None = Field(
        None, description="The teacher labeling to train on; default: the dataset's only teacher labeling"
    )
    use_reviewed: bool = Field(True, description="Human-reviewed label maps replace the pseudo-labels of their images")
    pool_rejected: bool = Field(False, description="Self-training also relabels the images the teacher rejected")
    image_cache_mb: int = Field(512, ge=0, description="Decoded images kept in memory (LRU); 0 re-reads each time")
    image_storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options to read the images (default: environment)"
    )


class TrainingRunParameters(BaseModel):
    """How a training run is carried out (none of it changes the student, so none of it names the run)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._=-]*$",
        description="Checkpoints go to OUTPUT/checkpoints/<run_name>/; default: derived from every setting and "
        "the data, so a re-run with the same parameters resumes",
    )
    device: str | None = Field(None, description="cpu, cuda, cuda:1; default: CUDA when present")
    stop_after_round: int | None = Field(
        None, ge=0, description="Stop once this round is checkpointed (train the rest in a later run)"
    )
    retries: int = Field(0, ge=0, le=10, description="Retries of a failed training; each resumes from its checkpoint")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for the output dataset (default: environment)"
    )
