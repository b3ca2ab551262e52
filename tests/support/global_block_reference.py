"""The global final block (OV-Stitcher, arXiv 2604.08110) rewritten from its equations, for equivalence tests of
``maskclip_core.teacher.global_block``: only the model's construction and its first L-1 blocks (the hand-written
forward of ``support.vit_reference``) are shared; the windows, their placement on the image's patch grid, the
stitching, each attention mode's last block and ProxyCLIP's affinity are written out here, cell by cell.

    windows: y0 = min(r * stride, H - crop) clipped at 0, the same for x; each padded bottom/right to whole patches
    a window's patch (i, j) joins the image patch holding its centre: floor((y0 + (i + 1/2) p) / p)
    X[g] = mean of the windows' block-(L-1) tokens on g;  X[cls] = mean of the windows' class tokens
    MaskCLIP   X + out(V),                 + MLP(ln_2(.)),  V from ln_1(X)
    ClearCLIP  out(softmax(Q Q^T / sqrt d) V)
    SCLIP      X + out((softmax(Q Q^T / sqrt d) + softmax(K K^T / sqrt d)) V),  + MLP(ln_2(.))
    NACLIP     out(softmax(K K^T / sqrt d + exp(-|g - g'|^2 / (2 * 5^2))) V)   (0 for the class token)
    ProxyCLIP  S = cos(P_g, P_g') over the stitched proxy grid, A = softmax(gamma (S - beta mean S)), negatives
               dropped (a cell keeps itself), out(A V~) with V~ CLIP's stitched values resized bilinearly
    features = proj(ln_post(.)); each window reads its cells back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from support.vit_reference import (
    layer_norm,
    merge_heads,
    out_proj,
    project,
    split_heads,
    split_qkv,
    until_last_block,
)

NACLIP_STD = 5.0


def windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of the sliding windows, row by row."""

    def starts(size: int) -> list[int]:
        out, s = [], 0
        while True:
            out.append(max(min(s, size - crop), 0))
            if s + crop >= size:
                return out
            s += stride

    return [(y, min(y + crop, height), x, min(x + crop, width)) for y in starts(height) for x in starts(width)]


def _whole_patches(crop: torch.Tensor, multiple: int, floor: bool) -> torch.Tensor:
    """Padded bottom/right to whole patches, or (``floor``) cut to the whole patches it holds."""
    h, w = crop.shape[-2:]
    if floor:
        return crop[:, : h - h % multiple, : w - w % multiple]
    return F.pad(crop, (0, -w % multiple, 0, -h % multiple))


def _cells(box, patch: int, window_grid) -> dict[tuple[int, int], tuple[int, int]]:
    """Window patch (i, j) -> image patch, for the window's patches that hold some of its pixels."""
    y0, y1, x0, x1 = box
    rows = min(math.ceil((y1 - y0) / patch), window_grid[0])
    cols = min(math.ceil((x1 - x0) / patch), window_grid[1])
    return {
        (i, j): (math.floor((y0 + (i + 0.5) * patch) / patch), math.floor((x0 + (j + 0.5) * patch) / patch))
        for i in range(rows)
        for j in range(cols)
    }


def _stitch(per_window: list[torch.Tensor], boxes, patch: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Windows' [h, w, C] maps -> the image's [Gh * Gw, C] mean per cell, row-major, and (Gh, Gw)."""
    sums: dict[tuple[int, int], list[torch.Tensor]] = {}
    for grid_map, box in zip(per_window, boxes, strict=True):
        for (i, j), cell in _cells(box, patch, grid_map.shape[:2]).items():
            sums.setdefault(cell, []).append(grid_map[i, j])
    gh = 1 + max(r for r, _ in sums)
    gw = 1 + max(c for _, c in sums)
    assert len(sums) == gh * gw, "an image patch no window covers"
    return torch.stack([torch.stack(sums[(r, c)]).mean(0) for r in range(gh) for c in range(gw)]), (gh, gw)


def _read_back(image_map: torch.Tensor, grid, boxes, patch: int, window_grid) -> list[torch.Tensor]:
    """The image's [Gh * Gw, C] -> each window's [C, h, w], 0 on patches past its pixels."""
    out = []
    for box in boxes:
        w = image_map.new_zeros((image_map.shape[1], *window_grid))
        for (i, j), (r, c) in _cells(box, patch, window_grid).items():
            w[:, i, j] = image_map[r * grid[1] + c]
        out.append(w)
    return out


def _mlp(sd, prefix, x, quick: bool):
    h = x @ sd[f"{prefix}.mlp.c_fc.weight"].T + sd[f"{prefix}.mlp.c_fc.bias"]
    h = h * torch.sigmoid(1.702 * h) if quick else F.gelu(h)
    return h @ sd[f"{prefix}.mlp.c_proj.weight"].T + sd[f"{prefix}.mlp.c_proj.bias"]


def _softmax_attention(a, b, v, heads, bias=None):
    ah, bh, vh = split_heads(a, heads), split_heads(b, heads), split_heads(v, heads)
    scores = ah @ bh.transpose(-1, -2) / math.sqrt(ah.shape[-1])
    if bias is not None:
        scores = scores + bias
    return torch.softmax(scores, dim=-1), vh


def _prior(grid) -> torch.Tensor:
    gh, gw = grid
    n = gh * gw
    prior = torch.zeros(n + 1, n + 1)
    for a in range(n):
        for b in range(n):
            d2 = (a // gw - b // gw) ** 2 + (a % gw - b % gw) ** 2
            prior[a + 1, b + 1] = math.exp(-d2 / (2 * NACLIP_STD**2))
    return prior


def last_block(sd, prefix, x, grid, heads: int, mode: str, quick: bool) -> torch.Tensor:
    """The mode's last block on the stitched tokens [1, 1 + G, W] -> tokens before ln_post."""
    q, k, v = split_qkv(sd, prefix, layer_norm(x, sd, f"{prefix}.ln_1"))
    if mode == "maskclip":
        y = x + out_proj(sd, prefix, v)
        return y + _mlp(sd, prefix, layer_norm(y, sd, f"{prefix}.ln_2"), quick)
    if mode == "clearclip":
        a, vh = _softmax_attention(q, q, v, heads)
        return out_proj(sd, prefix, merge_heads(a @ vh))
    if mode == "sclip":
        a, vh = _softmax_attention(q, q, v, heads)
        b, _ = _softmax_attention(k, k, v, heads)
        y = x + out_proj(sd, prefix, merge_heads((a + b) @ vh))
        return y + _mlp(sd, prefix, layer_norm(y, sd, f"{prefix}.ln_2"), quick)
    if mode == "naclip":
        a, vh = _softmax_attention(k, k, v, heads, _prior(grid))
        return out_proj(sd, prefix, merge_heads(a @ vh))
    raise ValueError(mode)


def _window_tokens(clip, image: torch.Tensor, boxes, multiple: int, floor: bool = False):
    """Block-(L-1) tokens of each window [1 + h*w, W] and the window patch grid (all windows share a shape)."""
    crops = torch.stack([_whole_patches(image[:, y0:y1, x0:x1], multiple, floor) for y0, y1, x0, x1 in boxes])
    return (*until_last_block(clip, crops), crops)


def global_block_reference(
    clip, image: torch.Tensor, crop: int, stride: int, mode: str, floor: bool = False
) -> tuple[list[tuple[int, int, int, int]], list[torch.Tensor]]:
    """Windows of ``image`` [3, H, W] (normalised) and each window's features [D, h, w] with the global block."""
    patch = clip.visual.patch_size[0]
    boxes = windows(image.shape[1], image.shape[2], crop, stride)
    sd, x, grid, prefix, heads, _ = _window_tokens(clip, image, boxes, patch, floor)
    width = x.shape[-1]
    maps = [t[1:].reshape(*grid, width) for t in x]
    patches, image_grid = _stitch(maps, boxes, patch)
    stitched = torch.cat([x[:, 0].mean(0, keepdim=True), patches])[None]
    quick = type(clip.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    features = project(sd, last_block(sd, prefix, stitched, image_grid, heads, mode, quick))[0, 1:]
    return boxes, _read_back(features, image_grid, boxes, patch, grid)


def global_proxyclip_reference(
    clip, proxy, image: torch.Tensor, crop: int, stride: int, clip_mean, clip_std, beta: float, gamma: float
) -> tuple[list[tuple[int, int, int, int]], list[torch.Tensor]]:
    """ProxyCLIP with the global block: the proxy's stitched features give the affinity over the whole image."""
    patch, proxy_patch = clip.visual.patch_size[0], proxy.patch_size
    boxes = windows(image.shape[1], image.shape[2], crop, stride)
    sd, x, grid, prefix, heads, crops = _window_tokens(clip, image, boxes, math.lcm(patch, proxy_patch))
    width = x.shape[-1]
    patches, clip_grid = _stitch([t[1:].reshape(*grid, width) for t in x], boxes, patch)
    stitched = torch.cat([x[:, 0].mean(0, keepdim=True), patches])[None]

    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (clip_mean, clip_std))
    pmean, pstd = (torch.tensor(v).view(1, 3, 1, 1) for v in (proxy.mean, proxy.std))
    guides = proxy.model.get_intermediate_layers((crops * std + mean - pmean) / pstd, n=1, reshape=True, norm=True)[0]
    proxy_window = tuple(guides.shape[-2:])
    guide, proxy_grid = _stitch([g.permute(1, 2, 0) for g in guides], boxes, proxy_patch)

    unit = F.normalize(guide, dim=1)
    s = unit @ unit.T
    s = (s - beta * s.mean()) * gamma
    keep = (s >= 0) | torch.eye(s.shape[0], dtype=torch.bool)
    a = torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1)
    _, _, v = split_qkv(sd, prefix, layer_norm(stitched, sd, f"{prefix}.ln_1"))
    v = v[0, 1:].T.reshape(1, width, *clip_grid)
    v = F.interpolate(v, size=proxy_grid, mode="bilinear", align_corners=False)[0].flatten(1).T
    features = project(sd, out_proj(sd, prefix, a @ v)[None])[0]
    return boxes, _read_back(features, proxy_grid, boxes, proxy_patch, proxy_window)
