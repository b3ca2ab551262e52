"""MaskCLIP's two training-free refinements: prompt denoising and key smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prompt_denoising_keep(class_max_prob: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Classes to keep: those whose maximum probability over the image reaches ``threshold``.

    A class that wins nowhere with confidence is most likely absent and only steals pixels from the
    classes that are present. ``class_max_prob`` is [..., K]; if every class falls below the threshold
    the best one is kept, so an image never ends with no class at all.
    """
    keep = class_max_prob >= threshold
    best = F.one_hot(class_max_prob.argmax(dim=-1), class_max_prob.shape[-1]).bool()
    return torch.where(keep.any(dim=-1, keepdim=True), keep, best)


def suppress_classes(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Set dropped classes' logits to -inf; ``logits`` [B, K, h, w], ``keep`` [B, K] or [K]."""
    keep = keep.view(-1, logits.shape[1], 1, 1) if keep.dim() == 2 else keep.view(1, -1, 1, 1)
    return logits.masked_fill(~keep, float("-inf"))


def key_smoothing(probs: torch.Tensor, keys: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """Smooth class probabilities over patches whose last-block keys are similar.

    ``probs`` [B, K, h, w] (a distribution per patch), ``keys`` [B, C, h, w]. Each patch whose max
    probability is below ``threshold`` gets the average of all patches' probabilities weighted by the
    cosine similarity of their keys. Unlike the reference implementation, negative similarities are
    clamped to zero and the weights normalised, so the result stays a probability distribution (the
    confidence filter downstream reads it as one); with non-negative similarities the argmax is the same.
    """
    B, K, h, w = probs.shape
    p = probs.reshape(B, K, h * w).transpose(1, 2)  # [B, N, K]
    k = F.normalize(keys.reshape(B, keys.shape[1], h * w).float(), dim=1)
    weight = (k.transpose(1, 2) @ k).clamp_min_(0)  # [B, N, N], diagonal = 1
    smoothed = (weight @ p.float()) / weight.sum(dim=-1, keepdim=True)
    selected = p.max(dim=-1, keepdim=True).values < threshold
    out = torch.where(selected, smoothed.to(p.dtype), p)
    return out.transpose(1, 2).reshape(B, K, h, w)
