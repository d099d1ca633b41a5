"""Which device a run uses: ``auto`` (a GPU when one is visible), ``cpu``, ``cuda`` or ``cuda:N``, checked once."""

from __future__ import annotations

import torch

from ddip.errors import DdipError

DEVICE_HELP = "auto (a GPU when one is visible, else the CPU), cpu, cuda or cuda:N"


def resolve_device(spec: str | torch.device) -> torch.device:
    """The device ``spec`` names, or one clear :class:`DdipError` saying why it cannot be used here."""
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as exc:
        raise DdipError(f"unknown device {spec!r}; use {DEVICE_HELP}") from exc
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DdipError(f"device {spec!r} is not supported; use {DEVICE_HELP}")
    if not torch.cuda.is_available():
        build = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise DdipError(f"device {spec!r} requested but {build}; use --device cpu (or auto)")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise DdipError(f"device {spec!r} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    return device
