"""The MaskCLIP teacher: one object that turns RGB images and class names into dense labels."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from maskclip_core.process_cache import ProcessCache
from maskclip_core.teacher.clip_loader import DEFAULT_MODEL, DEFAULT_PRETRAINED, ClipBundle, load_clip
from maskclip_core.teacher.prompts import MASKCLIP_TEMPLATES, TemplateSetName, templates_for
from maskclip_core.teacher.proxy import ProxyBundle, cached_proxy
from maskclip_core.teacher.sam import cached_sam
from maskclip_core.teacher.sam_refine import (
    TRIDENT_COARSE_THRESH,
    TRIDENT_MINIMAL_AREA,
    TRIDENT_SAM_IOU_THRESH,
    RefinementSettings,
    load_sam_decoder,
)
from maskclip_core.teacher.text_classifier import TextClassifierCache, default_text_cache
from maskclip_core.teacher.trident import TRIDENT_COS_FAC
from maskclip_core.teacher.trident_labeler import TridentLabeler
from maskclip_core.teacher.vocabulary import Vocabulary
from maskclip_core.teacher.window_predictor import DensePredictor, ImageInput, InferenceConfig
from maskclip_core.types import SegmentationResult


class LabelerConfig(BaseModel):
    """Everything that determines the teacher's labels (hashed for incremental labeling)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(DEFAULT_MODEL, description="open_clip model name, e.g. ViT-B-16, ViT-L-14, RN50")
    pretrained: str = Field(DEFAULT_PRETRAINED, description="open_clip tag, a local checkpoint path, or 'none'")
    seed: int = Field(0, description="Seed of random weights (pretrained='none')")
    classes: str = Field(..., min_length=1, description="Classes, comma separated; synonyms after ';'")
    background: str | None = Field(None, description="Background queries, comma separated (optional)")
    templates: TemplateSetName = Field("maskclip", description="Prompt template set (teacher/prompts.py TEMPLATE_SETS)")
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    proxy: str | None = Field(
        None,
        description="ProxyCLIP: a timm ViT whose attention replaces CLIP's last block (dino_vitb8, dinov2_vitb14_reg "
        "or a timm name with its tag, e.g. vit_base_patch8_224.dino); None for plain CLIP",
    )
    proxy_weights: str = Field(
        "pretrained", description="Proxy weights: 'pretrained' (timm's hub), a local weights file, or 'none'"
    )
    sam: str | None = Field(
        None,
        description="Trident: SAM's image encoder (vit_b, vit_l, vit_h or a timm samvit_* name) whose attention "
        "aggregates the proxy's windows over the whole image; needs a proxy (Trident's: vit_base_patch16_224.dino)",
    )
    sam_weights: str = Field(
        "pretrained", description="SAM weights: 'pretrained' (timm's hub), a local file (sam_vit_b_01ec64.pth), 'none'"
    )
    sam_cos_fac: float = Field(
        TRIDENT_COS_FAC, ge=0, description="Trident: keep SAM's attention where its values' cosine > this x their mean"
    )
    sam_refine_neg_cos: bool = Field(True, description="Trident: keep a negative threshold (off: it becomes 0.6)")
    sam_refinement: bool = Field(
        False, description="Trident: refine the labels with SAM's prompt encoder and mask decoder (sam_weights' file)"
    )
    coarse_thresh: float = Field(
        TRIDENT_COARSE_THRESH, ge=0, le=1, description="Trident refinement: prompt where a class's probability > this"
    )
    sam_iou_thresh: float = Field(
        TRIDENT_SAM_IOU_THRESH, description="Trident refinement: keep SAM's masks whose predicted IoU > this"
    )
    minimal_area: int = Field(
        TRIDENT_MINIMAL_AREA, ge=0, description="Trident refinement: smallest region prompted (pixels, image halved)"
    )

    @model_validator(mode="after")
    def _proxy_replaces_attention(self) -> LabelerConfig:
        if self.proxy is not None and self.inference.attention != "maskclip":
            raise ValueError(
                f"a proxy encoder replaces the last block's attention; attention={self.inference.attention!r} "
                "cannot be combined with it (leave attention at 'maskclip')"
            )
        return self

    @model_validator(mode="after")
    def _trident_needs_a_proxy(self) -> LabelerConfig:
        if self.sam is not None and self.proxy is None:
            raise ValueError(
                "Trident (sam) aggregates a proxy encoder's windows: set proxy too "
                "(Trident's: vit_base_patch16_224.dino)"
            )
        return self

    @model_validator(mode="after")
    def _sam_refinement_is_tridents(self) -> LabelerConfig:
        if self.sam_refinement and self.sam is None:
            raise ValueError("sam_refinement refines Trident's labels with SAM's decoder: set sam (and proxy) too")
        return self

    @model_validator(mode="after")
    def _global_block_is_not_tridents(self) -> LabelerConfig:
        if self.sam is not None and self.inference.global_block:
            raise ValueError(
                "Trident (sam) aggregates its windows over the whole image with SAM's attention; global_block "
                "composes with the attention modes and ProxyCLIP only"
            )
        return self

    def vocabulary(self) -> Vocabulary:
        return Vocabulary.parse(self.classes, self.background)


class MaskCLIPLabeler:
    """Facade over CLIP loading, the text classifier and the dense inference protocol.

    >>> labeler = MaskCLIPLabeler.from_config(LabelerConfig(classes="cat, grass; lawn"))
    >>> [result] = labeler.label([rgb_array])
    """

    def __init__(
        self,
        bundle: ClipBundle,
        vocabulary: Vocabulary,
        inference: InferenceConfig | None = None,
        *,
        templates: Sequence[str] = MASKCLIP_TEMPLATES,
        text_cache: TextClassifierCache | None = None,
        proxy: ProxyBundle | None = None,
    ) -> None:
        self.bundle = bundle
        self.proxy = proxy
        # The precision this labeler runs (and names in its config hash): the device's fast path for "auto".
        self.inference = (inference or InferenceConfig()).resolved(bundle.device)
        self.templates = tuple(templates)
        self._text_cache = text_cache or default_text_cache()
        self.set_vocabulary(vocabulary)

    @classmethod
    def from_config(
        cls, config: LabelerConfig, *, device: str | torch.device | None = None, text_cache_dir: str | None = None
    ) -> MaskCLIPLabeler | TridentLabeler:
        bundle = load_clip(config.model, config.pretrained, device=device, seed=config.seed)
        proxy = None
        if config.proxy is not None:
            if not bundle.is_vit:
                raise ValueError(f"ProxyCLIP needs a ViT CLIP; {config.model} is a ResNet")
            proxy = cached_proxy(config.proxy, config.proxy_weights, device=bundle.device, seed=config.seed)
        if config.sam is not None:
            sam = cached_sam(config.sam, config.sam_weights, device=bundle.device, seed=config.seed)
            refinement = None
            if config.sam_refinement:
                refinement = RefinementSettings(
                    load_sam_decoder(sam, config.sam_weights, seed=config.seed),
                    config.coarse_thresh,
                    config.sam_iou_thresh,
                    config.minimal_area,
                )
            return TridentLabeler(
                bundle,
                proxy,
                sam,
                config.vocabulary(),
                config.inference,
                cos_fac=config.sam_cos_fac,
                refine_neg_cos=config.sam_refine_neg_cos,
                refinement=refinement,
                templates=templates_for(config.templates),
                text_cache=TextClassifierCache(text_cache_dir) if text_cache_dir else None,
            )
        return cls(
            bundle,
            config.vocabulary(),
            config.inference,
            templates=templates_for(config.templates),
            text_cache=TextClassifierCache(text_cache_dir) if text_cache_dir else None,
            proxy=proxy,
        )

    def set_vocabulary(self, vocabulary: Vocabulary) -> None:
        """Switch classes without reloading the model (classifiers are cached per vocabulary)."""
        self.vocabulary = vocabulary
        self.classifier = self._text_cache.get(self.bundle, vocabulary, self.templates)
        self.predictor = DensePredictor(
            self.bundle.model,
            self.classifier,
            stride=self.bundle.stride,
            mean=self.bundle.mean,
            std=self.bundle.std,
            config=self.inference,
            device=self.bundle.device,
            proxy=self.proxy,
        )

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.vocabulary.names

    def label(self, images: Sequence[ImageInput | Image.Image]) -> list[SegmentationResult]:
        """Dense labels for RGB images: uint8 arrays [H, W, 3], PIL images, or uint8 tensors [3, H, W] on any
        device (JPEGs decoded on the GPU by :mod:`maskclip_core.labeling.device_decode` stay there)."""
        arrays = [np.asarray(im.convert("RGB")) if isinstance(im, Image.Image) else im for im in images]
        return self.predictor.predict(arrays)

    def config(self) -> dict[str, Any]:
        config = {
            "labeler": "maskclip",
            "model": self.bundle.model_name,
            "weights": self.bundle.weights_id,
            "vocabulary": json.loads(self.vocabulary.to_json()),
            "templates": hashlib.sha256("\n".join(self.templates).encode()).hexdigest()[:16],
            "inference": self.inference.identity(proxy=self.proxy is not None),
        }
        if self.proxy is not None:
            config["proxy"] = {"model": self.proxy.name, "weights": self.proxy.weights_id}
        return config


_LABELERS: ProcessCache[MaskCLIPLabeler] = ProcessCache()


def cached_labeler(
    config: LabelerConfig, *, device: str | None = None, text_cache_dir: str | None = None
) -> MaskCLIPLabeler:
    """One labeler per configuration per process: a worker loads the model once and keeps it."""
    key = json.dumps([config.model_dump(mode="json"), device, text_cache_dir], sort_keys=True)
    return _LABELERS.get(key, lambda: MaskCLIPLabeler.from_config(config, device=device, text_cache_dir=text_cache_dir))
