"""Where models run when the caller does not say: the one default for the teacher, the student and training."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` ("cpu", "cuda", "cuda:1"...), or :func:`default_device` when None."""
    return torch.device(device) if device is not None else default_device()
