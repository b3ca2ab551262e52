"""Dilated classification backbones for the student, and their weights (ImageNet, a local file, none)."""

from __future__ import annotations

import io
import pickle
import urllib.error
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import fsspec
import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn
from torchvision import models
from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf


class BackboneWeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for but cannot be fetched (offline machine)."""


def _dilate_basic_resnet(model: models.ResNet, dilate: tuple[bool, bool, bool]) -> None:
    """torchvision's BasicBlock refuses dilation, so trade strides for dilation by hand (same weights)."""
    dilation = 1
    for layer, flag in zip((model.layer2, model.layer3, model.layer4), dilate, strict=True):
        if not flag:
            continue
        prev, dilation = dilation, dilation * 2
        for i, block in enumerate(layer):
            block.conv1.stride = (1, 1)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
            # The first block keeps the previous rate, as torchvision does for Bottleneck layers.
            d1 = prev if i == 0 else dilation
            block.conv1.dilation, block.conv1.padding = (d1, d1), (d1, d1)
            block.conv2.dilation, block.conv2.padding = (dilation, dilation), (dilation, dilation)


def _resnet(name: str, output_stride: int) -> tuple[nn.Module, int]:
    dilate = (False, True, True) if output_stride == 8 else (False, False, True)
    ctor: Callable[..., models.ResNet] = getattr(models, name)
    if name == "resnet18":
        model = ctor(weights=None)
        _dilate_basic_resnet(model, dilate)
        return model, 512
    return ctor(weights=None, replace_stride_with_dilation=list(dilate)), 2048


def _mobilenet(output_stride: int) -> tuple[nn.Module, int]:
    """MobileNetV3-Large as in torchvision's deeplabv3_mobilenet_v3_large (C4 dilated: stride 16);
    stride 8 also dilates C3. Same parameter shapes as the ImageNet model either way."""
    setting, last_channel = _mobilenet_v3_conf("mobilenet_v3_large", dilated=True)
    if output_stride == 8:
        # From the C3 block on, double every rate; InvertedResidual drops a stride of 2 when dilated.
        c3 = [i for i, cnf in enumerate(setting) if cnf.stride == 2][2]
        for cnf in setting[c3:]:
            cnf.dilation *= 2
    model = MobileNetV3(setting, last_channel)
    return model, model.features[-1].out_channels


@dataclass(frozen=True)
class BackboneEntry:
    """How to build one backbone: ``build(output_stride) -> (torchvision model, feature channels)`` and the
    torchvision ImageNet-1k weights its feature layers accept."""

    build: Callable[[int], tuple[nn.Module, int]]
    imagenet_weights: models.WeightsEnum


# The backbone registry: ``BackboneName`` (the configs' Literal), the CLI's choices and the docs derive from
# its keys; a new backbone is one entry here.
BACKBONES: dict[str, BackboneEntry] = {
    "resnet18": BackboneEntry(partial(_resnet, "resnet18"), models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet50": BackboneEntry(partial(_resnet, "resnet50"), models.ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": BackboneEntry(partial(_resnet, "resnet101"), models.ResNet101_Weights.IMAGENET1K_V1),
    "mobilenet_v3_large": BackboneEntry(_mobilenet, models.MobileNet_V3_Large_Weights.IMAGENET1K_V1),
}
BackboneName = Literal[tuple(BACKBONES)]  # type: ignore[valid-type]


def backbone_spec(name: str) -> BackboneEntry:
    """The registered backbone ``name``; a clear error for an unknown one."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {tuple(BACKBONES)}") from None


def _read_state_dict(url: str, storage_options: dict | None) -> dict[str, torch.Tensor]:
    """The tensors of a weights file; a file that is not what its name says, or that pickles Python objects
    beyond tensors (loading it could run code), is refused in one line (a ``ValueError``) without running it."""
    with fsspec.open(url, "rb", **(storage_options or {})) as f:
        data = f.read()
    if url.endswith(".safetensors"):
        try:
            return safetensors.torch.load(data)
        except SafetensorError as e:  # e.g. a pickle renamed .safetensors
            raise ValueError(f"backbone weights {url}: refused: not a safetensors file ({e})") from e
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ValueError(
            f"backbone weights {url}: refused: the file pickles Python objects, not only tensors, and loading "
            f"it could run code ({reason})"
        ) from e
    for key in ("state_dict", "model"):  # common wrappers around a state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def _download_imagenet(name: str) -> dict[str, torch.Tensor]:
    weights = backbone_spec(name).imagenet_weights
    try:
        # Through torch.hub (its cache dir is checked first), so a pre-seeded cache works offline.
        return torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        cache = f"{torch.hub.get_dir()}/checkpoints/{weights.url.rsplit('/', 1)[-1]}"
        raise BackboneWeightsUnavailable(
            f"ImageNet weights for {name} could not be downloaded from {weights.url} ({exc}). "
            f"On an offline machine fetch that file elsewhere and pass it as a local path or URL "
            f"(StudentConfig(backbone_weights='/path/to/{weights.url.rsplit('/', 1)[-1]}')), "
            f"or place it at {cache}; backbone_weights='none' trains from scratch."
        ) from exc


def _load_features(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load a classification state dict; the classifier (fc / classifier.*) is dropped later, so only the
    feature weights must be there, with the right shapes."""
    head = ("fc.", "classifier.")
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(head)}
    given = {k: v for k, v in state.items() if not k.startswith(head)}
    missing = sorted(own.keys() - given.keys())
    unexpected = sorted(given.keys() - own.keys())
    wrong = [k for k in own.keys() & given.keys() if own[k].shape != given[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"weights do not fit {what}: missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shape {sorted(wrong)[:3]}"
        )
    model.load_state_dict(given, strict=False)


def build_backbone(
    name: str, output_stride: int = 8, weights: str = "none", storage_options: dict | None = None
) -> tuple[nn.Module, int]:
    """A backbone mapping [B, 3, H, W] to [B, C, H/os, W/os] features; returns (module, C).

    ``weights``: ``"none"`` (random), ``"imagenet"`` (torchvision's ImageNet-1k weights) or a path / fsspec
    URL of a torchvision classification state dict (``.pth`` or ``.safetensors``).
    """
    spec = backbone_spec(name)
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    model, channels = spec.build(output_stride)
    if weights != "none":
        state = _download_imagenet(name) if weights == "imagenet" else _read_state_dict(weights, storage_options)
        _load_features(model, state, f"{name} (backbone weights {weights!r})")
    if isinstance(model, MobileNetV3):
        return model.features, channels
    # Named children keep torchvision's parameter names (conv1, layer1, ...) in student checkpoints.
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    return nn.Sequential(OrderedDict((n, getattr(model, n)) for n in names)), channels
