"""The Trident teacher: CLIP + a DINO proxy + SAM's encoder (``trident``) behind the ``Labeler`` protocol.

Its windows, proxy temperature and logit scale come from the labeler's ``InferenceConfig`` (``crop``,
``stride``, ``short_side``, ``max_long_side``, ``logit_scale``, ``proxy_beta``, ``proxy_gamma``, ``precision``);
the refinements of the sliding-window protocol (key smoothing, prompt denoising, PAMR) are not part of Trident
and do not run. Trident's own settings are SAM (the encoder, its weights) and the affinity's threshold.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from maskclip_core.teacher.clip_loader import ClipBundle
from maskclip_core.teacher.fast_paths import LOW_PRECISION
from maskclip_core.teacher.prompts import MASKCLIP_TEMPLATES
from maskclip_core.teacher.proxy import ProxyBundle
from maskclip_core.teacher.sam import SamBundle, SamLastAttention, sam_last_attention, sam_pixels
from maskclip_core.teacher.sam_refine import RefinementSettings, sam_image_embedding, sam_refine
from maskclip_core.teacher.text_classifier import TextClassifierCache, default_text_cache
from maskclip_core.teacher.trident import (
    TRIDENT_BETA,
    TRIDENT_COS_FAC,
    TRIDENT_CROP,
    TRIDENT_GAMMA,
    TRIDENT_LOGIT_SCALE,
    TRIDENT_STRIDE,
    canvas_shape,
    sam_affinity,
    trident_features,
)
from maskclip_core.teacher.vocabulary import Vocabulary
from maskclip_core.teacher.window_predictor import (
    ImageInput,
    InferenceConfig,
    opencv_resize,
    resized_shape,
    to_tensor,
    upsample_argmax,
)
from maskclip_core.types import SegmentationResult, label_dtype

# What the reference's configs give the labeler's InferenceConfig (configs/base_config.py, Trident's defaults):
# windows 336 with stride 224, logit scale 40, ProxyCLIP's beta 1.2 and gamma 3.
TRIDENT_INFERENCE = {
    "crop": TRIDENT_CROP,
    "stride": TRIDENT_STRIDE,
    "logit_scale": TRIDENT_LOGIT_SCALE,
    "proxy_beta": TRIDENT_BETA,
    "proxy_gamma": TRIDENT_GAMMA,
}
# The InferenceConfig settings Trident honours besides its windows, at their defaults: the image resize and the
# positional embeddings' resize (the reference's: "opencv", "scale_factor").
TRIDENT_DEFAULT_CONVENTIONS = {"resize": "antialias", "position_resize": "size"}
# The reference's proxy (torch hub dino_vitb16) as a timm name with its tag.
TRIDENT_PROXY = "vit_base_patch16_224.dino"


class TridentLabeler:
    """Dense labels from Trident; the same ``label`` / ``config`` as ``MaskCLIPLabeler``."""

    def __init__(
        self,
        bundle: ClipBundle,
        proxy: ProxyBundle,
        sam: SamBundle,
        vocabulary: Vocabulary,
        inference: InferenceConfig | None = None,
        *,
        cos_fac: float = TRIDENT_COS_FAC,
        refine_neg_cos: bool = True,
        refinement: RefinementSettings | None = None,
        templates: Sequence[str] = MASKCLIP_TEMPLATES,
        text_cache: TextClassifierCache | None = None,
    ) -> None:
        if not bundle.is_vit:
            raise ValueError(f"Trident needs a ViT CLIP; {bundle.model_name} is a ResNet")
        self.bundle, self.proxy, self.sam = bundle, proxy, sam
        self.inference = (inference or InferenceConfig(**TRIDENT_INFERENCE)).resolved(bundle.device)
        if self.inference.precision == "int8":
            raise ValueError("Trident runs in fp32, bf16 or fp16; precision 'int8' is not available for it")
        if cos_fac < 0:
            raise ValueError(f"Trident's cos_fac must not be negative, got {cos_fac}")
        self.cos_fac, self.refine_neg_cos = float(cos_fac), bool(refine_neg_cos)
        self.refinement = refinement
        self.templates = tuple(templates)
        self._text_cache = text_cache or default_text_cache()
        self.device = torch.device(bundle.device)
        self._normalisation = (tuple(bundle.mean), tuple(bundle.std))
        self.set_vocabulary(vocabulary)

    def set_vocabulary(self, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary
        self.classifier = self._text_cache.get(self.bundle, vocabulary, self.templates)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.vocabulary.names

    def _autocast(self):
        dtype = LOW_PRECISION.get(self.inference.precision)
        return torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def clip_canvas(self, image: np.ndarray) -> torch.Tensor:
        """The CLIP-normalised image [3, H, W] the windows are cut from: resized by the inference config's
        short side (antialiased; mmseg's OpenCV resize with ``resize="opencv"``), then to :func:`canvas_shape`."""
        cfg = self.inference
        opencv = cfg.resize == "opencv"
        size = resized_shape(image.shape[0], image.shape[1], cfg.short_side, cfg.max_long_side, half_up=opencv)
        if opencv and size != image.shape[:2]:
            image = opencv_resize(image, size)
        x = to_tensor(image).to(self.device)
        if size != tuple(x.shape[1:]):
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        mean, std = (torch.tensor(v, device=self.device).view(3, 1, 1) for v in self._normalisation)
        x = (x - mean) / std
        canvas = canvas_shape(*size, int(self.bundle.stride), self.inference.crop)
        if canvas != size:
            x = F.interpolate(x[None], size=canvas, mode="bilinear", align_corners=False)[0]
        return x

    def sam_image_size(self, image: np.ndarray) -> tuple[int, int]:
        """The size of the image SAM sees: the reference reads the file with OpenCV and resizes it to whole
        patches (``resize="opencv"``); by default the image as given."""
        p = self.sam.patch_size
        if self.inference.resize == "opencv":
            return -(-image.shape[0] // p) * p, -(-image.shape[1] // p) * p
        return image.shape[0], image.shape[1]

    def sam_input(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """SAM's input for the image and the (h, w) the image occupies in it (:func:`sam_pixels`)."""
        size = self.sam_image_size(image)
        for_sam = opencv_resize(image, size) if size != image.shape[:2] else image
        return sam_pixels(for_sam, self.sam.input_size, self.device)

    def features(self, image: np.ndarray) -> torch.Tensor:
        """Trident's dense CLIP features [D, vh, vw] on SAM's grid of the image (RGB uint8 [H, W, 3])."""
        return self._features(image)[0]

    def _features(self, image: np.ndarray) -> tuple[torch.Tensor, SamLastAttention]:
        """The features and SAM's last-block terms they were aggregated with (the refinement reuses them)."""
        p = self.sam.patch_size
        pixels, (h, w) = self.sam_input(image)
        valid = (max(1, h // p), max(1, w // p))  # a sliver of an image still gets one SAM cell
        cfg = self.inference
        with self._autocast():
            attention = sam_last_attention(self.sam, pixels)
        # The affinity in fp32: its threshold is a comparison, which low precision would move pairs across.
        affinity = sam_affinity(attention, valid, self.cos_fac, self.refine_neg_cos)
        with self._autocast():
            features = trident_features(
                self.bundle.model,
                self.proxy,
                self.clip_canvas(image),
                affinity,
                valid,
                self._normalisation,
                crop=cfg.crop,
                stride=cfg.stride,
                beta=cfg.proxy_beta,
                gamma=cfg.proxy_gamma,
                window_batch=cfg.window_batch,
                position_resize=cfg.position_resize,
            ).float()
        return features, attention

    @torch.inference_mode()
    def label(self, images: Sequence[ImageInput | Image.Image]) -> list[SegmentationResult]:
        """Dense labels for RGB images (uint8 arrays [H, W, 3], PIL images or uint8 tensors [3, H, W])."""
        results = []
        dtype = getattr(torch, label_dtype(self.classifier.num_classes).name)
        for image in images:
            array = _as_array(image)
            features, attention = self._features(array)
            logits = self.classifier.cosine(features[None])[0] * self.inference.logit_scale
            probs = torch.softmax(logits, dim=0)
            if self.refinement is None:
                labels, conf = upsample_argmax(probs, array.shape[:2], dtype=dtype)
            else:
                labels, conf = self._refined(array, probs, attention)
                labels = labels.to(dtype)
            results.append(
                SegmentationResult(
                    labels=labels.cpu().numpy(),
                    confidence=conf.float().cpu().numpy(),
                    class_scores=probs.amax(dim=(1, 2)).cpu().numpy(),
                    dropped=np.zeros(self.classifier.num_classes, dtype=bool),
                    class_names=self.classifier.class_names,
                )
            )
        return results

    def _refined(
        self, image: np.ndarray, probs: torch.Tensor, attention: SamLastAttention
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The coarse probabilities at the image's size, refined by SAM's decoder (:func:`sam_refine`)."""
        full = F.interpolate(probs[None], size=image.shape[:2], mode="bilinear", align_corners=False)[0]
        with self._autocast():
            embedding = sam_image_embedding(self.sam, attention)
        r = self.refinement
        return sam_refine(
            full,
            full.argmax(dim=0),
            embedding,
            r.decoder,
            self.sam.input_size,
            coarse_thresh=r.coarse_thresh,
            sam_iou_thresh=r.sam_iou_thresh,
            minimal_area=r.minimal_area,
            sam_image_size=self.sam_image_size(image),
        )

    def config(self) -> dict[str, Any]:
        cfg = self.inference
        used = ("short_side", "max_long_side", "crop", "stride", "logit_scale", "proxy_beta", "proxy_gamma")
        # The reference's conventions, named only when on (the defaults' hashes stay as they were).
        conventions = {k: getattr(cfg, k) for k, v in TRIDENT_DEFAULT_CONVENTIONS.items() if getattr(cfg, k) != v}
        # The refinement is named only when on (the coarse labeler's hashes stay as they were).
        refinement = {} if self.refinement is None else {"sam_refinement": self.refinement.config()}
        return {
            "labeler": "trident",
            "model": self.bundle.model_name,
            "weights": self.bundle.weights_id,
            "vocabulary": json.loads(self.vocabulary.to_json()),
            "templates": hashlib.sha256("\n".join(self.templates).encode()).hexdigest()[:16],
            "inference": {**{name: getattr(cfg, name) for name in used}, **conventions, "precision": cfg.precision},
            "proxy": {"model": self.proxy.name, "weights": self.proxy.weights_id},
            "sam": {"model": self.sam.name, "weights": self.sam.weights_id},
            "trident": {"cos_fac": self.cos_fac, "refine_neg_cos": self.refine_neg_cos},
            **refinement,
        }


def _as_array(image: ImageInput | Image.Image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"expected a uint8 tensor [3, H, W], got {image.dtype} {tuple(image.shape)}")
        return image.permute(1, 2, 0).cpu().numpy()
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 array [H, W, 3], got {image.dtype} {image.shape}")
    return image
