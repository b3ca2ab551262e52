"""timm encoders with our weights rules: the hub, a local file or ``none`` (random, seeded), one-line errors.

ProxyCLIP's proxy and Trident's SAM encoder are both timm models loaded the same way; the one function keeps
their offline behaviour (a quick hub probe, the flag to pass without the hub) and their identities alike.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any

import torch

from maskclip_core.teacher.clip_loader import WeightsUnavailableError, is_random, weights_identity
from maskclip_core.teacher.hub import hub_downloads


def create_timm_encoder(
    timm_name: str, weights: str, *, seed: int, role: str, flag: str, local_example: str, **kwargs: Any
) -> tuple[torch.nn.Module, str]:
    """Build ``timm_name`` (with its pretrained tag) -> (model, weights identity).

    ``weights``: ``pretrained`` (timm's hub download for the tag; the hub is probed first, so an unreachable
    one fails at once), a local weights file (converted by timm's loader), or ``none`` for random weights seeded
    by ``seed``. ``role`` ("proxy", "SAM") and ``flag`` (the CLI option) name the fix in the errors.
    """
    import timm

    if is_random(weights):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(timm_name, pretrained=False, **kwargs)
        return model, f"{timm_name}/random-seed{seed}"
    local = weights != "pretrained"
    if local and not os.path.isfile(weights):
        raise WeightsUnavailableError(f"{role} weights '{weights}': no such file (or use 'pretrained' / 'none')")
    overlay = {"file": weights} if local else None
    unreachable = None
    try:
        with nullcontext() if local else hub_downloads() as unreachable:
            model = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except (RuntimeError, OSError, ValueError) as exc:  # offline hub, missing tag, unreadable file
        cause = f"{unreachable}, and they are not in the local hub cache" if unreachable else exc
        raise WeightsUnavailableError(
            f"Could not obtain the {role} weights for {timm_name} ({weights}): {cause}. Without access to the "
            f"model hub pass a local file ({flag} {local_example}), or {flag} none for random weights."
        ) from exc
    return model, weights_identity(timm_name, weights if local else "pretrained", seed)
