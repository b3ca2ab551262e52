"""A global final block (OV-Stitcher's idea, Moon et al., arXiv 2604.08110): the encoder's first L-1 blocks run
per sliding window as always; the tokens entering the last block are then stitched into one grid of the whole
image, and the last block (whichever attention mode, or ProxyCLIP's proxy attention) runs once over that grid,
so every patch attends to every patch of the image instead of its window's only.

The arithmetic, per image with windows w placed at patch offsets o_w on the image's patch grid (G cells):

    X[g] = mean over the windows w covering g of x_w[g - o_w]       (x_w: block L-1's patch tokens of w)
    X[cls] = mean over all windows of x_w[cls]
    F = last_block(X) on the image grid (the mode's own equations, NACLIP's prior over image-patch distances)
    f_w[p] = F[p + o_w]                                              (each window reads its patches back)

With ProxyCLIP the proxy's final patch features are stitched the same way on the proxy's image grid, its
affinity is taken over that whole grid, and CLIP's stitched values are resized to it. The windows then go
through the predictor's usual steps (refinements, stitching of probabilities or logits), which now see
features computed over the whole image.

Choices the paper leaves open (its method section was not readable here; the authors' code, atw617/OV-Stitcher,
was read for the stitching), and what was chosen:
- What is stitched: the tokens entering the last block, averaged where windows overlap (the authors average
  q, k, v after ln_1 and the in-projection, and the residual stream, separately). Averaging the block's input
  lets every registered attention mode run its own last block unchanged; where no windows overlap the two are
  equal, in overlaps they differ by ln_1 of a mean against a mean of ln_1.
- The class token: the mean of the windows' class tokens, so modes whose softmax includes it (ClearCLIP,
  SCLIP, NACLIP) keep their arithmetic; the authors' stitched attention has patch tokens only.
- Placement: a window's patch p joins the image patch its centre falls in (offset round(y0 / patch), half
  up): windows shifted back to the image edge start off the patch lattice; the authors floor the offset.
  Padded patches past a window's pixels are not stitched.
- Positional embeddings stay per window (each window's tokens were made with its own grid's embeddings).
- ProxyCLIP: the proxy runs whole per window and its final features are stitched (the authors also stitch
  the proxy's last-block q, k, v and run that block over the image); one set of weights for all heads, as in
  ``proxy.py``.
- MaskCLIP's last block mixes no tokens, so with it the option only averages the overlaps.
- Not part of this option: the authors' other branches (a spatial branch from intermediate blocks, region
  masks from a mask generator, the mode-of-region map correction); it is the global last block alone.
- ``compile`` does not apply to this path; the first L-1 blocks run ``window_batch`` windows at a time.

Cost and the token budget: the last block's attention is quadratic in the image's patch tokens (every mode
counts the same; ProxyCLIP counts the proxy's grid). An image past ``max_tokens`` is refused with one line
naming the budget (the labeling run records that image as failed with it, and labels the others); a silent
fall back to per-window attention would label under a configuration hash that does not describe it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from maskclip_core.teacher.dense import (
    PositionResize,
    _visual,
    inference_semantics,
    last_block_input,
    last_block_output,
)
from maskclip_core.teacher.proxy import PROXY_BETA, PROXY_GAMMA, ProxyBundle, proxy_block_inputs, proxy_last_block

# 8192 tokens: a 1440 x 1440 image at 16-pixel patches; one head's fp32 attention matrix is then 256 MiB.
GLOBAL_BLOCK_MAX_TOKENS = 8192
GLOBAL_BLOCK_NEEDS_VIT = "the global final block (global_block) stitches a ViT's tokens; this encoder is a ResNet"


@dataclass(frozen=True)
class Placement:
    """A window's patches on the image's patch grid: the first one's (row, column), and how many are real
    (``valid``: the window's pixels, without the padding past them)."""

    offset: tuple[int, int]
    valid: tuple[int, int]


def window_placements(
    boxes: Sequence[tuple[int, int, int, int]], patch: int, window_grid: tuple[int, int]
) -> list[Placement]:
    """Each (y0, y1, x0, x1) window's place on the image's ``patch``-pixel grid; ``window_grid`` is the
    encoded window's patch grid (padded or floored)."""

    def nearest(pixels: int) -> int:  # round half up: the image patch holding the window patch's centre
        return (2 * pixels + patch) // (2 * patch)

    return [
        Placement(
            (nearest(y0), nearest(x0)),
            (min(-(-(y1 - y0) // patch), window_grid[0]), min(-(-(x1 - x0) // patch), window_grid[1])),
        )
        for y0, y1, x0, x1 in boxes
    ]


def image_grid(placements: Sequence[Placement]) -> tuple[int, int]:
    """The image's patch grid: every window's patches (windows overlap or abut, so no cell is left out)."""
    return (
        max(p.offset[0] + p.valid[0] for p in placements),
        max(p.offset[1] + p.valid[1] for p in placements),
    )


def check_token_budget(grid: tuple[int, int], max_tokens: int) -> None:
    """One-line refusal of an image whose stitched grid has more tokens than the budget."""
    tokens = grid[0] * grid[1]
    if tokens > max_tokens:
        raise ValueError(
            f"global final block: this image has {grid[0]} x {grid[1]} = {tokens} patch tokens, past the budget "
            f"of {max_tokens} (global_block_max_tokens; the attention is quadratic in them): lower short_side / "
            "max_long_side, raise the budget, or label without global_block"
        )


def stitch_grids(patches: torch.Tensor, placements: Sequence[Placement], grid: tuple[int, int]) -> torch.Tensor:
    """Windows' patch maps [n, h, w, C] -> the image's [Gh, Gw, C], each cell the mean of the windows on it
    (accumulated in fp32, returned in the input's dtype)."""
    total = torch.zeros((*grid, patches.shape[-1]), dtype=torch.float32, device=patches.device)
    count = torch.zeros((*grid, 1), dtype=torch.float32, device=patches.device)
    for window, place in zip(patches, placements, strict=True):
        (oy, ox), (vh, vw) = place.offset, place.valid
        total[oy : oy + vh, ox : ox + vw] += window[:vh, :vw].float()
        count[oy : oy + vh, ox : ox + vw] += 1
    if bool((count == 0).any()):  # cannot happen for sliding windows; a wrong placement must not divide by 0
        raise ValueError("global final block: the windows leave image patches uncovered")
    return (total / count).to(patches.dtype)


def stitch_tokens(
    tokens: torch.Tensor, window_grid: tuple[int, int], placements: Sequence[Placement], grid: tuple[int, int]
) -> torch.Tensor:
    """Windows' tokens [n, 1 + h*w, W] (class token first) -> the image's [1, 1 + Gh*Gw, W]: patches averaged
    on the image grid, the class token the mean of the windows'."""
    n, _, width = tokens.shape
    patches = stitch_grids(tokens[:, 1:].reshape(n, *window_grid, width), placements, grid)
    return torch.cat([tokens[:, :1].mean(dim=0, keepdim=True), patches.reshape(1, -1, width)], dim=1)


def unstitch(maps: torch.Tensor, placements: Sequence[Placement], window_grid: tuple[int, int]) -> torch.Tensor:
    """The image's [1, C, Gh, Gw] -> each window's [n, C, h, w] read back at its place (0 past its pixels)."""
    out = maps.new_zeros((len(placements), maps.shape[1], *window_grid))
    for i, place in enumerate(placements):
        (oy, ox), (vh, vw) = place.offset, place.valid
        out[i, :, :vh, :vw] = maps[0, :, oy : oy + vh, ox : ox + vw]
    return out


def global_dense_features(
    model: torch.nn.Module,
    crops: torch.Tensor,
    boxes: Sequence[tuple[int, int, int, int]],
    *,
    mode: str = "maskclip",
    position_resize: PositionResize = "size",
    window_batch: int = 8,
    max_tokens: int = GLOBAL_BLOCK_MAX_TOKENS,
    proxy: ProxyBundle | None = None,
    clip_normalisation: tuple[Sequence[float], Sequence[float]] | None = None,
    beta: float = PROXY_BETA,
    gamma: float = PROXY_GAMMA,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense features and keys of one image's windows with a global last block, in the layout of
    :func:`~maskclip_core.teacher.dense.dense_features` (or ``proxy_dense_features`` with ``proxy``): per window
    [n, D, h, w] and [n, C, h, w] on its own grid.

    ``crops`` [n, 3, H, W] are the image's windows (normalised for CLIP, padded or floored to whole patches of
    both encoders), ``boxes`` their (y0, y1, x0, x1) in the image's pixels.
    """
    visual = _visual(model)
    if not hasattr(visual, "transformer"):
        raise ValueError(GLOBAL_BLOCK_NEEDS_VIT)
    clip_patch = int(visual.conv1.kernel_size[0])
    clip_window = (crops.shape[-2] // clip_patch, crops.shape[-1] // clip_patch)
    clip_places = window_placements(boxes, clip_patch, clip_window)
    out_patch = proxy.patch_size if proxy is not None else clip_patch
    out_window = (crops.shape[-2] // out_patch, crops.shape[-1] // out_patch)
    out_places = window_placements(boxes, out_patch, out_window) if proxy is not None else clip_places
    check_token_budget(image_grid(out_places), max_tokens)
    proxy_mode = inference_semantics(proxy.model) if proxy is not None else contextlib.nullcontext()
    with inference_semantics(visual), proxy_mode:
        tokens, guides = [], []
        for start in range(0, crops.shape[0], window_batch):
            chunk = crops[start : start + window_batch]
            if proxy is None:
                x, _ = last_block_input(visual, chunk, position_resize)
            else:
                x, _, guide = proxy_block_inputs(visual, chunk, proxy, clip_normalisation, position_resize)
                guides.append(guide)
            tokens.append(x)
        clip_grid = image_grid(clip_places)
        stitched = stitch_tokens(torch.cat(tokens), clip_window, clip_places, clip_grid)
        if proxy is None:
            features, keys = last_block_output(visual, stitched, clip_grid, mode)
        else:
            guide = stitch_grids(torch.cat(guides).permute(0, 2, 3, 1), out_places, image_grid(out_places))
            keys = guide.permute(2, 0, 1)[None]
            features = proxy_last_block(visual, stitched, clip_grid, keys, beta, gamma)
    return unstitch(features, out_places, out_window), unstitch(keys, out_places, out_window)
