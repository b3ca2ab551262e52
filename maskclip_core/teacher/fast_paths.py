"""Opt-in speed paths for the teacher's encoder: autocast precision, int8 linear layers, torch.compile.

fp32 is the default everywhere; each other path changes labels a little (see the README's CPU table for the
measured agreement), so a precision other than fp32 enters the labeler's config hash.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from typing import Literal, get_args

import torch

Precision = Literal["fp32", "bf16", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
PRECISION_HELP = (
    "fp32 (default; fp16 autocast on CUDA unless half_precision is off); bf16: bf16 autocast for the encoder "
    "(CPUs with AVX512-BF16 / AMX, and CUDA); fp16: fp16 autocast; int8: dynamic int8 quantisation of the "
    "ViT's MLP layers (CPU only)"
)


def autocast_dtype(precision: str, device: torch.device, half_precision: bool) -> torch.dtype | None:
    """The encoder's autocast dtype, or None for plain fp32 (int8 runs its quantised layers in fp32 otherwise)."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision == "fp32" and device.type == "cuda" and half_precision:
        return torch.float16  # the CUDA default since before this option existed
    return None


def check_precision(precision: str, device: torch.device, *, is_vit: bool) -> None:
    """One-line errors for combinations that cannot run, raised when the labeler is built."""
    if precision == "int8" and device.type != "cpu":
        raise ValueError(f"precision='int8' (dynamic quantisation) runs on the CPU only, not on {device}")
    if precision == "int8" and not is_vit:
        raise ValueError("precision='int8' quantises a ViT's MLP layers; this encoder is a ResNet")
    if precision == "bf16" and device.type == "cpu" and not torch.backends.mkldnn.is_available():
        raise ValueError("precision='bf16' needs oneDNN (mkldnn) in this PyTorch build")


_QUANTISED: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module] = weakref.WeakKeyDictionary()


def quantised_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a CLIP ViT whose transformer MLP layers are dynamic int8 (weights int8, activations quantised
    per batch); the model itself is untouched. Cached per model: building it takes a second on ViT-B/16.

    Only ``nn.Linear`` modules by exact type are converted: the attention's in-projection is a bare parameter
    (``dense_features`` reads it with ``F.linear``) and its out-projection a ``NonDynamicallyQuantizableLinear``,
    so attention stays fp32 and the MLPs (two thirds of a block's linear FLOPs) go int8.
    """
    hit = _QUANTISED.get(model)
    if hit is None:
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            # torch.ao.quantization is deprecated in favour of torchao, which is not a dependency here.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            hit = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=False)
        _QUANTISED[model] = hit
    return hit


_COMPILED_ATTRIBUTE = "_maskclip_compiled"


def compiled(model: torch.nn.Module, key: tuple, build: Callable[[], Callable]) -> Callable:
    """``torch.compile(build())``, one per (model, key) per process: compiling ViT-B/16 takes minutes on a
    CPU, so a labeler that switches vocabulary keeps its compiled encoder. Kept on the model itself: the
    compiled function refers to the model, so a weak-keyed cache would keep both alive forever."""
    per_model = model.__dict__.setdefault(_COMPILED_ATTRIBUTE, {})  # not a submodule or parameter
    hit = per_model.get(key)
    if hit is None:
        hit = per_model[key] = torch.compile(build())
    return hit
