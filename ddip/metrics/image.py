"""PSNR and SSIM per slice, as the paper evaluates, and over the whole volume.

Conventions (those of the authors' evaluation code): PSNR per slice uses the data range of the **ground-truth slice**
(``max − min``) unless one is given; SSIM is skimage's default (7×7 uniform window, sample covariance,
K1 = 0.01, K2 = 0.03) with an explicit data range; volume PSNR uses the range of the whole ground-truth volume.
Complex inputs are compared as magnitudes (the paper's CS-MRI evaluation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ddip.errors import DdipError
from ddip.io import magnitude


def _as_slices(x: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
    if x.shape != ref.shape:
        raise DdipError(f"metrics: reconstruction shape {tuple(x.shape)} differs from reference {tuple(ref.shape)}")
    if x.ndim < 2:
        raise DdipError(f"metrics: expected images (..., H, W), got shape {tuple(x.shape)}")
    x, ref = magnitude(x), magnitude(ref)
    h, w = x.shape[-2:]
    return x.detach().reshape(-1, h, w).to(torch.float64), ref.detach().reshape(-1, h, w).to(torch.float64)


def _range_per_slice(ref: Tensor, data_range: float | None) -> Tensor:
    if data_range is not None:
        if data_range <= 0:
            raise DdipError(f"metrics: data_range must be > 0, got {data_range}")
        return torch.full((ref.shape[0],), float(data_range), dtype=ref.dtype, device=ref.device)
    return ref.amax(dim=(1, 2)) - ref.amin(dim=(1, 2))


def psnr(x: Tensor, ref: Tensor, *, data_range: float | None = None) -> Tensor:
    """PSNR of each slice ``(...,H,W)`` in dB: ``20·log10(range) − 10·log10(MSE)``; range from the reference slice.

    A constant reference slice with no ``data_range`` gives NaN rather than a made-up value.
    """
    x, ref = _as_slices(x, ref)
    rng = _range_per_slice(ref, data_range)
    mse = (x - ref).pow(2).mean(dim=(1, 2))
    out = 20 * torch.log10(rng) - 10 * torch.log10(mse)
    return torch.where(rng > 0, out, torch.full_like(out, float("nan")))


def psnr_volume(x: Tensor, ref: Tensor, *, data_range: float | None = None) -> float:
    """PSNR over all voxels at once, with the range of the whole reference volume."""
    x, ref = _as_slices(x, ref)
    rng = float(data_range) if data_range is not None else float(ref.max() - ref.min())
    mse = float((x - ref).pow(2).mean())
    if rng <= 0:
        return float("nan")
    return float("inf") if mse == 0 else 20 * torch.log10(torch.tensor(rng)).item() - 10 * torch.log10(
        torch.tensor(mse)).item()


def ssim(x: Tensor, ref: Tensor, *, data_range: float | Tensor | None = None, win_size: int = 7) -> Tensor:
    """SSIM of each slice, matching ``skimage.metrics.structural_similarity`` with its defaults.

    ``data_range`` defaults to the reference slice's range (the paper's code used the reconstruction's maximum for
    CT — pass it explicitly to reproduce that). Only the window positions fully inside the image are averaged, which
    is exactly skimage's crop of ``(win_size − 1) // 2`` pixels, so no padding convention is involved.
    """
    x, ref = _as_slices(x, ref)
    if win_size % 2 == 0 or win_size > min(x.shape[-2:]):
        raise DdipError(f"ssim: win_size must be odd and <= the image size, got {win_size}")
    if isinstance(data_range, Tensor):
        rng = data_range.to(x).reshape(-1)
    else:
        rng = _range_per_slice(ref, data_range)
    c1 = (0.01 * rng).pow(2).view(-1, 1, 1, 1)
    c2 = (0.03 * rng).pow(2).view(-1, 1, 1, 1)
    a, b = x.unsqueeze(1), ref.unsqueeze(1)
    mean = lambda t: F.avg_pool2d(t, win_size, stride=1)  # noqa: E731
    n = win_size * win_size
    cov_norm = n / (n - 1)
    ux, uy = mean(a), mean(b)
    vx = cov_norm * (mean(a * a) - ux * ux)
    vy = cov_norm * (mean(b * b) - uy * uy)
    vxy = cov_norm * (mean(a * b) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def band_errors(x: Tensor, ref: Tensor, radius: float) -> dict[str, float]:
    """Relative squared error ‖F(x − ref)‖² / ‖F ref‖² over the in-plane frequencies below (``"low"``) and above
    (``"high"``) ``radius`` cycles per image: for sparse-view CT, the frequencies the views sample and those they leave
    to the prior (docs/diagnosis.md §7)."""
    x, ref = _as_slices(x, ref)
    h, w = x.shape[-2:]
    fy, fx = torch.fft.fftfreq(h, dtype=torch.float64) * h, torch.fft.fftfreq(w, dtype=torch.float64) * w
    low = (fy[:, None] ** 2 + fx[None, :] ** 2).sqrt() < radius
    err, energy = torch.fft.fft2(x - ref).abs() ** 2, torch.fft.fft2(ref).abs() ** 2
    return {"low": float(err[:, low].sum() / energy[:, low].sum()),
            "high": float(err[:, ~low].sum() / energy[:, ~low].sum())}
