"""The MaskCLIP+ student: a DeepLab network whose head projects to the CLIP embedding space and whose
classifier is the frozen text embeddings of the vocabulary."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from maskclip_core.student.backbones import build_backbone
from maskclip_core.student.classifier import ClassVocabulary, FrozenTextHead


@dataclass(frozen=True)
class StudentConfig:
    """Architecture of a student (stored in its checkpoints).

    ``backbone_weights`` is only read when a network is first built for training: ``"imagenet"``,
    ``"none"`` or a local path / URL of a torchvision state dict.
    """

    embed_dim: int = 512  # CLIP's joint embedding dim (512 for ViT-B/16)
    backbone: str = "resnet101"  # a key of student.backbones.BACKBONES
    output_stride: int = 8
    head: str = "deeplabv3"  # a key of HEADS
    head_channels: int = 256
    # Logits are temperature * cosine. MaskCLIP+ leaves its features unnormalised, so their norm (tens)
    # plays this part; CLIP's text embeddings of different classes are close (cosine 0.7-0.9), so a
    # confident student needs a scale of this order. Near-orthogonal embeddings train faster with ~5-10.
    temperature: float = 50.0
    backbone_weights: str = "imagenet"

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose one of {tuple(HEADS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudentConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class ASPPv2(nn.Module):
    """DeepLabv2's ASPP (summed parallel atrous 3x3 convs), as MaskCLIP+'s decode module."""

    def __init__(self, in_channels: int, channels: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_channels, channels, 3, padding=r, dilation=r, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            )
            for r in rates
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(b(x) for b in self.branches)  # type: ignore[return-value]


def _deeplabv3_head(in_channels: int, channels: int, scale: int) -> nn.Module:
    """torchvision's ASPP with image pooling, then a 3x3 conv."""
    return nn.Sequential(
        ASPP(in_channels, [r * scale for r in (6, 12, 18)], out_channels=channels),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
    )


def _deeplabv2_head(in_channels: int, channels: int, scale: int) -> nn.Module:
    """DeepLabv2's summed parallel atrous convs (MaskCLIP+'s decode module)."""
    return ASPPv2(in_channels, channels, tuple(r * scale // 2 for r in (6, 12, 18, 24)))


# The head registry: (backbone channels, head channels, rate scale) -> head body. ``HeadName`` (the configs'
# Literal) and the CLI's choices derive from its keys.
HEADS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "deeplabv3": _deeplabv3_head,
    "deeplabv2": _deeplabv2_head,
}
HeadName = Literal[tuple(HEADS)]  # type: ignore[valid-type]


def _head(config: StudentConfig, in_channels: int) -> nn.Module:
    # DeepLab's rates are quoted at output stride 16; at stride 8 the same receptive field needs double.
    scale = 16 // config.output_stride
    body = HEADS[config.head](in_channels, config.head_channels, scale)
    # The projection to the text space replaces DeepLab's per-class 1x1 conv.
    return nn.Sequential(body, nn.Conv2d(config.head_channels, config.embed_dim, 1))


class StudentNet(nn.Module):
    """Images [B, 3, H, W] (ImageNet-normalised) -> class logits [B, K, H, W]."""

    def __init__(
        self,
        config: StudentConfig,
        embeddings: torch.Tensor,
        vocabulary: ClassVocabulary,
        backbone_weights: str | None = None,
        storage_options: dict | None = None,
    ) -> None:
        super().__init__()
        if embeddings.ndim != 2 or embeddings.shape[1] != config.embed_dim:
            raise ValueError(f"text embeddings {tuple(embeddings.shape)} do not have dim {config.embed_dim}")
        self.config = config
        weights = config.backbone_weights if backbone_weights is None else backbone_weights
        self.backbone, channels = build_backbone(config.backbone, config.output_stride, weights, storage_options)
        self.head = _head(config, channels)
        self.classifier = FrozenTextHead(embeddings, vocabulary, config.temperature)

    @property
    def vocabulary(self) -> ClassVocabulary:
        return self.classifier.vocabulary

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.classifier.vocabulary.class_names

    def set_vocabulary(self, embeddings: torch.Tensor, vocabulary: ClassVocabulary) -> None:
        """Rename, reorder or add classes without retraining: swaps the frozen classifier buffers."""
        self.classifier.set_vocabulary(embeddings, vocabulary)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Dense features in the text space, [B, D, H/os, W/os] (not normalised)."""
        return self.head(self.backbone(images))

    def forward(self, images: torch.Tensor, upsample: bool = True) -> torch.Tensor:
        logits = self.classifier(self.embed(images))
        if upsample:
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits


def build_student(
    config: StudentConfig,
    embeddings: torch.Tensor,
    vocabulary: ClassVocabulary,
    backbone_weights: str | None = None,
    storage_options: dict | None = None,
) -> StudentNet:
    """A new student; ``backbone_weights`` overrides ``config.backbone_weights`` (e.g. ``"none"`` before
    loading a checkpoint, so that no download is attempted)."""
    return StudentNet(config, embeddings, vocabulary, backbone_weights, storage_options)
