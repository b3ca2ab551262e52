"""ProxyCLIP (Lan et al., ECCV 2024): CLIP's last-block values mixed by a vision foundation model's attention.

A proxy encoder (DINO ViT-B/8, DINOv2 ViT-B/14 with registers, any timm ViT) sees the same window as CLIP. Its
final, normalised patch tokens give a cosine-similarity matrix S over the proxy's patch grid; per image

    A = softmax(gamma * (S - beta * mean(S)))  with entries whose argument is negative set to -inf,

and the dense CLIP features are ``proj(ln_post(out_proj(A @ V)))`` where V are CLIP's last-block values
bilinearly resized from CLIP's patch grid to the proxy's (no residual, no FFN, CLIP's q and k unused). The
output lives on the proxy's grid, as in the reference (mc-lan/ProxyCLIP): a B/8 proxy gives 8-pixel cells.

Deviations from the reference, and why:
- The weights A are the same for every head (the reference repeats them per head), so they are applied once
  to all heads' values together: the same numbers, ``heads`` times less work and memory.
- A token's similarity with itself is never masked: where the reference's threshold masks a whole row
  (``beta * mean(S) > 1``) it yields NaN; here the token keeps its own value.
- The window is padded bottom/right (with CLIP's mean colour) to a common multiple of both patch sizes; the
  reference pads it centred, with the same colour, to a multiple of 56.
- The "keys" returned for key smoothing are the proxy's patch features: the labels then never depend on
  CLIP's q or k, and the smoothing uses the affinity the method trusts (the reference has no key smoothing).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from maskclip_core.process_cache import ProcessCache
from maskclip_core.teacher.dense import (
    PositionResize,
    _visual,
    inference_semantics,
    last_block_input,
    resize_patch_positions,
)
from maskclip_core.teacher.timm_weights import create_timm_encoder

# Short names for the reference's proxies (its torch-hub names) -> timm names with their pretrained tags.
PROXY_ALIASES = {
    "dino_vitb8": "vit_base_patch8_224.dino",
    "dino_vits8": "vit_small_patch8_224.dino",
    "dinov2_vitb14_reg": "vit_base_patch14_reg4_dinov2.lvd142m",
    "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2.lvd142m",
}
# The reference's defaults for every benchmark.
PROXY_BETA = 1.2
PROXY_GAMMA = 3.0


@dataclass
class ProxyBundle:
    """A loaded proxy encoder (a timm VisionTransformer) with what the attention needs around it."""

    model: torch.nn.Module
    name: str  # timm name, with its pretrained tag
    weights_id: str  # stable identity of the weights, hashed into labeler configs
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def patch_size(self) -> int:
        return int(self.model.patch_embed.patch_size[0])

    @classmethod
    def from_model(cls, model: torch.nn.Module, name: str, weights_id: str) -> ProxyBundle:
        """Wrap a timm ViT built with ``dynamic_img_size=True``; mean and std from its pretrained config."""
        cfg = getattr(model, "pretrained_cfg", None) or {}
        mean = tuple(cfg.get("mean") or (0.485, 0.456, 0.406))
        std = tuple(cfg.get("std") or (0.229, 0.224, 0.225))
        model.eval()
        return cls(model=model, name=name, weights_id=weights_id, mean=mean, std=std)  # type: ignore[arg-type]


def resolve_proxy_name(name: str) -> str:
    return PROXY_ALIASES.get(name.strip(), name.strip())


def load_proxy(
    name: str, weights: str = "pretrained", *, device: str | torch.device = "cpu", seed: int = 0
) -> ProxyBundle:
    """Build a timm ViT as a proxy encoder.

    ``name`` is a timm model name with its pretrained tag (``vit_base_patch8_224.dino``) or one of
    :data:`PROXY_ALIASES`; ``weights`` is ``pretrained`` (timm's hub download for that tag), a local weights
    file (the original DINO / DINOv2 checkpoints or timm's; converted by timm's loader), or ``none`` for
    random weights seeded by ``seed``.
    """
    import timm

    timm_name = resolve_proxy_name(name)
    arch = timm_name.split(".", 1)[0]
    if not timm.is_model(arch):
        known = ", ".join(sorted(PROXY_ALIASES))
        raise ValueError(f"unknown proxy encoder '{name}': not a timm model (aliases: {known})")
    model, identity = create_timm_encoder(
        timm_name,
        weights,
        seed=seed,
        role="proxy",
        flag="--proxy-weights",
        local_example="/path/to/weights.pth or .safetensors, from timm's hub or the original DINO/DINOv2 release",
        num_classes=0,
        dynamic_img_size=True,
    )
    return ProxyBundle.from_model(model.to(device), timm_name, identity)


_PROXIES: ProcessCache[ProxyBundle] = ProcessCache()


def cached_proxy(name: str, weights: str, *, device: str | torch.device, seed: int = 0) -> ProxyBundle:
    """One proxy encoder per (name, weights, device, seed) per process, shared by every labeler using it."""
    key = (resolve_proxy_name(name), weights, str(device), seed)
    return _PROXIES.get(key, lambda: load_proxy(name, weights, device=device, seed=seed))


def padding_multiple(clip_stride: int, proxy: ProxyBundle) -> int:
    """Windows are padded to a multiple of both patch sizes so both encoders cover them with whole patches."""
    return math.lcm(int(clip_stride), proxy.patch_size)


def proxy_patch_features(
    proxy: ProxyBundle, pixels: torch.Tensor, position_resize: PositionResize = "size"
) -> torch.Tensor:
    """The proxy's final normalised patch tokens [B, C, H/p, W/p] (prefix tokens: class, registers, dropped);
    ``pixels`` normalised with the proxy's mean and std, H and W multiples of its patch size.
    ``position_resize="size"`` is timm's own resize; ``"scale_factor"`` the torch-hub DINO models' (see
    :data:`~maskclip_core.teacher.dense.PositionResize`)."""
    model = proxy.model
    pixels = pixels.to(model.patch_embed.proj.weight.dtype)
    if position_resize == "size":
        tokens = model.forward_features(pixels)
    else:
        tokens = _forward_features_rescaled_positions(model, pixels)
    tokens = tokens[:, getattr(model, "num_prefix_tokens", 1) :]
    B, _, C = tokens.shape
    gh, gw = pixels.shape[-2] // proxy.patch_size, pixels.shape[-1] // proxy.patch_size
    return tokens.reshape(B, gh, gw, C).permute(0, 3, 1, 2)


def _forward_features_rescaled_positions(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """timm's ``VisionTransformer.forward_features`` with the positional embeddings resized the torch-hub way."""
    x = model.patch_embed(pixels)  # [B, h, w, C]: dynamic_img_size keeps the grid
    B, h, w, C = x.shape
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    pos = model.pos_embed[0]
    native = tuple(int(g) for g in model.patch_embed.grid_size)
    if (h, w) != native:
        pos = torch.cat([pos[:prefix], resize_patch_positions(pos[prefix:], native, (h, w), "scale_factor")])
    x = x.reshape(B, h * w, C)
    tokens = [t.expand(B, -1, -1) for t in (model.cls_token, model.reg_token) if t is not None]
    if model.no_embed_class:
        x = torch.cat([*tokens, x + pos[None].to(x.dtype)], dim=1)
    else:
        x = torch.cat([*tokens, x], dim=1) + pos[None].to(x.dtype)
    x = model.norm_pre(model.patch_drop(model.pos_drop(x)))
    return model.norm(model.blocks(x))


def renormalise(
    pixels: torch.Tensor,
    source: tuple[Sequence[float], Sequence[float]],
    target: tuple[Sequence[float], Sequence[float]],
) -> torch.Tensor:
    """Pixels normalised with ``source`` (mean, std) -> normalised with ``target``: CLIP's -> the proxy's."""

    def col(values):
        return torch.tensor(values, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)

    return (pixels * col(source[1]) + col(source[0]) - col(target[0])) / col(target[1])


def proxy_attention(
    features: torch.Tensor, beta: float = PROXY_BETA, gamma: float = PROXY_GAMMA, *, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """ProxyCLIP's attention [B, M, M] from proxy features [B, C, H, W] (M = H*W); ``dtype`` (bf16 / fp16):
    the similarity matmul in that dtype, the rest fp32."""
    f = F.normalize(features.flatten(2).float(), dim=1)
    if dtype is None or dtype == torch.float32:
        sim = f.transpose(1, 2) @ f
    else:
        low = f.to(dtype)
        sim = (low.transpose(1, 2) @ low).float()
    sim = (sim - sim.mean(dim=(1, 2), keepdim=True) * beta) * gamma
    eye = torch.eye(sim.shape[-1], dtype=torch.bool, device=sim.device)
    return torch.softmax(sim.masked_fill((sim < 0) & ~eye, float("-inf")), dim=-1)


def proxy_dense_features(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    proxy: ProxyBundle,
    clip_normalisation: tuple[Sequence[float], Sequence[float]],
    *,
    beta: float = PROXY_BETA,
    gamma: float = PROXY_GAMMA,
    position_resize: PositionResize = "size",
) -> tuple[torch.Tensor, torch.Tensor]:
    """ProxyCLIP's dense CLIP features [B, D, H, W] and the proxy's patch features [B, C, H, W] (the keys for
    key smoothing) on the proxy's patch grid.

    ``pixels`` [B, 3, h, w] are normalised for CLIP (``clip_normalisation`` = its mean and std), with h and w
    multiples of both encoders' patch sizes (:func:`padding_multiple`).
    """
    visual = _visual(model)
    with inference_semantics(visual), inference_semantics(proxy.model):
        x, grid, guide = proxy_block_inputs(visual, pixels, proxy, clip_normalisation, position_resize)
        return proxy_last_block(visual, x, grid, guide, beta, gamma), guide


def _low_precision_cpu(visual: torch.nn.Module, device: torch.device) -> torch.dtype | None:
    """A low-precision copy of CLIP (fast_paths.low_precision_copy, bf16 / fp16 on the CPU): its dtype, in which
    the proxy runs under autocast (timm's blocks are batch-first with fused attention, so autocast pays there)
    and so do the proxy attention's two big matmuls; None otherwise."""
    dtype = visual.transformer.resblocks[-1].attn.in_proj_weight.dtype
    return dtype if dtype in (torch.bfloat16, torch.float16) and device.type == "cpu" else None


def proxy_block_inputs(
    visual: torch.nn.Module,
    pixels: torch.Tensor,
    proxy: ProxyBundle,
    clip_normalisation: tuple[Sequence[float], Sequence[float]],
    position_resize: PositionResize = "size",
) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor]:
    """What ProxyCLIP's last block reads: CLIP's tokens entering its last block [B, 1 + gh*gw, W] and their
    patch grid, and the proxy's patch features [B, C, H, W] (see :func:`proxy_dense_features`)."""
    low = _low_precision_cpu(visual, pixels.device)
    with torch.autocast("cpu", dtype=low) if low else contextlib.nullcontext():
        normalised = renormalise(pixels, clip_normalisation, (proxy.mean, proxy.std))
        guide = proxy_patch_features(proxy, normalised, position_resize)
    x, grid = last_block_input(visual, pixels, position_resize)
    return x, grid, guide


def proxy_last_block(
    visual: torch.nn.Module,
    x: torch.Tensor,
    grid: tuple[int, int],
    guide: torch.Tensor,
    beta: float = PROXY_BETA,
    gamma: float = PROXY_GAMMA,
) -> torch.Tensor:
    """ProxyCLIP's last block: CLIP's values of ``x`` (on ``grid``) resized to the proxy's grid, mixed by the
    proxy attention of ``guide``, out_proj, ln_post, proj -> features [B, D, H, W] on the proxy's grid."""
    block = visual.transformer.resblocks[-1]
    attn = block.attn
    dtype = attn.in_proj_weight.dtype
    low = _low_precision_cpu(visual, x.device)
    # Only the value rows of the input projection: CLIP's q and k play no part.
    width = x.shape[-1]
    bias = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
    v = F.linear(block.ln_1(x).to(dtype), attn.in_proj_weight[2 * width :], bias)
    size = tuple(guide.shape[-2:])
    v = _resized_patch_tokens(v, grid, size)
    weights = proxy_attention(guide, beta, gamma, dtype=low).to(v.dtype)
    out = block.ls_1(attn.out_proj(weights @ v))  # no residual, no FFN
    out = visual.ln_post(out.to(visual.ln_post.weight.dtype))
    if visual.proj is not None:
        out = out.to(visual.proj.dtype) @ visual.proj
    B, M, D = out.shape
    return out.transpose(1, 2).reshape(B, D, *size)


def _resized_patch_tokens(t: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """[B, 1 + gh*gw, C] (class token first) -> patch tokens bilinearly resized to ``size``: [B, H*W, C]."""
    B, _, C = t.shape
    g = t[:, 1:].transpose(1, 2).reshape(B, C, *grid)
    if tuple(grid) != tuple(size):
        g = F.interpolate(g, size=size, mode="bilinear", align_corners=False)
    return g.flatten(2).transpose(1, 2)
