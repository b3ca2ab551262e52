"""Trident (Shi et al., ICCV 2025): CLIP and DINO features of sub-images spliced into one image-level map, then
aggregated by an affinity from SAM's image encoder over the whole image.

Per image (reference: YuHengsss/Trident, ``trident.py`` and ``open_clip/transformer.py``):

1. The image is enlarged to multiples of CLIP's patch size, at least one crop each way (``canvas_shape``), and
   cut into crop x crop windows (336, stride 224).
2. In every window, ProxyCLIP's step: DINO's final patch features give S; A = softmax(gamma (S - beta mean S)),
   negatives dropped, where the mean runs over *all windows of the image* (the reference batches them);
   the window's values are ``out_proj(A @ V)`` with V CLIP's last-block values resized to DINO's grid.
3. The windows' values are spliced into one map on CLIP's grid of the whole image (overlaps averaged) and
   bilinearly resized to SAM's grid of the image (long side 1024 / 16 = 64 cells).
4. SAM's last (global) block gives per head the attention P_h and the values' cosine similarities C_h; per
   query m a threshold t_m = cos_fac * mean over heads and keys of C (at most 0.9; with ``refine_neg_cos``
   off a negative threshold becomes 0.6); W = mean_h(P_h where C_h > t, else 0), rows normalised.
5. The features are ``proj(ln_post(W @ spliced))``, on SAM's grid.

Deviations from the reference, and why:
- A token's own DINO similarity is never masked (as in ``proxy.py``): the reference's threshold can mask a
  whole row and yield NaN.
- Canvas: images whose sides are already multiples of the patch size but smaller than a crop are enlarged to
  the crop like the others (the reference returns them unchanged and then fails to splice the padded windows).
- Cityscapes' special case (two halves of the image through SAM, each with its own affinity) is not
  reproduced: every image takes one pass.
- The reference's resizes (mmseg's OpenCV resize of the image, OpenCV to multiples of 16 before SAM) and its
  positional embeddings (scaled by (g + 0.1) / N) are the labeler's ``resize="opencv"`` and
  ``position_resize="scale_factor"`` (the benchmark row's); by default the image is resized with
  antialiasing, SAM sees it as given, and positions are resized to the grid, as every labeler here does.
- Labels: a class with synonyms scores its best query (the project's text classifier) before the softmax;
  the probabilities, not the cosines, are upsampled to the image (row bands, bounded memory).
- Precision: the labeler's (fp32, or bf16 / fp16 autocast); the reference runs CLIP, DINO and SAM's encoder in
  fp16 on a GPU.
- The optional refinement by SAM's prompt encoder and mask decoder (``sam_refinement``, ``coarse_thresh``,
  ``sam_iou_thresh``, ``minimal_area``; off in every configuration of the reference) is ``sam_refine.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from maskclip_core.teacher.dense import PositionResize, _visual, inference_semantics, last_block_input
from maskclip_core.teacher.proxy import ProxyBundle, proxy_patch_features, renormalise
from maskclip_core.teacher.sam import SamLastAttention
from maskclip_core.teacher.window_predictor import window_boxes

# The reference's base configuration (configs/base_config.py) and Trident's constructor defaults.
TRIDENT_CROP = 336
TRIDENT_STRIDE = 224
TRIDENT_BETA = 1.2
TRIDENT_GAMMA = 3.0
TRIDENT_COS_FAC = 1.2
TRIDENT_LOGIT_SCALE = 40.0
# A SAM threshold above this would keep almost nothing; the reference caps it here.
MAX_SAM_THRESHOLD = 0.9
# With refine_neg_cos off, a negative threshold (which would keep nearly everything) becomes this.
NEGATIVE_THRESHOLD_FALLBACK = 0.6


def canvas_shape(height: int, width: int, patch: int, crop: int) -> tuple[int, int]:
    """The size CLIP's windows are cut from: the long side rounded up to a multiple of ``patch``, the short
    side scaled alike and rounded up, each at least ``crop`` (the reference's ``preprocess_image``)."""
    longer = max(height, width)
    target = math.ceil(longer / patch) * patch
    new_h, new_w = int(height * target / longer), int(width * target / longer)
    new_h, new_w = math.ceil(new_h / patch) * patch, math.ceil(new_w / patch) * patch
    return max(new_h, crop), max(new_w, crop)


def proxy_similarities(features: torch.Tensor) -> torch.Tensor:
    """Cosine similarities [N, M, M] of proxy features [N, C, h, w] within each window."""
    f = F.normalize(features.flatten(2).float(), dim=1)
    return f.transpose(1, 2) @ f


def shared_mean_attention(sim: torch.Tensor, mean: torch.Tensor | float, beta: float, gamma: float) -> torch.Tensor:
    """softmax(gamma (S - beta mean)) with negative arguments dropped (a token keeps itself): the mean is one
    number for all windows of the image."""
    logits = (sim - mean * beta) * gamma
    eye = torch.eye(sim.shape[-1], dtype=torch.bool, device=sim.device)
    return torch.softmax(logits.masked_fill((logits < 0) & ~eye, float("-inf")), dim=-1)


def window_values(
    model: torch.nn.Module,
    pixels: torch.Tensor,
    weights: torch.Tensor,
    grid: tuple[int, int],
    position_resize: PositionResize = "size",
) -> torch.Tensor:
    """``out_proj(A @ V)`` [N, W, gh, gw] for windows ``pixels`` [N, 3, c, c] (CLIP-normalised), with
    proxy attention ``weights`` [N, M, M] over the proxy's grid ``grid`` (M = gh * gw)."""
    visual = _visual(model)
    block = visual.transformer.resblocks[-1]
    attn = block.attn
    with inference_semantics(visual):
        x, clip_grid = last_block_input(visual, pixels, position_resize)
        width = x.shape[-1]
        bias = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
        v = F.linear(block.ln_1(x[:, 1:]), attn.in_proj_weight[2 * width :], bias)  # CLIP's q and k unused
        N = v.shape[0]
        v = v.transpose(1, 2).reshape(N, width, *clip_grid)
        if tuple(clip_grid) != tuple(grid):
            v = F.interpolate(v, size=grid, mode="bilinear", align_corners=False)
        out = block.ls_1(attn.out_proj(weights.to(v.dtype) @ v.flatten(2).transpose(1, 2)))
    return out.transpose(1, 2).reshape(N, width, *grid)


def splice(
    values: torch.Tensor, boxes: Sequence[tuple[int, int, int, int]], cell: int, canvas: tuple[int, int]
) -> torch.Tensor:
    """Windows' maps [N, D, g, g] placed on one map [D, H / cell, W / cell] of the canvas, overlaps averaged.

    ``cell`` is the canvas pixels per map cell (CLIP's patch, divided by the proxy's finer ratio); a window
    whose map does not fit its box is resized to it first (a proxy patch that does not divide CLIP's)."""
    D = values.shape[1]
    out = values.new_zeros(D, canvas[0] // cell, canvas[1] // cell)
    count = values.new_zeros(1, *out.shape[1:])
    for value, (y0, y1, x0, x1) in zip(values, boxes, strict=True):
        box = ((y1 - y0) // cell, (x1 - x0) // cell)
        if tuple(value.shape[-2:]) != box:
            value = F.interpolate(value[None], size=box, mode="bilinear", align_corners=False)[0]
        out[:, y0 // cell : y1 // cell, x0 // cell : x1 // cell] += value
        count[:, y0 // cell : y1 // cell, x0 // cell : x1 // cell] += 1
    return out / count


def splice_cell(clip_patch: int, window: int, proxy_grid: int) -> int:
    """Canvas pixels per spliced cell: CLIP's patch, or finer by the integer ratio of the proxy's grid to
    CLIP's (the reference's ``ratio``: rounded, the window's map resized when it is not whole)."""
    ratio = max(1, round(proxy_grid / (window // clip_patch)))
    if clip_patch % ratio:
        raise ValueError(f"a proxy {ratio}x finer than CLIP's {clip_patch}-pixel patches does not divide them")
    return clip_patch // ratio


def sam_affinity(
    attention: SamLastAttention, valid: tuple[int, int], cos_fac: float = TRIDENT_COS_FAC, refine_neg_cos: bool = True
) -> torch.Tensor:
    """Trident's weights [M, M] over SAM's valid cells (the image's part of the padded square, M = vh * vw):
    SAM's last attention kept where SAM's values are similar enough, averaged over heads, rows normalised.
    One head's [M, M] matrices at a time."""
    vh, vw = valid
    gh, gw = attention.grid
    idx = torch.arange(vh, device=attention.v.device)[:, None] * gw + torch.arange(vw, device=attention.v.device)
    idx = idx.reshape(-1)
    v = F.normalize(attention.v[:, idx].float(), dim=-1)  # [heads, M, d]
    heads = v.shape[0]
    # Threshold per query: mean over heads and keys of the values' cosine similarity, times cos_fac (a mean
    # over keys of dot products is the dot product with the keys' mean: no M x M matrix for it).
    mean_sim = torch.einsum("hmd,hd->m", v, v.mean(dim=1)) / heads
    threshold = cos_fac * mean_sim
    if not refine_neg_cos:
        threshold = torch.where(threshold < 0, NEGATIVE_THRESHOLD_FALLBACK, threshold)
    threshold = threshold.clamp(max=MAX_SAM_THRESHOLD)[:, None]
    total = torch.zeros(len(idx), len(idx), device=v.device)
    for h in range(heads):
        kept = attention.attention(h, idx)[:, idx].float()
        total += torch.where(v[h] @ v[h].T > threshold, kept, torch.zeros((), device=v.device))
    total /= heads
    return total / total.sum(dim=-1, keepdim=True)


def trident_features(
    model: torch.nn.Module,
    proxy: ProxyBundle,
    canvas: torch.Tensor,
    affinity: torch.Tensor,
    valid: tuple[int, int],
    clip_normalisation: tuple[Sequence[float], Sequence[float]],
    *,
    crop: int = TRIDENT_CROP,
    stride: int = TRIDENT_STRIDE,
    beta: float = TRIDENT_BETA,
    gamma: float = TRIDENT_GAMMA,
    window_batch: int = 8,
    position_resize: PositionResize = "size",
) -> torch.Tensor:
    """Trident's dense CLIP features [D, vh, vw] on SAM's valid grid ``valid`` for one image.

    ``canvas`` [3, H, W] is the CLIP-normalised image at :func:`canvas_shape`; ``affinity`` [vh*vw, vh*vw]
    comes from :func:`sam_affinity`; ``position_resize`` is how CLIP's and DINO's positional embeddings reach
    the window's grid (``scale_factor``: the reference's)."""
    visual = _visual(model)
    clip_patch = int(visual.patch_size[0])
    H, W = canvas.shape[-2:]
    if H % clip_patch or W % clip_patch or H < crop or W < crop:
        raise ValueError(f"canvas {H}x{W}: expected multiples of {clip_patch}, at least {crop} (canvas_shape)")
    boxes = window_boxes(H, W, crop, stride)
    target = (proxy.mean, proxy.std)
    with inference_semantics(proxy.model):
        guides = [
            proxy_patch_features(
                proxy, renormalise(canvas[None, :, y0:y1, x0:x1], clip_normalisation, target), position_resize
            )
            for y0, y1, x0, x1 in boxes
        ]
    grid = tuple(guides[0].shape[-2:])
    sims = torch.cat([proxy_similarities(g) for g in guides])
    mean = sims.mean()  # over every window of the image, as the reference's batched torch.mean
    values = []
    for start in range(0, len(boxes), window_batch):
        chunk = boxes[start : start + window_batch]
        pixels = torch.stack([canvas[:, y0:y1, x0:x1] for y0, y1, x0, x1 in chunk])
        weights = shared_mean_attention(sims[start : start + len(chunk)], mean, beta, gamma)
        values.append(window_values(model, pixels, weights, grid, position_resize).float())
    cell = splice_cell(clip_patch, crop, grid[0])
    spliced = splice(torch.cat(values), boxes, cell, (H, W))
    spliced = F.interpolate(spliced[None], size=valid, mode="bilinear", align_corners=False)[0]
    out = affinity @ spliced.flatten(1).T  # [M, W]
    out = visual.ln_post(out.to(visual.ln_post.weight.dtype))
    if visual.proj is not None:
        out = out.to(visual.proj.dtype) @ visual.proj
    return out.T.reshape(-1, *valid)
