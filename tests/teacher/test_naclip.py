"""NACLIP's last block (k-k attention + Gaussian neighbourhood prior, no residual, no FFN) against a computation
written by hand from the state dict and against a re-implementation of the reference code's forward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from support.vit_reference import (
    layer_norm,
    max_rel_error,
    merge_heads,
    out_proj,
    project,
    split_heads,
    split_qkv,
    to_grid,
    until_last_block,
)

from maskclip_core.teacher.clip_loader import load_clip
from maskclip_core.teacher.dense import NACLIP_GAUSSIAN_STD, dense_features, last_block_input

SIZES = [(224, 224), (160, 272)]  # square and non-square patch grids


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module", params=["maskclip-tiny-ViT", "ViT-B-16"])
def vit(request):
    return load_clip(request.param, "none", device="cpu", seed=11).model


def _gaussian_prior_by_loops(grid, std):
    """exp(-((i-i')^2 + (j-j')^2) / (2 std^2)) for every pair of patches, class token row/column 0."""
    gh, gw = grid
    n = gh * gw
    prior = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    for a in range(n):
        for b in range(n):
            di, dj = a // gw - b // gw, a % gw - b % gw
            prior[a + 1, b + 1] = math.exp(-(di * di + dj * dj) / (2 * std * std))
    return prior


@pytest.mark.parametrize("size", SIZES)
def test_naclip_equals_hand_written_attention_with_gaussian_prior(vit, size):
    pixels = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    sd, x, grid, last, heads = until_last_block(vit, pixels)
    _, k, v = split_qkv(sd, last, layer_norm(x, sd, f"{last}.ln_1"))
    kh, vh = split_heads(k, heads), split_heads(v, heads)
    scores = kh @ kh.transpose(-1, -2) / math.sqrt(kh.shape[-1]) + _gaussian_prior_by_loops(grid, 5.0).float()
    tokens = out_proj(sd, last, merge_heads(torch.softmax(scores, dim=-1) @ vh))  # no residual, no FFN
    expected = to_grid(project(sd, tokens)[:, 1:], grid)

    features, keys = dense_features(vit, pixels, "naclip")
    assert features.shape == expected.shape and keys.shape[-2:] == grid
    assert max_rel_error(features, expected) <= 1e-4
    assert max_rel_error(keys, to_grid(k[:, 1:], grid)) <= 1e-4


# ------------------------------------------- the reference code's forward (sinahmr/NACLIP, clip/model.py), as read
def _reference_gaussian_window(dim1, dim2, std):
    constant = 1 / (std * math.sqrt(2))
    ks = []
    for dim in (dim1, dim2):
        start = -(dim - 1) / 2.0
        ks.append(torch.linspace(start * constant, (start + (dim - 1)) * constant, steps=dim))
    return torch.exp(-(torch.stack(torch.meshgrid(*ks, indexing="ij")) ** 2).sum(0))


def _reference_attention_addition(dim1, dim2, window):
    m = torch.einsum("ij,kl->ijkl", torch.eye(dim1), torch.eye(dim2)).permute(0, 3, 1, 2).contiguous()
    out = F.conv2d(m.view(-1, dim1, dim2).unsqueeze(1), window[None, None], padding="same").squeeze(1)
    out = out.view(dim1 * dim2, dim1 * dim2)
    out = torch.vstack([torch.zeros((1, dim1 * dim2)), out])
    return torch.hstack([torch.zeros((dim1 * dim2 + 1, 1)), out])


def _reference_naclip_forward(visual, x_nld, n_patches, std):
    """Last block with arch='reduced', attn_strategy='naclip' in the sequence-first layout of the reference."""
    blk = visual.transformer.resblocks[-1]
    attn = blk.attn
    x = blk.ln_1(x_nld.permute(1, 0, 2))
    num_tokens, bsz, embed_dim = x.shape
    num_heads = attn.num_heads
    head_dim = embed_dim // num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    k = k.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    v = v.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    window = _reference_gaussian_window(*[side * 2 - 1 for side in n_patches], std=std)
    omega = _reference_attention_addition(*n_patches, window).unsqueeze(0)
    weights = F.softmax(torch.bmm(k, k.transpose(1, 2)) * head_dim**-0.5 + omega, dim=-1)
    out = torch.bmm(weights, v).transpose(0, 1).contiguous().view(-1, bsz, embed_dim)
    out = attn.out_proj(out).permute(1, 0, 2)
    return visual.ln_post(out) @ visual.proj


@pytest.mark.parametrize("size", SIZES)
def test_naclip_equals_reference_code_forward(vit, size):
    pixels = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    x, grid = last_block_input(vit.visual, pixels)
    expected = to_grid(_reference_naclip_forward(vit.visual, x, grid, NACLIP_GAUSSIAN_STD)[:, 1:], grid)
    features, _ = dense_features(vit, pixels, "naclip")
    assert max_rel_error(features, expected) <= 1e-4


def test_naclip_prior_changes_the_result(vit):
    """The neighbourhood prior is not a no-op: plain k-k attention (ClearCLIP-like, keys) gives other features."""
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    x, grid = last_block_input(vit.visual, pixels)
    blk = vit.visual.transformer.resblocks[-1]
    _, k, v = F.linear(blk.ln_1(x), blk.attn.in_proj_weight, blk.attn.in_proj_bias).chunk(3, dim=-1)
    heads = blk.attn.num_heads
    kh, vh = split_heads(k, heads), split_heads(v, heads)
    plain = merge_heads(F.scaled_dot_product_attention(kh, kh, vh))
    without_prior = to_grid((vit.visual.ln_post(blk.attn.out_proj(plain)) @ vit.visual.proj)[:, 1:], grid)
    features, _ = dense_features(vit, pixels, "naclip")
    assert max_rel_error(features, without_prior) > 1e-3
