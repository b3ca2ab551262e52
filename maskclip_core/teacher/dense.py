"""Dense CLIP embeddings per patch: MaskCLIP's modified last block (and ClearCLIP / SCLIP variants).

ViT (MaskCLIP): blocks 1..L-1 run unchanged. In the last block q and k do not touch the features: the
value path is ``v -> out_proj -> + residual -> + MLP(ln_2) -> ln_post -> proj``. The last block's keys are
returned too, for key smoothing.

ClearCLIP (Lan et al., ECCV 2024): last block with q-q self attention, no residual, no FFN.
SCLIP (Wang et al., ECCV 2024): last block with correlative self attention softmax(qq^T) + softmax(kk^T),
residual and FFN kept.
NACLIP (Hajimiri et al., WACV 2025): last block with k-k attention plus a Gaussian neighbourhood prior over the
patch grid, no residual, no FFN (see :func:`_naclip_block`).

ModifiedResNet (MaskCLIP): the attention pool is skipped; features are ``c_proj(v_proj(layer4))`` applied
as 1x1 convolutions; keys are ``k_proj(layer4)``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer

# NACLIP's Gaussian standard deviation in patches: the reference's default, used by all its benchmark configs.
NACLIP_GAUSSIAN_STD = 5.0

# How positional embeddings reach another patch grid: "size" interpolates bicubically to exactly that grid;
# "scale_factor" as SCLIP, NACLIP, ClearCLIP, ProxyCLIP and DINO's torch-hub models do, bicubic with
# ``scale_factor=(g + 0.1) / N`` used as given (source coordinates (i + 0.5) N / (g + 0.1) - 0.5, not N / g).
PositionResize = Literal["size", "scale_factor"]


def _visual(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "visual", model)


@contextmanager
def inference_semantics(module: torch.nn.Module) -> Iterator[None]:
    """Evaluate ``module`` as in inference (BatchNorm running statistics, no dropout), then restore each
    submodule's own mode. ``open_clip.create_model`` returns models in training mode, where a ResNet's
    BatchNorm would normalise with the statistics of the batch at hand instead of the learned ones."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _dtype(visual: torch.nn.Module) -> torch.dtype:
    return visual.conv1.weight.dtype


# Resized positional embeddings per encoder, reused while no gradient is recorded: PyTorch's bicubic CUDA
# kernel loops over the 768+ channels in each thread, ~6 ms per resize on an H200 (as much as a window batch
# of the other work); the key holds the parameter's storage and version, so changed weights miss.
_POS_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, torch.Tensor]] = weakref.WeakKeyDictionary()
_POS_CACHE_SIZE = 32


def resized_positional_embedding(
    visual: VisionTransformer, grid: tuple[int, int], how: PositionResize = "size"
) -> torch.Tensor:
    """Positional embedding [1 + gh*gw, W] for a patch grid; the patch part resized bicubically (``how``)."""
    pos = visual.positional_embedding
    native = tuple(int(g) for g in visual.grid_size)
    grid = (int(grid[0]), int(grid[1]))
    if grid == native:
        return pos
    if torch.is_grad_enabled():
        return _resize_positional_embedding(pos, native, grid, how)
    cache = _POS_CACHE.setdefault(visual, {})
    # Inference tensors (a model built under inference_mode) keep no version counter.
    version = None if pos.is_inference() else pos._version
    key = (grid, how, pos.device, pos.dtype, pos.data_ptr(), version)
    hit = cache.get(key)
    if hit is None:
        if len(cache) >= _POS_CACHE_SIZE:
            cache.clear()
        hit = cache[key] = _resize_positional_embedding(pos, native, grid, how)
    return hit


def resize_patch_positions(
    patch_pos: torch.Tensor, native: tuple[int, int], grid: tuple[int, int], how: PositionResize = "size"
) -> torch.Tensor:
    """Patch positional embeddings [native_h * native_w, W] -> [gh * gw, W], bicubic (see :data:`PositionResize`)."""
    width = patch_pos.shape[-1]
    x = patch_pos.reshape(1, native[0], native[1], width).permute(0, 3, 1, 2).float()
    if how == "size":
        x = F.interpolate(x, size=grid, mode="bicubic", align_corners=False)
    else:
        scale = ((grid[0] + 0.1) / native[0], (grid[1] + 0.1) / native[1])
        x = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False, recompute_scale_factor=False)
    return x.to(patch_pos.dtype).permute(0, 2, 3, 1).reshape(grid[0] * grid[1], width)


def _resize_positional_embedding(
    pos: torch.Tensor, native: tuple[int, int], grid: tuple[int, int], how: PositionResize
) -> torch.Tensor:
    return torch.cat([pos[:1], resize_patch_positions(pos[1:], native, grid, how)], dim=0)


def _vit_embed(
    visual: VisionTransformer, pixels: torch.Tensor, how: PositionResize = "size"
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patch + class tokens with positional embeddings and ln_pre -> [B, 1 + gh*gw, W] (batch first). Pixels
    past the last whole patch are left out (the patch convolution floors)."""
    x = visual.conv1(pixels.to(_dtype(visual)))
    B, W, gh, gw = x.shape
    x = x.reshape(B, W, gh * gw).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, W).expand(B, 1, W)
    x = torch.cat([cls, x], dim=1)
    x = x + resized_positional_embedding(visual, (gh, gw), how).to(x.dtype)
    x = visual.patch_dropout(x)
    return visual.ln_pre(x), (gh, gw)


def _compute_dtype(block: torch.nn.Module) -> torch.dtype:
    """The dtype a block's matmuls run in: bf16 / fp16 in a low-precision copy
    (:func:`~maskclip_core.teacher.fast_paths.low_precision_copy`), whose layer norms and residual stream
    stay fp32; fp32 otherwise (an int8 copy keeps its attention weights fp32)."""
    return block.attn.in_proj_weight.dtype


def _is_low_precision(block: torch.nn.Module) -> bool:
    return _compute_dtype(block) in (torch.bfloat16, torch.float16)


def _low_precision_block(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An open_clip ``ResidualAttentionBlock`` of a low-precision copy on batch-first tokens [B, L, W]: the
    same arithmetic as the block (pre-norm attention and MLP, residuals), each matmul in the copy's dtype
    on a contiguous batch-first input, attention fused (``scaled_dot_product_attention``), the residual
    stream ``x`` and the layer norms fp32. ``nn.MultiheadAttention`` is not called: outside its fused fast
    path (which autocast and low-precision inputs leave) it runs sequence-first, and its in-projection of
    the transposed tokens materialises one copy of the weight per token (see ``fast_paths``)."""
    dtype = _compute_dtype(block)
    attn = block.attn
    B, L, W = x.shape
    heads = attn.num_heads
    qkv = F.linear(block.ln_1(x).to(dtype), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(B, L, 3, heads, W // heads).permute(2, 0, 3, 1, 4).unbind(0)  # [B, heads, L, d] each
    out = _merge_heads(F.scaled_dot_product_attention(q, k, v))
    x = x + block.ls_1(attn.out_proj(out).float())
    return x + block.ls_2(block.mlp(block.ln_2(x).to(dtype)).float())


def _run_blocks(visual: VisionTransformer, x: torch.Tensor, blocks) -> torch.Tensor:
    if len(blocks) and _is_low_precision(blocks[0]):
        x = x.float()
        for blk in blocks:
            x = _low_precision_block(blk, x)
        return x
    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for blk in blocks:
        x = blk(x)
    return x if batch_first else x.transpose(0, 1)


def _qkv(block: torch.nn.Module, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v [B, L, W] of the block's normalised input ``y`` (in the block's compute dtype)."""
    attn = block.attn
    return F.linear(y.to(_compute_dtype(block)), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)


def _mlp(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block's MLP branch ``mlp(ln_2(x))``; in a low-precision copy computed in its dtype, returned fp32
    so that the residual stream stays fp32."""
    if not _is_low_precision(block):
        return block.mlp(block.ln_2(x))
    return block.mlp(block.ln_2(x.float()).to(_compute_dtype(block))).float()


def _heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    B, L, W = t.shape
    return t.reshape(B, L, num_heads, W // num_heads).transpose(1, 2)  # [B, heads, L, head_dim]


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    B, H, L, d = t.shape
    return t.transpose(1, 2).reshape(B, L, H * d)


def _self_self_attention(q: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """softmax(q q^T / sqrt(d)) v per head."""
    return _merge_heads(
        F.scaled_dot_product_attention(_heads(q, num_heads), _heads(q, num_heads), _heads(v, num_heads))
    )


# (last block, its input tokens [B, 1 + gh*gw, W] with the class token first, the patch grid (gh, gw))
# -> (tokens, keys), both [B, 1 + gh*gw, W]. The grid is there for modes with a spatial prior.
LastBlock = Callable[[torch.nn.Module, torch.Tensor, tuple[int, int]], tuple[torch.Tensor, torch.Tensor]]


def _maskclip_block(
    block: torch.nn.Module, x: torch.Tensor, grid: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskCLIP's value path (q and k do not touch the features), residual and FFN kept."""
    _, k, v = _qkv(block, block.ln_1(x))
    x = x + block.ls_1(block.attn.out_proj(v))
    x = x + block.ls_2(_mlp(block, x))
    return x, k


def _clearclip_block(
    block: torch.nn.Module, x: torch.Tensor, grid: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """ClearCLIP's q-q self attention, no residual, no FFN."""
    q, k, v = _qkv(block, block.ln_1(x))
    return block.ls_1(block.attn.out_proj(_self_self_attention(q, v, block.attn.num_heads))), k


def _sclip_block(block: torch.nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """SCLIP's correlative self attention softmax(q q^T) + softmax(k k^T), residual and FFN kept."""
    q, k, v = _qkv(block, block.ln_1(x))
    heads = block.attn.num_heads
    qh, kh, vh = _heads(q, heads), _heads(k, heads), _heads(v, heads)
    scale = qh.shape[-1] ** -0.5
    weights = torch.softmax(qh @ qh.transpose(-1, -2) * scale, dim=-1) + torch.softmax(
        kh @ kh.transpose(-1, -2) * scale, dim=-1
    )
    x = x + block.ls_1(block.attn.out_proj(_merge_heads(weights @ vh)))
    x = x + block.ls_2(_mlp(block, x))
    return x, k


_PRIOR_CACHE: dict[tuple, torch.Tensor] = {}
_PRIOR_CACHE_SIZE = 16


def neighbourhood_prior(
    grid: tuple[int, int], std: float = NACLIP_GAUSSIAN_STD, *, device=None, dtype=torch.float32
) -> torch.Tensor:
    """NACLIP's additive attention prior [1 + gh*gw, 1 + gh*gw]: exp(-|p - p'|^2 / (2 std^2)) between patches
    p, p' of the grid (distances in patches), 0 in the class token's row and column."""
    key = (tuple(int(g) for g in grid), float(std), str(device), dtype)
    hit = _PRIOR_CACHE.get(key)
    if hit is None:
        gh, gw = key[0]
        ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        pos = torch.stack([ys.flatten(), xs.flatten()], dim=1).double()
        dist2 = ((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1)
        prior = F.pad(torch.exp(-dist2 / (2 * std * std)), (1, 0, 1, 0))
        if len(_PRIOR_CACHE) >= _PRIOR_CACHE_SIZE:
            _PRIOR_CACHE.clear()
        hit = _PRIOR_CACHE[key] = prior.to(device=device, dtype=dtype)
    return hit


def _naclip_block(
    block: torch.nn.Module, x: torch.Tensor, grid: tuple[int, int], std: float = NACLIP_GAUSSIAN_STD
) -> tuple[torch.Tensor, torch.Tensor]:
    """NACLIP: softmax(k k^T / sqrt(d) + Gaussian neighbourhood prior) v per head, no residual, no FFN.

    As the reference (sinahmr/NACLIP, ``arch='reduced'``, ``attn_strategy='naclip'``, ``gaussian_std=5``):
    the prior is not scaled, the class token takes part in the softmax with a zero prior. Deviations: the
    prior is computed in closed form instead of by convolving one-hot maps with a (2h-1) x (2w-1) window
    (the same numbers); the layer scale ``ls_1`` is applied as in the other modes (an identity for every
    OpenAI-style CLIP, which has none).
    """
    _, k, v = _qkv(block, block.ln_1(x))
    heads = block.attn.num_heads
    kh = _heads(k, heads)
    prior = neighbourhood_prior(grid, std, device=kh.device, dtype=kh.dtype)
    out = F.scaled_dot_product_attention(kh, kh, _heads(v, heads), attn_mask=prior)
    return block.ls_1(block.attn.out_proj(_merge_heads(out))), k


# The attention-mode registry (as segment-anything's ``sam_model_registry``): a new training-free variant is
# one entry here; ``AttentionMode`` (the config's Literal), the CLI's choices and the docs derive from it.
ATTENTION_MODES: dict[str, LastBlock] = {
    "maskclip": _maskclip_block,
    "clearclip": _clearclip_block,
    "sclip": _sclip_block,
    "naclip": _naclip_block,
}
AttentionMode = Literal[tuple(ATTENTION_MODES)]  # type: ignore[valid-type]


def describe_attention_modes() -> str:
    """One line per registered mode (its function's docstring), for config descriptions and CLI help."""
    return "; ".join(f"{name}: {_summary(fn)}" for name, fn in ATTENTION_MODES.items())


def _summary(fn: Callable) -> str:
    return (fn.__doc__ or "").strip().split("\n")[0].rstrip(".")


def last_block_for(mode: str) -> LastBlock:
    """The last-block function registered for ``mode``; a clear error for an unknown one."""
    try:
        return ATTENTION_MODES[mode]
    except KeyError:
        raise ValueError(f"unknown attention mode {mode!r}; choose one of {tuple(ATTENTION_MODES)}") from None


def _to_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[B, gh*gw, C] -> [B, C, gh, gw]."""
    B, _, C = tokens.shape
    return tokens.reshape(B, grid[0], grid[1], C).permute(0, 3, 1, 2).contiguous()


def last_block_input(
    visual: VisionTransformer, pixels: torch.Tensor, position_resize: PositionResize = "size"
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Tokens entering the last block [B, 1 + gh*gw, W] (class token first) and the patch grid (gh, gw)."""
    x, grid = _vit_embed(visual, pixels, position_resize)
    return _run_blocks(visual, x, visual.transformer.resblocks[:-1]), grid


def _vit_dense(
    visual: VisionTransformer, pixels: torch.Tensor, mode: str, position_resize: PositionResize
) -> tuple[torch.Tensor, torch.Tensor]:
    last_block_for(mode)  # an unknown mode fails before any work
    x, grid = last_block_input(visual, pixels, position_resize)
    return last_block_output(visual, x, grid, mode)


def last_block_output(
    visual: VisionTransformer, x: torch.Tensor, grid: tuple[int, int], mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The last block of ``mode`` on its input tokens [B, 1 + gh*gw, W], then ln_post and the projection:
    features [B, D, gh, gw] and keys [B, C, gh, gw] (as :func:`dense_features`)."""
    x, keys = last_block_for(mode)(visual.transformer.resblocks[-1], x, grid)
    x = visual.ln_post(x.to(visual.ln_post.weight.dtype))  # a low-precision copy's last block may end in bf16
    if visual.proj is not None:
        x = x.to(visual.proj.dtype) @ visual.proj
    return _to_grid(x[:, 1:], grid), _to_grid(keys[:, 1:], grid)


def _conv1x1(x: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:
    return F.conv2d(x, linear.weight[:, :, None, None], linear.bias)


def _resnet_trunk(visual: ModifiedResNet, pixels: torch.Tensor) -> torch.Tensor:
    x = visual.stem(pixels.to(_dtype(visual)))
    return visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))


def _resnet_dense(visual: ModifiedResNet, pixels: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    last_block_for(mode)  # an unknown mode gets the same message as for a ViT
    if mode != "maskclip":
        raise ValueError(f"attention mode {mode!r} is defined for ViT encoders only; ResNets use 'maskclip'")
    x = _resnet_trunk(visual, pixels)
    pool = visual.attnpool
    features = _conv1x1(_conv1x1(x, pool.v_proj), pool.c_proj)
    return features, _conv1x1(x, pool.k_proj)


def dense_features(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    mode: AttentionMode = "maskclip",
    *,
    position_resize: PositionResize = "size",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch CLIP embeddings and last-block keys.

    ``model`` is an open_clip CLIP model (or its ``.visual``); ``pixels`` a normalised float tensor
    [B, 3, H, W] with H, W multiples of the patch size (ViT) or 32 (ResNet). Returns ``features``
    [B, D, h, w] (projected to the joint space, not normalised) and ``keys`` [B, C, h, w]. The encoder is
    evaluated with inference semantics whatever its mode (see :func:`inference_semantics`).
    ``position_resize``: how a ViT's positional embeddings reach the patch grid (:data:`PositionResize`).
    """
    visual = _visual(model)
    with inference_semantics(visual):
        if isinstance(visual, VisionTransformer):
            return _vit_dense(visual, pixels, mode, position_resize)
        if isinstance(visual, ModifiedResNet):
            return _resnet_dense(visual, pixels, mode)
    raise TypeError(f"unsupported image encoder {type(visual).__name__}")


def _resized_attnpool_positions(pool: torch.nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    pos = pool.positional_embedding
    side = int(round((pos.shape[0] - 1) ** 0.5))
    if grid == (side, side):
        return pos
    patch = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch.float(), size=grid, mode="bicubic", align_corners=False).to(pos.dtype)
    return torch.cat([pos[:1], patch.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)], dim=0)


def image_embedding(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Standard CLIP image embedding (all blocks with their normal attention, then pooling) at any size.

    At the model's native size this is ``model.encode_image``; elsewhere positional embeddings are resized
    the same way as for dense features. It is the "bare encoder forward" the labeler is measured against.
    """
    visual = _visual(model)
    with inference_semantics(visual):
        return _image_embedding(visual, pixels)


def _image_embedding(visual: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    if isinstance(visual, VisionTransformer):
        x, _ = _vit_embed(visual, pixels)
        x = _run_blocks(visual, x, visual.transformer.resblocks)
        pooled, _ = visual._pool(x)
        return pooled @ visual.proj if visual.proj is not None else pooled
    if isinstance(visual, ModifiedResNet):
        x = _resnet_trunk(visual, pixels)
        pool = visual.attnpool
        B, C, h, w = x.shape
        tokens = x.reshape(B, C, h * w).permute(2, 0, 1)
        tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens], dim=0)
        tokens = tokens + _resized_attnpool_positions(pool, (h, w))[:, None, :].to(tokens.dtype)
        out, _ = F.multi_head_attention_forward(
            query=tokens[:1],
            key=tokens,
            value=tokens,
            embed_dim_to_check=C,
            num_heads=pool.num_heads,
            q_proj_weight=pool.q_proj.weight,
            k_proj_weight=pool.k_proj.weight,
            v_proj_weight=pool.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=pool.c_proj.weight,
            out_proj_bias=pool.c_proj.bias,
            use_separate_proj_weight=True,
            training=False,
            need_weights=False,
        )
        return out[0]
    raise TypeError(f"unsupported image encoder {type(visual).__name__}")
