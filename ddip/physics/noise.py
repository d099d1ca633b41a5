"""Measurement noise, added once to clean measurements."""

from __future__ import annotations

import torch
from torch import Tensor

from ddip.errors import DdipError


def add_noise(y: Tensor, sigma: float = 0.01, *, generator: torch.Generator | None = None,
              mask: Tensor | None = None) -> Tensor:
    """Return ``y + σ·n`` with ``n ~ N(0, I)`` (complex: ``E|n|² = 1``, i.e. variance ½ per real part).

    ``mask`` (broadcastable to ``y``, e.g. an MRI operator's ``mask``) restricts the noise to the sampled
    locations, so unsampled k-space stays exactly zero. ``y`` is not modified.
    """
    if sigma < 0:
        raise DdipError(f"add_noise: sigma must be >= 0, got {sigma}")
    noise = torch.randn(y.shape, dtype=y.dtype, device=y.device, generator=generator)
    if mask is not None:
        noise = noise * (torch.as_tensor(mask, device=y.device) != 0)
    return y + sigma * noise
