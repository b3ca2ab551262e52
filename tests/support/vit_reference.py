"""A ViT-CLIP forward written out by hand from the state dict (explicit matmuls, no open_clip modules), for
equivalence tests of the modified last blocks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def layer_norm(x, sd, prefix, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps)


def _gelu(x, quick: bool):
    return x * torch.sigmoid(1.702 * x) if quick else F.gelu(x)


def tokens(sd, pixels, patch):
    """Patch embedding as a matmul over unfolded patches, class token, bicubically resized positions, ln_pre."""
    B, _, H, W = pixels.shape
    gh, gw = H // patch, W // patch
    w = sd["visual.conv1.weight"]
    patches = F.unfold(pixels, kernel_size=patch, stride=patch)
    x = patches.transpose(1, 2) @ w.reshape(w.shape[0], -1).T
    x = torch.cat([sd["visual.class_embedding"].expand(B, 1, -1), x], 1)
    pos = sd["visual.positional_embedding"]
    n = int(math.isqrt(pos.shape[0] - 1))
    if (gh, gw) != (n, n):
        grid = pos[1:].reshape(1, n, n, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)])
    return layer_norm(x + pos, sd, "visual.ln_pre"), (gh, gw)


def split_qkv(sd, prefix, y):
    w, b = sd[f"{prefix}.attn.in_proj_weight"], sd[f"{prefix}.attn.in_proj_bias"]
    d = w.shape[1]
    return (y @ w[:d].T + b[:d], y @ w[d : 2 * d].T + b[d : 2 * d], y @ w[2 * d :].T + b[2 * d :])


def split_heads(t, heads):
    B, L, D = t.shape
    return t.reshape(B, L, heads, D // heads).permute(0, 2, 1, 3)


def merge_heads(t):
    B, H, L, d = t.shape
    return t.permute(0, 2, 1, 3).reshape(B, L, H * d)


def out_proj(sd, prefix, x):
    return x @ sd[f"{prefix}.attn.out_proj.weight"].T + sd[f"{prefix}.attn.out_proj.bias"]


def _mlp(sd, prefix, x, quick):
    h = _gelu(x @ sd[f"{prefix}.mlp.c_fc.weight"].T + sd[f"{prefix}.mlp.c_fc.bias"], quick)
    return h @ sd[f"{prefix}.mlp.c_proj.weight"].T + sd[f"{prefix}.mlp.c_proj.bias"]


def _standard_block(sd, prefix, x, heads, quick):
    q, k, v = split_qkv(sd, prefix, layer_norm(x, sd, f"{prefix}.ln_1"))
    qh, kh, vh = (split_heads(t, heads) for t in (q, k, v))
    a = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1]), dim=-1)
    x = x + out_proj(sd, prefix, merge_heads(a @ vh))
    return x + _mlp(sd, prefix, layer_norm(x, sd, f"{prefix}.ln_2"), quick)


def until_last_block(model, pixels):
    """-> (state dict, tokens entering the last block [B, 1+N, W], grid, last block's prefix, heads)."""
    sd = model.state_dict()
    visual = model.visual
    blocks = visual.transformer.resblocks
    quick = type(blocks[0].mlp.gelu).__name__ == "QuickGELU"
    heads = blocks[0].attn.num_heads
    x, grid = tokens(sd, pixels, visual.patch_size[0])
    for i in range(len(blocks) - 1):
        x = _standard_block(sd, f"visual.transformer.resblocks.{i}", x, heads, quick)
    return sd, x, grid, f"visual.transformer.resblocks.{len(blocks) - 1}", heads


def project(sd, x):
    """ln_post and the visual projection."""
    return layer_norm(x, sd, "visual.ln_post") @ sd["visual.proj"]


def to_grid(t, grid):
    B, _, C = t.shape
    return t.reshape(B, grid[0], grid[1], C).permute(0, 3, 1, 2)


def max_rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|."""
    return float((actual.double() - expected.double()).abs().max() / expected.double().abs().max())
