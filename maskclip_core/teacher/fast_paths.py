"""Speed paths for the teacher's encoder: low precision (bf16 / fp16), int8 linear layers, torch.compile.

The default precision is ``"auto"``, resolved when a labeler is built (:func:`resolve_precision`): fp16 autocast
on CUDA, bf16 on a CPU with native bf16 matmuls (AMX or AVX512-BF16), fp32 elsewhere (said once per process).
Each path other than fp32 changes labels a little (see the README's CPU table for the measured agreement), so
the resolved precision enters the labeler's config hash, and a dataset keeps the precision its labelings record
(``labeling.config_hash.recorded_precision``): a changed default never relabels it.

bf16 / fp16 on the CPU run a ViT encoder from a low-precision copy (:func:`low_precision_copy`): its matmul
weights in bf16, its layer norms, embeddings, final projection and residual stream in fp32, with no autocast.
Under ``torch.autocast`` PyTorch leaves ``nn.MultiheadAttention``'s fused fast path for the generic one, which
transposes the tokens to sequence-first; the in-projection of that non-contiguous [L, B, W] input then goes
through ``matmul``'s batched path, which expands the [W, 3W] weight to L copies and materialises them
(aten::copy_ of [785, 768, 2304] per block): the cause of bf16 running at 0.2x fp32. The copy's blocks run
batch-first, contiguous, with fused ``scaled_dot_product_attention`` (see ``maskclip_core.teacher.dense``).
On CUDA the precision stays an autocast.
"""

from __future__ import annotations

import copy
import functools
import warnings
import weakref
from collections.abc import Callable
from typing import Literal, get_args

import torch

Precision = Literal["auto", "fp32", "bf16", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
PRECISION_HELP = (
    "auto (default): fp16 on CUDA, bf16 on a CPU with AMX or AVX512-BF16, else fp32; a dataset keeps the precision "
    "its labelings record. fp32; bf16: the encoder's matmuls in bf16 "
    "(on the CPU a bf16 copy of a ViT's weights, fp32 layer norms and residuals; pays on CPUs with AMX or "
    "AVX512-BF16, see fast_bf16_cpu(); autocast on CUDA and for ResNets); fp16: the same in fp16; int8: dynamic "
    "int8 quantisation of the ViT's MLP layers (CPU only)"
)


LOW_PRECISION: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def uses_low_precision_copy(precision: str, device: torch.device, *, is_vit: bool) -> bool:
    """Whether the encoder runs from :func:`low_precision_copy` (bf16 / fp16 ViTs on the CPU) instead of autocast."""
    return device.type == "cpu" and is_vit and precision in LOW_PRECISION


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` as the fast path of ``device``: fp16 on CUDA, bf16 on a CPU with native bf16 matmuls, else fp32
    (said once per process); any other precision as it is."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    if device.type == "cpu" and fast_bf16_cpu():
        return "bf16"
    if device.type == "cpu":
        _say_once("this CPU has no native bf16 matmuls (AMX or AVX512-BF16): labeling in fp32, its fast path here")
    return "fp32"


@functools.cache
def _say_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def autocast_dtype(precision: str, device: torch.device, *, is_vit: bool = False) -> torch.dtype | None:
    """The encoder's autocast dtype, or None: fp32, int8 (its quantised layers run in fp32 otherwise), and
    bf16 / fp16 ViTs on the CPU, whose low-precision copy needs no autocast."""
    if uses_low_precision_copy(precision, device, is_vit=is_vit):
        return None
    return LOW_PRECISION.get(precision)


def check_precision(precision: str, device: torch.device, *, is_vit: bool) -> None:
    """One-line errors for combinations that cannot run, raised when the labeler is built."""
    if precision == "int8" and device.type != "cpu":
        raise ValueError(f"precision='int8' (dynamic quantisation) runs on the CPU only, not on {device}")
    if precision == "int8" and not is_vit:
        raise ValueError("precision='int8' quantises a ViT's MLP layers; this encoder is a ResNet")
    if precision == "bf16" and device.type == "cpu" and not torch.backends.mkldnn.is_available():
        raise ValueError("precision='bf16' needs oneDNN (mkldnn) in this PyTorch build")


@functools.cache
def cpu_bf16_support() -> str | None:
    """How this CPU runs bf16 matmuls: ``"amx"`` (AMX-BF16 tiles, ~8x fp32 per core on Sapphire Rapids),
    ``"avx512_bf16"`` (AVX512-BF16 dot products, ~2x fp32 per core: measured 196 vs 93 GFLOP/s on an AMD
    EPYC Zen 4 core), or None (no bf16 instructions, or a PyTorch without oneDNN: bf16 would be emulated and
    slower than fp32)."""
    if not torch.backends.mkldnn.is_available():
        return None
    cpu = torch.cpu
    try:
        if cpu._is_amx_tile_supported() and cpu._is_avx512_bf16_supported():
            return "amx"
        if cpu._is_avx512_bf16_supported():
            return "avx512_bf16"
    except AttributeError:  # a PyTorch without these probes: ask oneDNN
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return "avx512_bf16"
    return None


def fast_bf16_cpu() -> bool:
    """True when this CPU has native bf16 matmuls (AMX or AVX512-BF16) and ``precision="bf16"`` pays on it."""
    return cpu_bf16_support() is not None


_LOW_PRECISION: weakref.WeakKeyDictionary[torch.nn.Module, dict[torch.dtype, torch.nn.Module]] = (
    weakref.WeakKeyDictionary()
)


def low_precision_copy(model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """A copy of a CLIP ViT's image encoder (``model.visual``) whose matmul weights are ``dtype``: the
    transformer blocks' linear layers (attention in- and out-projections, MLP). Layer norms, the patch
    embedding (0.5 % of the work; bf16 pixels would lose bits), the class and positional embeddings and the
    final projection stay fp32, and so does the residual
    stream where ``dense_features`` runs it (each block's matmuls read a ``dtype`` copy of its normalised
    input); the model itself is untouched. Cached per model and dtype (a second to build on ViT-B/16, 170 MB
    in bf16); the copy holds no reference to the model.

    The copy takes no gradient: it is for inference only, and a model trained afterwards keeps its stale copy,
    as :func:`quantised_copy` does.
    """
    per_model = _LOW_PRECISION.setdefault(model, {})
    hit = per_model.get(dtype)
    if hit is None:
        visual = getattr(model, "visual", model)
        with torch.no_grad():
            # No compiled functions or caches ride along: they live on the model, not on its .visual.
            hit = copy.deepcopy(visual).requires_grad_(False).eval()
            for block in hit.transformer.resblocks:
                block.attn.to(dtype)  # in_proj_weight / in_proj_bias and out_proj
                block.mlp.to(dtype)
        per_model[dtype] = hit
    return hit


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
