"""PAMR, pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), as NACLIP and others use it.

Each pixel's class scores are repeatedly replaced by a weighted mean of its 8 neighbours at each dilation,
with weights from colour similarity: for neighbour j of pixel i,
``a_ij = softmax_j(-mean_c |I_c(i) - I_c(j)| / (0.1 * std_c(i)))``, where std_c(i) is the standard deviation
of channel c over i's neighbourhood (centre included, all dilations together) and edges are replicated.
Scores then flow along regions of similar colour and stop at colour edges. The update is a convex
combination, so probabilities stay probabilities.

Same numbers as the reference module (visinf/1-stage-wseg ``PAMR``, copied into NACLIP) on inputs at the
image's size; written with shifted views of one padded copy instead of 3x3 convolutions, which never materialises the
[K, 8 * dilations, H, W] stack of shifted scores (K times less memory at the same arithmetic).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _shifted(x: torch.Tensor, offsets: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Views out[..., i, j] = x[..., clamp(i + dy), clamp(j + dx)] per offset (replicated edges), cut from
    one padded copy: no copy per offset."""
    H, W = x.shape[-2:]
    m = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    lead = x.shape[:-2]
    padded = F.pad(x.reshape(-1, 1, H, W), (m, m, m, m), mode="replicate").reshape(*lead, H + 2 * m, W + 2 * m)
    return [padded[..., m + dy : m + dy + H, m + dx : m + dx + W] for dy, dx in offsets]


def pamr_affinity(image: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """Neighbour weights [B, P, H, W] (P = 8 * len(dilations), summing to 1 over P) of images [B, C, H, W]."""
    image = image.float()
    offsets = [(dy * d, dx * d) for d in dilations for dy, dx in _NEIGHBOURS]
    neighbours = torch.stack(_shifted(image, offsets), dim=2)  # [B, C, P, H, W]
    # The local deviation counts the centre once per dilation, as the reference's 3x3 kernels do.
    centre = image.unsqueeze(2).expand(-1, -1, len(dilations), -1, -1)
    std = torch.cat([neighbours, centre], dim=2).std(dim=2, keepdim=True)
    distance = (neighbours - image.unsqueeze(2)).abs() / (1e-8 + 0.1 * std)
    return torch.softmax(-distance.mean(dim=1), dim=1)


def pamr(
    image: torch.Tensor, scores: torch.Tensor, iterations: int = 10, dilations: Sequence[int] = (8, 16)
) -> torch.Tensor:
    """Refine ``scores`` [B, K, H, W] with the colour affinities of ``image`` [B, C, H, W] (same H, W)."""
    if image.shape[-2:] != scores.shape[-2:]:
        raise ValueError(f"PAMR needs scores at the image's size: {tuple(scores.shape)} vs {tuple(image.shape)}")
    weights = pamr_affinity(image, dilations).to(scores.dtype)
    offsets = [(dy * d, dx * d) for d in dilations for dy, dx in _NEIGHBOURS]
    for _ in range(iterations):
        refined = torch.zeros_like(scores)
        for p, view in enumerate(_shifted(scores, offsets)):
            refined.addcmul_(weights[:, p : p + 1], view)
        scores = refined
    return scores
