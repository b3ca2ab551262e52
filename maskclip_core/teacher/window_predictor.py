"""MaskCLIP's inference protocol: resize, sliding windows, refinements, stitching, upsampling."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.profiler import record_function

from maskclip_core.teacher.dense import AttentionMode, PositionResize, dense_features, describe_attention_modes
from maskclip_core.teacher.fast_paths import (
    LOW_PRECISION,
    PRECISION_HELP,
    Precision,
    autocast_dtype,
    check_precision,
    compiled,
    low_precision_copy,
    quantised_copy,
    resolve_precision,
    uses_low_precision_copy,
)
from maskclip_core.teacher.global_block import GLOBAL_BLOCK_MAX_TOKENS, GLOBAL_BLOCK_NEEDS_VIT, global_dense_features
from maskclip_core.teacher.pamr import pamr
from maskclip_core.teacher.proxy import PROXY_BETA, PROXY_GAMMA, ProxyBundle, padding_multiple, proxy_dense_features
from maskclip_core.teacher.refine import key_smoothing, prompt_denoising_keep, suppress_classes
from maskclip_core.teacher.text_classifier import TextClassifier
from maskclip_core.teacher.vocabulary import BACKGROUND
from maskclip_core.types import SegmentationResult, label_dtype


class InferenceConfig(BaseModel):
    """How images are turned into dense predictions (MaskCLIP's defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attention: AttentionMode = Field(
        "maskclip",
        description=f"Last-block variant. {describe_attention_modes()}. With a proxy encoder ProxyCLIP replaces it",
    )
    short_side: int | None = Field(448, ge=32, le=8192, description="Resize the short side to this; None keeps size")
    max_long_side: int = Field(2048, ge=32, description="Cap on the long side after resizing")
    mode: Literal["slide", "whole"] = Field("slide", description="Sliding windows or the whole image at once")
    crop: int = Field(448, ge=32, description="Sliding-window size in pixels")
    stride: int = Field(224, ge=8, description="Sliding-window step in pixels")
    window_batch: int = Field(8, ge=1, le=1024, description="Windows per encoder forward")
    logit_scale: float = Field(100.0, gt=0, description="Softmax temperature applied to cosine similarities")
    key_smoothing: bool = True
    key_smoothing_threshold: float = Field(1.0, ge=0, le=1, description="Smooth patches whose max prob is below")
    prompt_denoising: bool = True
    prompt_denoising_threshold: float = Field(0.5, ge=0, le=1, description="Drop classes whose max prob is below")
    precision: Precision = Field("auto", description=PRECISION_HELP)
    compile: bool = Field(False, description="torch.compile the encoder (slow first call per window shape)")
    pamr: bool = Field(False, description="PAMR: refine each window's probabilities along colour edges")
    pamr_iterations: int = Field(10, ge=1, le=100, description="PAMR iterations")
    pamr_dilations: tuple[int, ...] = Field((8, 16), min_length=1, description="PAMR neighbourhood dilations (px)")
    proxy_beta: float = Field(PROXY_BETA, description="ProxyCLIP: similarities below beta x their mean are dropped")
    proxy_gamma: float = Field(PROXY_GAMMA, gt=0, description="ProxyCLIP: temperature of the proxy attention")
    # The reference segmentors' conventions (SCLIP, NACLIP, ClearCLIP, ProxyCLIP; the benchmark protocols set
    # them). Each default is this project's labeling convention; a default is left out of the config hash.
    merge: Literal["probabilities", "logits"] = Field(
        "probabilities",
        description="Windows: 'probabilities' (a softmax per window on its patch grid, probabilities averaged); "
        "'logits' (the references: raw logits resized and averaged, resized to the original size, one softmax "
        "there; PAMR then runs once on the whole image at that size)",
    )
    class_scores: Literal["class_softmax", "query_share"] = Field(
        "class_softmax",
        description="A class with several queries (synonyms, background words): 'class_softmax' (softmax over "
        "each class's best query logit) or 'query_share' (the references: softmax over all queries, then the "
        "best query's share; needs merge='logits')",
    )
    background_wins_ties: bool = Field(
        False, description="An exact tie with the background class goes to it (the references' index 0)"
    )
    area_threshold: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="SCLIP's area_thd: foreground classes winning at most this share of the foreground pixels "
        "are removed and their pixels go to the next class (needs merge='logits')",
    )
    position_resize: PositionResize = Field(
        "size", description="Positional embeddings: 'size' (bicubic to the grid) or 'scale_factor' (the references')"
    )
    resize: Literal["antialias", "opencv"] = Field(
        "antialias",
        description="Image resize: 'antialias' (bilinear with antialiasing) or 'opencv' (mmsegmentation's: OpenCV "
        "bilinear on uint8, no antialiasing, sizes rounded half up)",
    )
    partial_patches: Literal["pad", "floor", "pad_centred"] = Field(
        "pad",
        description="A window side that is no multiple of the patch size: 'pad' (bottom/right, the padded patches "
        "cut off), 'floor' (SCLIP, NACLIP: the patch grid floors and its logits are stretched over the window) or "
        "'pad_centred' (ClearCLIP, ProxyCLIP: padded on both sides, logits resized to the padded window and cut)",
    )
    pad_to: int | None = Field(
        None, ge=1, description="'pad_centred': pad to a multiple of this many pixels (ProxyCLIP: 56; None: the patch)"
    )

    global_block: bool = Field(
        False,
        description="OV-Stitcher's global final block: the windows' tokens entering the last block stitched into "
        "one image grid (overlaps averaged) and the last block (any attention mode, or ProxyCLIP's) run over it, "
        "so every patch attends to the whole image (teacher/global_block.py)",
    )
    global_block_max_tokens: int = Field(
        GLOBAL_BLOCK_MAX_TOKENS,
        ge=1,
        description="global_block: an image with more patch tokens than this is refused (recorded as failed)",
    )

    @model_validator(mode="after")
    def _stride_fits(self) -> InferenceConfig:
        if self.mode == "slide" and self.stride > self.crop:
            raise ValueError("sliding-window stride larger than the crop would skip pixels")
        if any(d < 1 for d in self.pamr_dilations):
            raise ValueError(f"PAMR dilations must be positive pixel distances, got {self.pamr_dilations}")
        if self.merge == "logits" and (self.key_smoothing or self.prompt_denoising):
            raise ValueError("merge='logits' (the references' window merging) has no key smoothing / prompt denoising")
        if self.merge != "logits" and (self.class_scores == "query_share" or self.area_threshold is not None):
            raise ValueError("class_scores='query_share' and area_threshold need merge='logits'")
        if self.pad_to is not None and self.partial_patches != "pad_centred":
            raise ValueError("pad_to is the multiple of partial_patches='pad_centred'")
        if self.global_block and self.partial_patches == "pad_centred":
            raise ValueError("the global block places windows padded at their end: not with 'pad_centred'")
        return self

    @model_validator(mode="before")
    @classmethod
    def _half_precision_is_a_precision(cls, data: Any) -> Any:
        """``half_precision`` (before ``precision`` had ``auto``): off meant fp32 on CUDA; on, the CUDA default."""
        if isinstance(data, dict) and "half_precision" in data:
            data = dict(data)
            if not data.pop("half_precision") and "precision" not in data:
                data["precision"] = "fp32"
        return data

    def resolved(self, device: torch.device | str) -> InferenceConfig:
        """This config with ``precision="auto"`` made the device's fast path (``fast_paths.resolve_precision``)."""
        precision = resolve_precision(self.precision, torch.device(device))
        return self if precision == self.precision else self.model_copy(update={"precision": precision})

    def identity(self, *, proxy: bool = False) -> dict:
        """The settings that determine labels, for config hashes: speed-only settings left out, and so are
        the options of refinements that are off (adding an option never changes existing hashes)."""
        if self.precision == "auto":
            raise ValueError("the precision is resolved for a device before it names a labeling (resolved())")
        data = self.model_dump(mode="json", exclude={"window_batch", "compile", "global_block_max_tokens"})
        if not self.global_block:
            data.pop("global_block")  # off: the hashes of before the option existed
        if self.precision == "fp32":
            data.pop("precision")  # the default: hashes from before the option existed stay valid
        if not self.pamr:
            for name in ("pamr", "pamr_iterations", "pamr_dilations"):
                data.pop(name)
        if not proxy:
            data.pop("proxy_beta")
            data.pop("proxy_gamma")
        for name in _REFERENCE_CONVENTIONS:  # at their defaults they name the labels of before they existed
            if getattr(self, name) == InferenceConfig.model_fields[name].default:
                data.pop(name)
        return data


_REFERENCE_CONVENTIONS = (
    "merge",
    "class_scores",
    "background_wins_ties",
    "area_threshold",
    "position_resize",
    "resize",
    "partial_patches",
    "pad_to",
)


def resized_shape(
    height: int, width: int, short_side: int | None, max_long_side: int, *, half_up: bool = False
) -> tuple[int, int]:
    """Keep the aspect ratio: short side to ``short_side`` unless the long side would pass its cap. Sizes are
    rounded to even (Python's round) or, ``half_up``, as mmcv's ``rescale_size`` does (``int(x + 0.5)``)."""
    if short_side is None:
        return height, width
    scale = min(short_side / min(height, width), max_long_side / max(height, width))
    if half_up:
        return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def opencv_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """mmsegmentation's ``Resize``: OpenCV bilinear on the uint8 image (no antialiasing), uint8 out."""
    import cv2

    return cv2.resize(np.ascontiguousarray(image), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def window_boxes(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) windows covering the image; the last row/column is shifted back to end at the edge."""
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y1, x1 = min(r * stride + crop, height), min(c * stride + crop, width)
            boxes.append((max(y1 - crop, 0), y1, max(x1 - crop, 0), x1))
    return boxes


# An RGB uint8 array [H, W, 3], or a uint8 tensor [3, H, W] (torchvision's layout, e.g. JPEGs decoded on the GPU).
ImageInput = np.ndarray | torch.Tensor


def image_size(image: ImageInput) -> tuple[int, int]:
    """(height, width) of an :data:`ImageInput`."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"expected a uint8 tensor [3, H, W], got {image.dtype} {tuple(image.shape)}")
        return int(image.shape[1]), int(image.shape[2])
    return int(image.shape[0]), int(image.shape[1])


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> float [3, H, W] in 0..1."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 array [H, W, 3], got {image.dtype} {image.shape}")
    array = np.ascontiguousarray(image) if image.flags.writeable else image.copy()  # torch wants writable memory
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


def upsample_argmax(
    probs: torch.Tensor, size: tuple[int, int], max_elements: int = 1 << 25, *, dtype: torch.dtype = torch.long
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear upsampling of [K, h, w] probabilities to ``size``, then per-pixel argmax (as ``dtype``) and max.

    Equals ``F.interpolate(..., mode="bilinear", align_corners=False)`` followed by max, but works on row
    bands so a many-class prediction of a 12-megapixel photo never materialises K x H x W floats.

    Upsampling class planes one at a time would hold one plane instead of K, but PyTorch's CPU kernel rounds
    differently (last bit) depending on the channel count and output size, which would change labels.
    """
    K, h, w = probs.shape
    H, W = size
    if K * H * W <= max_elements:
        up = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
        conf, labels = up.max(dim=0)
        return labels.to(dtype), conf
    # Source coordinates exactly as interpolate computes them (align_corners=False, clamped at 0); with
    # border padding grid_sample clamps at the far edge the same way interpolate does.
    ys = ((torch.arange(H, device=probs.device, dtype=torch.float64) + 0.5) * (h / H) - 0.5).clamp_min(0)
    xs = ((torch.arange(W, device=probs.device, dtype=torch.float64) + 0.5) * (w / W) - 0.5).clamp_min(0)
    gy = (2 * ys + 1) / h - 1
    gx = ((2 * xs + 1) / w - 1).float()
    band = max(1, max_elements // (K * W))
    labels = torch.empty((H, W), dtype=torch.long, device=probs.device)
    conf = torch.empty((H, W), dtype=probs.dtype, device=probs.device)
    for r0 in range(0, H, band):
        r1 = min(H, r0 + band)
        grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[r0:r1, None].float()), dim=-1)
        up = F.grid_sample(
            probs[None], grid[None].to(probs.dtype), mode="bilinear", padding_mode="border", align_corners=False
        )[0]
        conf[r0:r1], labels[r0:r1] = up.max(dim=0)
    return labels.to(dtype), conf


@dataclass
class _Window:
    image: int
    box: tuple[int, int, int, int]  # in resized-image pixels
    grid: tuple[int, int]  # valid patch rows / columns (padding excluded, but for "pad_centred")
    offset: tuple[int, int] = (0, 0)  # "pad_centred": the padding above and left of the window, in pixels
    logits: torch.Tensor | None = None  # [K, gh, gw]
    keys: torch.Tensor | None = None  # [C, gh, gw]
    probs: torch.Tensor | None = None  # [K, gh, gw], refined


class DensePredictor:
    """Runs the protocol for one encoder and one text classifier."""

    def __init__(
        self,
        model: torch.nn.Module,
        classifier: TextClassifier,
        *,
        stride: int,
        mean: Sequence[float],
        std: Sequence[float],
        config: InferenceConfig | None = None,
        device: torch.device | str = "cpu",
        proxy: ProxyBundle | None = None,
    ) -> None:
        self.model = model
        self.classifier = classifier
        self.proxy = proxy
        # Pixels per output cell; with a proxy the features live on the proxy's patch grid. Windows are padded
        # to a multiple of both encoders' patch sizes.
        self.stride = proxy.patch_size if proxy is not None else int(stride)
        self.pad_multiple = padding_multiple(int(stride), proxy) if proxy is not None else self.stride
        self.config = config or InferenceConfig()
        if self.config.pad_to is not None:  # ProxyCLIP's 56: whole proxy patches; CLIP's grid floors inside
            if self.config.pad_to % self.stride:
                # The reference pads to 56 = lcm(8, 14) for its DINO B/8 and DINOv2 /14 proxies.
                raise ValueError(
                    f"windows padded to {self.config.pad_to} px (ProxyCLIP's protocol) need a proxy whose patches "
                    f"divide {self.config.pad_to}; this one's are {self.stride} px: use an 8- or 14-pixel proxy "
                    f"(dino_vitb8, dinov2_vitb14_reg) as the reference does"
                )
            self.pad_multiple = self.config.pad_to
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(3, 1, 1)
        self._normalisation = (tuple(mean), tuple(std))
        is_vit = hasattr(getattr(model, "visual", model), "transformer")
        self.config = self.config.resolved(self.device)
        check_precision(self.config.precision, self.device, is_vit=is_vit)
        precision = self.config.precision
        if precision == "int8":
            self.encoder = quantised_copy(model)
        elif uses_low_precision_copy(precision, self.device, is_vit=is_vit):
            self.encoder = low_precision_copy(model, LOW_PRECISION[precision])  # no autocast (see fast_paths)
        else:
            self.encoder = model
        self._autocast = autocast_dtype(precision, self.device, is_vit=is_vit)
        if self.config.global_block and not is_vit:
            raise ValueError(GLOBAL_BLOCK_NEEDS_VIT)
        self._label_dtype = getattr(torch, label_dtype(classifier.num_classes).name)
        names = classifier.class_names
        self._background = names.index(BACKGROUND) if BACKGROUND in names else None

    # -- steps ---------------------------------------------------------------------------------------
    def _upload(self, images: Sequence[ImageInput]) -> list[ImageInput]:
        """On CUDA, the batch's arrays as uint8 [3, H, W] device tensors: copied into one pinned buffer and
        shipped in one asynchronous copy (uint8 is 4x fewer bytes than float; one copy instead of one per image).
        Tensors move as they are; on the CPU nothing changes."""
        for image in images:
            image_size(image)  # one-line error for a wrong layout, before any work
        if self.device.type != "cuda":
            return list(images)
        arrays = [(i, im) for i, im in enumerate(images) if not isinstance(im, torch.Tensor)]
        out: list[ImageInput] = [
            im.to(self.device, non_blocking=True) if isinstance(im, torch.Tensor) else im for im in images
        ]
        if arrays:
            for _, im in arrays:
                if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                    raise ValueError(f"expected an RGB uint8 array [H, W, 3], got {im.dtype} {im.shape}")
            sizes = [im.size for _, im in arrays]
            offsets = np.cumsum([0, *sizes])
            host = torch.empty(int(offsets[-1]), dtype=torch.uint8, pin_memory=True)
            view = host.numpy()
            for (_, im), a, b in zip(arrays, offsets[:-1], offsets[1:], strict=True):
                view[a:b] = im.reshape(-1)
            device = host.to(self.device, non_blocking=True)
            for (i, im), a, b in zip(arrays, offsets[:-1], offsets[1:], strict=True):
                out[i] = device[a:b].view(im.shape).permute(2, 0, 1)
        return out

    def _prepare(self, image: ImageInput) -> torch.Tensor:
        if self.device.type == "cuda" and not isinstance(image, torch.Tensor):
            (image,) = self._upload([image])  # callers outside predict (benchmarks) hand arrays one by one
        cfg = self.config
        if cfg.resize == "opencv":
            return self._prepare_opencv(image)
        if isinstance(image, torch.Tensor):
            x = image.to(self.device).float().div_(255.0)
        else:
            x = to_tensor(image)
        size = resized_shape(x.shape[1], x.shape[2], cfg.short_side, cfg.max_long_side)
        if size != tuple(x.shape[1:]):
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        return (x - self.mean) / self.std

    def _prepare_opencv(self, image: ImageInput) -> torch.Tensor:
        """mmsegmentation's resize (on the host: OpenCV's uint8 arithmetic is what the references see)."""
        array = image.permute(1, 2, 0).cpu().numpy() if isinstance(image, torch.Tensor) else image
        cfg = self.config
        size = resized_shape(array.shape[0], array.shape[1], cfg.short_side, cfg.max_long_side, half_up=True)
        if size != tuple(array.shape[:2]):
            array = opencv_resize(array, size)
        x = to_tensor(array).to(self.device)
        return (x - self.mean) / self.std

    def _windows(self, index: int, height: int, width: int) -> list[_Window]:
        cfg = self.config
        boxes = [(0, height, 0, width)] if cfg.mode == "whole" else window_boxes(height, width, cfg.crop, cfg.stride)
        # "pad": padded to whole patches; "floor": the pixels past the last whole patch (of both encoders,
        # with a proxy) are not encoded.
        if cfg.partial_patches == "pad_centred":
            windows = [self._centred_window(index, b) for b in boxes]
        else:
            windows = [_Window(index, b, (self._cells(b[1] - b[0]), self._cells(b[3] - b[2]))) for b in boxes]
        if any(min(w.grid) < 1 for w in windows):
            raise ValueError(f"image of {height} x {width} pixels is smaller than one patch ({self.pad_multiple} px)")
        return windows

    def _centred_window(self, index: int, box: tuple[int, int, int, int]) -> _Window:
        """ClearCLIP's / ProxyCLIP's ``compute_padsize``: padded to the multiple, the odd pixel after."""
        h, w = box[1] - box[0], box[3] - box[2]
        m = self.pad_multiple
        ph, pw = math.ceil(h / m) * m, math.ceil(w / m) * m
        return _Window(index, box, (ph // self.stride, pw // self.stride), ((ph - h) // 2, (pw - w) // 2))

    def _cells(self, pixels: int) -> int:
        """Output cells along a window side of ``pixels``."""
        if self.config.partial_patches == "pad":
            return math.ceil(pixels / self.stride)
        return pixels // self.pad_multiple * self.pad_multiple // self.stride

    def _encode(self, pixels: list[torch.Tensor], windows: list[_Window]) -> None:
        """Dense logits (and keys) of every window, batched by padded shape."""
        groups: dict[tuple[int, int], list[tuple[_Window, torch.Tensor]]] = defaultdict(list)
        for win in windows:
            y0, y1, x0, x1 = win.box
            crop = pixels[win.image][:, y0:y1, x0:x1]
            if self.config.partial_patches == "floor":
                gh, gw = win.grid
                crop = crop[:, : gh * self.stride, : gw * self.stride]
            elif self.config.partial_patches == "pad_centred":
                (t, left), (gh, gw) = win.offset, win.grid
                ph, pw = gh * self.stride, gw * self.stride
                crop = F.pad(crop, (left, pw - crop.shape[2] - left, t, ph - crop.shape[1] - t))
            else:
                m = self.pad_multiple
                ph, pw = math.ceil((y1 - y0) / m) * m, math.ceil((x1 - x0) / m) * m
                # Pad bottom/right with 0, the normalised mean colour; padded patches are cut off afterwards.
                crop = F.pad(crop, (0, pw - crop.shape[2], 0, ph - crop.shape[1]))
            # The global block runs over one image's windows at once (its last block sees all of them).
            groups[(win.image, *crop.shape[1:]) if self.config.global_block else tuple(crop.shape[1:])].append(
                (win, crop)
            )
        cfg = self.config
        dense = self._dense_function()
        dtype, autocast = self._autocast or torch.float16, self._autocast is not None
        for items in groups.values():
            step = len(items) if cfg.global_block else cfg.window_batch
            for start in range(0, len(items), step):
                chunk = items[start : start + step]
                batch = torch.stack([c for _, c in chunk])
                with torch.autocast(device_type=self.device.type, dtype=dtype, enabled=autocast):
                    features, keys = self._dense_global(batch, chunk) if cfg.global_block else dense(batch)
                if cfg.class_scores == "query_share":
                    logits = self.classifier.query_cosine(features.float()) * cfg.logit_scale
                else:
                    logits = self.classifier.cosine(features.float()) * cfg.logit_scale
                for i, (win, _) in enumerate(chunk):
                    gh, gw = win.grid
                    win.logits = logits[i, :, :gh, :gw]
                    win.keys = keys[i, :, :gh, :gw].float() if cfg.key_smoothing else None

    def _dense_function(self):
        if not self.config.compile:
            return self._dense
        cfg = self.config
        proxy = None if self.proxy is None else id(self.proxy.model)
        key = (cfg.attention, proxy, self._normalisation, cfg.proxy_beta, cfg.proxy_gamma, cfg.position_resize)
        return compiled(self.encoder, key, lambda: self._dense)

    def _dense_global(self, batch: torch.Tensor, chunk: list[tuple[_Window, torch.Tensor]]):
        cfg = self.config
        return global_dense_features(
            self.encoder,
            batch,
            [win.box for win, _ in chunk],
            mode=cfg.attention,
            position_resize=cfg.position_resize,
            window_batch=cfg.window_batch,
            max_tokens=cfg.global_block_max_tokens,
            proxy=self.proxy,
            clip_normalisation=self._normalisation,
            beta=cfg.proxy_beta,
            gamma=cfg.proxy_gamma,
        )

    def _dense(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        if self.proxy is None:
            return dense_features(self.encoder, batch, cfg.attention, position_resize=cfg.position_resize)
        return proxy_dense_features(
            self.encoder,
            batch,
            self.proxy,
            self._normalisation,
            beta=cfg.proxy_beta,
            gamma=cfg.proxy_gamma,
            position_resize=cfg.position_resize,
        )

    def _refine_windows(self, windows: list[_Window], num_images: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Patch-level probabilities of every window, with prompt denoising and key smoothing.

        Windows of the same grid are refined together (one softmax, one key-smoothing product per grid,
        not per window: on a GPU the per-window kernel launches cost more than the arithmetic). Returns
        each image's per-class max probability [N, K] and, with prompt denoising, the classes kept [N, K].
        """
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, win in enumerate(windows):
            groups[win.grid].append(i)
        owner = torch.tensor([w.image for w in windows], device=self.device)
        stacked = {grid: torch.stack([windows[i].logits for i in idx]) for grid, idx in groups.items()}
        window_max = torch.empty((len(windows), self.classifier.num_classes), device=self.device)
        for grid, idx in groups.items():
            window_max[idx] = torch.softmax(stacked[grid], dim=1).amax(dim=(2, 3))
        # Prompt denoising looks at the whole image: a class's max probability over all its windows.
        class_max = torch.zeros((num_images, window_max.shape[1]), device=self.device)
        class_max.scatter_reduce_(0, owner[:, None].expand_as(window_max), window_max, "amax", include_self=False)
        cfg = self.config
        keep = prompt_denoising_keep(class_max, cfg.prompt_denoising_threshold) if cfg.prompt_denoising else None
        for grid, idx in groups.items():
            logits = stacked[grid]
            if keep is not None:
                logits = suppress_classes(logits, keep[owner[idx]])
            probs = torch.softmax(logits, dim=1)
            if cfg.key_smoothing:
                keys = torch.stack([windows[i].keys for i in idx])
                probs = key_smoothing(probs, keys, cfg.key_smoothing_threshold)
            for j, i in enumerate(idx):
                windows[i].probs = probs[j]
                windows[i].logits = windows[i].keys = None  # free early on long batches
        return class_max, keep

    def _stitch(self, pixels: torch.Tensor, windows: list[_Window]) -> torch.Tensor:
        """Window probabilities upsampled to window pixels (refined by PAMR when on) and averaged where windows
        overlap; ``pixels`` [3, H, W] is the resized, normalised image."""
        cfg = self.config
        size = (pixels.shape[1], pixels.shape[2])
        K = self.classifier.num_classes
        canvas = torch.zeros((K, *size), device=self.device)
        count = torch.zeros((1, *size), device=self.device)
        for win in windows:
            y0, y1, x0, x1 = win.box
            up = self._window_to_pixels(win, win.probs)
            if cfg.pamr:
                crop = pixels[None, :, y0:y1, x0:x1]
                up = pamr(crop, up, iterations=cfg.pamr_iterations, dilations=cfg.pamr_dilations)
            canvas[:, y0:y1, x0:x1] += up[0]
            count[:, y0:y1, x0:x1] += 1
            win.probs = None
        return canvas.div_(count)  # in place: one K x H x W buffer fewer

    def _window_to_pixels(self, win: _Window, values: torch.Tensor) -> torch.Tensor:
        """A window's [K, gh, gw] values bilinearly upsampled to its pixels -> [1, K, h, w]: the padded grid's
        pixels cut to the window ("pad"), or the floored grid stretched over the whole window ("floor")."""
        y0, y1, x0, x1 = win.box
        if self.config.partial_patches == "floor":
            return F.interpolate(values[None], size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
        (gh, gw), (t, left) = win.grid, win.offset
        up = F.interpolate(
            values[None], size=(gh * self.stride, gw * self.stride), mode="bilinear", align_corners=False
        )
        return up[:, :, t : t + y1 - y0, left : left + x1 - x0]

    def _merge_logits(
        self, pixels: torch.Tensor, windows: list[_Window], size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The references' merging: each window's raw logits upsampled to its pixels and averaged where windows
        overlap, the average resized to the original ``size``, PAMR (when on) on the resized image brought
        back to that size, one softmax (over queries with ``query_share``, whose best query per class then
        scores the class), the area filter, the argmax. -> (labels, confidence, per-class max probability)."""
        cfg = self.config
        canvas = torch.zeros((windows[0].logits.shape[0], *pixels.shape[1:]), device=self.device)
        count = torch.zeros((1, *pixels.shape[1:]), device=self.device)
        for win in windows:
            y0, y1, x0, x1 = win.box
            canvas[:, y0:y1, x0:x1] += self._window_to_pixels(win, win.logits)[0]
            count[:, y0:y1, x0:x1] += 1
            win.logits = win.keys = None
        logits = F.interpolate(canvas.div_(count)[None], size=size, mode="bilinear", align_corners=False)
        del canvas
        if cfg.pamr:
            image = F.interpolate(pixels[None], size=size, mode="bilinear", align_corners=False)
            logits = pamr(image, logits, iterations=cfg.pamr_iterations, dilations=cfg.pamr_dilations)
        probs = torch.softmax(logits[0], dim=0)
        if cfg.class_scores == "query_share":
            probs = self.classifier.class_max(probs)
        labels = self._argmax(probs)
        if cfg.area_threshold is not None:
            probs = self._drop_small_classes(probs, labels, cfg.area_threshold)
            labels = self._argmax(probs)
        return labels.to(self._label_dtype), probs.amax(dim=0), probs.amax(dim=(1, 2))

    def _argmax(self, probs: torch.Tensor) -> torch.Tensor:
        """Per-pixel argmax of [K, H, W]; with ``background_wins_ties`` an exact tie goes to the background."""
        b = self._background
        if not self.config.background_wins_ties or b is None:
            return probs.argmax(dim=0)
        order = torch.tensor([b, *(i for i in range(probs.shape[0]) if i != b)], device=probs.device)
        return order[probs.index_select(0, order).argmax(dim=0)]

    def _drop_small_classes(self, probs: torch.Tensor, labels: torch.Tensor, threshold: float) -> torch.Tensor:
        """SCLIP's ``area_thd``: a foreground class that wins at most ``threshold`` of the foreground pixels
        gets probability 0 everywhere (its pixels go to their next class)."""
        area = torch.bincount(labels.flatten(), minlength=probs.shape[0]).to(probs.dtype)
        foreground = torch.ones(probs.shape[0], dtype=torch.bool, device=probs.device)
        if self._background is not None:
            foreground[self._background] = False
        small = foreground & ~(area > threshold * area[foreground].sum())
        return probs.masked_fill(small[:, None, None], 0.0)

    # -- entry point ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, images: Sequence[ImageInput]) -> list[SegmentationResult]:
        """Label RGB uint8 images; results are at each image's original size."""
        # record_function ranges name the protocol's steps in torch.profiler traces (benchmarks --profile).
        with record_function("maskclip.prepare"):
            sizes = [image_size(im) for im in images]
            pixels = [self._prepare(im) for im in self._upload(images)]
            per_image = [self._windows(i, p.shape[1], p.shape[2]) for i, p in enumerate(pixels)]
        with record_function("maskclip.encode"):
            self._encode(pixels, [w for ws in per_image for w in ws])
        if self.config.merge == "logits":
            return self._results_of_merged_logits(sizes, pixels, per_image)
        with record_function("maskclip.refine"):
            class_max, keep = self._refine_windows([w for ws in per_image for w in ws], len(images))
            # One transfer for the whole batch instead of two per image.
            class_max_np = class_max.cpu().numpy()
            dropped = ~keep.cpu().numpy() if keep is not None else np.zeros(class_max_np.shape, dtype=bool)
        maps = []
        for size, px, windows in zip(sizes, pixels, per_image, strict=True):
            with record_function("maskclip.stitch"):
                # Labels narrowed on the device: uint8 is 8x fewer bytes to copy and to hold than int64.
                labels, conf = upsample_argmax(self._stitch(px, windows), size, dtype=self._label_dtype)
                maps.append((labels, conf.float()))
        with record_function("maskclip.to_host"):
            host = _to_host(maps)
        return [
            SegmentationResult(
                labels=labels,
                confidence=conf,
                class_scores=class_max_np[i].copy(),
                dropped=dropped[i].copy(),
                class_names=self.classifier.class_names,
            )
            for i, (labels, conf) in enumerate(host)
        ]

    def _results_of_merged_logits(
        self, sizes: list[tuple[int, int]], pixels: list[torch.Tensor], per_image: list[list[_Window]]
    ) -> list[SegmentationResult]:
        maps, class_max = [], []
        with record_function("maskclip.stitch"):
            for size, px, windows in zip(sizes, pixels, per_image, strict=True):
                labels, conf, best = self._merge_logits(px, windows, size)
                maps.append((labels, conf.float()))
                class_max.append(best)
        with record_function("maskclip.to_host"):
            host = _to_host(maps)
            scores = torch.stack(class_max).cpu().numpy()
        return [
            SegmentationResult(
                labels=labels,
                confidence=conf,
                class_scores=scores[i].copy(),
                dropped=np.zeros(scores.shape[1], dtype=bool),
                class_names=self.classifier.class_names,
            )
            for i, (labels, conf) in enumerate(host)
        ]


def _to_host(maps: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Label and confidence maps as numpy arrays; from a GPU in one copy of each per batch (a copy per image
    costs a synchronisation and a launch each). The arrays of one batch then share one buffer."""
    if not maps or maps[0][0].device.type == "cpu":
        return [(labels.numpy(), conf.numpy()) for labels, conf in maps]
    sizes = [labels.numel() for labels, _ in maps]
    flat_labels = torch.cat([labels.reshape(-1) for labels, _ in maps]).cpu().numpy()
    flat_conf = torch.cat([conf.reshape(-1) for _, conf in maps]).cpu().numpy()
    offsets = np.cumsum([0, *sizes])
    return [
        (flat_labels[a:b].reshape(labels.shape), flat_conf[a:b].reshape(labels.shape))
        for (labels, _), a, b in zip(maps, offsets[:-1], offsets[1:], strict=True)
    ]
